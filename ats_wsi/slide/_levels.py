"""Level geometry: the ``Level`` record, level-0 <-> level pixels, computed levels.

A slide stored without a pyramid (a single level) gets *computed* levels:
level ``k`` is the 2 x 2 block mean of level ``k - 1`` (:func:`half_mean`),
sizes ``floor(w / 2), floor(h / 2)``, added until a level fits in one tile
(:func:`with_computed_levels`). Their tiles are made on demand, each from
the 2 x 2 block of tiles below it, never by loading level 0, and kept in a
:class:`~ats_wsi.slide.TileCache` (:class:`ComputedTiles`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..geometry import level0_to_level
from ._cache import TileCache

MIN_COMPUTED_TILE = 256
"""Computed levels never use tiles (or strips) thinner than this."""


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
        The one rule is :func:`ats_wsi.geometry.level0_to_level`.
    """
    return level0_to_level(np.asarray(xy), downsample)


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


def level_downsample(level0: Level, width: int, height: int) -> float:
    """Downsample of a ``width x height`` level w.r.t. ``level0``, by openslide's
    rule: the mean of the two axes' ratios."""
    return (level0.width / width + level0.height / height) / 2.0


def complete_levels(levels: list[Level]) -> tuple[Level, ...]:
    """The stored levels (largest first) with their downsamples filled in
    (1 for level 0, :func:`level_downsample` where a backend gave 0), followed
    by computed levels when only one level is stored."""
    level0 = levels[0]
    levels = [lv if lv.downsample > 0 else
              replace(lv, downsample=1.0 if i == 0 else level_downsample(level0, lv.width, lv.height))
              for i, lv in enumerate(levels)]
    return tuple(with_computed_levels(levels))


