"""The Slide: a lazy tile pyramid with openslide's surface, and ``open_slide``.

Everything a user needs lives in this module; the backends live in
underscore modules (``_tifffile``, ``_openslide``, ``_zarr``) and only supply
level geometry, properties and the decoding of one tile.

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
  up, an odd last row or column dropped: sizes ``floor(w / 2), floor(h / 2)``),
  added until a level fits in one tile. They are computed lazily tile by tile
  (each computed tile reads only the 2 x 2 block of tiles below it), never by
  loading level 0.
"""
from __future__ import annotations

import math
import operator
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from ..errors import LevelError, RegionError, SlideError

__all__ = [
    "FILL_VALUE",
    "MAX_READ_PIXELS",
    "TISSUE_DOWNSAMPLE",
    "Slide",
    "level_origin",
    "open_slide",
]

FILL_VALUE = 0
"""Value of every channel of a pixel outside the slide (``read_region``,
``read_level``, ``level_array`` edges): 0, black."""

MAX_READ_PIXELS = 1 << 28
"""Largest region ``read_region`` / ``read_level`` return at once: 2**28 pixels
(768 MiB of RGB). Above it they raise :class:`~ats_wsi.errors.RegionError`;
use ``level_array`` (lazy, tiled) instead."""

COMPUTED_CACHE_BYTES = 64 << 20
"""Bytes of computed-level tiles each Slide keeps (LRU), so that a thumbnail, a
tissue mask and a level array of a pyramid-less slide do not rebuild the same
tiles from level 0 again."""

TISSUE_DOWNSAMPLE = 32.0
"""``tissue_mask(level=None)`` works at the level nearest to this downsample
(about 1.25x objective for a 40x scan)."""

BACKENDS = ("openslide", "tifffile", "zarr")

_MIN_COMPUTED_TILE = 256  # computed levels never use tiles (or strips) thinner than this


def format_double(value: float) -> str:
    """A float as openslide writes it in properties (``%.17g``: '2', '8.0106951871657763')."""
    return "%.17g" % float(value)


def level_origin(xy, downsample: float) -> np.ndarray:
    """Level-0 coordinates -> pixel coordinates of a level with ``downsample``.

    Args:
        xy: int [..., 2], (x, y) in level-0 pixels (negative values allowed).
        downsample: the level's downsample (``slide.level_downsamples[level]``).

    Returns:
        int64 [..., 2], (x, y) in pixels of that level: ``floor(xy / ds + 0.5)``,
        the nearest level pixel, so ``round(x_level * ds)`` maps back exactly.
    """
    xy = np.asarray(xy, dtype=np.float64)
    return np.floor(xy / float(downsample) + 0.5).astype(np.int64)


