"""The Megapixel-MNIST cost benchmark (benchmarks/megamnist_costs.py): training rules, costs, reruns."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
COSTS = ROOT / "benchmarks" / "megamnist_costs.py"


@pytest.mark.slow
def test_quick_cost_run_learns_and_measures_both_methods(tmp_path):
    """`benchmarks/megamnist_costs.py --quick`: the loss falls, accuracy beats chance, both costs measured."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(COSTS), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ats = summary["methods"]["attention_sampling"]
    losses = ats["train_loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert ats["test_error"] < 0.5, ats  # chance is 0.9
    for method in ("attention_sampling", "baseline_cnn"):
        cost = summary["methods"][method]
        assert cost["seconds_per_sample"] > 0 and cost["peak_memory_per_sample_mb"] >= 0
    assert (out / "megamnist.png").stat().st_size > 1000
    assert "attention sampling" in proc.stdout and "paper" in proc.stdout


@pytest.mark.slow
def test_parallel_training_gives_the_same_models_as_sequential(tmp_path):
    """`--parallel` trains each method in its own process; same seed, same threads -> same numbers.

    Also: `--lr-decay-at 1` multiplies the learning rate by 0.1 after the first epoch.
    """
    tiny = ["--quick", "--epochs", "2", "--baseline-epochs", "1", "--n-train", "64", "--baseline-n-train", "32",
            "--n-test", "16", "--measure-steps", "1", "--no-progress", "--lr-decay-at", "1"]
    histories = {}
    for mode in ("sequential", "parallel"):
        out = tmp_path / mode
        extra = ["--parallel"] if mode == "parallel" else []
        proc = subprocess.run([sys.executable, str(COSTS), *tiny, *extra, "--out", str(out)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        histories[mode] = {m: (v["train_loss"], v["test_error"]) for m, v in summary["methods"].items()}
        for method in ("attention_sampling", "baseline_cnn"):
            assert (out / f"{method}.pt").stat().st_size > 1000
            assert not (out / f"{method}.pt.tmp").exists()
    assert histories["parallel"] == histories["sequential"]
    assert len(histories["parallel"]["attention_sampling"][0]) == 2
    assert len(histories["parallel"]["baseline_cnn"][0]) == 1
    ats = json.loads((tmp_path / "parallel" / "summary.json").read_text())["methods"]["attention_sampling"]
    assert ats["lr"] == pytest.approx([1e-3, 1e-4])  # x0.1 after epoch 1

    # --epochs 0 / --baseline-epochs 0 with saved models: tested, not trained; same test error,
    # and the table names the run that trained them.
    seq = tmp_path / "sequential"
    proc = subprocess.run([sys.executable, str(COSTS), *tiny, "--epochs", "0",
                           "--baseline-epochs", "0", "--init-from", str(seq / "attention_sampling.pt"),
                           "--baseline-init-from", str(seq / "baseline_cnn.pt"), "--out", str(tmp_path / "again")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["methods"]
    for method in ("attention_sampling", "baseline_cnn"):
        assert again[method]["test_error"] == histories["sequential"][method][1]
        assert again[method]["train_loss"] == histories["sequential"][method][0]
        assert again[method]["trained_in"] == str(seq)
    assert str(seq) in proc.stdout and "not trained" not in proc.stdout


@pytest.mark.slow
def test_validation_keeps_the_best_epoch_and_decays_on_plateau(tmp_path):
    """--n-val/--patience: the learning rates and the kept epoch follow the documented rule."""
    out = tmp_path / "run"
    args = ["--quick", "--epochs", "6", "--baseline-epochs", "0", "--n-train", "64", "--n-val", "32", "--n-test", "16",
            "--patience", "1", "--max-decays", "1", "--plateau-below", "1.01",  # count every epoch
            "--measure-steps", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(COSTS), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ats = json.loads((out / "summary.json").read_text())["methods"]["attention_sampling"]
    # Replay the rule on the recorded validation errors.
    lrs, decays, since, best, best_epoch = [], 0, 0, float("inf"), None
    for epoch, err in enumerate(ats["val_error"], start=1):
        lrs.append(1e-3 * 0.1 ** decays)
        if err < best:
            best, best_epoch, since = err, epoch, 0
        else:
            since += 1
            if since >= 1:
                if decays >= 1:
                    break
                decays, since = decays + 1, 0
    assert ats["lr"] == pytest.approx(lrs)
    assert ats["epochs"] == len(lrs) == len(ats["val_error"]) == len(ats["train_loss"])
    assert ats["best_epoch"] == best_epoch and ats["best_val_error"] == best
    assert 0 <= ats["test_error"] <= 1
