"""The receptive field and output stride of a fully-convolutional attention net.

:func:`receptive_field` trusts a field the net declares, or probes a copy of
the net (gradient, then NaN propagation) for where its map cells look;
:mod:`ats_wsi.sampling.tiled` needs it to cut the low view into tiles with
a halo. :class:`ReceptiveField` holds the answer per array axis
``(rows, cols)``, the order of the tensors it describes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SamplingError
from ..geometry import wh_to_rowcol

__all__ = ["ReceptiveField", "receptive_field"]


@dataclass(frozen=True)
class ReceptiveField:
    """Where the cells of an attention map look, per array axis ``(rows, cols)``.

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


def receptive_field(net: nn.Module, in_channels: int = 3, *, declared: bool = True,
                    probe_size: int = 64, max_probe_size: int = 2048) -> ReceptiveField:
    """The receptive field and output stride of a fully-convolutional net.

    If the net declares ``net.receptive_field`` (a :class:`ReceptiveField`,
    or an ``int`` / ``(w, h)`` size, whose stride is then measured from the
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
    size = wh_to_rowcol(declared, "net.receptive_field", minimum=0)
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



def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)
