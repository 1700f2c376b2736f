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

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import SamplingError

__all__ = [
    "DEFAULT_TILE_SIZE",
    "DEFAULT_TILE_THRESHOLD",
    "ReceptiveField",
    "receptive_field",
    "should_tile",
    "tiled_logits",
    "tiled_logits_from_reader",
]

DEFAULT_TILE_SIZE = 256
DEFAULT_TILE_THRESHOLD = 1024 * 1024  # low pixels; above this the attention is tiled

ReadRegion = Callable[[int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class ReceptiveField:
    """Where the cells of an attention map look, per axis ``(rows, cols)``.

    Map cell ``j`` depends on the input pixels
    ``[j·stride + offset, j·stride + offset + size)`` (before the border's
    padding clips them).

    Attributes:
        size: ``(ry, rx)``, the receptive field's extent in input pixels.
        stride: ``(sy, sx)``, input pixels per map cell.
        offset: ``(oy, ox)``, where cell 0's field starts (usually ``<= 0``);
            ``None`` when unknown (declared by the net), taken as centred.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int] | None = None

    @property
    def halo(self) -> tuple[int, int]:
        """``(hy, hx)``: input pixels added on each side of a tile.

        The receptive field's size rounded up to a multiple of the stride,
        or more if a measured offset needs it.
        """
        return tuple(_round_up(self._margin(axis), self.stride[axis]) for axis in range(2))

    def _margin(self, axis: int) -> int:
        size, stride = self.size[axis], self.stride[axis]
        if self.offset is None:
            return size
        first = self.offset[axis]
        last = first + size - 1
        # cells of a tile need `-first` pixels before it, `last - stride + 1` after it
        return max(size, -first, last - stride + 1, 0)


# --------------------------------------------------------------------------
# The receptive field of a net.

def receptive_field(net: nn.Module, in_channels: int = 3, *, declared: bool = True,
                    probe_size: int = 64, max_probe_size: int = 2048) -> ReceptiveField:
    """The receptive field and output stride of a fully-convolutional net.

    If the net declares ``net.receptive_field`` (a :class:`ReceptiveField`,
    or an ``int`` / ``(ry, rx)`` size, whose stride is then measured from the
    map's shape) and ``declared`` is True, that is trusted. Otherwise the net
    is probed, on a copy in eval mode, on the CPU, in float64, on a square
    input of ``probe_size`` pixels (doubled until the fields of two
    neighbouring central cells per axis lie inside it):

    - **gradient**: the rows (columns) where the gradient of the cell w.r.t.
      a random positive input is non-zero. A non-zero gradient proves a
      dependence, but a gradient can also vanish by accident (dead ReLUs,
      zero weights), so this can only under-estimate the field.
    - **NaN check**: the input outside those rows is set to NaN. NaN spreads
      through every product, even by a zero weight or through a dead ReLU, so
      if no NaN reaches the cell, the rows are the whole field (one more pass).
    - Otherwise, **NaN blocks**: a binary search over ``q`` with rows
      ``[0, q)`` (then ``[q, n)``) set to NaN finds the first (last) row that
      reaches the cell: the structural dependence, whatever the weights. The
      field is its union with the gradient's rows (the gradient covers the
      rare op that drops NaN: ``nan_to_num``, ``nn.Threshold``).

    The stride is the shift between the two cells' fields.

    Args:
        net: ``[B, C, H, W] -> [B, K, h, w]`` or ``[B, h, w]``. Not modified.
        in_channels: ``C``.
        declared: trust ``net.receptive_field`` when the net has it.
        probe_size: side of the first probe input.
        max_probe_size: give up beyond this side.

    Returns:
        A :class:`ReceptiveField`.

    Raises:
        SamplingError: the field is larger than ``max_probe_size`` or the net
            is not local (a spatial softmax, global pooling, normalisation
            over the image), or cells are irregularly spaced (upsampling).
    """
    if declared and getattr(net, "receptive_field", None) is not None:
        return _declared_field(net, in_channels)
    probe = _probe_copy(net)
    size = probe_size
    while size <= max_probe_size:
        fields = [_probe_axis(probe, in_channels, size, axis) for axis in (0, 1)]
        if None not in fields:
            (ry, sy, oy), (rx, sx, ox) = fields
            return ReceptiveField((ry, rx), (sy, sx), (oy, ox))
        size *= 2
    raise SamplingError(f"the attention net's receptive field is wider than {max_probe_size} pixels, "
                        f"or the net is not local (spatial softmax, global pooling, normalisation "
                        f"over the image): it cannot be computed in tiles")


def _declared_field(net: nn.Module, in_channels: int) -> ReceptiveField:
    declared = net.receptive_field
    if isinstance(declared, ReceptiveField):
        return declared
    size = _int_pair(declared, "net.receptive_field")
    return ReceptiveField(size, _stride_from_shape(_probe_copy(net), in_channels))


def _probe_copy(net: nn.Module) -> nn.Module:
    probe = copy.deepcopy(net).to(device="cpu", dtype=torch.float64).eval()
    return probe.requires_grad_(False)


def _stride_from_shape(net: nn.Module, in_channels: int, long: int = 4096,
                       short: int = 64) -> tuple[int, int]:
    """``round(long / cells)`` per axis: exact for strides below ``√(long / 2)`` (45)."""
    stride = []
    with torch.no_grad():
        for shape in ((long, short), (short, long)):
            out = net(torch.zeros(1, in_channels, *shape, dtype=torch.float64))
            cells = out.shape[-2 + len(stride)]
            if cells == 0:
                raise SamplingError(f"the attention net maps {shape} pixels to an empty map")
            stride.append(max(1, round(long / cells)))
    return tuple(stride)


def _probe_axis(net: nn.Module, in_channels: int, size: int, axis: int):
    """``(field size, stride, offset)`` along ``axis``, or None if ``size`` is too small."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, in_channels, size, size, dtype=torch.float64, generator=generator) + 0.5
    with torch.no_grad():
        cells = net(x).shape[-2 + axis]
    if cells < 2:
        return None
    centre = (cells - 1) // 2
    spans = _gradient_spans(net, x, axis, (centre, centre + 1))
    if None in spans or not all(_nan_confirms(net, x, axis, (centre, centre + 1), spans)):
        spans = [_union(_nan_span(net, x, axis, cell), span)
                 for cell, span in zip((centre, centre + 1), spans)]
    if any(span is None or span[0] <= 0 or span[1] >= size - 1 for span in spans):
        return None  # no dependence seen, or clipped by the probe's border: probe larger
    (first0, last0), (first1, last1) = spans
    stride = first1 - first0
    if stride < 1 or last1 - last0 != stride:
        raise SamplingError(f"the attention net's cells {centre} and {centre + 1} on axis {axis} see "
                            f"input pixels {spans[0]} and {spans[1]}: not a regular strided map "
                            f"(upsampling?); declare net.receptive_field as a ReceptiveField")
    offset = min(first0 - centre * stride, first1 - (centre + 1) * stride)
    last = max(last0 - centre * stride, last1 - (centre + 1) * stride)
    return last - offset + 1, stride, offset


def _gradient_spans(net: nn.Module, x: Tensor, axis: int, cells):
    """Per cell, the first and last input row (along ``axis``) with a non-zero
    gradient of the cell, or None; one backward pass for all cells."""
    batch = x.detach().expand(len(cells), *x.shape[1:]).clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(batch)
        total = sum(out[i].narrow(out.ndim - 3 + axis, cell, 1).sum() for i, cell in enumerate(cells))
        total.backward()
    other = tuple(d for d in range(1, x.ndim) if d != 2 + axis)
    spans = []
    for grad in batch.grad.abs().sum(dim=other) > 0:
        rows = grad.nonzero().flatten()
        spans.append(None if rows.numel() == 0 else (int(rows[0]), int(rows[-1])))
    return spans


def _nan_confirms(net: nn.Module, x: Tensor, axis: int, cells, spans) -> list[bool]:
    """Whether NaN everywhere outside each span leaves its cell clean: then the
    gradient saw the whole field. One forward pass for all cells."""
    poisoned = x.expand(2 * len(cells), *x.shape[1:]).clone()
    dim = 2 + axis
    for i, (first, last) in enumerate(spans):
        poisoned[2 * i].narrow(dim - 1, 0, first).fill_(float("nan"))
        poisoned[2 * i + 1].narrow(dim - 1, last + 1, x.shape[dim] - last - 1).fill_(float("nan"))
    with torch.no_grad():
        out = net(poisoned)
    hit = [bool(out[i].narrow(out.ndim - 3 + axis, cells[i // 2], 1).isnan().any())
           for i in range(len(poisoned))]
    return [not (hit[2 * i] or hit[2 * i + 1]) for i in range(len(cells))]


def _nan_span(net: nn.Module, x: Tensor, axis: int, cell: int):
    """First and last input row (along ``axis``) whose NaN reaches ``cell``, or None."""
    size = x.shape[2 + axis]

    def reached(start: int, stop: int) -> bool:
        poisoned = x.clone()
        poisoned.narrow(2 + axis, start, stop - start).fill_(float("nan"))
        with torch.no_grad():
            out = net(poisoned)
        return bool(out.narrow(out.ndim - 2 + axis, cell, 1).isnan().any())

    if not reached(0, size):
        return None
    # smallest q with rows [0, q) reaching the cell; the first row is q - 1
    first = _bisect(lambda q: reached(0, q), 1, size) - 1
    # the last row is the largest q with rows [q, size) reaching the cell: the first miss − 1
    # (rows [size, size) are none, a miss)
    last = _bisect(lambda q: not reached(q, size), 1, size) - 1
    return first, last


def _bisect(predicate: Callable[[int], bool], low: int, high: int) -> int:
    """Smallest ``q`` in ``[low, high]`` with ``predicate(q)``; it must hold at ``high``
    and be monotone (False ... False True ... True)."""
    while low < high:
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _union(a, b):
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


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
        spans.append(_Span(start, stop, keep, first // stride))
    return spans


def _plan(shape, tile_size, halo, field: ReceptiveField):
    tile = _int_pair(tile_size, "tile_size")
    halo = field.halo if halo is None else _int_pair(halo, "halo")
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
        tile_size: ``T`` or ``(Ty, Tx)``: the input pixels whose map cells a
            tile computes (its valid centre), rounded up to a multiple of the
            stride; the tile reads at most ``T + 2·halo`` pixels per axis.
        halo: input pixels added on each side of a tile (rounded up to a
            multiple of the stride); default ``field.halo``.
        checkpoint: when autograd records, recompute each tile's activations
            in the backward pass (``torch.utils.checkpoint``) instead of
            keeping every tile's activations.
        field: the net's :class:`ReceptiveField`; probed with
            :func:`receptive_field` when None (compute it once and pass it).

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
                             device: torch.device | str | None = None) -> Tensor:
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
            pixels = _read(read_region, row_span, col_span, (rows, cols), device)
            kept = _keep(net(normalize(pixels)), row_span, col_span)
            if out is None:
                map_shape = (row_span.cell + kept.shape[-2], col_span.cell + kept.shape[-1])
                out = kept.new_empty(*kept.shape[:-2], *map_shape)
            out[..., row_span.cell:row_span.cell + kept.shape[-2],
                col_span.cell:col_span.cell + kept.shape[-1]] = kept
    return out


def _read(read_region: ReadRegion, rows: _Span, cols: _Span, shape, device) -> Tensor:
    """uint8 ``[1, C, rows, cols]`` of one tile, on ``device``."""
    size = (rows.stop - rows.start, cols.stop - cols.start)
    pixels = np.asarray(read_region(rows.start, cols.start, *size))
    if pixels.ndim != 3 or pixels.shape[:2] != size:
        raise SamplingError(f"read_region({rows.start}, {cols.start}, {size[0]}, {size[1]}) on an "
                            f"image of {shape} returned shape {pixels.shape}, "
                            f"expected ({size[0]}, {size[1]}, C)")
    tile = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return tile.permute(2, 0, 1).unsqueeze(0)


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


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


def _int_pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or int(v) != v or v < 0 for v in pair):
        raise SamplingError(f"{name} must be a non-negative int or a (rows, cols) pair, got {value!r}")
    return int(pair[0]), int(pair[1])
