"""The slide reader offers itself for exactly ats_wsi.slide.SLIDE_SUFFIXES (files) and zarr folders."""
from __future__ import annotations

import pytest

from _napari_plugin import MANIFEST
from ats_wsi.slide import SLIDE_SUFFIXES
from napari_ats_wsi import _reader


def test_manifest_patterns_are_the_slide_suffixes_in_order():
    readers = {r.command.split(".", 1)[1]: r for r in MANIFEST.contributions.readers}
    assert list(readers["get_slide_reader"].filename_patterns) == [f"*{s}" for s in SLIDE_SUFFIXES]


def test_the_reader_uses_the_packages_list():
    assert _reader.SLIDE_SUFFIXES is SLIDE_SUFFIXES


@pytest.mark.parametrize("suffix", [s for s in SLIDE_SUFFIXES if s != ".zarr"])
def test_a_file_with_any_slide_suffix_is_offered_to_the_slide_reader(tmp_path, suffix):
    path = tmp_path / f"slide{suffix.upper()}"
    path.write_bytes(b"x")
    assert _reader.napari_get_reader(str(path)) is _reader.read_slides


def test_a_file_named_zarr_or_png_is_not(tmp_path):
    for name in ("file.zarr", "picture.png"):
        (tmp_path / name).write_bytes(b"x")
        assert _reader.napari_get_reader(str(tmp_path / name)) is None
