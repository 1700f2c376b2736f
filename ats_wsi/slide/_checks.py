"""Argument checks of the Slide's read methods, the bound on computed-level work,
and checks of what a file claims (tile tables, third-party error messages).

Every malformed argument (``None``, one number where a pair is due, floats,
NaN, infinities) becomes a :class:`~ats_wsi.errors.RegionError` naming the
slide, never a ``TypeError`` from deep inside numpy.
"""
from __future__ import annotations

import operator
import re

import numpy as np

from ..errors import CorruptSlideError, DerivedLevelError, RegionError

MAX_DERIVED_PIXELS = 1 << 32
"""Most level-0 pixels one read of a computed level may decode: 2**32 (a
65 536² slide; some 30-60 s of JPEG decoding on one core). A computed pixel
of level ``k`` is the mean of ``4**k`` level-0 pixels, so reading a region of
it costs its area times ``4**k`` in level-0 pixels, the whole of level 0 for a
thumbnail. Tiles stored empty (byte count 0) cost nothing and read as the
fill value. Above the bound the read raises
:class:`~ats_wsi.errors.DerivedLevelError` instead of working for minutes or
hours: store a pyramid (``vips tiffsave --tile --pyramid``) or raise this
(``ats_wsi.slide._checks.MAX_DERIVED_PIXELS``)."""

MAX_TILE_PIXELS = 1 << 27
"""Most pixels one stored tile, strip or zarr chunk may have (384 MiB decoded as
RGB): one decode holds it whole, so a single strip of a 40000² TIFF or a chunk
of a whole level is refused at open, not met as a ``MemoryError`` mid-read."""


def tile_too_big(path: str, what: str, tile_w: int, tile_h: int) -> str | None:
    """Why tiles of ``tile_w x tile_h`` cannot be read (over :data:`MAX_TILE_PIXELS`), or None."""
    if tile_w * tile_h <= MAX_TILE_PIXELS:
        return None
    return (f"{what} of {tile_w} x {tile_h} pixels ({tile_w * tile_h * 3 / 2**20:,.0f} MiB each decoded), over "
            f"the {MAX_TILE_PIXELS:,} pixels one decode may hold")


def as_int(value, what: str, path) -> int:
    """An integer (Python or numpy; not bool-like floats), or RegionError."""
    try:
        return operator.index(value)
    except TypeError:
        raise RegionError(path, f"{what} must be an integer, got {value!r}") from None


def int_pair(value, what: str, path) -> tuple[int, int]:
    """``(a, b)`` of integers, or RegionError (None, one number, three, floats, NaN, ...)."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise RegionError(path, f"{what} must be a pair of integers, got {value!r}") from None
    return as_int(a, what, path), as_int(b, what, path)


def positive_number(value, what: str, path) -> float:
    """A finite number > 0, or RegionError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0 < v < float("inf"):
        raise RegionError(path, f"{what} must be a finite number > 0, got {value!r}")
    return v


def derived_cost(levels, data_pixels, level: int, x: int, y: int, w: int, h: int) -> int:
    """Level-0 pixels holding data under a box of pixels of ``level`` (0 for a stored level).

    A computed level ``k`` (they follow the single stored level 0) has sizes
    that are floor halves, so its pixel ``i`` is made of level-0 pixels
    ``[i * 2**k, (i + 1) * 2**k)``: the box maps to level 0 by a shift, and
    ``data_pixels(x0, y0, x1, y1)`` (the slide's count) gives what the file holds there.

    Args:
        levels: the slide's pyramid (stored levels, then computed ones).
        data_pixels: level-0 pixels of a box that the file stores data for.
    """
    if not levels[level].computed:
        return 0
    lv0 = levels[0]
    x0, y0 = max(x, 0) << level, max(y, 0) << level
    x1, y1 = min((x + w) << level, lv0.width), min((y + h) << level, lv0.height)
    if x1 <= x0 or y1 <= y0:
        return 0
    return data_pixels(x0, y0, x1, y1)


def check_derive_cost(path, levels, data_pixels, level: int, x: int, y: int, w: int, h: int) -> None:
    """Raise DerivedLevelError if reading the box of computed ``level`` would
    decode more than :data:`MAX_DERIVED_PIXELS` level-0 pixels (arguments of :func:`derived_cost`;
    ``path`` names the slide)."""
    cost = derived_cost(levels, data_pixels, level, x, y, w, h)
    if cost > MAX_DERIVED_PIXELS:
        lv0 = levels[0]
        raise DerivedLevelError(
            path, f"the slide has no stored pyramid ({lv0.width} x {lv0.height} pixels in one level); "
                        f"reading this region of computed level {level} would decode {cost:.3g} level-0 pixels, "
                        f"more than MAX_DERIVED_PIXELS ({MAX_DERIVED_PIXELS:.3g}); store the slide with a "
                        f"pyramid (e.g. vips tiffsave --tile --pyramid) or read a smaller region")


_BYTES_REPR = re.compile(r"""b(['"]).*?(?<!\\)\1""")


def describe_error(exc: BaseException) -> str:
    """A third-party exception in words, with any quoted bytes taken out (they
    may be the file's content) and cut to 300 characters."""
    text = _BYTES_REPR.sub("<bytes>", str(exc)) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def tile_table(path: str, what: str, page, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A page's tile offsets and byte counts as int64, checked to fit the file.

    BigTIFF stores them as unsigned 64-bit numbers: a value of 2**63 or more
    (or any past the end of the file) is corruption, not an overflow.
    """
    offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.uint64).ravel()
    counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.uint64).ravel()
    limit = np.uint64(file_size)
    if len(offsets) == len(counts):
        bad = ((offsets > limit) | (counts > limit)) & (counts > 0)  # an empty tile's offset means nothing
    else:  # the caller reports the mismatch
        bad = offsets > limit
    if bad.any():
        raise CorruptSlideError(path, f"truncated or corrupt: {int(bad.sum())} of {len(offsets)} tiles of "
                                      f"{what} lie beyond the end of the file ({file_size} bytes)")
    return offsets.astype(np.int64), counts.astype(np.int64)


def data_table(bytecounts: np.ndarray, level) -> np.ndarray:
    """Summed-area table int64 [rows + 1, cols + 1] of a level's tiles that hold data."""
    grid = (bytecounts > 0).reshape(level.rows, level.cols)
    table = np.zeros((level.rows + 1, level.cols + 1), np.int64)
    table[1:, 1:] = grid.cumsum(0).cumsum(1)
    return table


def data_pixels(table: np.ndarray, level, x0: int, y0: int, x1: int, y1: int) -> int:
    """Pixels (whole tiles) of the tiles holding data that meet ``[x0, x1) x [y0, y1)``."""
    c0, r0 = x0 // level.tile_width, y0 // level.tile_height
    c1, r1 = -(-x1 // level.tile_width), -(-y1 // level.tile_height)
    tiles = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return int(tiles) * level.tile_width * level.tile_height
