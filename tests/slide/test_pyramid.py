"""A slide without a pyramid gets computed levels: block means, built tile by tile."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from slide_reference import computed_pyramid, crop, edge_boxes, to_level

from ats_wsi import open_slide


@pytest.mark.parametrize("name", ["tiff_flat", "tiff_strips", "svs_jpeg2000"])
def test_computed_levels_are_successive_block_means_of_level0(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        assert slide.level_count > 1
        expected = computed_pyramid(sf.levels[0], slide.level_count)
        for k, ref in enumerate(expected):
            assert slide.level_dimensions[k] == (ref.shape[1], ref.shape[0])
            np.testing.assert_array_equal(slide.read_level(k), ref, err_msg=f"{name} level {k}")
        # the pyramid stops at the first level that fits in one tile
        tw, th = slide.tile_size(slide.level_count - 1)
        assert slide.tile_grid(slide.level_count - 1) == (1, 1)
        w, h = slide.level_dimensions[-2]
        assert w > tw or h > th


def test_computed_level_sizes_and_downsamples_follow_openslides_rule(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        w0, h0 = slide.dimensions
        assert (w0, h0) == (4001, 2599)
        for k in range(1, slide.level_count):
            w, h = slide.level_dimensions[k]
            pw, ph = slide.level_dimensions[k - 1]
            assert (w, h) == (pw // 2, ph // 2)
            assert slide.level_downsamples[k] == pytest.approx((w0 / w + h0 / h) / 2)
            assert slide.tile_size(k) == slide.tile_size(0)
        assert slide.properties["openslide.level-count"] == str(slide.level_count)


def test_computed_levels_read_regions_across_edges(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        pyramid = computed_pyramid(tiff_flat.levels[0], slide.level_count)
        for k in range(1, slide.level_count):
            ds = slide.level_downsamples[k]
            tw, th = slide.tile_size(k)
            ref = pyramid[k]
            for lx, ly, w, h in edge_boxes(ref.shape[1], ref.shape[0], tw, th):
                x0, y0 = int(round(lx * ds)), int(round(ly * ds))
                assert (to_level(x0, ds), to_level(y0, ds)) == (lx, ly)
                np.testing.assert_array_equal(slide.read_region((x0, y0), k, (w, h)), crop(ref, lx, ly, w, h))


def test_computed_level_never_holds_level0_in_memory(tiff_flat):
    level0_bytes = tiff_flat.levels[0].nbytes  # 31 MB
    with open_slide(tiff_flat.path) as slide:
        arr = slide.level_array(2)
        tracemalloc.start()
        try:
            out = arr.compute(scheduler="synchronous")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(out, computed_pyramid(tiff_flat.levels[0], 3)[2])
    # what remains is level 2 itself and the computed-tile cache (level 1: a quarter of level 0)
    assert peak < level0_bytes / 2, f"peak {peak / 1e6:.1f} MB while level 0 is {level0_bytes / 1e6:.1f} MB"


def test_openslide_backend_computes_the_same_levels(tiff_flat):
    """A single-level TIFF read through openslide gets the very same computed pyramid."""
    with open_slide(tiff_flat.path, backend="openslide") as a, open_slide(tiff_flat.path) as b:
        assert a.backend == "openslide" and b.backend == "tifffile"
        assert a.level_dimensions == b.level_dimensions
        k = a.level_count - 2
        np.testing.assert_array_equal(a.read_level(k), b.read_level(k))


def test_stored_pyramids_get_no_computed_levels(vips_deflate, svs_jpeg, ome_tiff_lzw):
    for sf in (vips_deflate, svs_jpeg, ome_tiff_lzw):
        with open_slide(sf.path) as slide:
            assert slide.level_count == len(sf.levels)


def test_computed_tiles_are_read_only_and_cached(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        a = slide.read_tile(2, 1, 1)
        b = slide.read_tile(2, 1, 1)
        assert not a.flags.writeable
        assert a is b  # the second read did not rebuild it from level 0
