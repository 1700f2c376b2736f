"""The one list of slide suffixes (ats_wsi.slide.formats): what it holds, who uses it, find_slides."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ats_wsi.errors import CorruptSlideError
from ats_wsi.slide import SLIDE_SUFFIXES, find_slides, is_slide_path, open_slide

NAPARI_YAML = Path(__file__).resolve().parents[2] / "plugins" / "napari_ats_wsi" / "napari.yaml"


def test_suffixes_are_lower_case_dotted_unique_and_include_every_backend():
    assert all(s.startswith(".") and s == s.lower() for s in SLIDE_SUFFIXES)
    assert len(set(SLIDE_SUFFIXES)) == len(SLIDE_SUFFIXES)
    # tifffile, openslide's vendors, zarr directories
    assert {".svs", ".tif", ".tiff", ".btf", ".qptiff"} <= set(SLIDE_SUFFIXES)
    assert {".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm"} <= set(SLIDE_SUFFIXES)
    assert ".zarr" in SLIDE_SUFFIXES


def test_napari_manifest_offers_the_slide_reader_for_exactly_these_suffixes():
    manifest = yaml.safe_load(NAPARI_YAML.read_text(encoding="utf-8"))
    readers = {r["command"]: r for r in manifest["contributions"]["readers"]}
    patterns = readers["napari-ats-wsi.get_slide_reader"]["filename_patterns"]
    assert patterns == [f"*{s}" for s in SLIDE_SUFFIXES]


@pytest.mark.parametrize("name, expected", [
    ("a.svs", True), ("A.SVS", True), ("dir/b.Tiff", True), ("c.ome.tif", True), ("d.zarr", True),
    ("e.qptiff", True), ("f.dcm", True), ("g.png", False), ("h", False), (".svs", False), ("i.svs.txt", False),
])
def test_is_slide_path_looks_at_the_suffix_only(name, expected):
    assert is_slide_path(name) is expected
    assert is_slide_path(Path(name)) is expected


def test_garbage_with_any_slide_suffix_is_corrupt_not_unsupported(tmp_path):
    for suffix in SLIDE_SUFFIXES:
        if suffix == ".zarr":
            continue
        path = tmp_path / f"garbage{suffix}"
        path.write_bytes(b"not a slide at all, just bytes" * 4)
        with pytest.raises(CorruptSlideError, match="slide extension"):
            open_slide(path)


@pytest.fixture
def folder(tmp_path):
    """b.svs, a.TIF, c.ndpi, .hidden.svs, notes.txt, x.zarr/ (with a slide inside), sub/d.svs."""
    for name in ("b.svs", "a.TIF", "c.ndpi", ".hidden.svs", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "inner.svs").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.svs").write_bytes(b"x")
    return tmp_path


def test_find_slides_lists_a_folders_slides_sorted_without_dot_files_or_recursion(folder):
    assert find_slides([str(folder)]) == [folder / "a.TIF", folder / "b.svs", folder / "c.ndpi", folder / "x.zarr"]


def test_find_slides_keeps_files_zarr_folders_and_missing_paths_as_given(folder):
    items = [str(folder / "notes.txt"), str(folder / "x.zarr"), str(folder / "missing.svs")]
    assert find_slides(items) == [Path(p) for p in items]


def test_find_slides_expands_globs_sorted_and_recursively(folder):
    assert find_slides([str(folder / "*.svs")]) == [folder / "b.svs"]
    assert find_slides([str(folder / "**" / "*.svs")]) == [folder / "b.svs", folder / "sub" / "d.svs",
                                                             folder / "x.zarr" / "inner.svs"]
    assert find_slides([str(folder / "[ab].*")]) == [folder / "a.TIF", folder / "b.svs"]
    assert find_slides([str(folder / "*.nothing")]) == []


def test_find_slides_keeps_the_first_of_duplicates_in_order(folder):
    got = find_slides([str(folder / "c.ndpi"), str(folder), str(folder / "b.svs"), str(folder / "*.ndpi")])
    assert got == [folder / "c.ndpi", folder / "a.TIF", folder / "b.svs", folder / "x.zarr"]


def test_find_slides_of_nothing_is_empty():
    assert find_slides([]) == []
