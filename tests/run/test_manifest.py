"""Slide manifests (path,label[,split]): what is read, and errors that name the file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from ats_wsi.data.manifest import ManifestRow, read_manifest
from ats_wsi.errors import ManifestError


def test_relative_paths_are_taken_from_the_manifest_folder_and_splits_filter(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text("path,label,split\na.svs,0,train\n/abs/b.svs,1,val\nc.svs,1,\n")
    rows = read_manifest(manifest)
    assert rows == [ManifestRow((tmp_path / "sub" / "a.svs").resolve(), 0, "train"),
                    ManifestRow(Path("/abs/b.svs"), 1, "val"),
                    ManifestRow((tmp_path / "sub" / "c.svs").resolve(), 1, "train")]  # empty split: train
    assert [r.label for r in read_manifest(manifest, "train")] == [0, 1]
    assert [r.label for r in read_manifest(manifest, "val")] == [1]
    assert read_manifest(manifest, "test") == []


def test_a_manifest_without_split_column_is_all_train(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,path\n1,x.svs\n")
    assert read_manifest(manifest, "train") == [ManifestRow((tmp_path / "x.svs").resolve(), 1, "train")]


def test_a_spreadsheet_csv_with_a_byte_order_mark_reads(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\r\nx.svs,0\r\n".encode("utf-8-sig"))
    assert read_manifest(manifest)[0].label == 0


@pytest.mark.parametrize("text, message", [
    ("path,split\nx.svs,train\n", "missing column(s) ['label']"),
    ("slide,label\nx.svs,0\n", "missing column(s) ['path']"),
    ("", "missing column(s) ['label', 'path']"),
    ("path,label\nx.svs,0\n,1\n", "m.csv:3: empty path"),
    ("path,label\nx.svs,tumour\n", "m.csv:2: label 'tumour' is not a non-negative integer"),
    ("path,label\nx.svs,-1\n", "m.csv:2: label '-1' is not a non-negative integer"),
])
def test_bad_manifests_raise_manifest_error_naming_file_and_line(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert message in str(info.value)
    assert str(manifest) in str(info.value)


def test_a_missing_manifest_raises_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.csv")
