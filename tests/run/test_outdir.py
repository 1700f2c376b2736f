"""The results folder (ats_wsi.run.outdir, issue 19 part 4), in process: the lock, run-owned
temporaries, done markers that pair with their files, typed errors for a folder that cannot be
written, long and hostile slide names. The same faults as real processes: tests/cli/test_faults.py."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil

import pytest
import torch

from ats_wsi import atomic
from ats_wsi.atomic import atomic_path, is_temporary, owned_by, spreadsheet_safe, write_csv_atomic
from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import AtsError, OutputError, OutputLockedError
from ats_wsi.run.outdir import (
    LOCK_NAME,
    as_output_error,
    hold_results_folder,
    output_digests,
    outputs_match,
    remove_stale_temporaries,
)
from ats_wsi.run.predict import MAX_NAME_BYTES, PredictSettings, output_names, predict_slides

TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0)


# ---------------------------------------------------------------- temporaries


def test_temporary_names_are_short_exact_and_carry_their_owner(tmp_path):
    long_name = "a" * 250 + ".png"  # a 254-byte final name: its temporary must not be longer
    seen = []
    with owned_by("0123456789ab"):
        with atomic_path(tmp_path / long_name) as tmp:
            seen.append(tmp.name)
            tmp.write_bytes(b"x")
    assert (tmp_path / long_name).read_bytes() == b"x"
    assert len(seen[0]) == len(".ats.tmp-0123456789ab-") + 8 and is_temporary(seen[0])
    assert atomic.temporary_owner(seen[0]) == "0123456789ab"
    for lookalike in (".x.tmp-1", ".x.tmp-1.zarr", ".slide.svs.tmp-123-abcdef12", ".ats.tmp-0123456789ab-abcdef12.zarr",
                      ".ats.tmp-0123456789AB-abcdef12", "ats.tmp-0123456789ab-abcdef12", ".ats-wsi.lock"):
        assert not is_temporary(lookalike), lookalike
    with pytest.raises(ValueError):
        with owned_by("not-hex"):
            pass


def test_files_and_folders_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with atomic_path(tmp_path / "m.zarr") as tmp:
        (tmp / "0").mkdir(parents=True)
        (tmp / "0" / "c").write_bytes(b"chunk")
        (tmp / ".zattrs").write_text("{}")
    names = [os.path.relpath(p, tmp_path) for p in synced]
    tmp_name = names[0].split("/")[0]
    assert is_temporary(tmp_name)
    # every file and folder of the store, under its temporary name, then the parent after the rename
    assert {f"{tmp_name}/0/c", f"{tmp_name}/.zattrs", f"{tmp_name}/0", tmp_name} <= set(names)
    assert names[-1] == "."
    synced.clear()
    with atomic_path(tmp_path / "o.png") as tmp:
        tmp.write_bytes(b"png")
    assert [os.path.relpath(p, tmp_path) for p in synced] == [os.path.relpath(synced[0], tmp_path), "."]


def test_cleanup_removes_only_exact_temporaries_of_other_runs(tmp_path):
    mine, theirs = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
    for folder in ("", "maps", "overlays", ".done", "geojson"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f".ats.tmp-{theirs}-00000000").write_text("stale")
        (tmp_path / folder / f".ats.tmp-{mine}-00000000").write_text("in flight")
    (tmp_path / "maps" / f".ats.old-{theirs}-11111111").mkdir()
    keep = [tmp_path / "maps" / ".x.tmp-1.zarr", tmp_path / "overlays" / ".x.tmp-1.png",
            tmp_path / ".done" / ".x.tmp-1.json", tmp_path / "maps" / ".slide.zarr.tmp-12-abcdef12"]
    for p in keep:
        p.write_text("a result")
    removed = remove_stale_temporaries(tmp_path, mine)
    assert len(removed) == 6 and all(theirs in r for r in removed)
    assert all(p.exists() for p in keep)
    assert len(list(tmp_path.rglob(f".ats.tmp-{mine}-*"))) == 5


# ---------------------------------------------------------------- the lock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "out"
    with hold_results_folder(out, "aaaaaaaaaaaa"):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["run"] == "aaaaaaaaaaaa"
        with pytest.raises(OutputLockedError, match=rf"another ats-wsi run \(pid {os.getpid()} on .*, run "
                                                     r"aaaaaaaaaaaa, started .*\) is writing this results folder"):
            with hold_results_folder(out, "bbbbbbbbbbbb"):
                pass
    assert (out / LOCK_NAME).read_text() == ""  # released and emptied
    with hold_results_folder(out, "bbbbbbbbbbbb"):
        pass


def test_a_locked_folder_refuses_predict_slides_before_it_touches_anything(tmp_path):
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    stale = out / "maps" / ".ats.tmp-cccccccccccc-00000000"
    stale.write_text("another run's, in flight")
    with hold_results_folder(out, "cccccccccccc"):
        with pytest.raises(OutputLockedError):
            predict_slides([], PredictSettings(checkpoint="nowhere.pt", out_dir=str(out)))
    assert stale.exists()  # the held run's temporary was not cleaned


# ---------------------------------------------------------------- errors of the folder


def test_os_errors_of_the_results_folder_become_typed_errors(tmp_path):
    full = as_output_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert isinstance(full, OutputError) and isinstance(full, AtsError) and isinstance(full, OSError)
    assert "no space left" in str(full) and "run the same command again" in str(full)
    ro = as_output_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "maps" / "x")), tmp_path)
    assert str(ro).startswith(str(tmp_path / "maps" / "x")) and "read-only file system" in str(ro)
    denied = as_output_error(PermissionError(errno.EPERM, "Operation not permitted", str(tmp_path / "p.csv")),
                             tmp_path)
    assert "permission denied" in str(denied)
    # a slide's own error is not the folder's
    assert as_output_error(PermissionError(errno.EACCES, "denied", "/data/slide.svs"), tmp_path) is None
    assert as_output_error(ValueError("x"), tmp_path) is None


def test_a_read_only_results_folder_is_a_typed_error(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out"))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    with pytest.raises(OutputError, match="read-only file system"):
        with hold_results_folder(tmp_path / "out", "aaaaaaaaaaaa"):
            pass


# ---------------------------------------------------------------- CSV cells


@pytest.mark.parametrize("cell, want", [
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("-0.5", "-0.5"), ("+1", "+1"), ("1e-3", "1e-3"), ("-inf", "-inf"), ("slide_000", "slide_000"),
    ("", ""), (-0.5, -0.5), (3, 3),
])
def test_cells_a_spreadsheet_would_run_are_quoted(cell, want):
    assert spreadsheet_safe(cell) == want


def test_every_csv_is_written_spreadsheet_safe(tmp_path):
    path = write_csv_atomic(tmp_path / "p.csv", [{"name": "=1+1", "p": "-0.25", "x": "@x"}], ["name", "p"])
    with open(path, newline="") as fh:
        assert list(csv.reader(fh)) == [["name", "p"], ["'=1+1", "-0.25"]]


# ---------------------------------------------------------------- names


def test_long_names_are_cut_with_a_hash_and_stay_unique():
    long_a, long_b = "é" * 120 + "a", "é" * 120 + "b"  # 241 bytes each, equal for their first 180
    names = output_names([__import__("pathlib").Path(f"/s/{n}.svs") for n in (long_a, long_b, "short")])
    assert names[2] == "short"
    assert names[0] != names[1] and all(len(os.fsencode(n)) <= MAX_NAME_BYTES for n in names)
    assert names[0].startswith("é" * 90) and len(names[0].split("-")[-1]) == 8


def test_a_slide_named_x_zoom_beside_x_gets_its_own_name_so_no_overlay_is_x_zoom_sheet():
    from pathlib import Path

    names = output_names([Path("/s/x.svs"), Path("/s/x.zoom.svs"), Path("/s/y.zoom.svs")])
    assert names[0] == "x" and names[2] == "y.zoom"  # no "y" beside it: kept
    assert names[1].startswith("x.zoom-") and len(names[1]) == len("x.zoom-") + 8


# ---------------------------------------------------------------- done markers pair with their files


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    paths = [folder / "one.svs", folder / "two.svs"]
    for i, p in enumerate(paths):
        write_synthetic_slide(p, 2048, 1536, n_lesions=0, seed=5 + i)
    torch.manual_seed(0)
    ckpt = folder / "model.pt"
    save_checkpoint(ckpt, build_model(ModelConfig(**TINY)))
    return paths, ckpt


def _run(ckpt, slides, out, **kw):
    statuses = []
    rows, errors = predict_slides(slides, PredictSettings(checkpoint=str(ckpt), out_dir=str(out), **kw),
                                  progress=lambda name, status: statuses.append((name, status)))
    return rows, errors, dict(statuses)


def test_a_marker_is_trusted_only_with_the_files_it_vouches_for(two_slides, tmp_path):
    slides, ckpt = two_slides
    a, b = tmp_path / "a", tmp_path / "b"
    rows_a, _, _ = _run(ckpt, slides, a, seed=1)
    _run(ckpt, slides, b, seed=2)
    marker = json.loads((a / ".done" / "one.json").read_text())
    assert set(marker["outputs"]) == {"maps/one.zarr", "overlays/one.png"}
    assert outputs_match(a, marker["outputs"])
    assert output_digests(a, list(marker["outputs"])) == marker["outputs"]
    # another run's map (or overlay) under a's marker: the slide is predicted again
    shutil.rmtree(a / "maps" / "one.zarr")
    shutil.copytree(b / "maps" / "one.zarr", a / "maps" / "one.zarr")
    shutil.copyfile(b / "overlays" / "two.png", a / "overlays" / "two.png")
    rows, _, statuses = _run(ckpt, slides, a, seed=1)
    assert statuses == {"one": "done", "two": "done"}
    assert [r["p0"] for r in rows] == [r["p0"] for r in rows_a]
    assert _run(ckpt, slides, a, seed=1)[2] == {"one": "skipped", "two": "skipped"}


def test_a_rewrite_removes_the_marker_before_the_first_new_file(two_slides, tmp_path, monkeypatch):
    """A run with other settings that dies after replacing a map leaves no marker that vouches for it."""
    slides, ckpt = two_slides
    out = tmp_path / "out"
    _run(ckpt, slides[:1], out, seed=1)
    from ats_wsi.run import slide_outputs

    def dies_after_the_map(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as if killed right after the map's rename

    original = slide_outputs.write_attention_zarr
    monkeypatch.setattr(slide_outputs, "write_attention_zarr", dies_after_the_map)
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt, slides[:1], out, seed=2)
    monkeypatch.undo()
    assert not (out / ".done" / "one.json").exists()
    assert _run(ckpt, slides[:1], out, seed=1)[2] == {"one": "done"}


def test_the_lock_is_released_when_a_run_fails(two_slides, tmp_path):
    slides, ckpt = two_slides
    out = tmp_path / "out"
    with pytest.raises(AtsError, match="no such checkpoint"):
        _run(tmp_path / "nowhere.pt", slides, out)  # fails inside the lock
    assert (out / LOCK_NAME).read_text() == ""
    assert _run(ckpt, slides[:1], out, seed=1)[2] == {"one": "done"}  # a new open file: not refused


def test_a_full_disk_in_a_slide_stops_the_run_with_a_typed_error(two_slides, tmp_path, monkeypatch):
    slides, ckpt = two_slides
    out = tmp_path / "out"
    from ats_wsi.run import slide_outputs

    def full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slide_outputs, "write_overlay_png", full)
    with pytest.raises(OutputError, match="no space left on the device"):
        _run(ckpt, slides, out, seed=1)
    assert not (out / "errors.csv").exists() or "OSError" not in (out / "errors.csv").read_text()
    assert [p.name for p in out.rglob("*") if is_temporary(p.name)] == []
    with hold_results_folder(out, "dddddddddddd"):  # the run's lock was released
        pass
