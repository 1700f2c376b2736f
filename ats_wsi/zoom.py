"""ZoomSampler: attention that zooms, two attention stages and one unbiased estimator.

One forward pass, for a batch of B slides seen at low resolution:

1. stage 1: the attention net over the low view gives ``a1 [B, h1, w1]``
   (:meth:`AttentionSampler.attend`: tiled over large views, masked);
   ``n1`` regions are drawn from it;
2. the :class:`~ats_wsi.patches.zoom_source.ZoomSource` reads a square of
   ``zoom_size`` µm around each drawn cell at ``zoom_mpp`` (one plan per
   slide, every tile decoded once);
3. stage 2: a second attention net over the ``B · n1`` regions gives
   ``a2 [B, n1, h2, w2]``; ``n2`` cells are drawn in each region
   (:func:`~ats_wsi.sampling.nested.sample_within`);
4. the source reads a patch at ``patch_mpp`` for each of the ``n1 · n2``
   cells, the feature net sees them, and
   :func:`~ats_wsi.sampling.nested.nested_expectation` averages the
   features: value and gradients to both attention nets and the feature
   net are unbiased (docs/zoom.md).

Prediction draws too; ``deterministic`` (eval mode) takes the top cells at
both stages instead, an option that gives up unbiasedness.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .patches.features import as_float
from .errors import SamplingError
from .model import AttentionSampler, _check_low
from .patches.zoom_source import ZoomSource
from .slide.lowview import read_low_view
from .sampling import entropy_regularizer, sample
from .sampling.nested import nested_expectation, sample_within

__all__ = ["ZoomRecord", "ZoomResult", "ZoomSampler", "zoom_features", "zoom_inputs", "zoom_record"]


class ZoomResult(NamedTuple):
    """What one forward pass of :class:`ZoomSampler` returns.

    Attributes:
        features: ``[B, D]``, the estimate of ``sum_i a1_i sum_j a2_{j|i} f_ij``.
        attention: ``[B, h1, w1]``, the stage-1 map (probabilities).
        region_positions: long ``[B, n1, 2]``, drawn stage-1 cells ``(row, col)``, in draw order.
        region_attention: ``[B, n1]``, each drawn region's probability (differentiable).
        region_xy0: long ``[B, n1, 2]``, each region's top-left ``(x, y)`` in level-0 pixels.
        zoom_attention: ``[B, n1, h2, w2]``, the stage-2 map of each drawn region.
        positions: long ``[B, n1, n2, 2]``, drawn stage-2 cells ``(row, col)`` per region.
        sampled_attention: ``[B, n1, n2]``, each drawn cell's probability in its region.
        patch_xy0: long ``[B, n1, n2, 2]``, each patch's top-left ``(x, y)`` in level-0 pixels.
        patch_features: ``[B, n1, n2, D]``, the features the estimator averaged.
        entropy_loss: scalar to ADD to the loss: the entropy regulariser of
            both stages' maps (``entropy · Σ a log a / B`` each).
        region_logits: ``[B, n1]``, the stage-1 net's logit at each drawn region
            (``log`` of the probability for a net that returns probabilities);
            None when :meth:`ZoomSampler.draw` was not given the stage-1 logits.
        sampled_logits: ``[B, n1, n2]``, the stage-2 net's logit at each drawn
            cell: with ``region_logits``, what the per-patch aids train
            (:func:`ats_wsi.run._aids.zoom_aid_losses`).
    """

    features: Tensor
    attention: Tensor
    region_positions: Tensor
    region_attention: Tensor
    region_xy0: Tensor
    zoom_attention: Tensor
    positions: Tensor
    sampled_attention: Tensor
    patch_xy0: Tensor
    patch_features: Tensor
    entropy_loss: Tensor
    region_logits: Tensor | None = None
    sampled_logits: Tensor | None = None


class ZoomRecord(NamedTuple):
    """One slide's zoom in level-0 pixels, as plain arrays (what :func:`ats_wsi.geojson.zoom_geojson` writes).

    Attributes:
        region_boxes: float64 ``[n1, 4]``, ``(x, y, w, h)`` of each drawn region, in draw order.
        region_probability: float64 ``[n1]``, each region's stage-1 probability.
        stage1_cells: int, cells of the stage-1 map (``attention x cells``: 1 = uniform).
        zoom_attention: float64 ``[n1, h2, w2]``, each region's stage-2 map.
        zoom_cell_size_xy: ``(cw, ch)`` of a stage-2 cell.
        zoom_origin_xy: float64 ``[n1, 2]``, the corner of each region's cell (0, 0).
        patch_boxes: float64 ``[n1, n2, 4]``, ``(x, y, w, h)`` of each patch read.
        patch_probability: float64 ``[n1, n2]``, each patch's stage-2 probability in its region.
    """

    region_boxes: np.ndarray
    region_probability: np.ndarray
    stage1_cells: int
    zoom_attention: np.ndarray
    zoom_cell_size_xy: tuple[float, float]
    zoom_origin_xy: np.ndarray
    patch_boxes: np.ndarray
    patch_probability: np.ndarray


def zoom_record(result: ZoomResult, source, b: int = 0, zoom_receptive_field=0) -> ZoomRecord:
    """Slide ``b`` of a :class:`ZoomResult` as a :class:`ZoomRecord` (numpy, level-0 pixels).

    Args:
        result: what :meth:`ZoomSampler.forward` returned.
        source: the :class:`~ats_wsi.patches.zoom_source.ZoomSource` it read from.
        b: the batch element.
        zoom_receptive_field: the stage-2 net's ``rf`` (the sampler's ``stage2.receptive_field``).
    """
    a2 = result.zoom_attention[b].detach().cpu().double().numpy()
    size, origin = source.zoom_cell_grid(b, a2.shape[-2:], zoom_receptive_field)
    corners = result.region_xy0[b].cpu().double().numpy()
    return ZoomRecord(
        region_boxes=source.boxes_level0(result.region_xy0[b:b + 1], "region")[0].double().numpy(),
        region_probability=result.region_attention[b].detach().cpu().double().numpy(),
        stage1_cells=int(result.attention[b].numel()),
        zoom_attention=a2,
        zoom_cell_size_xy=(float(size[0]), float(size[1])),
        zoom_origin_xy=corners + np.asarray(origin, dtype=np.float64),
        patch_boxes=source.boxes_level0(result.patch_xy0[b:b + 1], "patch")[0].double().numpy(),
        patch_probability=result.sampled_attention[b].detach().cpu().double().numpy(),
    )


def zoom_features(feature_net: nn.Module, source, patch_xy0: Tensor, like: Tensor) -> Tensor:
    """The plain stage-3 feature step: read every drawn patch, run the feature net on it.

    Args:
        feature_net: ``[N, C, ph, pw] -> [N, D]``.
        source: the :class:`~ats_wsi.patches.zoom_source.ZoomSource`.
        patch_xy0: long ``[B, n1, n2, 2]``, the patches' level-0 corners.
        like: a tensor whose device (and float dtype) the pixels take.

    Returns:
        ``[B, n1, n2, D]``. A pretrained encoder (its resolution contract and
        feature cache) uses :class:`ats_wsi.classifier.features.ZoomEncoderFeatures`,
        a step with the same signature.
    """
    patches = as_float(source.read_patches(patch_xy0), like)  # [B, n1, n2, C, ph, pw]
    each = feature_net(patches.flatten(0, 2))
    return each.reshape(*patches.shape[:3], *each.shape[1:])


class ZoomSampler(nn.Module):
    """Two attention stages over a slide: regions over the low view, cells inside each drawn region.

    The nets see pixels scaled to [0, 1] (the regions and patches as read,
    ``x_low`` as given): put any normalisation inside them.

    Args:
        attention_net: stage 1, ``x_low [B, C, h, w] -> logits [B, 1, h1, w1]``
            (or probabilities, as :class:`AttentionSampler` accepts).
        zoom_attention_net: stage 2, ``regions [B·n1, C, R, R] -> [B·n1, 1, h2, w2]``.
        feature_net: ``patches [B·n1·n2, C, ph, pw] -> [B·n1·n2, D]``.
        n_regions: ``n1``, regions drawn per slide.
        n_patches: ``n2``, cells drawn per region.
        replace_regions, replace: stage 1 and stage 2 draw with replacement.
        receptive_field, zoom_receptive_field: each net's ``rf`` ("valid"
            convolutions; 0 for "same"), in its input's pixels.
        entropy, zoom_entropy: weights of each stage's entropy regulariser.
        deterministic: in eval mode, take the top cells at both stages.
        smoothing: stage-1 attention share spread uniformly (exploration).
        feature_step: ``(feature_net, source, patch_xy0 [B, n1, n2, 2], like) -> [B, n1, n2, D]``,
            how the drawn patches become features (default :func:`zoom_features`).

    Raises:
        SamplingError: a count that is not a positive int.
    """

    def __init__(
        self,
        attention_net: nn.Module,
        zoom_attention_net: nn.Module,
        feature_net: nn.Module,
        n_regions: int = 4,
        n_patches: int = 4,
        *,
        replace_regions: bool = False,
        replace: bool = False,
        receptive_field: int | tuple[int, int] = 0,
        zoom_receptive_field: int | tuple[int, int] = 0,
        entropy: float = 0.0,
        zoom_entropy: float = 0.0,
        deterministic: bool = False,
        smoothing: float = 0.0,
        feature_step=None,
    ):
        super().__init__()
        # the attention halves of two AttentionSamplers (tiling, masks, softmax); their own
        # feature step is unused: the features are read and averaged here, through both stages
        self.stage1 = AttentionSampler(attention_net, nn.Identity(), n_patches=n_regions, patch_size=None,
                                       replace=replace_regions, receptive_field=receptive_field,
                                       entropy=entropy, smoothing=smoothing)
        self.stage2 = AttentionSampler(zoom_attention_net, nn.Identity(), n_patches=n_patches, patch_size=None,
                                       replace=replace, receptive_field=zoom_receptive_field, entropy=zoom_entropy)
        self.feature_net = feature_net
        self.feature_step = zoom_features if feature_step is None else feature_step
        self.deterministic = bool(deterministic)

    @property
    def n_regions(self) -> int:
        return self.stage1.n_patches

    @property
    def n_patches(self) -> int:
        return self.stage2.n_patches

    @n_patches.setter
    def n_patches(self, value: int) -> None:
        """``n2``, cells drawn per region (what training's exploration changes)."""
        self.stage2.n_patches = int(value)

    # What a SlideClassifier's training and prediction ask of their sampler (the stage-1 side).
    @property
    def softmax(self):
        """The stage-1 softmax (its ``smoothing`` and ``temperature``)."""
        return self.stage1.softmax

    @property
    def attention_net(self) -> nn.Module:
        """The stage-1 attention net (:attr:`attention_nets`: both stages')."""
        return self.stage1.attention_net

    @property
    def attention_nets(self) -> tuple[nn.Module, nn.Module]:
        """Both stages' attention nets (``attention_lr`` applies to both: its param group)."""
        return self.stage1.attention_net, self.stage2.attention_net

    @property
    def receptive_field(self):
        """The stage-1 net's receptive field."""
        return self.stage1.receptive_field

    @property
    def replace(self) -> bool:
        """Stage 2 draws with replacement."""
        return self.stage2.replace

    @property
    def sampler_kind(self) -> str:
        """``"attention"``, or ``"uniform"`` at both stages: regions uniform over the tissue cells of
        the stage-1 map, patches uniform over each region's cells (the random-patch ablation of a
        trained zoom, ``ats-wsi predict --sampler uniform``; training draws by attention)."""
        return self.stage1.sampler_kind

    @sampler_kind.setter
    def sampler_kind(self, kind: str) -> None:
        self.set_sampler(kind)

    def attention_field(self):
        """The stage-1 net's receptive field and stride (:meth:`AttentionSampler.attention_field`)."""
        return self.stage1.attention_field()

    def set_sampler(self, kind: str) -> None:
        """Draw both stages by ``"attention"`` or ``"uniform"`` (:attr:`sampler_kind`)."""
        self.stage1.set_sampler(kind)
        self.stage2.set_sampler(kind)

    def extra_repr(self) -> str:
        return (f"n_regions={self.n_regions}, n_patches={self.n_patches}, replace_regions={self.stage1.replace}, "
                f"replace={self.stage2.replace}, deterministic={self.deterministic}")

    def forward(self, x_low: Tensor, source, mask: Tensor | None = None, *,
                generator: torch.Generator | None = None, deterministic: bool | None = None) -> ZoomResult:
        """Attend over ``x_low``, zoom into ``n1`` regions, attend inside them, read ``n1 · n2`` patches, average.

        Args:
            x_low: ``[B, C, h, w]``, the low view of each slide.
            source: a :class:`~ats_wsi.patches.zoom_source.ZoomSource` of the
                same B slides, whose ``low_downsample`` is ``x_low``'s.
            mask: optional bool stage-1 mask (tissue), as in :meth:`AttentionSampler.forward`.
            generator: optional ``torch.Generator`` for reproducible draws.
            deterministic: override the top-k choice (``None``: top-k iff
                ``self.deterministic`` and in eval mode).

        Returns:
            :class:`ZoomResult`.
        """
        _check_low(x_low)
        a1, mask1, logits1 = self.stage1.attention_and_logits(x_low, mask)
        return self.draw(a1, mask1, source, low_shape=tuple(x_low.shape[-2:]), like=x_low, generator=generator,
                         deterministic=deterministic, logits=logits1)

    def draw(self, a1: Tensor, mask1: Tensor | None, source, *, low_shape, like: Tensor,
             generator: torch.Generator | None = None, deterministic: bool | None = None,
             logits: Tensor | None = None) -> ZoomResult:
        """Everything after the stage-1 map: one draw of regions, cells and patches from ``a1``.

        Prediction attends once and draws several times
        (``a1, mask1 = sampler.stage1.attend(x_low, mask)``).

        Args:
            a1, mask1: what ``self.stage1.attend`` returned.
            source: the :class:`~ats_wsi.patches.zoom_source.ZoomSource` of the slides.
            low_shape: ``(rows, cols)`` of the low view.
            like: a tensor whose device (and float dtype) the pixels take (``x_low``).
            generator, deterministic: as in :meth:`forward`.
            logits: optional ``[B, h1, w1]``, the stage-1 net's logits behind ``a1``
                (then :attr:`ZoomResult.region_logits` is set).
        """
        if deterministic is None:
            deterministic = self.deterministic and not self.training
        x_low = like
        batch = a1.shape[0]
        if len(source.slides) != batch:
            raise SamplingError(f"the zoom source holds {len(source.slides)} slides for a batch of {batch}")
        regions, s1 = self._draw_regions(a1, mask1, generator, deterministic)
        corners = source.region_corners(regions, low_shape=tuple(low_shape), map_shape=tuple(a1.shape[1:]),
                                        receptive_field=self.stage1.receptive_field)
        pixels = as_float(source.read_regions(corners), x_low).flatten(0, 1)  # [B·n1, C, R, R]
        inside = source.region_tissue(corners, mask1, low_shape=tuple(low_shape),
                                      receptive_field=self.stage1.receptive_field)
        a2, mask2, logits2 = self.stage2.attention_and_logits(
            pixels, None if inside is None else inside.flatten(0, 1).to(pixels.device))
        a2 = a2.unflatten(0, (batch, -1))  # [B, n1, h2, w2]
        cells, s2 = self._draw_cells(a2, None if mask2 is None else mask2.unflatten(0, (batch, -1)),
                                     generator, deterministic)
        patch_xy0 = source.patch_corners(cells, corners, map_shape=tuple(a2.shape[-2:]),
                                         receptive_field=self.stage2.receptive_field)
        each = self.feature_step(self.feature_net, source, patch_xy0, x_low)  # [B, n1, n2, D]
        features = nested_expectation(each, s1, s2, self.stage1.replace, self.stage2.replace)
        entropy_loss = entropy_regularizer(a1, self.stage1.entropy) \
            + entropy_regularizer(a2.flatten(0, 1), self.stage2.entropy)
        region_logits = None if logits is None else logits.flatten(1).gather(
            1, regions[..., 0] * a1.shape[-1] + regions[..., 1])
        flat2 = cells[..., 0] * a2.shape[-1] + cells[..., 1]
        sampled_logits = logits2.unflatten(0, (batch, -1)).flatten(2).gather(2, flat2)
        return ZoomResult(features, a1, regions, s1, corners, a2, cells, s2, patch_xy0, each, entropy_loss,
                          region_logits, sampled_logits)

    def _draw_regions(self, a1: Tensor, mask: Tensor | None, generator, deterministic: bool):
        """``(cells long [B, n1, 2], probabilities [B, n1])``: the draw carries no gradient, the gather does."""
        with torch.no_grad():
            cells, _ = sample(a1.detach(), self.n_regions, replace=self.stage1.replace, mask=mask,
                              generator=generator, deterministic=deterministic)
        flat = cells[..., 0] * a1.shape[-1] + cells[..., 1]
        return cells, a1.flatten(1).gather(1, flat)

    def _draw_cells(self, a2: Tensor, mask: Tensor | None, generator, deterministic: bool):
        """``(cells long [B, n1, n2, 2], probabilities [B, n1, n2])`` of each region's own map."""
        with torch.no_grad():
            cells, _ = sample_within(a2.detach(), self.n_patches, replace=self.stage2.replace, mask=mask,
                                     generator=generator, deterministic=deterministic)
        flat = cells[..., 0] * a2.shape[-1] + cells[..., 1]
        return cells, a2.flatten(2).gather(2, flat)


def zoom_inputs(slide, *, zoom_mpp: float, zoom_size: float, patch_mpp: float, patch_size,
                low_mpp: float | None = None, low_downsample: float | None = None,
                device: str | torch.device = "cpu", **reader_args) -> tuple[Tensor, Tensor, ZoomSource]:
    """One slide made ready for :meth:`ZoomSampler.forward`: ``(x_low, mask, source)``.

    Args:
        slide: an open :class:`ats_wsi.slide.Slide` whose µm/px is known.
        zoom_mpp, zoom_size, patch_mpp, patch_size: as in :class:`ZoomSource`.
        low_mpp / low_downsample: the low view's resolution (exactly one;
            :func:`ats_wsi.slide.lowview.read_low_view`).
        device: where ``x_low``, the mask and the source's reads go.
        reader_args: ``workers``, ``cache_bytes``, ... for the source's readers.

    Returns:
        ``x_low`` float ``[1, 3, h, w]`` in [0, 1], its tissue mask bool
        ``[1, h, w]`` (pooled onto the stage-1 grid by the model), and a
        :class:`ZoomSource` over the slide (close it when done).
    """
    if (low_mpp is None) == (low_downsample is None):
        raise SamplingError(f"give exactly one of low_mpp and low_downsample, got {low_mpp!r} and {low_downsample!r}")
    view = read_low_view(slide, mpp=low_mpp) if low_mpp is not None else read_low_view(slide, downsample=low_downsample)
    x_low = torch.from_numpy(np.ascontiguousarray(view.image)).permute(2, 0, 1)[None].to(device).float() / 255
    mask = torch.from_numpy(np.ascontiguousarray(view.mask))[None].to(device)
    source = ZoomSource([slide], low_downsample=view.downsample, zoom_mpp=zoom_mpp, zoom_size=zoom_size,
                        patch_mpp=patch_mpp, patch_size=patch_size, device=device, **reader_args)
    return x_low, mask, source
