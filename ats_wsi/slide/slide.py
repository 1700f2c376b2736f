"""The Slide: a lazy tile pyramid with openslide's surface.

Everything a user needs of a slide lives in this class (``open_slide`` in
:mod:`._open` makes one); the backends live in underscore modules
(``_tifffile``, ``_openslide``, ``_zarr``) and only supply level geometry,
properties and the decoding of one tile; level geometry is :mod:`._levels`.

Coordinates follow openslide: public calls take ``(x, y)`` in level-0 pixels
and sizes as ``(width, height)``; arrays come back as ``(rows, cols, 3)`` =
``(y, x, RGB)`` ``uint8``.

Conventions every backend shares:

- Pixels outside the slide read as :data:`FILL_VALUE` (0, black) in every
  channel, exactly like openslide's transparent background with its alpha
  dropped.
- A level-0 coordinate ``x`` maps to pixel ``floor(x / downsample + 0.5)``
  of a level (nearest pixel; see :func:`level_origin`). Openslide instead
  resamples by the fractional remainder; at coordinates that are multiples of
  the downsample both agree exactly.
- A slide stored without a pyramid (a single level) gets *computed* levels:
  level ``k`` is the 2 x 2 block mean of level ``k - 1`` (uint8, rounded half
  up, an odd last row or column dropped), made lazily tile by tile
  (:mod:`._levels`).
"""
from __future__ import annotations

import operator
import os
import threading

import numpy as np

from ..errors import LevelError, RegionError, SlideError
from ._levels import (
    ComputedTiles, Level, best_level_for_downsample, complete_levels, level_origin, nearest_level,
    openslide_properties, paste_tiles, thumbnail_geometry,
)

__all__ = ["FILL_VALUE", "MAX_READ_PIXELS", "TISSUE_DOWNSAMPLE", "Slide"]

FILL_VALUE = 0
"""Value of every channel of a pixel outside the slide (``read_region``,
``read_level``, ``level_array`` edges): 0, black."""

MAX_READ_PIXELS = 1 << 28
"""Largest region ``read_region`` / ``read_level`` return at once: 2**28 pixels
(768 MiB of RGB). Above it they raise :class:`~ats_wsi.errors.RegionError`;
use ``level_array`` (lazy, tiled) instead."""

COMPUTED_CACHE_BYTES = 64 << 20
"""Bytes of computed-level tiles each Slide keeps (LRU, see ``ComputedTiles``)."""

TISSUE_DOWNSAMPLE = 32.0
"""``tissue_mask(level=None)`` works at the level nearest to this downsample
(about 1.25x objective for a 40x scan)."""


def _as_int(value, what: str, path) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise RegionError(path, f"{what} must be an integer, got {value!r}") from None


