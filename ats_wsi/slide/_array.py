"""A level as a lazy dask array, one chunk per tile (``Slide.level_array``)."""
from __future__ import annotations

import os

import numpy as np


def level_array(path: str, backend: str, level: int, lv, read):
    """Implementation of :meth:`ats_wsi.slide.Slide.level_array`: dask uint8
    (height, width, 3), chunks of one tile, named by the slide's path, backend,
    level and file stamp (so the same level of the same file is one dask key).

    Args:
        lv: the level's :class:`~._levels.Level` (its size and tile size).
        read: ``read(level, x, y, w, h) -> uint8 (h, w, 3)``, a box of level
            pixels inside the level: the slide's bound method (it pickles with
            its slide, which reopens by path in a worker).
    """
    import dask.array as da
    from dask.base import tokenize

    try:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    name = f"ats-wsi-level-{tokenize(path, backend, level, stamp)}"
    return da.from_array(
        LevelView(read, level, lv),
        chunks=(lv.tile_height, lv.tile_width, 3),
        name=name,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


class LevelView:
    """What dask slices: one level as an array-like (height, width, 3) uint8.

    It pickles with its reader (a slide's bound method: the slide reopens by
    path in the worker).
    """

    def __init__(self, read, level: int, lv):
        self.read = read
        self.level = level
        self.shape = (lv.height, lv.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return self.read(self.level, x0, y0, x1 - x0, y1 - y0)[:, :, cs]
