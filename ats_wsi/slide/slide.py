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
- Openslide's attributes (``level_count``, ``level_dimensions``,
  ``level_downsamples``, ``get_best_level_for_downsample``, the
  ``openslide.level*`` properties) describe the levels *stored* in the file,
  exactly as openslide reports them.
- A slide stored without a pyramid (a single level) also gets *computed*
  levels: level ``k`` is the 2 x 2 block mean of level ``k - 1`` (uint8,
  rounded half up, an odd last row or column dropped), made lazily tile by
  tile (:mod:`._levels`). They are offered only through :attr:`Slide.pyramid`
  (what napari and the low view use): the stored levels first, then the
  computed ones, so every read method accepts a pyramid index and a stored
  level keeps openslide's number.
"""
from __future__ import annotations

import operator
import os
import threading

import numpy as np

from ..errors import LevelError, RegionError, SlideError
from ._checks import MAX_DERIVED_PIXELS, as_int, check_derive_cost, derived_cost, int_pair
from ._levels import (
    ComputedTiles, Level, best_level_for_downsample, complete_levels, level_origin, openslide_properties,
    paste_tiles,
)
from ._surface import TISSUE_DOWNSAMPLE, OpenSlideSurface

__all__ = ["FILL_VALUE", "MAX_DERIVED_PIXELS", "MAX_READ_PIXELS", "TISSUE_DOWNSAMPLE", "Slide"]

FILL_VALUE = 0
"""Value of every channel of a pixel outside the slide (``read_region``,
``read_level``, ``level_array`` edges): 0, black."""

MAX_READ_PIXELS = 1 << 28
"""Largest region ``read_region`` / ``read_level`` return at once: 2**28 pixels
(768 MiB of RGB). Above it they raise :class:`~ats_wsi.errors.RegionError`;
use ``level_array`` (lazy, tiled) instead."""

COMPUTED_CACHE_BYTES = 64 << 20
"""Bytes of computed-level tiles each Slide keeps (LRU, see ``ComputedTiles``)."""

class Slide(OpenSlideSurface):
    """A whole-slide image as a lazy pyramid of tiled levels.

    Do not instantiate directly: use :func:`open_slide`. The openslide names
    (``dimensions``, ``level_count``, ``level_dimensions``, ``level_downsamples``,
    ``properties``, ``associated_images``, ``color_profile``, ``get_thumbnail``,
    ``detect_format``, ``get_best_level_for_downsample``, ``read_region``) mean
    what they mean in openslide-python, except that ``read_region`` gives
    ``numpy uint8 (h, w, 3)`` RGB instead of a PIL RGBA image. Levels a file
    lacks are computed and offered through :attr:`pyramid` only.

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
                 mpp_xy: tuple[float, float] | None, mpp_source: str = "the slide's metadata"):
        """Called by the backends with the stored levels (largest first) and where the
        µm/px came from (a tag's name, for messages); see open_slide."""
        from .resolution import believed_mpp

        self.path = os.fspath(path)
        self.format = format
        self._levels = complete_levels(levels)
        self._stored = len(levels)
        # mpp_rejected: (value, source) of a metadata µm/px outside the plausible range (then mpp is None)
        self._mpp_xy, self.mpp_rejected = believed_mpp(mpp_xy, mpp_source)
        self._mpp_given: float | None = None  # a µm/px a user gave (open_slide(mpp=), slide.mpp = ...)
        self._properties = openslide_properties(properties, self._levels[:self._stored], format, self._mpp_xy)
        self._srgb = None  # an ImageCms transform to sRGB once open_slide(srgb=True) asked for it
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
        """Number of levels stored in the file (openslide's; computed levels are in :attr:`pyramid`)."""
        return self._stored

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each stored level, level 0 first."""
        return tuple((lv.width, lv.height) for lv in self._levels[:self._stored])

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each stored level w.r.t. level 0 (openslide's rule: the
        mean of ``w0 / w`` and ``h0 / h``)."""
        return tuple(lv.downsample for lv in self._levels[:self._stored])

    @property
    def pyramid(self) -> tuple[Level, ...]:
        """Every level a read can use: the stored ones (``pyramid[:level_count]``), then computed ones.

        A single stored level gets computed 2x levels (lazy block means,
        :mod:`._levels`) until one fits in a tile, so a viewer or the low view
        never reads level 0 whole. Each entry is a ``Level`` (``width``,
        ``height``, ``tile_width``, ``tile_height``, ``downsample``,
        ``computed``); index ``k`` is the ``level`` of every read method and
        ``level_for`` chooses among them.
        """
        return self._levels

    @property
    def properties(self) -> dict[str, str]:
        """Metadata as strings under openslide's names (a copy).

        Always ``openslide.vendor``, ``openslide.level-count`` and
        ``openslide.level[i].width/height/downsample/tile-width/tile-height``;
        ``openslide.mpp-x/-y`` when known; from TIFF files also ``tiff.*``,
        ``openslide.comment``, ``openslide.quickhash-1`` (computed as
        openslide does; absent, as there, when the smallest level holds over
        5 MiB) and ``openslide.icc-size``, and for Aperio ``aperio.*``,
        ``openslide.objective-power`` and ``openslide.associated.*``. The
        openslide backend returns openslide's own dictionary. Only stored
        levels are described (see :attr:`pyramid`).
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
        or OME-Zarr ``scale`` with a length unit. A value outside
        ``MIN_MPP``–``MAX_MPP`` (:mod:`.resolution`) is not believed: None,
        and :attr:`mpp_rejected` says what the file said.
        """
        if self._mpp_xy is None:
            return None
        return (self._mpp_xy[0] + self._mpp_xy[1]) / 2.0

    @mpp.setter
    def mpp(self, value: float) -> None:
        """Give the slide's level-0 µm/px (both axes), overriding its metadata.

        For slides whose files store no resolution (or a wrong one); reads in
        µm/px (``PatchReader(mpp=...)``, ``read_low_view(mpp=...)``) then use
        it, ``properties`` says it as ``openslide.mpp-x/-y``, and a pickled
        slide keeps it. ``open_slide(path, mpp=...)`` does the same.
        """
        from .resolution import given_mpp

        v = given_mpp(value, self.path)
        self._mpp_xy = (v, v)
        self._mpp_given = v
        self.mpp_rejected = None
        self._properties["openslide.mpp-x"] = self._properties["openslide.mpp-y"] = "%.17g" % v

    @property
    def mpp_given(self) -> bool:
        """True when the µm/px was given (``open_slide(mpp=)``, ``slide.mpp = ...``), not read from the file."""
        return self._mpp_given is not None

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The level openslide would pick for ``downsample``: the coarsest
        stored level whose downsample is not larger than it (level 0 below 1)."""
        return best_level_for_downsample(self._levels[:self._stored], downsample)

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
        col = as_int(col, "col", self.path)
        row = as_int(row, "row", self.path)
        if not (0 <= col < lv.cols and 0 <= row < lv.rows):
            raise RegionError(self.path, f"tile ({col}, {row}) is outside level {level}'s "
                                         f"grid of {lv.cols} x {lv.rows} tiles")
        self._check_open()
        self._check_derive_cost(level, col * lv.tile_width, row * lv.tile_height, lv.tile_width, lv.tile_height)
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
        x, y = int_pair(location, "location", self.path)
        w, h = int_pair(size, "size", self.path)
        if w < 0 or h < 0:
            raise RegionError(self.path, f"region size must not be negative, got (w, h) = ({w}, {h})")
        if w * h > MAX_READ_PIXELS:
            raise RegionError(self.path, f"region of {w} x {h} pixels exceeds MAX_READ_PIXELS "
                                         f"({MAX_READ_PIXELS}); use level_array() for large reads")
        self._check_open()
        lx, ly = level_origin((x, y), lv.downsample).tolist()
        self._check_derive_cost(level, lx, ly, w, h)  # computed levels: bounded work
        return self._read_box(level, lx, ly, w, h)

    def read_level(self, level: int, max_pixels: int = MAX_READ_PIXELS) -> np.ndarray:
        """A whole level as one array, uint8 (height, width, 3).

        Refuses (:class:`~ats_wsi.errors.RegionError`) when the level has more
        than ``max_pixels`` pixels (default :data:`MAX_READ_PIXELS`): use
        :meth:`level_array` for those. Computed levels are made tile by tile
        in the calling thread (no thread pool a forked process could inherit
        locked), within :data:`MAX_DERIVED_PIXELS`.
        """
        lv = self._level(level)
        if lv.width * lv.height > max_pixels:
            raise RegionError(self.path, f"level {level} has {lv.width} x {lv.height} pixels, "
                                         f"more than max_pixels={max_pixels}; use level_array()")
        self._check_open()
        self._check_derive_cost(level, 0, 0, lv.width, lv.height)
        return self._read_box(level, 0, 0, lv.width, lv.height)

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
        state = {"mpp": self._mpp_given, "srgb": self.srgb}
        if state == {"mpp": None, "srgb": False}:
            return (Slide._opener, (self.path, self.backend))
        return (Slide._opener, (self.path, self.backend), state)

    def __setstate__(self, state: dict) -> None:  # a given mpp and sRGB travel with a pickled slide
        if state.get("mpp") is not None:
            self.mpp = state["mpp"]
        if state.get("srgb"):
            self.convert_to_srgb()

    def __repr__(self) -> str:
        w, h = self.dimensions
        computed = len(self._levels) - self._stored
        return (f"<Slide {self.backend}:{self.format} {self.path!r} {w}x{h}, {self.level_count} levels"
                f"{f' (+{computed} computed)' if computed else ''}{', closed' if self._closed else ''}>")

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

    def _check_derive_cost(self, level: int, x: int, y: int, w: int, h: int) -> None:
        check_derive_cost(self.path, self._levels, self._stored_data_pixels, level, x, y, w, h)

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "the slide is closed")

    def _tile(self, level: int, col: int, row: int) -> np.ndarray:
        if self._levels[level].computed:
            return self._computed.tile(self._read_box, self._levels, level, col, row,
                                       lambda *b: derived_cost(self._levels, self._stored_data_pixels, *b), FILL_VALUE)
        return self._colour(self._read_stored_tile(level, col, row))

    def _read_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) of ``level`` at level pixels (x, y); outside = FILL_VALUE."""
        lv = self._levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        inside = x0 < x1 and y0 < y1
        if inside and not lv.computed and self._reads_boxes:
            if (x0, y0, x1, y1) == (x, y, x + w, y + h):
                return self._colour(self._read_stored_box(level, x, y, w, h))
        out = np.zeros((h, w, 3), np.uint8) if FILL_VALUE == 0 else np.full((h, w, 3), FILL_VALUE, np.uint8)
        if not inside:
            return out
        if not lv.computed and self._reads_boxes:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._colour(self._read_stored_box(level, x0, y0, x1 - x0, y1 - y0))
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

    def _stored_data_pixels(self, x0: int, y0: int, x1: int, y1: int) -> int:
        """Level-0 pixels of ``[x0, x1) x [y0, y1)`` the file stores data for (the
        box; tifffile leaves out tiles stored empty, which read as FILL_VALUE)."""
        return (x1 - x0) * (y1 - y0)

    def _close(self) -> None:
        """Release the backend's handles."""
