"""``ats-wsi train --task survival|regression`` and ``predict`` with their checkpoints, end to end on
real slides: the task travels in the checkpoint, predictions.csv has the risk (or value), metrics.json
equals what lifelines / numpy compute from predictions.csv, bad outcome cells are listed before training,
fold numbers are folds, and a classifier's checkpoint predicts as before."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cli_helpers import MODEL_ARGS, PLAIN, cli, explain, read_csv

try:
    from lifelines.utils import concordance_index
except ImportError:  # the survival extra is missing: its tests skip, the classifier's still run
    concordance_index = None
needs_survival = pytest.mark.skipif(concordance_index is None,
                                    reason="the survival extra (pip install 'ats-wsi[survival]')")

TIMES = [5.0, 12.0, 3.0, 20.0, 8.0, 15.0]
EVENTS = [1, 0, 1, 1, 0, 1]
ARGS = [*MODEL_ARGS, *[a for a in PLAIN if a not in ("--select", "accuracy")], "--batch-size", "3", "--seed", "0",
        "--no-progress", "--epochs", "1"]


def _manifest(slide_set, path, header, cells, split=lambda i: "val" if i == 1 else "train"):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *header, "split"])
        for i, slide in enumerate(slide_set.slides):
            writer.writerow([slide, *cells(i), split(i)])
    return path


@pytest.fixture(scope="module")
def survival_run(slide_set, tmp_path_factory):
    folder = tmp_path_factory.mktemp("survival")
    manifest = _manifest(slide_set, folder / "surv.csv", ["OS.time", "OS"], lambda i: [TIMES[i], EVENTS[i]])
    out = folder / "run"
    proc = cli("train", manifest, "--out", out, "--task", "survival", "--time-bins", "3", *ARGS)
    assert proc.returncode == 0, explain(proc)
    return manifest, out, proc


@needs_survival
def test_a_survival_checkpoint_predicts_risks_whose_c_index_is_lifelines(survival_run, tmp_path):
    manifest, run, train_proc = survival_run
    assert "val_c_index" in train_proc.stdout and "val_acc" not in train_proc.stdout
    config = torch.load(run / "best.pt", weights_only=False, map_location="cpu")["config"]
    assert config["task"] == "survival" and len(config["time_bins"]) == 2  # 3 bins from the training events
    assert read_csv(run / "metrics.csv")[0].keys() >= {"val_c_index", "val_loss"}

    out = tmp_path / "pred"
    proc = cli("predict", run / "best.pt", manifest, "--out", out, "--split", "train", "--bootstrap", "50",
               "--no-progress", "--geojson")
    assert proc.returncode == 0, explain(proc)
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 5 and {"risk", "time", "event"} <= rows[0].keys() and "p0" not in rows[0]
    metrics = json.loads((out / "metrics.json").read_text())
    expected = concordance_index([float(r["time"]) for r in rows], [-float(r["risk"]) for r in rows],
                                 [int(r["event"]) for r in rows])
    assert metrics["c_index"]["value"] == pytest.approx(expected, abs=1e-12)
    assert metrics["n"] == 5 and metrics["events"] == 4 and "uno_c" in metrics  # slide 1 (censored) is val
    assert "Harrell's C-index" in proc.stdout and "log-rank p" in proc.stdout
    assert (out / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # QuPath's annotation of the slide carries the risk; the map's metadata its title (napari shows it)
    first = rows[0]
    features = json.loads((out / "geojson" / f"{first['name']}.geojson").read_text())["features"]
    slide_feature = next(f for f in features if f["properties"]["name"] == "ats-wsi prediction")
    assert slide_feature["properties"]["measurements"] == {"risk": pytest.approx(float(first["risk"]), abs=1e-6)}
    meta = (out / "maps" / f"{first['name']}.zarr" / ".zattrs").read_text()  # OME-Zarr 0.4, the default
    assert f"risk {float(first['risk']):.3f}" in meta


@needs_survival
def test_cox_and_bad_outcome_cells_listed_before_training(slide_set, tmp_path):
    bad = _manifest(slide_set, tmp_path / "bad.csv", ["time", "event"],
                    lambda i: [["-2", "x", "", "3", "4", "5"][i], ["1", "1", "1", "2", "0", "1"][i]])
    proc = cli("train", bad, "--out", tmp_path / "bad-run", "--task", "survival", *ARGS)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    for line in ("bad.csv:2: time '-2'", "bad.csv:3: time 'x'", "bad.csv:4: empty time", "bad.csv:5: event '2'"):
        assert line in proc.stderr, proc.stderr
    assert not (tmp_path / "bad-run" / "last.pt").exists()

    good = _manifest(slide_set, tmp_path / "cox.csv", ["time", "status"], lambda i: [TIMES[i], EVENTS[i]])
    proc = cli("train", good, "--out", tmp_path / "cox", "--task", "survival", "--survival-loss", "cox", *ARGS)
    assert proc.returncode == 0, explain(proc)
    config = torch.load(tmp_path / "cox" / "best.pt", weights_only=False, map_location="cpu")["config"]
    assert config["survival_loss"] == "cox"


@needs_survival
def test_regression_values_and_metrics_from_predictions_csv(slide_set, tmp_path):
    targets = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7]
    manifest = _manifest(slide_set, tmp_path / "reg.csv", ["tumour_fraction"], lambda i: [targets[i]])
    run = tmp_path / "run"
    proc = cli("train", manifest, "--out", run, "--task", "regression", "--target-column", "tumour_fraction", *ARGS)
    assert proc.returncode == 0, explain(proc)
    assert "val_r2" in proc.stdout
    out = tmp_path / "pred"
    proc = cli("predict", run / "best.pt", manifest, "--out", out, "--split", "train", "--bootstrap", "50",
               "--no-progress")
    assert proc.returncode == 0, explain(proc)
    rows = read_csv(out / "predictions.csv")
    y = np.array([float(r["target"]) for r in rows])
    p = np.array([float(r["value"]) for r in rows])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mae"]["value"] == pytest.approx(np.mean(np.abs(p - y)))
    assert metrics["r2"]["value"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert (out / "scatter.png").is_file()


def test_fold_numbers_train_with_fold_and_are_refused_without(slide_set, tmp_path):
    folds = [0, 1, 2, 1, 0, 2]  # each fold has both classes (labels 0, 1, 0, 0, 1, 1)
    manifest = tmp_path / "folds.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "fold"])
        writer.writerows([s, label, f] for s, label, f in zip(slide_set.slides, slide_set.labels, folds))
    proc = cli("train", manifest, "--out", tmp_path / "none", *ARGS)
    assert proc.returncode == 1 and "choose the test fold with --fold K" in proc.stderr, explain(proc)
    proc = cli("train", manifest, "--out", tmp_path / "f2", "--fold", "2", *ARGS)
    assert proc.returncode == 0, explain(proc)
    counts = json.loads((tmp_path / "f2" / "cohort.json").read_text())["slides"]
    # fold 2 is test, the next fold (0) val, fold 1 train: two slides each
    assert {split: sum(c.values()) for split, c in counts.items()} == {"train": 2, "val": 2, "test": 2}


def test_a_classifier_checkpoint_without_the_task_keys_predicts_as_before(checkpoint, predict_input, tmp_path):
    payload = torch.load(checkpoint, weights_only=False, map_location="cpu")
    for key in ("task", "survival_loss", "n_bins", "time_bins", "target_mean", "target_std"):
        payload["config"].pop(key)  # a checkpoint written before survival existed
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    runs = {}
    for name, ckpt in (("new", checkpoint), ("old", old)):
        proc = cli("predict", ckpt, *predict_input.good, "--out", tmp_path / name, "--no-progress", "--seed", "7")
        assert proc.returncode == 0, explain(proc)
        runs[name] = read_csv(tmp_path / name / "predictions.csv")
    assert "risk" not in runs["old"][0] and {"p0", "p1", "predicted"} <= runs["old"][0].keys()
    assert [(r["p0"], r["p1"], r["predicted"]) for r in runs["old"]] == \
        [(r["p0"], r["p1"], r["predicted"]) for r in runs["new"]]
