"""The attention net over a large low view, tile by tile, equal to one pass.

A fully-convolutional attention net maps ``x [B, C, H, W]`` to a map
``[B, K, h, w]`` (or ``[B, h, w]``) of stride ``s``: per axis, map cell ``j``
sees the input pixels ``[j·s + offset, j·s + offset + size)``, its receptive
field. So the map can be computed in tiles: cut the map into blocks of whole
cells, run the net on each block's input pixels plus a halo of the receptive
field on each side, keep only the block's own cells (the tile's valid centre)
and stitch the blocks. The result equals ``net(x)`` up to float rounding,
borders included, because:

- **Every layer pads, so tiles are never padded by us.** "Same" zero padding
  happens at each convolution, not only at the input. A tile that is cut at
  the image's true border pads where the whole image pads, at every layer;
  a halo only ever extends *into* the image, and is clipped at its border.
- **Strides line up.** A tile starting at input pixel ``a`` shifts the grid of
  a layer of cumulative stride ``s_l`` by ``a / s_l`` cells, a whole number
  only if ``s_l`` divides ``a``. Tile starts are multiples of the output
  stride ``s`` (every intermediate stride divides it) and the halo is rounded
  up to a multiple of ``s``. The last tile ends at the border, so its map ends
  where the whole map ends, whether the net rounds ``H / s`` up or down.
- **Nothing normalises over space.** BatchNorm in training mode (and
  InstanceNorm, GroupNorm) normalises with statistics of the whole batch or
  image, which a tile does not see: :func:`tiled_logits` refuses such nets
  when it has to tile. Put BatchNorm layers in eval mode.

Not covered: encoder-decoder nets whose inner layers downsample more than the
output (a U-Net with an upsampled map): their tiles must start on multiples of
the inner stride, which the output stride does not reveal.

Memory: under ``torch.no_grad`` only one tile's activations are alive at a
time. With autograd, every tile's activations are kept for the backward pass
(as in one pass) unless ``checkpoint=True``, which recomputes each tile during
the backward pass, one at a time. :func:`tiled_logits_from_reader` never holds
more of the low image than one tile plus its halo, as float.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import SamplingError
from ..geometry import wh_to_rowcol
from .receptive_field import ReceptiveField, _round_up, receptive_field

__all__ = [
    "DEFAULT_TILE_SIZE",
    "DEFAULT_TILE_THRESHOLD",
    "should_tile",
    "tiled_logits",
    "tiled_logits_from_reader",
]

DEFAULT_TILE_SIZE = 256
DEFAULT_TILE_THRESHOLD = 1024 * 1024  # low pixels; above this the attention is tiled

ReadRegion = Callable[[int, int, int, int], np.ndarray]


# --------------------------------------------------------------------------
# When to tile.

def should_tile(shape, threshold_pixels: int | None = DEFAULT_TILE_THRESHOLD) -> bool:
    """Whether the attention over a low view of this shape is computed in tiles.

    Args:
        shape: the low view's shape; its last two entries are ``(rows, cols)``
            (a tensor's ``[B, C, H, W]`` works).
        threshold_pixels: tile when ``rows · cols`` exceeds it; ``None``
            never tiles, ``0`` always does.

    Returns:
        bool.
    """
    if threshold_pixels is None:
        return False
    rows, cols = (int(n) for n in tuple(shape)[-2:])
    return rows * cols > threshold_pixels


# --------------------------------------------------------------------------
# Tiles.

class _Span(NamedTuple):
    """One tile along one axis."""

    start: int   # first input pixel the tile reads (halo included)
    stop: int    # one past its last input pixel
    keep: slice  # the cells of the tile's own map that are its own
    cell: int    # where they go in the whole map
    own: slice = slice(None)  # the tile's own input pixels, relative to start (tiles' own pixels partition the axis)


def _plan_axis(size: int, tile: int, halo: int, stride: int) -> list[_Span]:
    """Tiles of ``tile`` pixels (rounded up to the stride), halos clipped to ``[0, size)``."""
    tile = _round_up(max(int(tile), 1), stride)
    spans = []
    for first in range(0, size, tile):
        last_tile = first + tile >= size
        start = max(0, first - halo)
        stop = size if last_tile else min(size, first + tile + halo)
        # start is 0 or a multiple of the stride: the tile's map is the whole map, shifted
        keep = slice((first - start) // stride, None if last_tile else (first + tile - start) // stride)
        own = slice(first - start, (size if last_tile else first + tile) - start)
        spans.append(_Span(start, stop, keep, first // stride, own))
    return spans


def _plan(shape, tile_size, halo, field: ReceptiveField):
    tile = wh_to_rowcol(tile_size, "tile_size")
    halo = field.halo if halo is None else wh_to_rowcol(halo, "halo", minimum=0)
    halo = tuple(_round_up(halo[axis], field.stride[axis]) for axis in range(2))
    return [_plan_axis(int(shape[axis]), tile[axis], halo[axis], field.stride[axis]) for axis in (0, 1)]


def _keep(out: Tensor, rows: _Span, cols: _Span) -> Tensor:
    for axis, span in ((0, rows), (1, cols)):
        if span.keep.stop is not None and out.shape[out.ndim - 2 + axis] < span.keep.stop:
            raise SamplingError(f"a tile of input pixels [{span.start}, {span.stop}) on axis {axis} "
                                f"gave {out.shape[out.ndim - 2 + axis]} cells, fewer than the "
                                f"{span.keep.stop} it must cover: the halo is smaller than the "
                                f"net's receptive field")
    return out[..., rows.keep, cols.keep]


def tiled_logits(net: nn.Module, x: Tensor, tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
                 halo: int | tuple[int, int] | None = None, checkpoint: bool = False, *,
                 field: ReceptiveField | None = None) -> Tensor:
    """``net(x)`` computed tile by tile, for a fully-convolutional ``net``.

    Args:
        net: ``[B, C, H, W] -> [B, K, h, w]`` (or ``[B, h, w]``); BatchNorm
            layers, if any, must be in eval mode when there is more than one
            tile (see the module notes).
        x: ``[B, C, H, W]``.
        tile_size: ``T`` or ``(w, h)``: the input pixels whose map cells a
            tile computes (its valid centre), rounded up to a multiple of the
            stride; the tile reads at most ``T + 2·halo`` pixels per axis.
        halo: ``int`` or ``(w, h)``, input pixels added on each side of a tile (rounded up to a
            multiple of the stride); default ``field.halo``.
        checkpoint: when autograd records, recompute each tile's activations
            in the backward pass (``torch.utils.checkpoint``) instead of
            keeping every tile's activations.
        field: the net's :class:`ReceptiveField`; probed with
            :func:`~ats_wsi.sampling.receptive_field.receptive_field` when None (compute it once and pass it).

    Returns:
        What ``net(x)`` returns, ``[B, K, h, w]`` (or ``[B, h, w]``): one
        tensor stitched with ``torch.cat``, so gradients flow into every tile.

    Raises:
        SamplingError: ``x`` is not 4-D, the net normalises over space in
            this mode, or the halo is too small for the net.
    """
    if x.ndim != 4:
        raise SamplingError(f"x must be [B, C, H, W], got {tuple(x.shape)}")
    if field is None:
        field = receptive_field(net, in_channels=x.shape[1])
    row_spans, col_spans = _plan(x.shape[-2:], tile_size, halo, field)
    if len(row_spans) == 1 and len(col_spans) == 1:
        return net(x)
    _check_tileable(net)
    recompute = checkpoint and torch.is_grad_enabled()
    strips = []
    for rows in row_spans:
        pieces = []
        for cols in col_spans:
            crop = x[..., rows.start:rows.stop, cols.start:cols.stop]
            out = _checkpoint(net, crop, use_reentrant=False) if recompute else net(crop)
            pieces.append(_keep(out, rows, cols))
        strips.append(torch.cat(pieces, dim=-1))
    return torch.cat(strips, dim=-2)


def tiled_logits_from_reader(net: nn.Module, read_region: ReadRegion, shape: tuple[int, int],
                             tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
                             halo: int | tuple[int, int] | None = None,
                             normalize: Callable[[Tensor], Tensor] | None = None, *,
                             field: ReceptiveField | None = None, in_channels: int = 3,
                             device: torch.device | str | None = None,
                             on_tile: Callable[[np.ndarray, slice, slice], None] | None = None) -> Tensor:
    """The attention net over an image read tile by tile, for inference.

    The image is never held whole: each tile (plus its halo) is read as
    uint8, moved to the net's device, converted to float, run and dropped.
    Runs under ``torch.no_grad``.

    Args:
        net: as in :func:`tiled_logits`; BatchNorm in eval mode.
        read_region: ``(row0, col0, rows, cols) -> uint8 [rows, cols, C]``,
            the pixels of the image's box; asked only for boxes inside
            ``shape``.
        shape: ``(rows, cols)`` of the image.
        tile_size, halo, field: as in :func:`tiled_logits`.
        normalize: ``uint8 [1, C, rows, cols] -> float [1, C, rows, cols]``
            on ``device``; default ``x / 255`` in the net's dtype.
        in_channels: ``C``, for probing the receptive field.
        device: where to run; default the net's parameters' device.
        on_tile: called as ``on_tile(pixels, own_rows, own_cols)`` with each
            tile's uint8 ``[rows, cols, C]`` pixels as read (halo included)
            and the slices of them that are the tile's own: over all tiles,
            the own pixels are each pixel of the image once (e.g. for a
            histogram of the whole image in the same pass).

    Returns:
        ``[1, K, h, w]`` (or ``[1, h, w]``), equal to ``net(x[None])`` for
        the whole image ``x``, on ``device``.
    """
    rows, cols = (int(n) for n in shape)
    if field is None:
        field = receptive_field(net, in_channels=in_channels)
    row_spans, col_spans = _plan((rows, cols), tile_size, halo, field)
    if len(row_spans) > 1 or len(col_spans) > 1:
        _check_tileable(net)
    device, dtype = _device_dtype(net, device)
    if normalize is None:
        def normalize(pixels: Tensor) -> Tensor:
            return pixels.to(dtype) / 255
    # the bottom-right tile first: its map ends where the whole map ends, which sizes `out`
    order = [(r, c) for r in row_spans for c in col_spans]
    order = order[-1:] + order[:-1]
    out = None
    with torch.no_grad():
        for row_span, col_span in order:
            pixels = _read(read_region, row_span, col_span, (rows, cols), device, on_tile)
            kept = _keep(net(normalize(pixels)), row_span, col_span)
            if out is None:
                map_shape = (row_span.cell + kept.shape[-2], col_span.cell + kept.shape[-1])
                out = kept.new_empty(*kept.shape[:-2], *map_shape)
            out[..., row_span.cell:row_span.cell + kept.shape[-2],
                col_span.cell:col_span.cell + kept.shape[-1]] = kept
    return out


def _read(read_region: ReadRegion, rows: _Span, cols: _Span, shape, device, on_tile=None) -> Tensor:
    """uint8 ``[1, C, rows, cols]`` of one tile, on ``device``."""
    size = (rows.stop - rows.start, cols.stop - cols.start)
    pixels = np.asarray(read_region(rows.start, cols.start, *size))
    if pixels.ndim != 3 or pixels.shape[:2] != size:
        raise SamplingError(f"read_region({rows.start}, {cols.start}, {size[0]}, {size[1]}) on an "
                            f"image of {shape} returned shape {pixels.shape}, "
                            f"expected ({size[0]}, {size[1]}, C)")
    if on_tile is not None:
        on_tile(pixels, rows.own, cols.own)
    tile = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # channels first: a fast float cast
    return tile.to(device).unsqueeze(0)


def _device_dtype(net: nn.Module, device):
    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    return torch.device(device), dtype


def _check_tileable(net: nn.Module) -> None:
    """Refuse nets that normalise with statistics over the batch or the image."""
    for name, module in net.named_modules():
        batch_stats = isinstance(module, (nn.modules.batchnorm._BatchNorm,
                                          nn.modules.instancenorm._InstanceNorm)) \
            and (module.training or module.running_mean is None)
        if batch_stats or isinstance(module, nn.GroupNorm):
            raise SamplingError(
                f"attention net layer {name or '<net>'!r} ({type(module).__name__}) normalises "
                f"with statistics over the whole batch or image, which a tile does not see, so "
                f"tiled attention would differ from one pass; put it in eval mode "
                f"(e.g. `module.eval()` on the attention net's BatchNorm layers), or raise the "
                f"tiling threshold")
