"""The rest of the Slide surface: pickling, lifetime, level choice, thumbnail, tissue mask."""
from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from slide_reference import half_mean

from ats_wsi import Slide, open_slide
from ats_wsi.errors import SlideError
from ats_wsi.slide import TISSUE_DOWNSAMPLE, level_origin


def _region_in_child(slide, location, level, size):
    return slide.read_region(location, level, size)


@pytest.mark.parametrize("name, backend", [("vips_jpeg", "tifffile"), ("svs_jpeg", "openslide"),
                                           ("ome_zarr_v05", "zarr")])
def test_pickle_round_trip_reopens_by_path_and_backend(slide_file, name, backend):
    sf = slide_file(name)
    with open_slide(sf.path, backend=backend) as slide:
        data = pickle.dumps(slide)
        assert len(data) < 1000  # path + backend, not pixels or handles
        with pickle.loads(data) as back:
            assert isinstance(back, Slide) and back is not slide
            assert (back.path, back.backend, back.level_dimensions) == (slide.path, backend, slide.level_dimensions)
            np.testing.assert_array_equal(back.read_region((100, 50), 1, (300, 200)),
                                          slide.read_region((100, 50), 1, (300, 200)))


def test_pickled_slide_reads_in_a_spawned_process(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide:
        expected = slide.read_region((1000, 700), 0, (333, 222))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            got = pool.submit(_region_in_child, slide, (1000, 700), 0, (333, 222)).result(timeout=120)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_forked_children_read_after_the_parent_did(vips_jpeg, backend):
    """DataLoader workers fork with the Slide already open: the child must not share
    the parent's openslide handle (it reopens) nor a file position (positional reads)."""
    slide = open_slide(vips_jpeg.path, backend=backend)
    expected = [slide.read_region((x, 300), 0, (256, 128)) for x in (0, 2000, 4000)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_region_in_child, slide, (x, 300), 0, (256, 128)) for x in (0, 2000, 4000)]
        got = [f.result(timeout=60) for f in futures]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(slide.read_region((0, 300), 0, (256, 128)), expected[0])
    slide.close()


def test_level_array_pickles_with_its_slide(ome_zarr_v04):
    with open_slide(ome_zarr_v04.path) as slide:
        arr = slide.level_array(1)
        back = pickle.loads(pickle.dumps(arr))
        np.testing.assert_array_equal(back[100:400, 50:500].compute(), ome_zarr_v04.levels[1][100:400, 50:500])