def with_computed_levels(levels: list[Level]) -> list[Level]:
    """Append computed 2x levels under a single stored level until one fits in a tile."""
    if len(levels) != 1:
        return levels
    base = levels[0]
    tw = base.tile_width * -(-MIN_COMPUTED_TILE // base.tile_width)
    th = base.tile_height * -(-MIN_COMPUTED_TILE // base.tile_height)
    out = [base]
    w, h = base.width, base.height
    while (w > tw or h > th) and w >= 2 and h >= 2:
        w, h = w // 2, h // 2
        out.append(Level(w, h, tw, th, level_downsample(base, w, h), computed=True))
    return out


def half_mean(box: np.ndarray) -> np.ndarray:
    """2 x 2 block mean of uint8 (2h, 2w, 3) -> uint8 (h, w, 3), rounded half up.

    This is how a computed level's tile is made from the box below it.
    """
    acc = box[0::2, 0::2].astype(np.uint16)
    acc += box[1::2, 0::2]
    acc += box[0::2, 1::2]
    acc += box[1::2, 1::2]
    acc += 2
    acc >>= 2
    return acc.astype(np.uint8)


class ComputedTiles:
    """The tiles of a slide's computed levels, made on demand and cached.

    Args:
        max_bytes: bound of the :class:`TileCache` that keeps made tiles, so
            that a thumbnail, a tissue mask and a level array do not rebuild
            the same tiles from level 0 again.
    """

    def __init__(self, max_bytes: int):
        self.cache = TileCache(max_bytes)

    def tile(self, read_box, levels, level: int, col: int, row: int, cost=None, fill: int = 0) -> np.ndarray:
        """uint8 (rows, cols, 3) of computed ``level``'s tile (col, row), read-only.

        ``read_box(level, x, y, w, h) -> uint8 (h, w, 3)`` reads the level
        below (the slide's own box reader; not kept, so no reference cycle).
        ``cost(level, x, y, w, h)``, when given, is the number of level-0
        pixels holding data under a box of ``level``: a tile over none (tiles
        stored empty) is ``fill`` at once, without reading the levels below.
        """
        key = (level, col, row)
        tile = self.cache.get(key)
        if tile is None:
            lv = levels[level]
            # the box below; level sizes are floor(half), so it lies inside
            w = min(lv.tile_width, lv.width - col * lv.tile_width)
            h = min(lv.tile_height, lv.height - row * lv.tile_height)
            if cost is not None and cost(level, col * lv.tile_width, row * lv.tile_height, w, h) == 0:
                tile = np.full((h, w, 3), fill, np.uint8)
            else:
                tile = half_mean(read_box(level - 1, 2 * col * lv.tile_width, 2 * row * lv.tile_height,
                                          2 * w, 2 * h))
            tile.flags.writeable = False  # shared through the cache
            self.cache.put(key, tile)
        return tile


def level_properties(levels) -> dict[str, str]:
    """openslide's ``openslide.level-count`` and ``openslide.level[i].*`` properties of ``levels``."""
    props = {"openslide.level-count": str(len(levels))}
    for i, lv in enumerate(levels):
        props[f"openslide.level[{i}].width"] = str(lv.width)
        props[f"openslide.level[{i}].height"] = str(lv.height)
        props[f"openslide.level[{i}].downsample"] = format_double(lv.downsample)
        props[f"openslide.level[{i}].tile-width"] = str(lv.tile_width)
        props[f"openslide.level[{i}].tile-height"] = str(lv.tile_height)
    return props


def openslide_properties(properties: dict, stored_levels, vendor: str,
                         mpp_xy: tuple[float, float] | None) -> dict[str, str]:
    """A backend's ``properties`` as strings, completed with openslide's names.

    The ``openslide.level*`` entries describe ``stored_levels`` only (as
    openslide's do; computed levels never appear in them) and are written
    when the backend gave none; ``openslide.vendor`` and
    ``openslide.mpp-x/-y`` are added when missing.
    """
    props = {str(k): str(v) for k, v in properties.items()}
    if "openslide.level-count" not in props:
        props.update(level_properties(stored_levels))
    props.setdefault("openslide.vendor", vendor)
    if mpp_xy is not None:
        props.setdefault("openslide.mpp-x", format_double(mpp_xy[0]))
        props.setdefault("openslide.mpp-y", format_double(mpp_xy[1]))
    return props


def paste_tiles(out: np.ndarray, xy: tuple[int, int], box: tuple[int, int, int, int], lv: Level, tile) -> None:
    """Copy the tiles of a level under ``box`` into ``out``.

    Args:
        out: uint8 (h, w, 3) whose pixel (0, 0) is level pixel ``xy = (x, y)``.
        box: ``(x0, y0, x1, y1)``, the part of ``out`` inside the level, in level pixels.
        lv: the level's geometry.
        tile: ``(col, row) -> uint8 (rows, cols, 3)``, one (clipped) tile.
    """
    x, y = xy
    x0, y0, x1, y1 = box
    tw, th = lv.tile_width, lv.tile_height
    for row in range(y0 // th, (y1 - 1) // th + 1):
        ty = row * th
        for col in range(x0 // tw, (x1 - 1) // tw + 1):
            tx = col * tw
            pixels = tile(col, row)
            ix0, ix1 = max(x0, tx), min(x1, tx + pixels.shape[1])
            iy0, iy1 = max(y0, ty), min(y1, ty + pixels.shape[0])
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = pixels[iy0 - ty:iy1 - ty, ix0 - tx:ix1 - tx]


def best_level_for_downsample(levels, downsample: float) -> int:
    """openslide's choice: the coarsest level whose downsample is not larger
    than ``downsample`` (level 0 below 1)."""
    ds = float(downsample)
    best = 0
    for i, lv in enumerate(levels):
        if ds < lv.downsample:
            break
        best = i
    return best


def thumbnail_geometry(levels, max_size) -> tuple[int, tuple[int, int]]:
    """Where a thumbnail of at most ``max_size`` (int, or (width, height)) is
    read from: ``(level, (out_w, out_h))``, the aspect ratio kept, never larger
    than level 0, from the coarsest level at least as large as the result."""
    mw, mh = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else max_size
    mw, mh = int(mw), int(mh)
    if mw < 1 or mh < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size!r}")
    w0, h0 = levels[0].width, levels[0].height
    ds = max(w0 / mw, h0 / mh, 1.0)
    out_w = min(mw, max(1, round(w0 / ds)))
    out_h = min(mh, max(1, round(h0 / ds)))
    level = max(i for i, lv in enumerate(levels) if lv.width >= out_w and lv.height >= out_h)
    return level, (out_w, out_h)


def nearest_level(levels, downsample: float) -> int:
    """The level whose downsample is nearest to ``downsample`` (> 0) on a log
    scale (the finer one on a tie)."""
    logs = [abs(math.log(lv.downsample / downsample)) for lv in levels]
    return int(np.argmin(logs))
