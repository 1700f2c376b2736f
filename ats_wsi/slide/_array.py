"""A level as a lazy dask array, one chunk per tile (``Slide.level_array``)."""
from __future__ import annotations

import os

import numpy as np


def level_array(slide, level: int):
    """Implementation of :meth:`ats_wsi.slide.Slide.level_array`: dask uint8
    (height, width, 3), chunks of one tile, named by the slide's path, backend,
    level and file stamp (so the same level of the same file is one dask key)."""
    import dask.array as da
    from dask.base import tokenize

    lv = slide._level(level)
    try:
        st = os.stat(slide.path)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    name = f"ats-wsi-level-{tokenize(slide.path, slide.backend, level, stamp)}"
    return da.from_array(
        LevelView(slide, level),
        chunks=(lv.tile_height, lv.tile_width, 3),
        name=name,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


class LevelView:
    """What dask slices: one level as an array-like (height, width, 3) uint8.

    It pickles with its slide (which reopens by path in the worker).
    """

    def __init__(self, slide, level: int):
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
