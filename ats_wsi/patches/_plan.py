"""The tiles a batch of patches needs, and where each tile's pixels go (pure geometry, no I/O).

:func:`plan_tiles` is shared by :class:`~.reader.PatchReader`'s decoders (the
native one and nvImageCodec's): each needed tile is listed once, in file
order, with the (patch, tile) overlaps to paste.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TilePlan", "plan_tiles"]


@dataclass(frozen=True)
class TilePlan:
    """The tiles a batch of patches needs and where their pixels go.

    Attributes:
        tiles: int64 [t, 2], ``(col, row)`` of each needed tile, each once,
            in row-major (file) order.
        starts: int64 [t + 1]; the pairs of tile ``k`` are
            ``pairs[starts[k]:starts[k + 1]]``.
        pairs: int64 [p, 7], one row per (patch, tile) overlap:
            ``(patch, py0, py1, px0, px1, ty0, tx0)``: the tile's pixels from
            ``(ty0, tx0)`` fill rows ``py0:py1`` and cols ``px0:px1`` of the
            patch.
        partial: int64 [m], patches not entirely inside the level (they need
            ``FILL_VALUE`` around the pasted pixels).
    """

    tiles: np.ndarray
    starts: np.ndarray
    pairs: np.ndarray
    partial: np.ndarray

    def __len__(self) -> int:
        return len(self.tiles)


def plan_tiles(
    origin_xy: np.ndarray, patch_wh: tuple[int, int], tile_wh: tuple[int, int], level_wh: tuple[int, int]
) -> TilePlan:
    """Which tiles each patch needs, and where each tile's pixels go (no Python loop per patch).

    Args:
        origin_xy: int [n, 2], top-left ``(x, y)`` of each patch in pixels of
            the level (may be negative or past the level).
        patch_wh: ``(w, h)`` of a patch in pixels of the level.
        tile_wh: ``(w, h)`` of the level's tiles.
        level_wh: ``(w, h)`` of the level.

    Returns:
        :class:`TilePlan`. Patches entirely outside the level need no tile.
    """
    pw, ph = (int(v) for v in patch_wh)
    tw, th = (int(v) for v in tile_wh)
    lw, lh = (int(v) for v in level_wh)
    origin_xy = np.asarray(origin_xy, dtype=np.int64).reshape(-1, 2)
    x0, y0 = origin_xy[:, 0], origin_xy[:, 1]
    # the part of each patch inside the level, in level pixels
    vx0, vy0 = np.maximum(x0, 0), np.maximum(y0, 0)
    vx1, vy1 = np.minimum(x0 + pw, lw), np.minimum(y0 + ph, lh)
    inside = (vx1 > vx0) & (vy1 > vy0)
    partial = np.flatnonzero((vx0 != x0) | (vy0 != y0) | (vx1 != x0 + pw) | (vy1 != y0 + ph))
    c0, r0 = vx0 // tw, vy0 // th
    ncols = np.where(inside, (vx1 - 1) // tw - c0 + 1, 0)
    nrows = np.where(inside, (vy1 - 1) // th - r0 + 1, 0)
    count = ncols * nrows
    patch = np.repeat(np.arange(len(origin_xy)), count)  # [p]
    k = np.arange(len(patch)) - np.repeat(np.cumsum(count) - count, count)  # pair index within its patch
    col = c0[patch] + k % ncols[patch]
    row = r0[patch] + k // ncols[patch]
    xa, xb = np.maximum(vx0[patch], col * tw), np.minimum(vx1[patch], (col + 1) * tw)
    ya, yb = np.maximum(vy0[patch], row * th), np.minimum(vy1[patch], (row + 1) * th)
    px, py = x0[patch], y0[patch]
    pairs = np.stack([patch, ya - py, yb - py, xa - px, xb - px, ya - row * th, xa - col * tw], axis=1)
    key = row * (-(-lw // tw)) + col
    order = np.argsort(key, kind="stable")
    key, pairs = key[order], pairs[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    tiles = np.stack([col[order][first], row[order][first]], axis=1) if len(key) else np.zeros((0, 2), np.int64)
    starts = np.r_[first, len(key)].astype(np.int64)
    return TilePlan(tiles.astype(np.int64), starts, pairs.astype(np.int64), partial.astype(np.int64))
