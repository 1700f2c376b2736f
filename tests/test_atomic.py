"""Atomic writers (ats_wsi.atomic): a result is complete under its final name, or absent."""
from __future__ import annotations

import json
import os

import pytest

from ats_wsi import atomic
from ats_wsi.atomic import (
    atomic_path,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "result.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a result")
            raise RuntimeError("killed mid-way")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_path_replaces_file_and_folder(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "old")
    write_text_atomic(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"
    for content in ("first", "second"):
        with atomic_path(tmp_path / "store.zarr") as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(content)
    assert (tmp_path / "store.zarr" / "x").read_text() == "second"
    assert _leftovers(tmp_path) == []


def test_a_failing_folder_write_keeps_the_old_folder(tmp_path):
    with atomic_path(tmp_path / "store.zarr") as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "store.zarr") as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("half")
            raise RuntimeError("killed mid-way")
    assert (tmp_path / "store.zarr" / "x").read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("write, value", [
    (write_bytes_atomic, b"new bytes"),
    (write_text_atomic, "new text"),
    (write_json_atomic, {"new": 1}),
])
def test_a_failing_write_leaves_the_old_file_intact_and_no_temp_file(tmp_path, monkeypatch, write, value):
    target = tmp_path / "result"
    target.write_bytes(b"old")

    def fsync_fails(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", fsync_fails)  # fails after the temp file holds the data
    with pytest.raises(OSError, match="disk full"):
        write(target, value)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["result"]


def test_a_failing_csv_row_leaves_the_old_file_intact_and_no_temp_file(tmp_path):
    target = tmp_path / "p.csv"
    write_csv_atomic(target, [{"slide": "a"}], ["slide"])

    def rows():
        yield {"slide": "b"}
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        write_csv_atomic(target, rows(), ["slide"])
    assert target.read_text().splitlines() == ["slide", "a"]
    assert os.listdir(tmp_path) == ["p.csv"]


def test_csv_has_header_and_rows(tmp_path):
    path = write_csv_atomic(tmp_path / "p.csv", [{"slide": "a", "p": 0.25}, {"slide": "b", "p": 1}], ["slide", "p"])
    assert path.read_text().splitlines() == ["slide,p", "a,0.25", "b,1"]


def test_json_is_sorted_indented_and_ends_with_a_newline(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"b": 1, "a": [1, 2]})
    text = path.read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"


def test_bytes_and_text_are_written_as_given(tmp_path):
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    assert write_text_atomic(tmp_path / "t.txt", "é\r\nx").read_bytes() == "é\r\nx".encode()
    assert _leftovers(tmp_path) == []
