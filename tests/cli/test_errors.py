"""Bad input to a command: a clear message naming the file and no traceback; exit code 1
(2 for usage errors, as argparse gives)."""
from __future__ import annotations

import os

import pytest
import torch
from cli_helpers import TRAIN_ARGS, cli


def _assert_clean_failure(proc, *words):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


REASONS = {"missing": "no such checkpoint file", "garbage": "not a readable checkpoint",
           "mismatched": "weights do not fit the config"}


@pytest.mark.parametrize("kind", list(REASONS))
def test_predict_with_a_bad_checkpoint_fails_before_doing_anything(kind, checkpoint, predict_input, tmp_path):
    ckpt = tmp_path / "model.pt"
    if kind == "garbage":
        ckpt.write_bytes(os.urandom(2000))
    elif kind == "mismatched":  # a config that does not describe the weights
        payload = torch.load(checkpoint, weights_only=True)
        payload["config"]["feature_dim"] = 16
        torch.save(payload, ckpt)
    out = tmp_path / "results"
    # --workers: the checkpoint is checked before a cluster is started.
    proc = cli("predict", ckpt, predict_input.good[0], "--out", out, "--workers", "2", "--no-progress")
    _assert_clean_failure(proc, "ats-wsi predict: CheckpointError", str(ckpt), REASONS[kind])
    assert not out.exists()


def test_train_with_an_unknown_net_is_a_usage_error(slide_set, tmp_path):
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", "--feature-net", "no-such-net", *TRAIN_ARGS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad model settings: unknown feature net 'no-such-net'" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "m.csv", "--out", "r", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["predict", "m.pt", "s.svs", "--out", "r", "--samples", "0"], "argument --samples: must be >= 1, got 0"),
    (["predict", "m.pt", "s.svs", "--out", "r", "--workers", "two"], "argument --workers: 'two' is not an integer"),
])
def test_bad_numbers_are_usage_errors(args, message, tmp_path):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "usage: ats-wsi" in proc.stderr and message in proc.stderr


def test_train_with_a_manifest_missing_a_column_says_which(slide_set, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split\n" + "".join(f"{p},train\n" for p in slide_set.slides))
    proc = cli("train", manifest, "--out", tmp_path / "run", "--epochs", "1", *TRAIN_ARGS)
    _assert_clean_failure(proc, "ats-wsi train: ManifestError", str(manifest), "missing column(s) ['label']")
    assert not (tmp_path / "run").exists()


def test_train_with_a_missing_manifest_says_so(tmp_path):
    proc = cli("train", tmp_path / "nope.csv", "--out", tmp_path / "run", *TRAIN_ARGS)
    _assert_clean_failure(proc, "ManifestError", "no such manifest file")


def test_under_torchrun_a_batch_that_does_not_split_over_the_processes_is_a_usage_error(slide_set, tmp_path):
    # WORLD_SIZE is what torchrun sets; the check comes before any process group is made.
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", *TRAIN_ARGS, "--batch-size", "3",
               env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--batch-size 3 must be a multiple of the 2 processes" in proc.stderr
