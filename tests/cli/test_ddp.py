"""`ats-wsi train` under torchrun: DDP on CPU (gloo), 2 processes, gives the loss
trajectory and the model of one process with the same total batch.

Each slide's draws are seeded by (seed, epoch, slide) whatever process runs it,
gradients are averaged by DDP, the short last batch (5 training slides, batch
2) is handled as one process handles it, and BatchNorm running statistics are
folded in slide by slide in batch order on every process. What is left is the
order of float sums: the tolerance is 1e-4 relative (here they agree exactly).
Rank 0's BatchNorm statistics alone, as DDP keeps them by default, moved the
validation loss by ~2e-3 relative and made the checkpoints differ.

Both sides run one thread per process (torchrun's default; ``TRAIN_ENV`` for the
single process). With different thread counts the losses still agree to ~1e-6,
but weights whose gradient is zero in theory (the bias of the attention net's
last conv: the spatial softmax ignores a constant) get float noise as gradient,
which Adam turns into steps of size lr, so weights could not be compared.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from cli_helpers import ATS_WSI, TRAIN_ARGS, TRAIN_ENV, read_csv

REL = 1e-4


@pytest.fixture(scope="module")
def ddp_run(slide_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    module_args = ATS_WSI[2:] if ATS_WSI[0] == sys.executable else ["-m", "ats_wsi.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           *module_args, "train", str(slide_set.manifest), "--out", str(out), "--epochs", "2", *TRAIN_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=TRAIN_ENV)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return out, proc


def test_ddp_loss_trajectory_equals_one_process_with_the_same_batch(ddp_run, run_2_epochs):
    out, _ = ddp_run
    ddp, single = read_csv(out / "metrics.csv"), read_csv(run_2_epochs / "metrics.csv")
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == ["1", "2"]
    for a, b in zip(ddp, single):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=REL), (a["epoch"], key)
        for key in ("train_acc", "val_acc"):
            assert float(a[key]) == float(b[key]), (a["epoch"], key)


def test_ddp_checkpoint_equals_one_process_weights_and_batchnorm_statistics(ddp_run, run_2_epochs):
    out, _ = ddp_run
    a = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(run_2_epochs / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert any("running_mean" in k for k in a)  # the feature net has BatchNorm layers
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=REL, atol=1e-6, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key  # num_batches_tracked: every slide counted once


def test_only_rank_0_writes_and_speaks(ddp_run):
    out, proc = ddp_run
    assert proc.stdout.count("checkpoints in") == 1
    assert proc.stdout.count("epoch   2") == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]
