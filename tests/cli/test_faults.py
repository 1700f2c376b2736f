"""Faults of the results folder as real processes (issue 19, part 4): `ats-wsi predict` killed at
each rename point, then run again; killed while rewriting a finished folder with other settings;
a second run on the same --out; a full, a read-only and an immutable --out; hostile slide names.

Kills and stops use the test-only hook of ats_wsi.atomic (ATS_WSI_FAULT_AT=POINT:GLOB, SIGKILL at
that point; ATS_WSI_FAULT_SIGNAL=STOP stops there instead). Disks use a tmpfs, a read-only bind
mount and `chattr +i`; where this machine does not allow them (not root, no mount) the test is
skipped and says why. Every rerun is compared with an uninterrupted run, byte for byte (but for
the timing column).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import ATS_WSI, PREDICT_ARGS, assert_same_results, cli, explain, read_csv, temporaries

from ats_wsi.atomic import is_temporary

pytestmark = pytest.mark.slow
EXIT_LOCKED = 75


@pytest.fixture(scope="module")
def fault_input(predict_input, tmp_path_factory) -> Path:
    """Two good slides and a garbage one (so that every run writes errors.csv too)."""
    folder = tmp_path_factory.mktemp("fault_in")
    for src in [*predict_input.good[:2], predict_input.garbage]:
        shutil.copyfile(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def fault_reference(checkpoint, fault_input, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault_ref") / "reference"
    proc = cli("predict", checkpoint, fault_input, "--out", out, *PREDICT_ARGS)
    assert proc.returncode == 1 and len(read_csv(out / "predictions.csv")) == 2, explain(proc)
    return out


def _predict(checkpoint, folder, out, *extra, fault=None, signal_name=None, wait=True):
    env = dict(os.environ)
    if fault:
        env["ATS_WSI_FAULT_AT"] = fault
    if signal_name:
        env["ATS_WSI_FAULT_SIGNAL"] = signal_name
    args = [*ATS_WSI, "predict", str(checkpoint), str(folder), "--out", str(out), *PREDICT_ARGS, *extra]
    if wait:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("ats-wsi predict: ")]
    assert len(line) == 1 and "OutputError" in line[0], explain(proc)
    for w in words:
        assert w in line[0], explain(proc)


# ---------------------------------------------------------------- kill -9 at each rename point


@pytest.mark.parametrize("point", [
    "before-rename:maps/*.zarr",  # the first map complete under its temporary name
    "after-rename:overlays/*.png",  # map and overlay in place, no marker
    "after-rename:.done/*.json",  # a marker, not yet in predictions.csv
    "before-rename:predictions.csv",
])
def test_killed_at_a_rename_point_then_rerun_equals_an_uninterrupted_run(point, checkpoint, fault_input,
                                                                         fault_reference, tmp_path):
    out = tmp_path / "results"
    killed = _predict(checkpoint, fault_input, out, fault=point)
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    again = _predict(checkpoint, fault_input, out)
    assert again.returncode == 1, explain(again)  # the garbage slide
    assert temporaries(out) == []
    assert_same_results(out, fault_reference)


@pytest.mark.parametrize("point", [
    "after-unlink:.done/*.json",  # the old marker gone, nothing new yet
    "after-aside:maps/*.zarr",  # the old map moved aside, the new one not yet in place
    "after-rename:maps/*.zarr",  # the new map beside the old overlay (the bug of issue 19)
    "after-rename:overlays/*.png",
])
def test_a_killed_rerun_with_other_settings_never_pairs_its_files_with_old_rows(point, checkpoint, fault_input,
                                                                                fault_reference, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(fault_reference, out)
    killed = _predict(checkpoint, fault_input, out, "--seed", "8", fault=point)  # other settings
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    again = _predict(checkpoint, fault_input, out)  # the original settings: the slide is made again
    assert again.returncode == 1, explain(again)
    assert temporaries(out) == []
    assert_same_results(out, fault_reference)


# ---------------------------------------------------------------- two runs, one --out


def _wait_stopped(proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the first run ended (exit {proc.returncode}) before its stop point\n{proc.stderr.read()}")
        with contextlib.suppress(OSError):
            if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the first run did not reach its stop point")


def test_a_second_run_on_the_same_out_is_refused_and_touches_nothing(checkpoint, fault_input, fault_reference,
                                                                     tmp_path):
    out = tmp_path / "results"
    first_slide = sorted(p.stem for p in fault_input.glob("slide_*.svs"))[0]  # (it would stop again at every match)
    first = _predict(checkpoint, fault_input, out, fault=f"after-rename:overlays/{first_slide}.png",
                     signal_name="STOP", wait=False)
    try:
        _wait_stopped(first)  # it holds the lock, its first slide half written
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        for extra in ([], ["--seed", "8"]):
            second = _predict(checkpoint, fault_input, out, *extra)
            assert second.returncode == EXIT_LOCKED, explain(second)
            assert "Traceback" not in second.stderr
            assert (f"ats-wsi predict: {out}: another ats-wsi run (pid {first.pid} on " in second.stderr
                    and "is writing this results folder; wait until it ends, or choose another --out"
                    in second.stderr), explain(second)
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 1, stderr
    assert_same_results(out, fault_reference)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_two_runs_started_together_give_no_false_failure(offset, checkpoint, fault_input, fault_reference,
                                                         tmp_path):
    out = tmp_path / "results"
    first = _predict(checkpoint, fault_input, out, wait=False)
    time.sleep(offset)
    second = _predict(checkpoint, fault_input, out, wait=False)
    results = [(p.returncode, *p.communicate(timeout=300)) for p in (first, second)]
    results = [(p.returncode, o, e) for p, (_, o, e) in zip((first, second), results)]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([1, 1], [1, EXIT_LOCKED]), results  # one waits its turn or finds the work done
    for code, _, err in results:
        assert "Traceback" not in err
        if code == 1:  # the garbage slide, nothing else
            assert "1 slide(s) failed" in err and "garbage.svs" in err, err
    assert_same_results(out, fault_reference)


# ---------------------------------------------------------------- full, read-only, immutable


@contextlib.contextmanager
def _mounted(target: Path, *args):
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")
    target.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {got.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes (a page at a time)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    block = b"\0" * 4096
    try:
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_at_start_is_one_line_not_a_traceback(checkpoint, fault_input, tmp_path):
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        _fill(disk)
        proc = _predict(checkpoint, fault_input, disk / "results")
        _assert_one_line_error(proc, "no space left on the device")


def test_a_disk_that_fills_mid_run_stops_cleanly_and_the_rerun_completes(checkpoint, fault_input, fault_reference,
                                                                        tmp_path):
    need = sum(-(-p.stat().st_size // 4096) * 4096 for p in fault_reference.rglob("*") if p.is_file())
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", f"size={need + (1 << 20)}", "tmpfs") as disk:
        filler = _fill(disk, leave=need // 2)
        out = disk / "results"
        proc = _predict(checkpoint, fault_input, out)
        _assert_one_line_error(proc, "no space left on the device", "run the same command again")
        if (out / "errors.csv").is_file():
            assert "OSError" not in (out / "errors.csv").read_text()
        filler.unlink()
        again = _predict(checkpoint, fault_input, out)
        assert again.returncode == 1, explain(again)
        assert temporaries(out) == []
        assert_same_results(out, fault_reference)


def test_a_read_only_out_is_one_line_not_a_traceback(checkpoint, fault_input, tmp_path):
    folder = tmp_path / "ro"
    (folder / "existing").mkdir(parents=True)
    with _mounted(folder, "--bind", str(folder)):
        got = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        if got.returncode != 0:
            pytest.skip(f"a read-only remount is not permitted here: {got.stderr.strip()}")
        for out in (folder / "existing", folder / "absent"):
            proc = _predict(checkpoint, fault_input, out)
            _assert_one_line_error(proc, "read-only file system")


def test_an_immutable_out_is_one_line_and_leaves_the_results_as_they_were(checkpoint, fault_input,
                                                                          fault_reference, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(fault_reference, out)
    got = subprocess.run(["chattr", "+i", str(out)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {got.stderr.strip()}")
    try:
        proc = _predict(checkpoint, fault_input, out)  # both slides skipped; the CSVs cannot be written
        _assert_one_line_error(proc, "permission denied")
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert temporaries(out) == []
    assert_same_results(out, fault_reference)


# ---------------------------------------------------------------- hostile slide names


def test_long_temporary_looking_and_formula_slide_names(checkpoint, predict_input, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    names = ["L" * 240, ".x.tmp-1", '=HYPERLINK("https:evil.example","open")']
    slides = [Path(shutil.copyfile(predict_input.good[0], folder / f"{n}.svs")) for n in names]
    out = tmp_path / "results"
    proc = cli("predict", checkpoint, *slides, "--out", out, *PREDICT_ARGS)
    assert proc.returncode == 0, explain(proc)
    rows = read_csv(out / "predictions.csv")
    assert [r["slide"] for r in rows] == [str(s) for s in slides]
    long_name, dot_name, formula = (r["name"] for r in rows)
    assert len(long_name.encode()) <= 200 and long_name.startswith("L" * 180 + "-")
    assert dot_name == ".x.tmp-1"
    assert formula == "'" + names[2]  # text in a spreadsheet, not a formula
    for name in (long_name, dot_name, names[2]):
        assert (out / "maps" / f"{name}.zarr").is_dir() and (out / "overlays" / f"{name}.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".log"
              and p.name not in ("predictions.csv", "errors.csv", "run.json", ".ats-wsi.lock")}
    again = cli("predict", checkpoint, *slides, "--out", out, *PREDICT_ARGS)
    assert again.returncode == 0, explain(again)
    assert [p for p in stamps if not p.exists()] == []  # .x.tmp-1's files are results, not temporaries
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # all three skipped, nothing redone
    assert [p.name for p in out.rglob("*") if is_temporary(p.name)] == []
