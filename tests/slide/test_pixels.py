"""Pixels: exact on lossless files, openslide's on JPEG files, FILL_VALUE outside."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slide_reference import FILL, JPEG_SLIDES, LOSSLESS_SLIDES, crop, edge_boxes, to_level

from ats_wsi import open_slide
from ats_wsi.slide import FILL_VALUE


def test_fill_value_is_black():
    assert FILL_VALUE == FILL == 0


@pytest.mark.parametrize("name", LOSSLESS_SLIDES)
def test_lossless_levels_equal_the_written_arrays(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        for k, ref in enumerate(sf.levels):
            assert slide.level_dimensions[k] == (ref.shape[1], ref.shape[0])
            got = slide.read_level(k)
            assert got.dtype == np.uint8 and got.shape == ref.shape
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} level {k}")


@pytest.mark.parametrize("name", LOSSLESS_SLIDES)
def test_lossless_boxes_across_tile_and_slide_edges(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        for k, ref in enumerate(sf.levels):
            ds = slide.level_downsamples[k]
            tw, th = slide.tile_size(k)
            for lx, ly, w, h in edge_boxes(ref.shape[1], ref.shape[0], tw, th):
                x0, y0 = int(round(lx * ds)), int(round(ly * ds))
                assert (to_level(x0, ds), to_level(y0, ds)) == (lx, ly)
                got = slide.read_region((x0, y0), k, (w, h))
                np.testing.assert_array_equal(got, crop(ref, lx, ly, w, h),
                                              err_msg=f"{name} level {k} box {(lx, ly, w, h)}")


@pytest.mark.parametrize("name", LOSSLESS_SLIDES)
def test_read_tile_is_the_clipped_tile(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        for k, ref in enumerate(sf.levels):
            tw, th = slide.tile_size(k)
            cols, rows = slide.tile_grid(k)
            assert (cols, rows) == (-(-ref.shape[1] // tw), -(-ref.shape[0] // th))
            for col, row in {(0, 0), (cols - 1, 0), (0, rows - 1), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                tile = slide.read_tile(k, col, row)
                expected = ref[row * th:(row + 1) * th, col * tw:(col + 1) * tw]
                assert tile.dtype == np.uint8 and tile.shape == expected.shape
                np.testing.assert_array_equal(tile, expected)


@pytest.mark.parametrize("name", LOSSLESS_SLIDES)
def test_level_array_is_chunked_by_tiles_and_equals_the_level(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        k = len(sf.levels) - 1
        arr = slide.level_array(k)
        tw, th = slide.tile_size(k)
        ref = sf.levels[k]
        assert arr.shape == ref.shape and arr.dtype == np.uint8
        assert set(arr.chunks[0][:-1]) <= {th} and arr.chunks[0][-1] <= th
        assert set(arr.chunks[1][:-1]) <= {tw} and arr.chunks[1][-1] <= tw
        assert arr.chunks[2] == (3,)
        np.testing.assert_array_equal(arr.compute(), ref)
        np.testing.assert_array_equal(arr[5:300, 7:301].compute(), ref[5:300, 7:301])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("name", ["tiff_pyramid_deflate", "vips_deflate", "ome_zarr_v05", "tiff_strips",
                                  "svs_jpeg2000"])
def test_read_region_equals_slicing_the_reference(slide_file, name, data):
    sf = slide_file(name)
    slide = _opened(sf.path)
    k = data.draw(st.integers(0, len(sf.levels) - 1), label="level")
    ref = sf.levels[k]
    ds = slide.level_downsamples[k]
    w0, h0 = slide.dimensions
    x0 = data.draw(st.integers(-300, w0 + 50), label="x")
    y0 = data.draw(st.integers(-300, h0 + 50), label="y")
    w = data.draw(st.integers(0, 700), label="w")
    h = data.draw(st.integers(0, 700), label="h")
    got = slide.read_region((x0, y0), k, (w, h))
    expected = crop(ref, to_level(x0, ds), to_level(y0, ds), w, h)
    assert got.shape == (h, w, 3)
    np.testing.assert_array_equal(got, expected)


_OPEN: dict = {}


def _opened(path):
    """One Slide per path for the property test (opening per example would dominate)."""
    if path not in _OPEN:
        _OPEN[path] = open_slide(path)
    return _OPEN[path]


def _openslide_rgb(osr, location, level, size) -> np.ndarray:
    return np.asarray(osr.read_region(location, level, size))[:, :, :3]


def _assert_close(got, ref, what):
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert diff.mean() < 1.0 and diff.max() < 16, f"{what}: mean {diff.mean():.3f}, max {diff.max()}"


@pytest.mark.parametrize("name", JPEG_SLIDES)
def test_jpeg_levels_match_openslide(slide_file, name):
    sf = slide_file(name)
    osr = openslide.OpenSlide(sf.path)
    with open_slide(sf.path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_count == osr.level_count
        for k in range(slide.level_count):
            size = slide.level_dimensions[k]
            _assert_close(slide.read_level(k), _openslide_rgb(osr, (0, 0), k, size), f"{name} level {k}")
    osr.close()


@pytest.mark.parametrize("name", JPEG_SLIDES)
def test_jpeg_regions_match_openslide_across_tile_edges(slide_file, name):
    sf = slide_file(name)
    osr = openslide.OpenSlide(sf.path)
    rng = np.random.default_rng(3)
    with open_slide(sf.path) as slide:
        for k in range(slide.level_count):
            ds = slide.level_downsamples[k]
            if ds != int(ds):
                continue  # openslide resamples at fractional level positions
            tw, th = slide.tile_size(k)
            lw, lh = slide.level_dimensions[k]
            boxes = edge_boxes(lw, lh, tw, th)[:6] + [
                (int(rng.integers(0, lw)), int(rng.integers(0, lh)), 150, 90) for _ in range(4)]
            for lx, ly, w, h in boxes:
                loc = (int(lx * ds), int(ly * ds))
                got = slide.read_region(loc, k, (w, h))
                _assert_close(got, _openslide_rgb(osr, loc, k, (w, h)), f"{name} level {k} box {(lx, ly, w, h)}")
    osr.close()


@pytest.mark.parametrize("name", JPEG_SLIDES)
def test_jpeg_level0_is_close_to_what_was_written(slide_file, name):
    """Independent of openslide: a wrong colour space or tile order would be far off."""
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        got = slide.read_level(0).astype(np.int16)
    diff = np.abs(got - sf.levels[0])
    assert diff.mean() < 6.0, diff.mean()  # JPEG Q90 4:2:0 on noisy pixels: about 4


@pytest.mark.parametrize("name", ["tiff_pyramid_deflate", "vips_deflate", "svs_jpeg"])
def test_openslide_backend_gives_the_same_pixels_as_tifffile_backend(slide_file, name):
    """Exactly, wherever openslide can address level pixels exactly: everywhere on levels with
    an integer downsample, from (0, 0) on the others (openslide resamples fractional positions)."""
    sf = slide_file(name)
    with open_slide(sf.path, backend="openslide") as a, open_slide(sf.path, backend="tifffile") as b:
        assert a.level_dimensions == b.level_dimensions
        for k in range(a.level_count):
            ds = a.level_downsamples[k]
            lw, lh = a.level_dimensions[k]
            tw, th = a.tile_size(k)
            boxes = [(0, 0, lw, lh)] if ds != int(ds) else edge_boxes(lw, lh, tw, th)
            for lx, ly, w, h in boxes:
                loc = (int(round(lx * ds)), int(round(ly * ds)))
                np.testing.assert_array_equal(a.read_region(loc, k, (w, h)), b.read_region(loc, k, (w, h)))
            cols, rows = a.tile_grid(k)
            tiles = [(0, 0)] if ds != int(ds) else [(0, 0), (cols - 1, 0), (cols - 1, rows - 1)]
            for col, row in tiles:
                np.testing.assert_array_equal(a.read_tile(k, col, row), b.read_tile(k, col, row))


def test_region_fully_outside_is_all_fill(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        w, h = slide.dimensions
        for loc in [(-500, -500), (w, 0), (0, h), (w + 100, h + 100)]:
            region = slide.read_region(loc, 0, (64, 32))
            assert region.shape == (32, 64, 3)
            assert (region == FILL_VALUE).all()
        assert slide.read_region((10, 10), 0, (0, 5)).shape == (5, 0, 3)


def test_ome_zarr_with_t_c_z_y_x_axes_reads_the_first_time_point_and_plane(tmp_path, base_image):
    """bioformats2raw-style 5-D arrays (t, c, z, y, x) with one-channel chunks."""
    import zarr

    img = np.ascontiguousarray(base_image[0][:300, :500])
    data = np.zeros((2, 3, 2, 300, 500), np.uint8)
    data[0, :, 0] = img.transpose(2, 0, 1)
    data[1] = 255  # another time point: must not leak in
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"}]
    ms = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 250, 250]}]}]}]
    group = zarr.create_group(str(tmp_path / "t.zarr"), zarr_format=2, attributes={"multiscales": ms})
    arr = group.create_array("0", shape=data.shape, chunks=(1, 1, 1, 128, 128), dtype="uint8")
    arr[...] = data
    with open_slide(tmp_path / "t.zarr") as slide:
        assert slide.format == "ome-zarr" and slide.dimensions == (500, 300)
        assert slide.tile_size(0) == (128, 128)
        assert slide.mpp == pytest.approx(0.25)  # 250 nm
        np.testing.assert_array_equal(slide.read_level(0), img)
        np.testing.assert_array_equal(slide.read_tile(0, 3, 2), img[256:300, 384:500])