@dataclass(frozen=True)
class Level:
    """Geometry of one pyramid level.

    ``width, height`` in pixels of the level; ``tile_width, tile_height`` the
    size of one stored tile (strips are tiles as wide as the level); ``computed``
    is true for levels built from the level above (no pyramid in the file).
    """

    width: int
    height: int
    tile_width: int
    tile_height: int
    downsample: float = 0.0  # 0: the Slide computes it from the sizes
    computed: bool = False

    @property
    def cols(self) -> int:
        """Tiles across the level."""
        return -(-self.width // self.tile_width)

    @property
    def rows(self) -> int:
        """Tiles down the level."""
        return -(-self.height // self.tile_height)


def _downsample(level0: Level, width: int, height: int) -> float:
    # openslide's rule: the mean of the two axes' ratios
    return (level0.width / width + level0.height / height) / 2.0


def _with_computed_levels(levels: list[Level]) -> list[Level]:
    """Append computed 2x levels under a single stored level until one fits in a tile."""
    if len(levels) != 1:
        return levels
    base = levels[0]
    tw = base.tile_width * -(-_MIN_COMPUTED_TILE // base.tile_width)
    th = base.tile_height * -(-_MIN_COMPUTED_TILE // base.tile_height)
    out = [base]
    w, h = base.width, base.height
    while (w > tw or h > th) and w >= 2 and h >= 2:
        w, h = w // 2, h // 2
        out.append(Level(w, h, tw, th, _downsample(base, w, h), computed=True))
    return out


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
        stored = len(levels)
        level0 = levels[0]
        levels = [lv if lv.downsample > 0 else
                  replace(lv, downsample=1.0 if i == 0 else _downsample(level0, lv.width, lv.height))
                  for i, lv in enumerate(levels)]
        self._levels = tuple(_with_computed_levels(levels))
        self._mpp_xy = None if mpp_xy is None else (float(mpp_xy[0]), float(mpp_xy[1]))
        props = {str(k): str(v) for k, v in properties.items()}
        if len(self._levels) != stored or "openslide.level-count" not in props:
            props.update(self._level_properties())
        props.setdefault("openslide.vendor", format)
        if self._mpp_xy is not None:
            props.setdefault("openslide.mpp-x", format_double(self._mpp_xy[0]))
            props.setdefault("openslide.mpp-y", format_double(self._mpp_xy[1]))
        self._properties = props
        self._closed = False
        self._close_lock = threading.Lock()
        self._computed_cache = _TileCache(COMPUTED_CACHE_BYTES)

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
        ds = float(downsample)
        best = 0
        for i, lv in enumerate(self._levels):
            if ds < lv.downsample:
                break
            best = i
        return best

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
        logs = [abs(math.log(lv.downsample / downsample)) for lv in self._levels]
        return int(np.argmin(logs))

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
        import dask.array as da
        from dask.base import tokenize

        lv = self._level(level)
        try:
            st = os.stat(self.path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        name = f"ats-wsi-level-{tokenize(self.path, self.backend, level, stamp)}"
        return da.from_array(
            _LevelView(self, level),
            chunks=(lv.tile_height, lv.tile_width, 3),
            name=name,
            asarray=False,
            fancy=False,
            meta=np.empty((0, 0, 0), dtype=np.uint8),
        )

    def thumbnail(self, max_size: int | tuple[int, int] = 512) -> np.ndarray:
        """The whole slide, shrunk to fit in ``max_size``.

        Args:
            max_size: largest (width, height) in pixels, or one int for both.

        Returns:
            uint8 (rows, cols, 3), aspect ratio kept, never larger than level 0.
            Read from the coarsest level at least as large as the result (so
            never level 0 of a pyramid), then area-resampled.
        """
        mw, mh = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else max_size
        mw, mh = int(mw), int(mh)
        if mw < 1 or mh < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size!r}")
        w0, h0 = self.dimensions
        ds = max(w0 / mw, h0 / mh, 1.0)
        out_w = min(mw, max(1, round(w0 / ds)))
        out_h = min(mh, max(1, round(h0 / ds)))
        level = max(i for i, lv in enumerate(self._levels) if lv.width >= out_w and lv.height >= out_h)
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
        from ._tissue import otsu_threshold, saturation

        if level is None:
            level = self.level_for(downsample=TISSUE_DOWNSAMPLE)
        sat = saturation(self.read_level(level))
        return sat > otsu_threshold(sat)

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

    def __reduce__(self):
        return (open_slide, (self.path, self.backend))

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

    def _level_properties(self) -> dict[str, str]:
        props = {"openslide.level-count": str(len(self._levels))}
        for i, lv in enumerate(self._levels):
            props[f"openslide.level[{i}].width"] = str(lv.width)
            props[f"openslide.level[{i}].height"] = str(lv.height)
            props[f"openslide.level[{i}].downsample"] = format_double(lv.downsample)
            props[f"openslide.level[{i}].tile-width"] = str(lv.tile_width)
            props[f"openslide.level[{i}].tile-height"] = str(lv.tile_height)
        return props

    def _tile(self, level: int, col: int, row: int) -> np.ndarray:
        lv = self._levels[level]
        if not lv.computed:
            return self._read_stored_tile(level, col, row)
        key = (level, col, row)
        tile = self._computed_cache.get(key)
        if tile is None:
            tile = self._compute_tile(level, col, row)
            tile.flags.writeable = False  # shared through the cache
            self._computed_cache.put(key, tile)
        return tile

    def _compute_tile(self, level: int, col: int, row: int) -> np.ndarray:
        lv = self._levels[level]
        # 2 x 2 block mean of the box below; level sizes are floor(half), so it lies inside
        w = min(lv.tile_width, lv.width - col * lv.tile_width)
        h = min(lv.tile_height, lv.height - row * lv.tile_height)
        box = self._read_box(level - 1, 2 * col * lv.tile_width, 2 * row * lv.tile_height, 2 * w, 2 * h)
        acc = box[0::2, 0::2].astype(np.uint16)
        acc += box[1::2, 0::2]
        acc += box[0::2, 1::2]
        acc += box[1::2, 1::2]
        acc += 2
        acc >>= 2
        return acc.astype(np.uint8)

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
        tw, th = lv.tile_width, lv.tile_height
        for row in range(y0 // th, (y1 - 1) // th + 1):
            ty = row * th
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                tx = col * tw
                tile = self._tile(level, col, row)
                ix0, ix1 = max(x0, tx), min(x1, tx + tile.shape[1])
                iy0, iy1 = max(y0, ty), min(y1, ty + tile.shape[0])
                out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = tile[iy0 - ty:iy1 - ty, ix0 - tx:ix1 - tx]
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


class _TileCache:
    """A thread-safe LRU of tiles bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key, tile: np.ndarray) -> None:
        with self._lock:
            if key in self._items or tile.nbytes > self.max_bytes:
                return
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class _LevelView:
    """What dask slices: one level as an array-like (height, width, 3) uint8."""

    def __init__(self, slide: Slide, level: int):
        self.slide = slide
        self.level = level
        lv = slide._levels[level]
        self.shape = (lv.height, lv.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        slide, level = self.slide, self.level
        slide._check_open()
        lv = slide._levels[level]
        tw, th = lv.tile_width, lv.tile_height
        col, row = x0 // tw, y0 // th
        if (x0 == col * tw and y0 == row * th and x1 == min(x0 + tw, lv.width)
                and y1 == min(y0 + th, lv.height)):
            block = slide._tile(level, col, row)  # exactly one tile: no copy
        else:
            block = slide._read_box(level, x0, y0, x1 - x0, y1 - y0)
        return block[:, :, cs]


def open_slide(path, backend: str = "auto") -> Slide:
    """Open a whole-slide image.

    Args:
        path: a slide file (SVS, generic or OME-TIFF, NDPI, MRXS, ... anything
            openslide reads), or an OME-Zarr / zarr-group directory.
        backend: ``"auto"`` (default), ``"tifffile"``, ``"openslide"`` or ``"zarr"``.
            ``auto`` picks tifffile for TIFFs whose tiles it decodes fast
            (JPEG, deflate, LZW, zstd, WebP, uncompressed; generic TIFF, OME-TIFF,
            SVS), openslide for the rest (NDPI, MRXS, JPEG 2000 SVS, Philips,
            ...), zarr for directories. ``slide.backend`` says which was used.

    Returns:
        a :class:`Slide`.

    Raises:
        SlideNotFoundError: missing path, or a directory that holds no slide.
        CorruptSlideError: empty, truncated or garbled file (also garbage with
            a slide extension); for truncated TIFFs this is raised at open
            (tile offsets are checked against the file size) or, for other
            damage, at the first read of a broken tile.
        UnsupportedFormatError: no backend reads this file.
        ValueError: an unknown backend name.
    """
    from ._detect import open_path

    return open_path(path, backend)
