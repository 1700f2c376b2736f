"""Decode a bounded sample of a slide's tiles: a broken tile found before a run, not in it.

Opening a slide reads its headers and, for training, its low view; a level-0
tile with broken JPEG data is met only when a patch over it is read. Decoding
every tile of a 100k² slide takes minutes, so :func:`check_tiles` decodes
``n`` tiles spread evenly over the level's grid in raster order (the first
and the last among them), or over the tiles under tissue when a mask is
given (where patches are drawn), stopping once ``seconds`` have passed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import SlideError

__all__ = ["TileCheck", "check_tiles", "sample_tiles"]


@dataclass(frozen=True)
class TileCheck:
    """What :func:`check_tiles` decoded: ``tiles`` of ``total`` at ``level`` in ``seconds``;
    ``error``: the first tile that failed, as ``"level L tile (col, row): reason"``."""

    level: int
    tiles: int
    total: int
    seconds: float
    error: str | None = None


def sample_tiles(grid: tuple[int, int], n: int, mask: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Up to ``n`` ``(col, row)`` tiles of a ``(cols, rows)`` grid, evenly spread in raster order.

    Args:
        grid: ``(cols, rows)`` of the level.
        n: how many (0: none).
        mask: optional bool ``[rows_m, cols_m]`` of where tissue is, at any
            scale over the whole level; tiles whose block of the mask holds
            tissue come first (all tiles when none does).
    """
    cols, rows = int(grid[0]), int(grid[1])
    if n <= 0 or cols <= 0 or rows <= 0:
        return []
    cells = np.arange(cols * rows)
    if mask is not None and mask.size and mask.any():
        r = (np.arange(rows) * mask.shape[0] // rows)[:, None]
        c = (np.arange(cols) * mask.shape[1] // cols)[None, :]
        under = np.asarray(mask, bool)[r, c].ravel()
        cells = cells[under] if under.any() else cells
    pick = np.unique(np.linspace(0, len(cells) - 1, num=min(n, len(cells))).round().astype(np.int64))
    return [(int(cells[i] % cols), int(cells[i] // cols)) for i in pick]


def check_tiles(slide, level: int = 0, *, n: int = 16, seconds: float = 5.0,
                mask: np.ndarray | None = None) -> TileCheck:
    """Decode a sample of ``slide``'s tiles at ``level`` (see :func:`sample_tiles`).

    Returns a :class:`TileCheck`; a tile that fails to decode (a
    :class:`~ats_wsi.errors.SlideError`) stops the check and is named in its
    ``error``. Errors that are not about the file (memory, interrupts) are raised.
    """
    cols, rows = slide.tile_grid(level)
    picked = sample_tiles((cols, rows), n, mask)
    t0 = time.perf_counter()
    done = 0
    for col, row in picked:
        if done and time.perf_counter() - t0 > seconds:
            break
        try:
            slide.read_tile(level, col, row)
        except SlideError as exc:
            reason = str(getattr(exc, "reason", None) or exc).replace("\n", " ")
            if f"tile ({col}, {row})" not in reason:
                reason = f"level {level} tile ({col}, {row}): {reason}"
            return TileCheck(level, done, cols * rows, time.perf_counter() - t0, reason)
        done += 1
    return TileCheck(level, done, cols * rows, time.perf_counter() - t0)
