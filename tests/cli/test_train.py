"""`ats-wsi train`: checkpoints every epoch, metrics.csv, and `--resume`."""
from __future__ import annotations

import math

import pytest
import torch
from cli_helpers import TRAIN_ARGS, TRAIN_ENV, cli, explain, read_csv

from ats_wsi.classifier import load_model, read_checkpoint

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "seconds", "lr", "encoder_busy",
                 "attention_sd"]


def test_train_writes_checkpoints_config_and_one_metrics_row_per_epoch(run_2_epochs, slide_set):
    run = run_2_epochs
    assert (run / "checkpoints" / "epoch-001.pt").is_file()
    assert (run / "checkpoints" / "epoch-002.pt").is_file()
    assert (run / "config.json").is_file()
    # last.pt is a copy of the last epoch's checkpoint.
    assert (run / "last.pt").read_bytes() == (run / "checkpoints" / "epoch-002.pt").read_bytes()
    best = (run / "best.pt").read_bytes()
    assert best in {(run / "checkpoints" / f"epoch-00{k}.pt").read_bytes() for k in (1, 2)}

    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == METRIC_FIELDS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0
        assert 0 <= float(r["train_acc"]) <= 1
        assert 0 <= float(r["encoder_busy"]) <= 1  # the encoder's share of the epoch
        # One validation slide: its loss is finite and its accuracy 0 or 1.
        assert math.isfinite(float(r["val_loss"]))
        assert float(r["val_acc"]) in (0.0, 1.0)
        assert float(r["lr"]) == pytest.approx(1e-3)
        assert float(r["attention_sd"]) >= 0  # the attention map's spread over tissue

    # The checkpoint rebuilds the model from its config alone, with the flags given.
    model, payload = load_model(run / "last.pt"), read_checkpoint(run / "last.pt")
    assert payload["epoch"] == 2
    assert payload["config"]["n_patches"] == 4 and payload["config"]["patch_size"] == 64
    assert payload["config"]["feature_dim"] == 8 and payload["config"]["low_downsample"] == 16.0
    assert payload["metrics"]["train_loss"] == pytest.approx(float(rows[-1]["train_loss"]), rel=1e-12)
    assert "optimizer" in payload and "ats_wsi_version" in payload
    assert not model.training


def test_resume_continues_to_more_epochs_keeping_the_history(run_2_epochs, tmp_path, slide_set):
    # The run folder as a run stopped after its first epoch leaves it.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    first = (run_2_epochs / "checkpoints" / "epoch-001.pt").read_bytes()
    (run / "checkpoints" / "epoch-001.pt").write_bytes(first)
    (run / "last.pt").write_bytes(first)
    straight = read_csv(run_2_epochs / "metrics.csv")

    proc = cli("train", slide_set.manifest, "--out", run, "--epochs", "2", "--resume", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert "epoch   2" in proc.stdout and "epoch   1" not in proc.stdout  # epoch 1 is not run again

    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == straight[0]  # epoch 1's row comes from the checkpoint's history, timing included
    assert (run / "checkpoints" / "epoch-001.pt").read_bytes() == first
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    # best.pt is written again (it was missing): the checkpoint of the best validation epoch.
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"]), int(r["epoch"])))
    assert (run / "best.pt").read_bytes() == (run / "checkpoints" / f"epoch-00{best['epoch']}.pt").read_bytes()

    # Resuming gives the run that never stopped: same weights, optimizer state and draws.
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert float(rows[1][key]) == pytest.approx(float(straight[1][key]), rel=1e-6, abs=1e-9), key


def test_resume_without_a_checkpoint_fails_with_a_clear_message(slide_set, tmp_path):
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "empty", "--epochs", "1", "--resume", *TRAIN_ARGS)
    assert proc.returncode == 1
    assert "CheckpointError" in proc.stderr and "cannot resume" in proc.stderr
    assert "Traceback" not in proc.stderr
