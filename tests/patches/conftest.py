"""Fixtures of the patch tests: a counting wrapper around read_tile, random boxes,
and one large synthetic slide for the memory test.

The small slides themselves come from ``tests/conftest.py`` (vips_jpeg,
vips_deflate, svs_jpeg, tiff_pyramid_deflate, ...).
"""
from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

LARGE_WH = (20_000, 20_000)  # level 0 is 1.2 GB of RGB; written tile by tile in ~10 s


class TileCounter:
    """Counts the calls of one Slide's real ``read_tile`` (it still decodes).

    Installed as an instance attribute, so everything that calls
    ``slide.read_tile`` (PatchReader does) goes through it; ``read_region``
    does not (it uses the slide's internals), so reference reads are not
    counted. The cropped decode (``slide.decode_tile_into``, which PatchReader
    uses without a cache when the ``ats_wsi_jpeg`` extension is installed) is
    counted the same way: one call is one tile decoded.
    """

    def __init__(self, slide):
        self.slide = slide
        self.real = slide.read_tile
        self.calls: Counter = Counter()
        self._lock = threading.Lock()
        slide.read_tile = self
        real_into = getattr(slide, "decode_tile_into", None)
        if real_into is not None:
            def decode_tile_into(level, col, row, *args):
                self._count(level, col, row)
                return real_into(level, col, row, *args)

            slide.decode_tile_into = decode_tile_into

    def _count(self, level, col, row) -> None:
        with self._lock:
            self.calls[(int(level), int(col), int(row))] += 1

    def __call__(self, level, col, row):
        self._count(level, col, row)
        return self.real(level, col, row)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()


def tiles_under(origin_xy, patch_wh, tile_wh, level_wh) -> set[tuple[int, int]]:
    """(col, row) of every tile a set of boxes overlaps, by brute force (the test's own oracle)."""
    (pw, ph), (tw, th), (lw, lh) = patch_wh, tile_wh, level_wh
    out = set()
    for x, y in np.asarray(origin_xy).tolist():
        xs = [c for c in range(-(-lw // tw)) if c * tw < min(x + pw, lw) and (c + 1) * tw > max(x, 0)]
        ys = [r for r in range(-(-lh // th)) if r * th < min(y + ph, lh) and (r + 1) * th > max(y, 0)]
        out.update((c, r) for c in xs for r in ys)
    return out


def edge_boxes(rng, level_wh, tile_wh, patch_wh, n_random=24) -> np.ndarray:
    """int64 [n, 2] top-left corners in pixels of a level: random ones, boxes straddling
    tile edges and corners, every slide edge and corner, boxes fully outside, and
    overlapping / duplicated boxes."""
    (lw, lh), (tw, th), (pw, ph) = level_wh, tile_wh, patch_wh
    boxes = [
        (0, 0), (lw - pw, lh - ph),  # flush with the corners
        (tw - pw // 2, th - ph // 2),  # a tile corner in the middle of the box
        (tw - 1, 0), (0, th - 1),  # one pixel column / row of the first tile
        (-pw // 2, -ph // 2), (lw - pw // 2, lh - ph // 2),  # across slide corners
        (-pw // 3, lh // 2), (lw // 2, -ph // 3),  # across slide edges
        (lw - 5, 7), (9, lh - 3),  # almost entirely outside
        (-pw - 10, 0), (lw + 3, lh + 3), (0, -ph),  # entirely outside
    ]
    xs = rng.integers(-pw, lw, n_random)
    ys = rng.integers(-ph, lh, n_random)
    boxes += list(zip(xs.tolist(), ys.tolist()))
    boxes += [boxes[-1], (boxes[-2][0] + 7, boxes[-2][1] + 5), (boxes[2][0] + 1, boxes[2][1])]  # overlaps
    return np.asarray(boxes, dtype=np.int64)


def to_level0(origin_xy, downsample: float) -> np.ndarray:
    """Level pixels -> level-0 pixels that map back to them (round(x * ds))."""
    return np.floor(np.asarray(origin_xy, dtype=np.float64) * downsample + 0.5).astype(np.int64)


@pytest.fixture
def patch_helpers():
    """The helpers above, for the test modules: ``.TileCounter(slide)``, ``.tiles_under``,
    ``.edge_boxes``, ``.to_level0``."""
    return SimpleNamespace(TileCounter=TileCounter, tiles_under=tiles_under, edge_boxes=edge_boxes,
                           to_level0=to_level0)


@pytest.fixture(scope="session")
def large_synthetic_slide(tmp_path_factory) -> str:
    """A 20000 x 20000 synthetic Aperio JPEG slide (levels at 1, 4, 16, 64)."""
    from ats_wsi.data.synthetic import write_synthetic_slide

    path = tmp_path_factory.mktemp("large") / "large.svs"
    write_synthetic_slide(path, *LARGE_WH, seed=3, n_lesions=1)
    return str(path)
