"""The attention map's own arithmetic in blocks of map rows, for big maps at inference.

An attention map of K cells is needed whole once, as float32 (it is the
output: the OME-Zarr map). Everything else a one-shot pass makes of it —
the softmax's copies, a pixel mask pooled onto the grid, the Gumbel keys,
the entropy's temporaries — grows with the slide too. Here each is done per
block of at most :data:`BLOCK_CELLS` cells (whole map rows, so that a block
is a contiguous range of the flattened map):

- :func:`pool_mask`: a pixel mask read region by region -> the cell mask,
  by counts over each cell's pixels (the bins of ``adaptive_avg_pool2d``);
- :func:`softmax_`: the spatial softmax in place, a two-pass log-sum-exp
  (max, then the sum of exponentials), then ``exp(x - max) / sum``;
- :func:`sample_blocks`: Gumbel-top-k per block, the blocks' top-k merged to
  the global top-k, in draw order: the top n keys of the union are the top
  n of the blocks' top n, so the law is exactly that of
  :func:`~ats_wsi.sampling.sample`. The uniforms are drawn block after block
  from the one generator, in the order of the flattened ``[B, K]`` map; a
  CPU generator then gives the very numbers ``sample`` draws at once
  (its stream does not depend on how it is split), so the draws are the
  same cells. (A CUDA generator's Philox offsets do depend on the split:
  the same law, other draws.)
- :func:`entropy_loss`: the regulariser summed block by block.

Results equal the one-shot functions up to float rounding: sums are
accumulated in another order (relative differences of ~1e-7 in the
probabilities; a draw changes only where two keys tie to that precision).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import SamplingError
from .distribution import _ZERO_OFFSET, _check_n

__all__ = ["BLOCK_CELLS", "BLOCK_PIXELS", "entropy_loss", "pool_mask", "sample_blocks", "softmax_"]

BLOCK_CELLS = 1 << 16
"""Cells of the map handled at once (whole rows; at least one row)."""

BLOCK_PIXELS = 1 << 18
"""Pixels of a mask :func:`pool_mask` reads at once (whole map rows; at least one)."""

ReadMask = Callable[[int, int, int, int], "np.ndarray | Tensor"]


def _row_blocks(rows: int, cols: int, block_cells: int):
    step = max(1, int(block_cells) // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _bins(cells: int, pixels: int, device=None) -> tuple[Tensor, Tensor]:
    """``adaptive_avg_pool2d``'s bins along one axis: cell i pools pixels
    ``[floor(i · P / C), ceil((i + 1) · P / C))``."""
    i = torch.arange(cells, device=device, dtype=torch.int64)
    return (i * pixels) // cells, -((-(i + 1) * pixels) // cells)


def pool_mask(read_mask: ReadMask, shape: tuple[int, int], map_shape: tuple[int, int],
              min_tissue: float = 0.0, *, block_pixels: int = BLOCK_PIXELS,
              device: torch.device | str | None = None) -> Tensor:
    """A pixel mask pooled onto a map's grid, one block of map rows at a time.

    Args:
        read_mask: ``(row0, col0, rows, cols) -> bool [rows, cols]`` (numpy
            or torch) of the pixel mask of shape ``shape``.
        shape: ``(H, W)`` of the pixel mask.
        map_shape: ``(h, w)`` of the map.
        min_tissue: a cell is kept when more than this fraction of its
            pixels are True (``0``: any), counted exactly.
        block_pixels: pixels read at once (rounded to whole map rows).
        device: of the result (default: that of the masks read).

    Returns:
        bool ``[h, w]``. A cell pools the pixels of ``adaptive_avg_pool2d``'s
        bin, so that the result is the pooled mean ``> min_tissue`` up to
        that mean's rounding.
    """
    (H, W), (h, w) = (int(v) for v in shape), (int(v) for v in map_shape)
    if H * W >= 2**31:
        raise SamplingError(f"a pixel mask of {H} x {W} is too large to count in int32")
    col_start, col_stop = _bins(w, W)
    all_start, all_stop = _bins(h, H)
    out = None
    for r0, r1 in _row_blocks(h, 1, max(1, block_pixels * h // max(H * W, 1))):
        row_start, row_stop = all_start[r0:r1], all_stop[r0:r1]
        p0, p1 = int(row_start[0]), int(row_stop[-1])
        m = torch.as_tensor(read_mask(p0, 0, p1 - p0, W))
        if tuple(m.shape) != (p1 - p0, W):
            raise SamplingError(f"read_mask({p0}, 0, {p1 - p0}, {W}) returned shape {tuple(m.shape)}")
        integral = torch.zeros((p1 - p0 + 1, W + 1), dtype=torch.int32, device=m.device)
        torch.cumsum(m.to(torch.int32).cumsum(0, dtype=torch.int32), 1, dtype=torch.int32, out=integral[1:, 1:])
        rs, re = (row_start - p0).to(m.device), (row_stop - p0).to(m.device)
        cs, ce = col_start.to(m.device), col_stop.to(m.device)
        counts = (integral[re][:, ce] - integral[rs][:, ce] - integral[re][:, cs] + integral[rs][:, cs])
        if out is None:
            out = torch.empty((h, w), dtype=torch.bool, device=m.device if device is None else device)
        if min_tissue <= 0:
            kept = counts > 0
        else:
            sizes = (re - rs)[:, None] * (ce - cs)[None]
            kept = counts.to(torch.float64) > float(min_tissue) * sizes.to(torch.float64)
        out[r0:r1] = kept.to(out.device)
    return out


def _check_map(probs: Tensor) -> Tensor:
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.ndim < 2:
        raise SamplingError("the map must be a floating-point tensor [B, *spatial]")
    return probs.reshape(probs.shape[0], -1)


def _block_view(flat: Tensor, cols: int, block_cells: int):
    """``(start, stop)`` ranges of whole map rows over the flattened cells."""
    cols = max(1, cols)
    for r0, r1 in _row_blocks(flat.shape[1] // cols, cols, block_cells):
        yield r0 * cols, r1 * cols


def softmax_(logits: Tensor, mask: Tensor | None = None, *, smoothing: float = 0.0,
             temperature: float = 1.0, block_cells: int = BLOCK_CELLS) -> Tensor:
    """:class:`~ats_wsi.sampling.SampleSoftmax` in place, block by block.

    Args:
        logits: float ``[B, h, w]``, contiguous; overwritten with the
            probabilities (no other map-sized tensor is made).
        mask: optional bool ``[B, h, w]`` or ``[h, w]``, True where a cell may
            be attended; masked cells get 0.
        smoothing, temperature: as :class:`~ats_wsi.sampling.SampleSoftmax`.
        block_cells: cells handled at once.

    Returns:
        ``logits``, now probabilities summing to 1 over each map.
    """
    if not logits.is_contiguous():
        raise SamplingError("softmax_ needs a contiguous map")
    flat = _check_map(logits)
    cols = logits.shape[-1]
    keep = None if mask is None else mask.expand(logits.shape).reshape(flat.shape)
    for b in range(flat.shape[0]):
        row, kept = flat[b], None if keep is None else keep[b]

        def block(s, e):
            x = row[s:e] / temperature if temperature != 1.0 else row[s:e]
            return x if kept is None else x.masked_fill(~kept[s:e], float("-inf"))

        top = max(float(block(s, e).max()) for s, e in _block_view(flat, cols, block_cells))
        if top == float("-inf"):
            raise SamplingError(f"attention map {b} has no unmasked cell with finite logit")
        total = sum(float(torch.exp(block(s, e) - top).sum(dtype=torch.float64))
                    for s, e in _block_view(flat, cols, block_cells))
        cells = row.numel() if kept is None else int(torch.count_nonzero(kept))  # no int64 copy of the mask
        for s, e in _block_view(flat, cols, block_cells):
            p = torch.exp(block(s, e) - top).div_(total)
            if smoothing:
                p.mul_(1 - smoothing).add_(smoothing / cells if kept is None else (smoothing / cells) * kept[s:e])
            row[s:e] = p
    return logits


def sample_blocks(attention: Tensor, n: int, *, replace: bool = False, mask: Tensor | None = None,
                  generator: torch.Generator | None = None, deterministic: bool = False,
                  block_cells: int = BLOCK_CELLS) -> tuple[Tensor, Tensor]:
    """:func:`~ats_wsi.sampling.sample` of a probability map, block by block (no gradient).

    Args:
        attention: float ``[B, h, w]`` probabilities (each map sums to 1,
            0 on masked cells), as :func:`softmax_` leaves them.
        n, replace, mask, generator, deterministic: as
            :func:`~ats_wsi.sampling.sample`. With replacement the draws are
            ``torch.multinomial`` over the whole map, as ``sample``'s.
        block_cells: cells handled at once.

    Returns:
        ``(positions long [B, n, 2], sampled_attention [B, n])``, the drawn
        cells as (row, col) in draw order and their probabilities.
    """
    _check_n(n)
    flat = _check_map(attention)
    cols = attention.shape[-1]
    keep = None if mask is None else mask.expand(attention.shape).reshape(flat.shape)
    fewest = flat.shape[1] if keep is None else min(int(torch.count_nonzero(k)) for k in keep)  # no int64 copy
    if (deterministic or not replace) and n > fewest:
        raise SamplingError(f"cannot draw {n} distinct cells from a map with fewer unmasked cells "
                            f"(use replace=True or a smaller n)")
    with torch.no_grad():
        if replace and not deterministic:
            index = torch.multinomial(flat, n, replacement=True, generator=generator)
        else:
            index = torch.stack([_top_n(flat[b], None if keep is None else keep[b], n, generator,
                                        deterministic, cols, block_cells) for b in range(flat.shape[0])])
    positions = torch.stack(torch.unravel_index(index, tuple(attention.shape[1:])), dim=-1)
    return positions, flat.gather(1, index)


def _top_n(p: Tensor, kept: Tensor | None, n: int, generator, deterministic: bool, cols: int,
           block_cells: int) -> Tensor:
    """Indices ``[n]`` of one map: Gumbel-top-k (or top-k) per block, merged, by decreasing key."""
    best_keys = best_index = None
    for s, e in _block_view(p[None], cols, block_cells):
        q = p[s:e]
        if deterministic:
            keys = q if kept is None else q.masked_fill(~kept[s:e], -1.0)
        else:
            uniform = torch.rand(q.shape, generator=generator, device=q.device, dtype=q.dtype)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(q.dtype).tiny)))
            positive = q > 0
            keys = torch.where(positive, torch.log(q.where(positive, 1.0)) + gumbel, gumbel - _ZERO_OFFSET)
            if kept is not None:
                keys = keys.masked_fill(~kept[s:e], float("-inf"))
        top = keys.topk(min(n, e - s), sorted=False)
        keys, index = top.values, top.indices + s
        if best_keys is not None:
            keys, index = torch.cat([best_keys, keys]), torch.cat([best_index, index])
        if keys.numel() > n:
            top = keys.topk(n, sorted=False)
            keys, index = top.values, index[top.indices]
        best_keys, best_index = keys, index
    order = best_keys.sort(descending=True, stable=True).indices
    return best_index[order]


def entropy_loss(attention: Tensor, strength: float, eps: float = 1e-8, *,
                 block_cells: int = BLOCK_CELLS) -> Tensor:
    """:func:`~ats_wsi.sampling.entropy_regularizer` summed block by block (no gradient)."""
    flat = _check_map(attention)
    total = 0.0
    with torch.no_grad():
        for b in range(flat.shape[0]):
            for s, e in _block_view(flat, attention.shape[-1], block_cells):
                a = flat[b, s:e] if torch.finfo(flat.dtype).bits >= 32 else flat[b, s:e].float()
                total += float((a * torch.log(a + eps)).sum(dtype=torch.float64))
    dtype = attention.dtype if torch.finfo(attention.dtype).bits >= 32 else torch.float32
    return torch.tensor(strength * total / flat.shape[0], dtype=dtype, device=attention.device)