def test_level_array_is_lazy(tiff_pyramid_deflate, tmp_path):
    """Building the array reads nothing: it works on a file whose every tile is garbage."""
    import shutil

    import tifffile

    path = tmp_path / "zeroed.tif"
    shutil.copy(tiff_pyramid_deflate.path, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\x00" * count)
    from ats_wsi.errors import CorruptSlideError

    with open_slide(path) as slide:
        arr = slide.level_array(0)
        assert arr.shape == (1999, 2999, 3)
        with pytest.raises(CorruptSlideError):
            arr[:10, :10].compute()


def test_context_manager_closes_and_closed_slides_refuse_reads(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        assert slide.read_region((0, 0), 0, (2, 2)).shape == (2, 2, 3)
    assert "closed" in repr(slide)
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (2, 2))
    with pytest.raises(SlideError, match="closed"):
        slide.read_tile(0, 0, 0)
    slide.close()  # idempotent
    assert slide.dimensions == tiff_pyramid_deflate.size  # metadata stays readable


def test_repr_names_backend_format_and_path(svs_jpeg):
    with open_slide(svs_jpeg.path) as slide:
        text = repr(slide)
        assert "tifffile" in text and "aperio" in text and svs_jpeg.path in text


def test_level_for_picks_the_nearest_level(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide:  # downsamples 1, 2, 4, 8, ~16, ~32; mpp 0.25
        assert slide.level_for(downsample=1) == 0
        assert slide.level_for(downsample=2.7) == 1  # nearest on a log scale: 2.83 is the midpoint
        assert slide.level_for(downsample=3.0) == 2
        assert slide.level_for(downsample=0.1) == 0
        assert slide.level_for(downsample=10_000) == slide.level_count - 1
        assert slide.level_for(mpp=1.0) == 2  # 1.0 / 0.25 = 4
        assert slide.level_for(mpp=2.1) == 3
        with pytest.raises(TypeError):
            slide.level_for()
        with pytest.raises(TypeError):
            slide.level_for(downsample=2, mpp=1)
        with pytest.raises(ValueError):
            slide.level_for(downsample=0)


def test_level_for_mpp_needs_a_known_resolution(zarr_levels):
    with open_slide(zarr_levels.path) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match="mpp"):
            slide.level_for(mpp=1.0)


def test_level_origin_inverts_rounded_level0_coordinates():
    for ds in (1.0, 2.0, 4.0, 1.99917, 8.0106951871657763, 16.03):
        lx = np.arange(-50, 5000, 7)
        x0 = np.round(lx * ds).astype(np.int64)
        xy = np.stack([x0, x0[::-1]], axis=1)
        back = level_origin(xy, ds)
        np.testing.assert_array_equal(back, np.stack([lx, lx[::-1]], axis=1))
    assert level_origin([[3, -3]], 2.0).tolist() == [[2, -1]]  # halves go up


@pytest.mark.parametrize("max_size", [256, (300, 100), 10_000])
def test_thumbnail_fits_keeps_aspect_and_shows_the_slide(vips_jpeg, max_size):
    with open_slide(vips_jpeg.path) as slide:
        thumb = slide.thumbnail(max_size)
    mw, mh = (max_size, max_size) if isinstance(max_size, int) else max_size
    h, w = thumb.shape[:2]
    assert thumb.dtype == np.uint8 and thumb.shape[2] == 3
    assert w <= mw and h <= mh and (w == mw or h == mh or (w, h) == (5000, 3000))
    assert abs(w / h - 5000 / 3000) < 0.02
    if (w, h) == (5000, 3000):  # asked for more than the slide has: level 0 itself
        with open_slide(vips_jpeg.path) as slide:
            np.testing.assert_array_equal(thumb, slide.read_level(0))
        return
    small = _box_shrink(vips_jpeg.levels[0], w, h)
    assert np.abs(thumb.astype(np.int16) - small).mean() < 8  # vips built the levels its own way


def _box_shrink(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Exact area average of img onto an (h, w) grid (pixel i covers [i * H / h, (i + 1) * H / h))."""
    ys = (np.arange(h) * img.shape[0]) // h
    xs = (np.arange(w) * img.shape[1]) // w
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.uint32), ys, axis=0), xs, axis=1)
    counts = np.diff(np.append(ys, img.shape[0]))[:, None] * np.diff(np.append(xs, img.shape[1]))[None, :]
    return np.round(sums / counts[:, :, None]).astype(np.int16)


def test_thumbnail_does_not_touch_level0_of_a_pyramid(bad_inputs):
    """Level 0 of this file has a garbled tile; a thumbnail must come from a lower level."""
    with open_slide(bad_inputs["garbled_tile"]) as slide:
        with pytest.raises(SlideError):
            slide.read_level(0)
        thumb = slide.thumbnail(200)
    assert thumb.shape == (133, 200, 3)


def test_thumbnail_of_a_flat_tiff_uses_computed_levels(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        thumb = slide.thumbnail(250)
    assert thumb.shape == (162, 250, 3)
    ref = tiff_flat.levels[0]
    for _ in range(4):
        ref = half_mean(ref)
    np.testing.assert_array_equal(thumb, ref)  # level 4 is exactly 250 x 162


@pytest.mark.parametrize("name", ["vips_jpeg", "tiff_flat", "ome_zarr_v04"])
def test_tissue_mask_finds_the_tissue(slide_file, base_image, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        mask = slide.tissue_mask()
        level = slide.level_for(downsample=TISSUE_DOWNSAMPLE)
        assert mask.dtype == bool
        assert mask.shape == (slide.pyramid[level].height, slide.pyramid[level].width)
    # where this slide was cut from the shared image: find its offset by matching pixels
    truth = _tissue_truth(sf, base_image)
    ry, rx = truth.shape[0] / mask.shape[0], truth.shape[1] / mask.shape[1]
    rows = np.minimum((np.arange(mask.shape[0]) * ry + ry / 2).astype(int), truth.shape[0] - 1)
    cols = np.minimum((np.arange(mask.shape[1]) * rx + rx / 2).astype(int), truth.shape[1] - 1)
    sampled = truth[np.ix_(rows, cols)]
    assert 0.2 < sampled.mean() < 0.8  # the slide really has both
    assert (mask == sampled).mean() > 0.93


def _tissue_truth(sf, base_image) -> np.ndarray:
    rgb, tissue = base_image
    ref = sf.levels[0]
    h, w = ref.shape[:2]
    for y in range(rgb.shape[0] - h + 1):  # the crops share their first row with the base image
        xs = np.flatnonzero((rgb[y, : rgb.shape[1] - w + 1, 0] == ref[0, 0, 0]))
        for x in xs:
            if np.array_equal(rgb[y, x:x + w], ref[0]) and np.array_equal(rgb[y + h - 1, x:x + w], ref[-1]):
                return tissue[y:y + h, x:x + w]
    raise AssertionError("slide not found in the base image")


def test_tissue_mask_of_blank_glass_is_empty(tmp_path):
    import tifffile

    glass = np.full((600, 900, 3), 240, np.uint8)
    path = tmp_path / "glass.tif"
    tifffile.imwrite(path, glass, tile=(256, 256), photometric="rgb", metadata=None)
    with open_slide(path) as slide:
        assert not slide.tissue_mask(level=0).any()


def test_import_ats_wsi_slide_does_not_import_torch():
    code = "import sys, ats_wsi.slide; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
