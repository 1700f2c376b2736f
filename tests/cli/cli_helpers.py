"""Helpers of the command-line tests: run `ats-wsi`, read its CSVs, compare result folders."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("ats-wsi")
ATS_WSI = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "ats_wsi.cli"]

# The tiny model every test trains or predicts with (flags of `ats-wsi train`); it predicts with its
# training draws (the command's default is 4 x them: tests/cli/test_train_aids.py checks that).
MODEL_ARGS = ["--n-patches", "4", "--predict-patches", "4", "--patch-size", "64", "--feature-dim", "8",
              "--low-downsample", "16"]
# Pinned to plain attention sampling as it trained before the command's defaults changed (docs/training.md):
# these tests check checkpoints, resume, DDP and cohorts, not learning aids (tests/cli/test_train_aids.py does).
PLAIN = ["--lr", "1e-3", "--attention-lr", "1e-3", "--schedule", "constant", "--select", "accuracy",
         "--temperature", "1", "--no-instance-head", "--instance-weight", "0", "--distill-weight", "0",
         "--explore-epochs", "0", "--attention-kwargs", "{}", "--feature-kwargs", "{}", "--patch-level", "0"]
TRAIN_ARGS = [*MODEL_ARGS, *PLAIN, "--batch-size", "2", "--seed", "0", "--no-progress"]
# Training runs use one thread per process, as torchrun sets it, so that one process and
# DDP sum floats in the same order (Adam turns the float noise of parameters whose
# gradient is exactly zero in theory, like the bias of the last attention conv, into
# full-size steps; see test_ddp.py).
TRAIN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# `ats-wsi predict` settings shared by the reference run and every run compared with it.
PREDICT_ARGS = ["--samples", "2", "--seed", "7", "--no-progress"]
N_GOOD = 4  # good slides in the predict folder


def cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``ats-wsi ARGS`` in a subprocess; text stdout/stderr captured."""
    return subprocess.run([*ATS_WSI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_popen(*args, out_dir: Path, cwd=None) -> subprocess.Popen:
    """Start ``ats-wsi ARGS`` without waiting; stdout/stderr go to files in ``out_dir``
    (pipes could fill up and block a child that is left running).

    The child gets SIGINT's default action, as a command started from a terminal
    has: a test suite run as a background job of a script (``cmd &``) inherits
    SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout = open(out_dir / "stdout.txt", "w")
    stderr = open(out_dir / "stderr.txt", "w")
    try:
        return subprocess.Popen([*ATS_WSI, *map(str, args)], cwd=cwd, stdout=stdout, stderr=stderr,
                                preexec_fn=_default_sigint)
    finally:
        stdout.close()
        stderr.close()


def slide_set_manifest(folder: Path, *, n_slides: int, size, seed: int, val_index: int) -> tuple[Path, list]:
    """Synthetic slides (``make_slide_set``, lesions of 60-120 µm) in ``folder/set`` and
    ``folder/manifest.csv`` of ``path,label,split``: slide ``val_index`` is val, the rest train.
    Returns the manifest and the slide set's rows."""
    from ats_wsi.data.synthetic import make_slide_set

    rows = read_csv(make_slide_set(folder / "set", n_slides=n_slides, size=size, seed=seed,
                                   lesion_size_um=(60.0, 120.0)))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for i, row in enumerate(rows):
            writer.writerow([row["path"], row["label"], "val" if i == val_index else "train"])
    return manifest, rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# ---------------------------------------------------------------- comparing result folders


def tree(out: Path) -> set[str]:
    """Relative paths of every result file under ``out`` (not the log of library warnings,
    ``predict.log``: which warnings a run meets depends on where it ran)."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.suffix != ".log"}


def temporaries(out: Path) -> list[str]:
    """Names a writer leaves only when interrupted (``.tmp-``, ``.old-``)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_results(got: Path, want: Path) -> None:
    """Two results folders are equal file for file: maps, overlays and errors byte-equal,
    predictions.csv and the done markers equal except the timing (``seconds``); ``run.json``
    summarises the last run only (a resumed run predicts fewer slides): the same keys."""
    assert tree(got) == tree(want)
    for rel in sorted(tree(want)):
        a, b = (got / rel), (want / rel)
        if rel == "predictions.csv":
            assert without_seconds(read_csv(a)) == without_seconds(read_csv(b)), rel
        elif rel == "run.json":
            assert set(json.loads(a.read_text())) == set(json.loads(b.read_text())), rel
        elif rel.startswith(".done/"):
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            ja.pop("seconds"), jb.pop("seconds")
            assert ja == jb, rel
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
