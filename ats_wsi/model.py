"""AttentionSampler: attention net + sampling + patch source + feature net.

One forward pass, for a batch of B images seen at low resolution:

1. ``attention_logits(x_low)``: the attention net's logits ``[B, 1, h', w']``;
2. a spatial softmax (masked where a mask is given) makes them a
   distribution ``attention [B, h', w']`` over the map's cells;
3. ``n`` cells are drawn from it (no gradient flows through the draw);
4. :func:`ats_wsi.geometry.cell_to_xy` turns the cells into patch boxes in the
   source's frame; the feature step reads only those and runs the feature net;
5. :func:`ats_wsi.sampling.expectation` averages the features, unbiased in its
   gradient to the attention (carried by ``sampled_attention``).

The attention is computed in one overridable method, ``attention_logits``.
Above ``tile_threshold`` low pixels it runs the attention net tile by tile
with a halo of its receptive field (:mod:`ats_wsi.sampling.tiled`): the same
logits, in memory bounded by the tile size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import SamplingError
from .geometry import cell_to_xy, rowcol_to_wh, size_wh, snap_to_grid
from .patches import PatchSource, TensorSource, plain_features
from .sampling import entropy_regularizer, expectation, sample, streamed, tiled
from .sampling.softmax import SampleSoftmax, ends_with_softmax, split_softmax
from .sampling.draws import AttentionResult, CellDraw
from .sampling.receptive_field import receptive_field as probe_field

__all__ = ["AttentionResult", "AttentionSampler", "CellDraw", "SAMPLERS"]


SAMPLERS = ("attention", "uniform")
"""How cells are drawn: from the attention net's map, or uniformly over the
(tissue) mask, the random-patch baseline."""


class AttentionSampler(nn.Module):
    """Attention sampling over a low view and a high-resolution patch source.

    Args:
        attention_net: ``x_low [B, C, h, w] -> logits [B, 1, h', w']`` or
            ``[B, h', w']``. Nets ending in a :class:`SampleSoftmax` (the
            reference library's habit) return probabilities instead; see
            ``use_logits``.
        feature_net: ``patches [B·n, C, ph, pw] -> [B·n, D]``.
        feature_step: ``(feature_net, source, xy, patch_wh, like) -> (patches, features)``, how the
            drawn boxes become features; default :func:`~ats_wsi.patches.plain_features`.
        n_patches: cells drawn per image.
        patch_size: ``(w, h)`` in high-resolution pixels, or one int for a
            square; ``None`` takes the low view's size (as the reference).
        replace: draw with replacement, or without (the default: every patch
            is distinct).
        receptive_field: the attention net's receptive field in low pixels
            if its convolutions are "valid" (the map shrinks at the borders),
            ``int`` or ``(w, h)``; ``0`` for "same" padding, whatever the
            net's true receptive field (see :mod:`ats_wsi.geometry`).
        entropy: weight of the entropy regulariser; ``entropy_loss`` is
            ``−entropy × mean entropy``, so a positive weight keeps the
            attention from collapsing.
        deterministic: in eval mode, take the ``n`` most probable cells
            instead of drawing them (training always draws: the estimator's
            unbiasedness needs random draws).
        use_logits: whether the attention net returns logits (the model then
            applies the spatial softmax) or probabilities. ``None`` decides
            from the net: probabilities when it ends in a ``SampleSoftmax``.
        attention_regularizer: optional ``attention [B, h', w'] -> scalar``
            used for ``entropy_loss`` instead of the entropy term.
        tile_threshold: low views of more than this many pixels (``h · w``)
            go through the attention net in tiles; ``None`` never tiles.
            BatchNorm layers of the attention net must then be in eval mode.
        tile_size: side of a tile in low pixels, without its halo.
        tile_checkpoint: when training with tiles, recompute each tile's
            activations in the backward pass instead of keeping them all.
        min_tissue: fraction of a cell's pixels a pixel-resolution mask must
            cover for the cell to be drawn (see :meth:`grid_mask`).
        tile_aligned: read, for each drawn cell, the patch-sized box of the grid of
            multiples of ``patch_size`` holding the centre of the cell's own box
            (:func:`ats_wsi.geometry.snap_to_grid`): with ``patch_size`` the level's
            tile size, each patch is one stored tile (~4x fewer tiles than random
            256² boxes), off its cell by up to half a patch (use tile-sized cells).
        sampler: ``"attention"``, or ``"uniform"``: every unmasked cell
            equally likely, the attention net unused (the random-patch baseline).
        smoothing: the attention's share spread uniformly over unmasked cells
            (:class:`~ats_wsi.sampling.SampleSoftmax`); training may anneal
            ``self.softmax.smoothing``. The estimator is unbiased for any map.
        temperature: logits are divided by it before the softmax (< 1: sharper).
    """

    def __init__(
        self,
        attention_net: nn.Module,
        feature_net: nn.Module,
        n_patches: int = 10,
        patch_size: int | tuple[int, int] | None = 32,
        replace: bool = False,
        receptive_field: int | tuple[int, int] = 0,
        entropy: float = 0.0,
        deterministic: bool = False,
        *,
        use_logits: bool | None = None,
        attention_regularizer: Callable[[Tensor], Tensor] | None = None,
        tile_threshold: int | None = tiled.DEFAULT_TILE_THRESHOLD,
        tile_size: int = tiled.DEFAULT_TILE_SIZE,
        tile_checkpoint: bool = True,
        min_tissue: float = 0.0,
        tile_aligned: bool = False,
        sampler: str = "attention",
        smoothing: float = 0.0,
        temperature: float = 1.0,
        feature_step: Callable | None = None,
    ):
        super().__init__()

        if isinstance(n_patches, bool) or not isinstance(n_patches, int) or n_patches < 1:
            raise SamplingError(f"n_patches must be a positive int, got {n_patches!r}")
        self.attention_net = attention_net
        self.feature_net = feature_net
        self.feature_step = plain_features if feature_step is None else feature_step
        self.n_patches = n_patches
        self.patch_size = None if patch_size is None else size_wh(patch_size, "patch_size")  # (w, h)
        self.replace = bool(replace)
        self.receptive_field = receptive_field
        self.entropy = float(entropy)
        self.deterministic = bool(deterministic)
        self.use_logits = (not ends_with_softmax(attention_net)) if use_logits is None else bool(use_logits)
        self.attention_regularizer = attention_regularizer
        self.set_sampler(sampler)
        self.softmax = SampleSoftmax(smoothing=smoothing, temperature=temperature)
        self.tile_threshold = tile_threshold
        self.tile_size = tile_size
        self.tile_checkpoint = bool(tile_checkpoint)
        self.min_tissue = float(min_tissue)
        self.tile_aligned = bool(tile_aligned)
        self._attention_field = None  # the attention net's ReceptiveField, probed once

    def extra_repr(self) -> str:
        return (f"n_patches={self.n_patches}, patch_size={self.patch_size}, replace={self.replace}, "
                f"receptive_field={self.receptive_field}, entropy={self.entropy}, "
                f"deterministic={self.deterministic}, use_logits={self.use_logits}, sampler={self.sampler_kind!r}, "
                f"smoothing={self.softmax.smoothing}")

    def set_sampler(self, sampler: str) -> None:
        """Draw from the attention map (``"attention"``) or uniformly over tissue (``"uniform"``)."""
        if sampler not in SAMPLERS:
            raise SamplingError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler_kind = sampler

    # -- the attention -----------------------------------------------------

    def attention_logits(self, x_low: Tensor) -> Tensor:
        """The attention net's output over the whole low view.

        Above ``tile_threshold`` pixels, computed tile by tile with a halo of
        the net's receptive field (equal to one pass). A net ending in a
        :class:`SampleSoftmax` is tiled without it and the softmax applied to
        the whole map. Override to compute it differently.

        Args:
            x_low: ``[B, C, h, w]``.

        Returns:
            ``[B, 1, h', w']`` or ``[B, h', w']``: logits, or probabilities
            when ``use_logits`` is False.
        """
        if not tiled.should_tile(x_low.shape, self.tile_threshold):
            return self.attention_net(x_low)
        net, head = split_softmax(self.attention_net)
        out = tiled.tiled_logits(net, x_low, self.tile_size, checkpoint=self.tile_checkpoint,
                                 field=self.attention_field(x_low.shape[1]))
        return out if head is None else head(out)

    def attention_field(self, in_channels: int = 3):
        """The attention net's :class:`~ats_wsi.sampling.receptive_field.ReceptiveField`
        (its ``stride`` is a map cell's side in low pixels), probed once."""
        if self._attention_field is None:
            self._attention_field = probe_field(split_softmax(self.attention_net)[0], in_channels=in_channels)
        return self._attention_field

    def attention_map(self, x_low: Tensor, mask: Tensor | None = None) -> Tensor:
        """The attention distribution over the map's cells.

        Args:
            x_low: ``[B, C, h, w]``.
            mask: optional bool, True where attention may go: on the map's
                grid ``[B, h', w']`` (or ``[h', w']``), or on the low view's
                pixels ``[B, h, w]`` (see :meth:`grid_mask`).

        Returns:
            ``[B, h', w']`` probabilities, each map summing to 1, 0 on masked
            cells; differentiable w.r.t. the attention net.
        """
        return self._attention(x_low, mask)[0]

    def _map_logits(self, x_low: Tensor) -> Tensor:
        """``[B, h', w']``: the attention net's output, or zeros of its shape under ``sampler="uniform"``."""
        if self.sampler_kind == "uniform":
            with torch.no_grad():
                return torch.zeros_like(_check_map(self.attention_logits(x_low)), dtype=torch.float32)
        return _check_map(self.attention_logits(x_low))

    def grid_mask(self, mask: Tensor | None, map_shape: tuple[int, int]) -> Tensor | None:
        """A mask on the attention map's grid.

        A mask already of the map's shape is returned as is. A mask of
        another shape (e.g. a tissue mask on the low view's pixels) is pooled
        onto the grid: a cell is kept when more than ``min_tissue`` of its
        pixels are True (any, by default). Pooled masks never starve the
        sampler: a map left with fewer usable cells than ``n_patches``
        (without replacement; none, with) is unmasked whole.

        Args:
            mask: bool ``[B, H, W]`` or ``[H, W]``, or None.
            map_shape: ``(h', w')``.

        Returns:
            bool ``[B, h', w']`` (or ``[h', w']``), or None.
        """
        if mask is None or tuple(mask.shape[-2:]) == tuple(map_shape):
            return mask
        batched = mask.ndim == 3
        m = mask if batched else mask[None]
        # counted over each cell's bin, one block of map rows at a time (no float copy of the pixels)
        grid = torch.stack([streamed.pool_mask(lambda r, c, h, w, mb=mb: mb[r:r + h, c:c + w], mb.shape,
                                               map_shape, self.min_tissue) for mb in m])
        grid = self._unstarve(grid)
        return grid if batched else grid[0]

    def _unstarve(self, grid: Tensor) -> Tensor:
        """Unmask whole any map of ``grid [B, h', w']`` left with too few cells to draw from."""
        need = 1 if self.replace else self.n_patches
        # per map and without dim: a bool sum (or count_nonzero over a dim) makes an int64 copy of the grid
        starved = torch.tensor([int(torch.count_nonzero(g)) < need for g in grid], device=grid.device)
        if bool(starved.any()):
            grid[starved] = True
        return grid

    def _attention(self, x_low: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        attention, mask, _ = self.attention_and_logits(x_low, mask)
        return attention, mask

    def attention_and_logits(self, x_low: Tensor, mask: Tensor | None):
        """The attention over a low view's grid cells, for sampling (also what each stage of
        :class:`ats_wsi.zoom.ZoomSampler` asks its sampler for).

        Returns:
            ``(attention [B, h', w'], grid mask or None, logits [B, h', w'])``.
        """
        out = self._map_logits(x_low)
        mask = self.grid_mask(mask, tuple(out.shape[-2:]))
        if mask is not None:
            mask = mask.to(out.device)
        if self.use_logits or self.sampler_kind == "uniform":
            return self.softmax(out, mask), mask, out
        logits = out.clamp_min(1e-30).log()
        if mask is None:
            return out, None, logits
        kept = out * mask
        return kept / kept.sum(dim=(1, 2), keepdim=True), mask, logits

    # -- one pass ----------------------------------------------------------

    def forward(
        self,
        x_low: Tensor,
        source: PatchSource | Tensor,
        mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool | None = None,
    ) -> AttentionResult:
        """Attend over ``x_low``, read ``n`` patches from ``source``, average.

        Args:
            x_low: ``[B, C, h, w]``, the low-resolution view.
            source: a patch source (see :class:`~ats_wsi.patches.PatchSource`)
                whose high-resolution frame covers the same field as
                ``x_low``, or a tensor ``[B, C, H, W]`` (wrapped in a
                :class:`~ats_wsi.patches.TensorSource`).
            mask: optional bool, True where a cell may be drawn (tissue, not
                padding): on the map's grid ``[B, h', w']``, or on the low
                view's pixels ``[B, h, w]`` (pooled by :meth:`grid_mask`).
            generator: optional ``torch.Generator`` (on the attention's
                device) for reproducible draws.
            deterministic: override the top-k choice for this call (``None``:
                top-k iff ``self.deterministic`` and in eval mode).

        Returns:
            :class:`AttentionResult`.
        """
        _check_low(x_low)
        attention, mask, logits = self.attention_and_logits(x_low, mask)
        result = self.draw(x_low, attention, mask, source, generator=generator, deterministic=deterministic)
        cell = result.positions[..., 0] * attention.shape[-1] + result.positions[..., 1]
        return result._replace(sampled_logits=logits.reshape(logits.shape[0], -1).gather(1, cell), logits=logits)

    def attend(self, x_low: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The attention map and the mask on its grid: the first half of :meth:`forward`.

        Args:
            x_low: ``[B, C, h, w]``, the low-resolution view.
            mask: as in :meth:`forward`.

        Returns:
            ``(attention [B, h', w'], grid mask bool [B, h', w'] or None)``,
            to pass to :meth:`draw` (once, for many draws).
        """
        _check_low(x_low)
        return self._attention(x_low, mask)

    def draw(
        self,
        x_low: Tensor,
        attention: Tensor,
        mask: Tensor | None,
        source: PatchSource | Tensor,
        *,
        n_patches: int | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool | None = None,
    ) -> AttentionResult:
        """Draw cells from an :meth:`attend` result, read their patches, average: the second half of :meth:`forward`.

        Args:
            x_low: the ``[B, C, h, w]`` view ``attention`` was computed from.
            attention, mask: what :meth:`attend` returned.
            source: as in :meth:`forward`.
            n_patches: cells drawn per image (default ``self.n_patches``).
            generator, deterministic: as in :meth:`forward`.

        Returns:
            :class:`AttentionResult`.
        """
        return self._draw(tuple(x_low.shape[-2:]), x_low, attention, mask, source, n_patches,
                          generator, deterministic, blocks=False)

    @torch.no_grad()
    def attend_streamed(self, read_region: tiled.ReadRegion, shape: tuple[int, int], *,
                        tissue=None) -> tuple[Tensor, Tensor | None]:
        """:meth:`attend` at inference, for a low view read tile by tile and never held whole.

        The attention net runs over tiles read with a halo
        (:func:`~ats_wsi.sampling.tiled.tiled_logits_from_reader`); the
        mask, softmax and (in :meth:`draw_streamed`) the draws and the
        entropy work on blocks of the map (:mod:`ats_wsi.sampling.streamed`):
        what stays is the float map itself and its bool mask.

        Args:
            read_region: ``(row0, col0, rows, cols) -> uint8 [rows, cols, C]``
                of the low view (e.g. :meth:`ats_wsi.slide.lowview.LowViewReader.read`).
            shape: ``(rows, cols)`` of the low view.
            tissue: optional pixel tissue mask learnt in the same pass: an
                object with ``add(rgb)`` (fed each pixel once) and
                ``mask(rgb) -> bool`` (e.g.
                :class:`ats_wsi.slide.lowview.TissueThreshold`); pooled onto
                the grid like a pixel mask by :meth:`grid_mask`, reading the
                view a second time.

        Returns:
            ``(attention [1, h', w'], grid mask bool [1, h', w'] or None)``
            for :meth:`draw_streamed`; equal to :meth:`attend` of the whole
            view and its pixel mask up to float rounding.
        """
        net, head = split_softmax(self.attention_net)
        on_tile = None if tissue is None else (lambda pixels, rows, cols: tissue.add(pixels[rows, cols]))
        out = tiled.tiled_logits_from_reader(net, read_region, shape, max(self.tile_size, 512),
                                             field=self.attention_field(), on_tile=on_tile)
        out = _check_map(out if head is None else head(out))
        uniform = self.sampler_kind == "uniform"
        if uniform:
            out = torch.zeros_like(out, dtype=torch.float32)
        mask = None
        if tissue is not None:
            mask = streamed.pool_mask(lambda r, c, h, w: tissue.mask(read_region(r, c, h, w)), shape,
                                      tuple(out.shape[-2:]), self.min_tissue, device=out.device)
            mask = self._unstarve(mask[None])
        if self.use_logits or uniform:
            return streamed.softmax_(out.contiguous(), mask, smoothing=self.softmax.smoothing,
                                     temperature=self.softmax.temperature), mask
        if mask is None:
            return out, None
        kept = out * mask
        return kept.div_(kept.sum(dim=(1, 2), keepdim=True)), mask

    def draw_streamed(self, low_shape: tuple[int, int], attention: Tensor, mask: Tensor | None,
                      source: PatchSource, *, n_patches: int | None = None,
                      generator: torch.Generator | None = None,
                      deterministic: bool | None = None) -> AttentionResult:
        """:meth:`draw` from an :meth:`attend_streamed` result: draws and entropy by blocks of the map.

        Args:
            low_shape: ``(rows, cols)`` of the low view.
            attention, mask: what :meth:`attend_streamed` returned.
            source, n_patches, generator, deterministic: as in :meth:`draw`.

        Returns:
            :class:`AttentionResult`, the same draws as :meth:`draw` for the
            same CPU generator (see :mod:`ats_wsi.sampling.streamed`).
        """
        return self._draw(tuple(low_shape), attention, attention, mask, source, n_patches,
                          generator, deterministic, blocks=True)

    def draw_cells(self, low_shape: tuple[int, int], attention: Tensor, mask: Tensor | None,
                   source: PatchSource | Tensor, *, n_patches: int | None = None,
                   generator: torch.Generator | None = None, deterministic: bool | None = None,
                   blocks: bool = False) -> CellDraw:
        """The first half of a draw: the cells and their patch boxes, before any pixel is read.

        A pipeline reads the boxes' pixels ahead (another thread) and hands the
        cells to :meth:`draw_features`; :meth:`draw` is the two halves at once.

        Args:
            low_shape: ``(rows, cols)`` of the low view.
            attention, mask: what :meth:`attend` (or :meth:`attend_streamed`, with ``blocks``) returned.
            source, n_patches, generator, deterministic: as in :meth:`draw`. Without replacement
                (or deterministic) each map gets at most as many as the map with the
                fewest usable cells has (all of them, when that is below ``n_patches``).
            blocks: draw by blocks of the map (:mod:`ats_wsi.sampling.streamed`).
        """
        if isinstance(source, Tensor):
            source = TensorSource(source)
        n = self.n_patches if n_patches is None else int(n_patches)
        if deterministic is None:
            deterministic = self.deterministic and not self.training
        if deterministic or not self.replace:
            n = max(1, min(n, _fewest_usable(attention, mask)))
        with torch.no_grad():
            draw = streamed.sample_blocks if blocks else sample
            positions, _ = draw(attention.detach(), n, replace=self.replace, mask=mask,
                                generator=generator, deterministic=deterministic)
        map_rows, map_cols = attention.shape[1:]
        cell = positions[..., 0] * map_cols + positions[..., 1]  # [B, n]
        sampled_attention = attention.reshape(attention.shape[0], -1).gather(1, cell)
        patch_wh = self.patch_size or rowcol_to_wh(low_shape)
        xy = cell_to_xy(positions, low_shape=low_shape, map_shape=(map_rows, map_cols),
                        scale=source.scale(low_shape), patch_size=patch_wh,
                        receptive_field=self.receptive_field)
        if self.tile_aligned:
            xy = snap_to_grid(xy, patch_wh)
        return CellDraw(positions, sampled_attention, xy, tuple(patch_wh))

    def draw_features(self, cells: CellDraw, attention: Tensor, source: PatchSource | Tensor, like: Tensor, *,
                      blocks: bool = False) -> AttentionResult:
        """The second half of a draw: ``cells``' patches through the feature step, averaged.

        Args:
            cells: what :meth:`draw_cells` returned for ``attention``.
            source: as in :meth:`draw` (a source that read the boxes ahead serves them).
            like: a tensor whose device (and float dtype) the patches take (the low view,
                or the map for a streamed draw).
            blocks: the entropy term by blocks of the map (as :meth:`draw_streamed`).
        """
        if isinstance(source, Tensor):
            source = TensorSource(source)
        # [B, n, C, h, w] and [B, n, D]; an encoder's step with a feature cache reads only the boxes it lacks
        patches, each = self.feature_step(self.feature_net, source, cells.xy, cells.patch_wh, like)
        features = expectation(each, cells.sampled_attention, self.replace)
        if self.attention_regularizer is not None:
            entropy_loss = self.attention_regularizer(attention)
        elif blocks:
            entropy_loss = streamed.entropy_loss(attention, self.entropy)
        else:
            entropy_loss = entropy_regularizer(attention, self.entropy)
        return AttentionResult(features, attention, cells.positions, cells.sampled_attention, patches, cells.xy,
                               entropy_loss, patch_features=each)

    def _draw(self, low_shape, like: Tensor, attention: Tensor, mask, source, n_patches, generator,
              deterministic, *, blocks: bool) -> AttentionResult:
        cells = self.draw_cells(tuple(low_shape), attention, mask, source, n_patches=n_patches, generator=generator,
                                deterministic=deterministic, blocks=blocks)
        return self.draw_features(cells, attention, source, like, blocks=blocks)


def _check_low(x_low: Tensor) -> None:
    if x_low.ndim != 4:
        raise SamplingError(f"x_low must be [B, C, h, w], got {tuple(x_low.shape)}")
    if x_low.shape[0] == 0:
        raise SamplingError("x_low is an empty batch (B = 0): there is nothing to attend to")


def _check_map(out: Tensor) -> Tensor:
    """The attention net's output as ``[B, h', w']``."""
    if out.ndim == 4 and out.shape[1] == 1:
        out = out.squeeze(1)
    if out.ndim != 3:
        raise SamplingError(f"the attention net must return [B, 1, h', w'] or [B, h', w'], "
                            f"got {tuple(out.shape)}")
    return out


def _fewest_usable(attention: Tensor, mask: Tensor | None) -> int:
    """The fewest cells a map of ``attention [B, h', w']`` may be drawn from (its ``mask``'s True cells)."""
    if mask is None:
        return int(attention[0].numel())
    return min(int(torch.count_nonzero(g)) for g in mask.expand_as(attention))