class Slide:
    """A whole-slide image as a lazy pyramid of tiled levels.

    Do not instantiate directly: use :func:`open_slide`. The openslide names
    (``dimensions``, ``level_count``, ``level_dimensions``, ``level_downsamples``,
    ``properties``, ``get_best_level_for_downsample``, ``read_region``) mean
    what they mean in openslide-python, except that pixels come back as
    ``numpy uint8 (h, w, 3)`` RGB instead of a PIL RGBA image.

    Every read method is thread-safe: many threads may read one Slide at once.
    A Slide pickles as its path and backend and reopens in the other process
    (DataLoader workers, dask).

    Attributes:
        path: the slide's path (str).
        backend: ``"openslide"``, ``"tifffile"`` or ``"zarr"``.
        format: short name of the file format: ``"aperio"``, ``"generic-tiff"``,
            ``"ome-tiff"``, ``"ome-zarr"``, ``"zarr"``, or openslide's vendor
            (``"hamamatsu"``, ``"mirax"``, ...).
    """

    backend: str = ""

    def __init__(self, path, *, format: str, levels: list[Level], properties: dict,
                 mpp_xy: tuple[float, float] | None):
        """Called by the backends with the stored levels (largest first); see open_slide."""
        self.path = os.fspath(path)
        self.format = format
        self._levels = complete_levels(levels)
        self._mpp_xy = None if mpp_xy is None else (float(mpp_xy[0]), float(mpp_xy[1]))
        self._properties = openslide_properties(properties, len(levels), self._levels, format, self._mpp_xy)
        self._closed = False
        self._close_lock = threading.Lock()
        self._computed = ComputedTiles(COMPUTED_CACHE_BYTES)

    # ------------------------------------------------------------ geometry

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        lv = self._levels[0]
        return (lv.width, lv.height)

    @property
    def level_count(self) -> int:
        """Number of levels, computed ones included."""
        return len(self._levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level, level 0 first."""
        return tuple((lv.width, lv.height) for lv in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level w.r.t. level 0 (openslide's rule: the mean
        of ``w0 / w`` and ``h0 / h``)."""
        return tuple(lv.downsample for lv in self._levels)

    @property
    def properties(self) -> dict[str, str]:
        """Metadata as strings under openslide's names (a copy).

        Always ``openslide.vendor``, ``openslide.level-count`` and
        ``openslide.level[i].width/height/downsample/tile-width/tile-height``;
        ``openslide.mpp-x/-y`` when known; from TIFF files also ``tiff.*``,
        ``openslide.comment`` and, for Aperio, ``aperio.*`` and
        ``openslide.objective-power``. The openslide backend returns
        openslide's own dictionary. ``openslide.quickhash-1`` is only
        present on the openslide backend.
        """
        return dict(self._properties)

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """(µm per pixel along x, along y) at level 0, or None when unknown."""
        return self._mpp_xy

    @property
    def mpp(self) -> float | None:
        """µm per pixel at level 0 (mean of x and y), or None when unknown.

        From openslide's ``openslide.mpp-x/-y``, an Aperio ``MPP``, OME
        ``PhysicalSizeX/Y``, TIFF X/YResolution with unit centimetre or inch,
        or OME-Zarr ``scale`` with a length unit.
        """
        if self._mpp_xy is None:
            return None
        return (self._mpp_xy[0] + self._mpp_xy[1]) / 2.0

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The level openslide would pick for ``downsample``: the coarsest
        level whose downsample is not larger than it (level 0 below 1)."""
        return best_level_for_downsample(self._levels, downsample)

    def level_for(self, downsample: float | None = None, mpp: float | None = None) -> int:
        """The level nearest to a downsample or to a resolution.

        Args:
            downsample: wanted downsample w.r.t. level 0 (> 0), or
            mpp: wanted µm per pixel (> 0); needs ``self.mpp``.

        Returns:
            the level whose downsample is nearest on a log scale (the finer
            one on a tie).
        """
        if (downsample is None) == (mpp is None):
            raise TypeError("level_for takes exactly one of downsample= or mpp=")
        if mpp is not None:
            if self.mpp is None:
                raise SlideError(self.path, "the slide has no known resolution (mpp), so no level can be chosen by mpp")
            downsample = float(mpp) / self.mpp
        downsample = float(downsample)
        if not downsample > 0:
            raise ValueError(f"downsample must be > 0, got {downsample}")
        return nearest_level(self._levels, downsample)

    def tile_size(self, level: int) -> tuple[int, int]:
        """(width, height) of one tile of ``level``; edge tiles are clipped."""
        lv = self._level(level)
        return (lv.tile_width, lv.tile_height)

    def tile_grid(self, level: int) -> tuple[int, int]:
        """(cols, rows): number of tiles across and down ``level``."""
        lv = self._level(level)
        return (lv.cols, lv.rows)

    # ------------------------------------------------------------ pixels

    def read_tile(self, level: int, col: int, row: int) -> np.ndarray:
        """Decode one tile.

        Args:
            level: pyramid level.
            col, row: tile position, ``0 <= col < cols``, ``0 <= row < rows``
                (see :meth:`tile_grid`); the tile covers level pixels
                ``x in [col * tw, (col + 1) * tw)``, ``y in [row * th, ...)``.

        Returns:
            uint8 (rows, cols, 3) = (y, x, RGB), clipped to the level's bounds
            (edge tiles are smaller). Treat it as read-only; it may be shared
            by a cache.

        On the tifffile backend this reads the tile's bytes with one
        positional read and decodes exactly that tile; on zarr it reads one
        chunk; on openslide it reads the tile-aligned block. A computed
        level's tile is the block mean of the (up to) 2 x 2 tiles below it.
        """
        lv = self._level(level)
        col = _as_int(col, "col", self.path)
        row = _as_int(row, "row", self.path)
        if not (0 <= col < lv.cols and 0 <= row < lv.rows):
            raise RegionError(self.path, f"tile ({col}, {row}) is outside level {level}'s "
                                         f"grid of {lv.cols} x {lv.rows} tiles")
        self._check_open()
        return self._tile(level, col, row)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region, like openslide's ``read_region``.

        Args:
            location: (x, y) top-left in level-0 pixels; may be negative.
            level: pyramid level to read from.
            size: (width, height) in pixels of ``level``, both >= 0.

        Returns:
            uint8 (height, width, 3) RGB. Pixels outside the slide are
            :data:`FILL_VALUE`. The level pixel of ``x`` is
            ``floor(x / downsample + 0.5)``.
        """
        lv = self._level(level)
        x, y = (_as_int(v, "location", self.path) for v in location)
        w, h = (_as_int(v, "size", self.path) for v in size)
        if w < 0 or h < 0:
            raise RegionError(self.path, f"region size must not be negative, got (w, h) = ({w}, {h})")
        if w * h > MAX_READ_PIXELS:
            raise RegionError(self.path, f"region of {w} x {h} pixels exceeds MAX_READ_PIXELS "
                                         f"({MAX_READ_PIXELS}); use level_array() for large reads")
        self._check_open()
        lx, ly = level_origin((x, y), lv.downsample).tolist()
        return self._read_box(level, lx, ly, w, h)

    def read_level(self, level: int, max_pixels: int = MAX_READ_PIXELS) -> np.ndarray:
        """A whole level as one array, uint8 (height, width, 3).

        Refuses (:class:`~ats_wsi.errors.RegionError`) when the level has more
        than ``max_pixels`` pixels (default :data:`MAX_READ_PIXELS`): use
        :meth:`level_array` for those. Computed levels are evaluated tile by
        tile with dask threads.
        """
        lv = self._level(level)
        if lv.width * lv.height > max_pixels:
            raise RegionError(self.path, f"level {level} has {lv.width} x {lv.height} pixels, "
                                         f"more than max_pixels={max_pixels}; use level_array()")
        self._check_open()
        if lv.computed:
            return np.ascontiguousarray(self.level_array(level).compute(scheduler="threads"))
        return self._read_box(level, 0, 0, lv.width, lv.height)

    def level_array(self, level: int):
        """A level as a lazy ``dask.array`` uint8 (height, width, 3), one chunk per tile.

        Nothing is read until computed; each chunk is one :meth:`read_tile`.
        The array pickles with the slide (it reopens by path in workers).
        """
        from ._array import level_array

        return level_array(self, level)

    def thumbnail(self, max_size: int | tuple[int, int] = 512) -> np.ndarray:
        """The whole slide, shrunk to fit in ``max_size``.

        Args:
            max_size: largest (width, height) in pixels, or one int for both.

        Returns:
            uint8 (rows, cols, 3), aspect ratio kept, never larger than level 0.
            Read from the coarsest level at least as large as the result (so
            never level 0 of a pyramid), then area-resampled.
        """
        level, (out_w, out_h) = thumbnail_geometry(self._levels, max_size)
        img = self.read_level(level)
        if img.shape[:2] == (out_h, out_w):
            return img
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BOX))

    def tissue_mask(self, level: int | None = None) -> np.ndarray:
        """Foreground (tissue) mask by Otsu's threshold on HSV saturation.

        Args:
            level: level to threshold; None picks ``level_for(downsample=
                TISSUE_DOWNSAMPLE)`` (nearest to 32x, the coarsest level if the
                pyramid stops above it).

        Returns:
            bool (rows, cols) of that level: True where saturation is above
            the Otsu threshold. Black fill and white glass have saturation 0.
        """
        from ._tissue import tissue_mask

        if level is None:
            level = self.level_for(downsample=TISSUE_DOWNSAMPLE)
        return tissue_mask(self.read_level(level))

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the file handles. Later reads raise SlideError. Idempotent."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    _opener = None
    """``open_slide``, set by :mod:`._open`: this module must not import it."""

    def __reduce__(self):
        return (Slide._opener, (self.path, self.backend))

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"<Slide {self.backend}:{self.format} {self.path!r} {w}x{h}, "
                f"{self.level_count} levels{', closed' if self._closed else ''}>")

    # ------------------------------------------------------------ internals

    def _level(self, level) -> Level:
        if isinstance(level, bool):
            raise LevelError(self.path, f"level must be an integer, got {level!r}")
        try:
            level = operator.index(level)
        except TypeError:
            raise LevelError(self.path, f"level must be an integer, got {level!r}") from None
        if not 0 <= level < len(self._levels):
            raise LevelError(self.path, f"level {level} out of range 0..{len(self._levels) - 1}")
        return self._levels[level]

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "the slide is closed")

    def _tile(self, level: int, col: int, row: int) -> np.ndarray:
        if self._levels[level].computed:
            return self._computed.tile(self._read_box, self._levels, level, col, row)
        return self._read_stored_tile(level, col, row)

    def _read_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) of ``level`` at level pixels (x, y); outside = FILL_VALUE."""
        lv = self._levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        inside = x0 < x1 and y0 < y1
        if inside and not lv.computed and self._reads_boxes:
            if (x0, y0, x1, y1) == (x, y, x + w, y + h):
                return self._read_stored_box(level, x, y, w, h)
        out = np.zeros((h, w, 3), np.uint8) if FILL_VALUE == 0 else np.full((h, w, 3), FILL_VALUE, np.uint8)
        if not inside:
            return out
        if not lv.computed and self._reads_boxes:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_stored_box(level, x0, y0, x1 - x0, y1 - y0)
            return out
        paste_tiles(out, (x, y), (x0, y0, x1, y1), lv, lambda col, row: self._tile(level, col, row))
        return out

    # ------------------------------------------------------------ backend hooks

    _reads_boxes = False
    """True when the backend reads an in-bounds box faster than tile by tile."""

    def _read_stored_tile(self, level: int, col: int, row: int) -> np.ndarray:
        """uint8 (rows, cols, 3) of one stored tile, clipped to the level.

        By default the tile's box read through :meth:`_read_stored_box`
        (backends that read boxes); the tifffile backend decodes the tile.
        """
        lv = self._levels[level]
        x, y = col * lv.tile_width, row * lv.tile_height
        return self._read_stored_box(level, x, y, min(lv.tile_width, lv.width - x),
                                     min(lv.tile_height, lv.height - y))

    def _read_stored_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) of a box inside a stored level (only if ``_reads_boxes``)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the backend's handles."""
