"""Shared fixtures of the command-line tests: real slides, real runs, real subprocesses.

Everything here is written once per session (``tmp_path_factory``) and kept
small so that the whole of tests/cli runs in about two minutes on 2 cores:

- six synthetic Aperio-style slides of 2048..2560 x 1536..1920 pixels
  (non-square, sizes not multiples of the tile), 5 for training, 1 for
  validation (the odd number gives a short last batch at ``--batch-size 2``);
- a tiny model (4 patches of 64 px, feature dim 8, low view at 1/16);
- a two-epoch training run;
- a folder to predict: four good slides, a garbage ``.svs`` and a real
  slide cut at half its length; and an uninterrupted in-process prediction
  of it, the reference the interrupted and the distributed runs must equal.

Commands run through the installed ``ats-wsi`` entry point (or
``python -m ats_wsi.cli`` where the script is missing), exactly as a user runs them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import N_GOOD, PREDICT_ARGS, TRAIN_ARGS, TRAIN_ENV, cli, explain, read_csv, slide_set_manifest



@dataclass
class SlideSet:
    folder: Path
    manifest: Path  # path,label,split: 5 train, 1 val
    slides: list[Path]
    labels: list[int]


@pytest.fixture(scope="session")
def slide_set(tmp_path_factory) -> SlideSet:
    folder = tmp_path_factory.mktemp("slides")
    manifest, rows = slide_set_manifest(folder, n_slides=6, size=((2048, 1536), (2560, 1920)), seed=3, val_index=1)
    return SlideSet(folder, manifest, [Path(r["path"]) for r in rows], [int(r["label"]) for r in rows])


@pytest.fixture(scope="session")
def run_2_epochs(slide_set, tmp_path_factory) -> Path:
    """A run folder after ``ats-wsi train --epochs 2`` (one thread, see ``TRAIN_ENV``)."""
    out = tmp_path_factory.mktemp("train") / "run2"
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "2", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    return out


@pytest.fixture(scope="session")
def checkpoint(run_2_epochs, tmp_path_factory) -> Path:
    """A copy of the first epoch's checkpoint, to predict with."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    shutil.copyfile(run_2_epochs / "checkpoints" / "epoch-001.pt", path)
    return path


@dataclass
class PredictInput:
    folder: Path
    good: list[Path]
    garbage: Path  # random bytes named .svs
    truncated: Path  # a real slide cut at half its length


@pytest.fixture(scope="session")
def predict_input(slide_set, tmp_path_factory) -> PredictInput:
    folder = tmp_path_factory.mktemp("predict_in")
    good = []
    for src in slide_set.slides[:N_GOOD]:
        good.append(Path(shutil.copyfile(src, folder / src.name)))
    garbage = folder / "garbage.svs"
    garbage.write_bytes(os.urandom(40_000))
    data = slide_set.slides[N_GOOD].read_bytes()
    truncated = folder / "truncated.svs"
    truncated.write_bytes(data[: len(data) // 2])
    return PredictInput(folder, good, garbage, truncated)


@dataclass
class Reference:
    out: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def reference(checkpoint, predict_input, tmp_path_factory) -> Reference:
    """An uninterrupted, in-process ``ats-wsi predict`` of the predict folder."""
    out = tmp_path_factory.mktemp("predict") / "reference"
    proc = cli("predict", checkpoint, predict_input.folder, "--out", out, *PREDICT_ARGS)
    # Runs are compared with it: it must have predicted every good slide.
    done = read_csv(out / "predictions.csv") if (out / "predictions.csv").is_file() else []
    assert len(done) == N_GOOD, explain(proc)
    return Reference(out, proc)
