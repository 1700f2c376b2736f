"""Reads from 8 threads at once return exactly what sequential reads return, on every backend."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ats_wsi import open_slide

N_THREADS = 8


def _requests(slide, n: int, seed: int):
    """n random read_region / read_tile calls over all levels (as argument tuples)."""
    rng = np.random.default_rng(seed)
    w0, h0 = slide.dimensions
    out = []
    for i in range(n):
        level = int(rng.integers(0, slide.level_count))
        if i % 3 == 0:
            cols, rows = slide.tile_grid(level)
            out.append(("tile", level, int(rng.integers(0, cols)), int(rng.integers(0, rows))))
        else:
            x, y = int(rng.integers(-100, w0)), int(rng.integers(-100, h0))
            out.append(("region", (x, y), level, (int(rng.integers(1, 400)), int(rng.integers(1, 400)))))
    return out


def _do(slide, request):
    if request[0] == "tile":
        return slide.read_tile(*request[1:])
    return slide.read_region(*request[1:])


@pytest.mark.parametrize("name, backend", [
    ("vips_jpeg", "tifffile"),
    ("svs_jpeg", "tifffile"),
    ("tiff_flat", "tifffile"),  # computed levels
    ("vips_jpeg", "openslide"),
    ("svs_jpeg", "openslide"),
    ("ome_zarr_v04", "zarr"),
    ("ome_zarr_v05", "zarr"),
])
def test_eight_threads_read_what_one_thread_reads(slide_file, name, backend):
    sf = slide_file(name)
    with open_slide(sf.path, backend=backend) as slide:
        requests = _requests(slide, 96, seed=11)
        sequential = [_do(slide, r) for r in requests]
    # a fresh handle, so no cache built by the sequential pass hides a race
    with open_slide(sf.path, backend=backend) as slide:
        start = threading.Barrier(N_THREADS)

        def worker(t: int):
            start.wait()  # all threads hit the slide at the same moment
            return [(i, _do(slide, requests[i])) for i in range(t, len(requests), N_THREADS)]

        with ThreadPoolExecutor(N_THREADS) as pool:
            results = [item for chunk in pool.map(worker, range(N_THREADS)) for item in chunk]
    assert len(results) == len(requests)
    for i, got in results:
        np.testing.assert_array_equal(got, sequential[i], err_msg=f"{name}/{backend} request {requests[i]}")


def test_dask_threads_compute_a_level_like_sequential_reads(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide:
        level = 1
        lazily = slide.level_array(level).compute(scheduler="threads", num_workers=N_THREADS)
        np.testing.assert_array_equal(lazily, slide.read_level(level))
