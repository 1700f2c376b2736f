"""open_slide: which backend reads what, and a typed error for every bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
from slide_reference import ALL_SLIDES

from ats_wsi import open_slide
from ats_wsi.errors import (
    CorruptSlideError,
    LevelError,
    RegionError,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
)


@pytest.mark.parametrize("name", ALL_SLIDES)
def test_auto_picks_the_expected_backend_and_names_the_format(slide_file, name):
    sf = slide_file(name)
    with open_slide(sf.path) as slide:
        assert slide.backend == sf.backend
        assert slide.format == sf.format
        assert slide.dimensions == sf.size
        assert slide.path == sf.path


def test_auto_leaves_jpeg2000_svs_to_openslide(svs_jpeg2000):
    with open_slide(svs_jpeg2000.path) as slide:
        assert slide.backend == "openslide"
        assert slide.format == "aperio"


def test_forced_tifffile_still_decodes_jpeg2000(svs_jpeg2000):
    with open_slide(svs_jpeg2000.path, backend="tifffile") as slide:
        assert slide.backend == "tifffile"
        np.testing.assert_array_equal(slide.read_region((200, 100), 0, (500, 300)),
                                      svs_jpeg2000.levels[0][100:400, 200:700])


def test_open_slide_accepts_pathlib_paths(tiff_pyramid_deflate):
    from pathlib import Path

    with open_slide(Path(tiff_pyramid_deflate.path)) as slide:
        assert slide.path == tiff_pyramid_deflate.path


@pytest.mark.parametrize("name", ["tiff_pyramid_deflate", "svs_jpeg", "vips_jpeg"])
def test_backends_can_be_forced(slide_file, name):
    sf = slide_file(name)
    for backend in ("tifffile", "openslide"):
        with open_slide(sf.path, backend=backend) as slide:
            assert slide.backend == backend
            assert slide.dimensions == sf.size


def test_wrong_forced_backend_is_unsupported(tiff_pyramid_deflate, ome_zarr_v04, bad_inputs):
    with pytest.raises(UnsupportedFormatError):
        open_slide(ome_zarr_v04.path, backend="tifffile")
    with pytest.raises(UnsupportedFormatError):
        open_slide(ome_zarr_v04.path, backend="openslide")
    with pytest.raises(UnsupportedFormatError):
        open_slide(tiff_pyramid_deflate.path, backend="zarr")
    with pytest.raises(UnsupportedFormatError):
        open_slide(bad_inputs["png_file"], backend="tifffile")
    with pytest.raises(UnsupportedFormatError):
        open_slide(bad_inputs["png_file"], backend="openslide")


def test_unknown_backend_name_is_a_value_error(tiff_pyramid_deflate):
    with pytest.raises(ValueError, match="backend"):
        open_slide(tiff_pyramid_deflate.path, backend="pillow")


BAD = [
    ("missing", SlideNotFoundError),
    ("empty_dir", SlideNotFoundError),
    ("zero_bytes", CorruptSlideError),
    ("garbage_svs", CorruptSlideError),
    ("garbage_tiff", CorruptSlideError),
    ("truncated_tifffile", CorruptSlideError),
    ("truncated_vips", CorruptSlideError),
    ("text_file", UnsupportedFormatError),
    ("png_file", UnsupportedFormatError),
]


@pytest.mark.parametrize("kind, error", BAD)
def test_each_bad_input_gets_its_typed_error_naming_the_path(bad_inputs, kind, error):
    path = bad_inputs[kind]
    with pytest.raises(error) as info:
        open_slide(path)
    assert type(info.value) is error  # the public class itself, no backend-private subclass
    assert info.value.path == path
    assert path in str(info.value)
    assert isinstance(info.value, SlideError)
    assert info.value.reason  # says why


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
@pytest.mark.parametrize("kind", ["garbage_tiff", "truncated_vips"])
def test_forced_backends_raise_the_public_error_classes(bad_inputs, kind, backend):
    with pytest.raises(CorruptSlideError) as info:
        open_slide(bad_inputs[kind], backend=backend)
    assert type(info.value) is CorruptSlideError


def test_missing_file_is_also_a_file_not_found_error(bad_inputs):
    with pytest.raises(FileNotFoundError):
        open_slide(bad_inputs["missing"])


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
@pytest.mark.parametrize("kind", ["truncated_tifffile", "truncated_vips"])
def test_truncated_tiff_is_corrupt_on_every_backend(bad_inputs, kind, backend):
    with pytest.raises(CorruptSlideError, match="truncated|beyond the end|directory chain"):
        open_slide(bad_inputs[kind], backend=backend)


def test_truncated_file_whose_directories_survive_fails_at_open_not_with_zeros(tmp_path, ome_tiff_lzw):
    """An OME-TIFF keeps its IFDs near the start: after a cut, the tile table survives and
    points past the end of the file; this must be caught before any pixel is returned."""
    data = open(ome_tiff_lzw.path, "rb").read()
    path = tmp_path / "cut.ome.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError, match="beyond the end of the file"):
        open_slide(path)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_garbled_tile_fails_at_its_first_read_and_only_there(bad_inputs, tiff_pyramid_deflate, backend):
    path = bad_inputs["garbled_tile"]
    with open_slide(path, backend=backend) as slide:
        cols, _ = slide.tile_grid(0)
        assert cols > 5
        with pytest.raises(CorruptSlideError) as info:
            slide.read_tile(0, 5, 0)
        assert info.value.path == path
    with open_slide(path, backend="tifffile") as slide:  # a fresh handle: other tiles still read
        assert (slide.read_tile(0, 4, 0) == tiff_pyramid_deflate.levels[0][:256, 1024:1280]).all()


def test_level_out_of_range_is_a_level_error(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        for level in (slide.level_count, -1, 99):
            with pytest.raises(LevelError) as info:
                slide.read_region((0, 0), level, (4, 4))
            assert info.value.path == tiff_pyramid_deflate.path
        with pytest.raises(LevelError):
            slide.tile_size(slide.level_count)
        with pytest.raises(LevelError):
            slide.read_tile(1.0, 0, 0)
        with pytest.raises(IndexError):  # LevelError is an IndexError too
            slide.level_array(-1)


def test_bad_regions_are_region_errors(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        for size in [(-1, 5), (5, -1)]:
            with pytest.raises(RegionError, match="negative"):
                slide.read_region((0, 0), 0, size)
        with pytest.raises(RegionError, match="integer"):
            slide.read_region((0.5, 0), 0, (4, 4))
        with pytest.raises(RegionError, match="MAX_READ_PIXELS"):
            slide.read_region((0, 0), 0, (1 << 15, 1 << 14))
        with pytest.raises(RegionError, match="outside"):
            slide.read_tile(0, *slide.tile_grid(0))
        with pytest.raises(RegionError, match="outside"):
            slide.read_tile(0, -1, 0)
        with pytest.raises(RegionError, match="max_pixels"):
            slide.read_level(0, max_pixels=1000)
        with pytest.raises(ValueError):  # RegionError is a ValueError too
            slide.read_region((0, 0), 0, (-3, 3))


def test_error_messages_survive_pickling(bad_inputs):
    import pickle

    with pytest.raises(CorruptSlideError) as info:
        open_slide(bad_inputs["garbage_svs"])
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is CorruptSlideError and back.path == bad_inputs["garbage_svs"]


def test_a_directory_path_without_zarr_metadata_names_the_directory(tmp_path):
    (tmp_path / "some.zarr").mkdir()
    (tmp_path / "some.zarr" / "readme.txt").write_text("x")
    with pytest.raises(SlideNotFoundError, match="directory without a slide") as info:
        open_slide(tmp_path / "some.zarr")
    assert info.value.path == os.fspath(tmp_path / "some.zarr")


def test_a_zarr_chunk_or_tiff_strip_too_big_to_decode_is_refused_at_open(tmp_path):
    """A decode holds a whole chunk or strip: 12000² of them (412 MiB) say so at open (issue 26),
    where a read of one pixel used to fail later as 'corrupt' ("Unable to allocate output buffer")."""
    import json

    import tifffile

    from ats_wsi.errors import UnsupportedFormatError

    root = tmp_path / "chunky.zarr"
    (root / "0").mkdir(parents=True)
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / "0" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [12000, 12000, 3], "chunks": [12000, 12000, 3], "dtype": "|u1",
        "compressor": {"id": "zlib", "level": 1}, "fill_value": 0, "order": "C", "filters": None}))
    with pytest.raises(UnsupportedFormatError, match=r"chunks of 12000 x 12000 pixels \(412 MiB each decoded\)"):
        open_slide(root)
    strips = tmp_path / "strips.tif"  # tiles and strips up to the bound still open
    tifffile.imwrite(strips, np.zeros((512, 640, 3), np.uint8), photometric="rgb", rowsperstrip=512)
    with open_slide(strips) as slide:
        assert slide.tile_size(0) == (640, 512)
