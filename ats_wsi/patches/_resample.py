"""Resampling a batch of read regions to the patch resolution (numpy, no Python loop per pixel).

A :class:`~ats_wsi.patches.PatchReader` at a physical resolution reads, for
each patch, a region of the decoded level that is ``factor`` times larger
than the patch, then reduces it here:

- integer factor ``f`` (the usual case: 0.25 -> 0.5 µm/px is ``f = 2``):
  the exact area mean of each ``f x f`` block, summed in integers and
  rounded half up, ``out = (sum + f*f // 2) // (f*f)`` (the rule of the
  slide's computed levels, :func:`ats_wsi.slide._levels.half_mean`);
- any other factor: an area (box) filter with fractional weights. Output
  pixel ``j`` covers ``[j f, (j + 1) f)`` pixels of the region along each
  axis; each region pixel is weighted by its overlap with that interval,
  divided by ``f`` (weights sum to 1), separably along x then y in float32,
  rounded to nearest and clipped to 0..255. For ``f < 1`` (upsampling) this
  repeats pixels, mixing two where an output pixel straddles them.

The weights are banded (each output pixel touches at most ``ceil(f) + 1``
region pixels), so the filter is a few gathers and multiply-adds, not a
dense matrix product.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["AxisWeights", "area_weights", "block_mean", "region_size", "resample_area"]


def region_size(out_wh: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(w, h)`` of the region of the decoded level that a patch of ``out_wh`` needs."""
    if float(factor).is_integer():
        f = int(factor)
        return (out_wh[0] * f, out_wh[1] * f)
    return tuple(max(1, math.ceil(n * factor - 1e-9)) for n in out_wh)


class AxisWeights:
    """Banded area weights of one axis: ``out[j] = sum_k weight[j, k] * src[index[j, k]]``.

    Attributes:
        index: int64 [n_out, K], region pixel of each tap (valid indices only).
        weight: float32 [n_out, K], its weight (0 for unused taps); rows sum to 1.
    """

    def __init__(self, index: np.ndarray, weight: np.ndarray):
        self.index, self.weight = index, weight

    @property
    def taps(self) -> int:
        return self.index.shape[1]


def area_weights(n_out: int, factor: float) -> AxisWeights:
    """The area (box) filter taking ``ceil(n_out * factor)`` region pixels to ``n_out``.

    Output pixel ``j`` covers region interval ``[j f, (j + 1) f)``; region
    pixel ``p`` covers ``[p, p + 1)``; its weight is the overlap over ``f``.
    """
    f = float(factor)
    n_in = region_size((n_out, 1), f)[0]
    lo = np.arange(n_out, dtype=np.float64) * f
    hi = lo + f
    first = np.floor(lo).astype(np.int64)
    taps = int(np.max(np.ceil(hi).astype(np.int64) - first))
    index = first[:, None] + np.arange(taps)[None, :]
    overlap = np.minimum(hi[:, None], index + 1.0) - np.maximum(lo[:, None], index.astype(np.float64))
    weight = np.clip(overlap, 0.0, None) / f
    weight[index >= n_in] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.minimum(index, n_in - 1)
    return AxisWeights(index, weight.astype(np.float32))


def resample_area(region: np.ndarray, wx: AxisWeights, wy: AxisWeights, out: np.ndarray) -> None:
    """Area-resample uint8 ``region [n, H, W, 3]`` into uint8 ``out [n, h, w, 3]`` (see the module doc)."""
    tmp = None
    for k in range(wx.taps):  # along x: [n, H, W, 3] -> [n, H, w, 3]
        term = region[:, :, wx.index[:, k], :].astype(np.float32)
        term *= wx.weight[None, None, :, k, None]
        tmp = term if tmp is None else np.add(tmp, term, out=tmp)
    acc = None
    for k in range(wy.taps):  # along y: [n, H, w, 3] -> [n, h, w, 3]
        term = tmp[:, wy.index[:, k]]
        term *= wy.weight[None, :, k, None, None]
        acc = term if acc is None else np.add(acc, term, out=acc)
    acc += 0.5
    np.floor(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    out[...] = acc


def block_mean(region: np.ndarray, factor: int, out: np.ndarray) -> None:
    """Exact ``factor x factor`` block mean of uint8 ``region [n, f h, f w, 3]`` into ``out [n, h, w, 3]``.

    Rounded half up: ``(sum + f*f // 2) // (f*f)``.
    """
    f = int(factor)
    if f == 1:
        out[...] = region
        return
    if f == 2:  # four strided adds in uint16: the common 40x -> 20x case
        acc = region[:, 0::2, 0::2].astype(np.uint16)
        acc += region[:, 1::2, 0::2]
        acc += region[:, 0::2, 1::2]
        acc += region[:, 1::2, 1::2]
        acc += 2
        acc >>= 2
        out[...] = acc
        return
    n, h, w = out.shape[:3]
    dtype = np.uint16 if f * f * 255 + f * f // 2 < 2**16 else np.uint32
    sums = region.reshape(n, h, f, w, f, 3).sum(axis=(2, 4), dtype=dtype)
    sums += f * f // 2
    sums //= f * f
    out[...] = sums
