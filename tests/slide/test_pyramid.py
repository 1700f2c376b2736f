"""A slide without a pyramid gets computed levels: block means, built tile by tile, offered
through ``Slide.pyramid`` only (openslide's attributes keep saying what the file stores)."""
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
        n = len(slide.pyramid)
        assert slide.level_count == 1 and n > 1
        assert [lv.computed for lv in slide.pyramid] == [False] + [True] * (n - 1)
        expected = computed_pyramid(sf.levels[0], n)
        for k, ref in enumerate(expected):
            assert (slide.pyramid[k].width, slide.pyramid[k].height) == (ref.shape[1], ref.shape[0])
            np.testing.assert_array_equal(slide.read_level(k), ref, err_msg=f"{name} level {k}")
        # the pyramid stops at the first level that fits in one tile
        tw, th = slide.tile_size(n - 1)
        assert slide.tile_grid(n - 1) == (1, 1)
        w, h = slide.pyramid[-2].width, slide.pyramid[-2].height
        assert w > tw or h > th


def test_computed_level_sizes_and_downsamples_follow_openslides_rule(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        w0, h0 = slide.dimensions
        assert (w0, h0) == (4001, 2599)
        levels = slide.pyramid
        for k in range(1, len(levels)):
            w, h = levels[k].width, levels[k].height
            assert (w, h) == (levels[k - 1].width // 2, levels[k - 1].height // 2)
            assert levels[k].downsample == pytest.approx((w0 / w + h0 / h) / 2)
            assert slide.tile_size(k) == slide.tile_size(0)


def test_computed_levels_leave_openslides_attributes_as_stored(tiff_flat):
    """openslide says 1 level for a single-level TIFF; so do level_count, level_dimensions,
    level_downsamples, get_best_level_for_downsample and the openslide.level* properties."""
    with open_slide(tiff_flat.path) as slide:
        assert len(slide.pyramid) == 5
        assert slide.level_count == 1
        assert slide.level_dimensions == ((4001, 2599),) and slide.level_downsamples == (1.0,)
        assert slide.get_best_level_for_downsample(64) == 0
        assert slide.properties["openslide.level-count"] == "1"
        assert "openslide.level[1].width" not in slide.properties
        assert slide.level_for(downsample=16) == 4  # ats-wsi's own choice ranges over the pyramid
        assert "1 levels (+4 computed)" in repr(slide)


def test_computed_levels_read_regions_across_edges(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        pyramid = computed_pyramid(tiff_flat.levels[0], len(slide.pyramid))
        for k in range(1, len(slide.pyramid)):
            ds = slide.pyramid[k].downsample
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
        assert a.pyramid == b.pyramid
        k = len(a.pyramid) - 2
        np.testing.assert_array_equal(a.read_level(k), b.read_level(k))


def test_stored_pyramids_get_no_computed_levels(vips_deflate, svs_jpeg, ome_tiff_lzw):
    for sf in (vips_deflate, svs_jpeg, ome_tiff_lzw):
        with open_slide(sf.path) as slide:
            assert slide.level_count == len(slide.pyramid) == len(sf.levels)


def test_computed_tiles_are_read_only_and_cached(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        a = slide.read_tile(2, 1, 1)
        b = slide.read_tile(2, 1, 1)
        assert not a.flags.writeable
        assert a is b  # the second read did not rebuild it from level 0
