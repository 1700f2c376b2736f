"""Training stores Youden's threshold of the validation slides; `predict` on labelled slides writes
ROC/PR curves (CSV equal to scikit-learn's on predictions.csv, PNG), AUPRC and the operating point."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ats_wsi.classifier import ModelConfig
from ats_wsi.classifier.checkpoint import read_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.run.train import TrainSettings, train

TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ats_wsi.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on 2 slides, validated on 4 (two of each class): a checkpoint with a threshold."""
    folder = tmp_path_factory.mktemp("curves")
    rows = ["path,label,split"]
    for i in range(6):
        path = folder / f"s{i}.svs"
        write_synthetic_slide(path, 1024, 768, n_lesions=i % 2, seed=20 + i, lesion_size_um=(40.0, 80.0))
        rows.append(f"{path},{i % 2},{'train' if i < 2 else 'val'}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    train(manifest, folder / "run", ModelConfig(**TINY), TrainSettings(epochs=1, batch_size=2), progress=False)
    return folder, manifest


def test_training_stores_a_validation_threshold_in_the_checkpoint(trained):
    folder, _ = trained
    stored = read_checkpoint(folder / "run" / "best.pt")["metrics"]["val_threshold"]
    assert 0.0 <= stored <= 1.0  # a P(class 1) of a validation slide (NaN when not computed)


@pytest.mark.parametrize("given", [None, 0.5, 0.0])
def test_predict_writes_curves_auprc_and_the_operating_point(trained, tmp_path, given):
    folder, manifest = trained
    out = tmp_path / "out"
    extra = [] if given is None else ["--threshold", given]
    proc = _cli("predict", folder / "run" / "best.pt", manifest, "--out", out, "--no-progress", "--split", "val",
                "--bootstrap", "50", *extra)
    assert proc.returncode == 0, proc.stderr
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    p1 = np.array([float(r["p1"]) for r in rows])
    m = json.loads((out / "metrics.json").read_text())
    assert m["auprc"]["1"]["value"] == pytest.approx(skm.average_precision_score(y == 1, p1))
    assert m["auprc"]["0"]["value"] == pytest.approx(skm.average_precision_score(y == 0, 1 - p1), abs=1e-5)
    op = m["operating_point"]
    stored = read_checkpoint(folder / "run" / "best.pt")["metrics"]["val_threshold"]
    assert op["threshold"] == (stored if given is None else given)
    assert op["source"] == ("--threshold" if given is not None else "checkpoint: Youden's J on the validation slides")
    called = p1 >= op["threshold"]
    assert op["sensitivity"] == pytest.approx((called & (y == 1)).sum() / (y == 1).sum())
    assert op["specificity"] == pytest.approx((~called & (y == 0)).sum() / (y == 0).sum())
    assert f"sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f}" in proc.stdout
    # The predicted column, and the accuracy and confusion matrix computed from it, cut at the same threshold.
    assert [int(r["predicted"]) for r in rows] == called.astype(int).tolist()
    assert m["decision"] == {"threshold": op["threshold"], "source": op["source"]}
    assert m["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, called.astype(int)))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, called.astype(int), labels=[0, 1]).tolist()
    assert f"predicted: class 1 when P(class 1) >= {op['threshold']:.3f} ({op['source']}), else class 0" in proc.stdout
    if given == 0.0:
        assert called.all()
    with open(out / "curves" / "roc.csv", newline="") as fh:
        roc = [r for r in csv.DictReader(fh) if r["class"] == "1"]
    fpr, tpr, thr = skm.roc_curve(y == 1, p1, drop_intermediate=False)
    assert np.allclose([float(r["fpr"]) for r in roc], fpr) and np.allclose([float(r["tpr"]) for r in roc], tpr)
    assert roc[0]["threshold"] == "inf" and math.isclose(float(roc[1]["threshold"]), thr[1])
    with open(out / "curves" / "pr.csv", newline="") as fh:
        pr = [r for r in csv.DictReader(fh) if r["class"] == "1"]
    precision, recall, _ = skm.precision_recall_curve(y == 1, p1)
    assert np.allclose([float(r["precision"]) for r in pr], precision)
    for name in ("roc.png", "pr.png"):
        assert (out / "curves" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_manifest_of_several_splits_gets_curves_per_split(trained, tmp_path):
    folder, manifest = trained
    out = tmp_path / "out"
    proc = _cli("predict", folder / "run" / "best.pt", manifest, "--out", out, "--no-progress", "--bootstrap", "20")
    assert proc.returncode == 0, proc.stderr
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] is None and sorted(m["splits"]) == ["train", "val"]
    for split in ("train", "val"):
        mine = [r for r in rows if r["split"] == split]
        y = np.array([int(r["label"]) for r in mine])
        p1 = np.array([float(r["p1"]) for r in mine])
        got = m["splits"][split]
        assert got["n"] == len(mine) == (2 if split == "train" else 4)
        assert got["auprc"]["1"]["value"] == pytest.approx(skm.average_precision_score(y == 1, p1))
        assert got["curves"]["roc"] == f"splits/{split}/curves/roc.csv"
        assert (out / got["curves"]["roc"]).is_file() and (out / got["curves"]["pr"]).is_file()
    assert not (out / "curves").exists()  # never pooled


def test_a_threshold_outside_0_1_is_a_usage_error(tmp_path):
    proc = _cli("predict", tmp_path / "none.pt", tmp_path, "--out", tmp_path / "out", "--threshold", "1.5")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ats-wsi predict: --threshold is a probability, 0 to 1; got 1.5"
