"""Cohorts through the real commands (issue 14): a manifest as people write it trains;
unreadable slides are all named before the first epoch (or skipped); `predict` on a
manifest writes labels and metrics equal to scikit-learn's on the written predictions.csv."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TRAIN_ARGS, TRAIN_ENV, cli, explain, read_csv

from ats_wsi.data.synthetic import make_slide_set

sk = pytest.importorskip("sklearn.metrics")

NAMES = {0: "normal", 1: "tumor"}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory, slide_set):
    """A TSV with capitalised headers, string labels and train/Validation/TEST splits:
    the session's six slides plus four more, so that val and test hold both classes."""
    folder = tmp_path_factory.mktemp("cohort")
    more = read_csv(make_slide_set(folder / "more", n_slides=4, size=((2048, 1536), (2048, 1536)), seed=11,
                                   lesion_size_um=(60.0, 120.0)))
    slides = [(str(p), lab) for p, lab in zip(slide_set.slides, slide_set.labels)]
    slides += [(r["path"], int(r["label"])) for r in more]
    by_label = {0: [s for s in slides if s[1] == 0], 1: [s for s in slides if s[1] == 1]}
    assert min(len(v) for v in by_label.values()) >= 3, by_label
    rows = []
    for label, items in by_label.items():
        for i, (path, _) in enumerate(items):
            split = {0: "Validation", 1: "TEST"}.get(i, "train")
            rows.append((f"S{len(rows):02d}", path, NAMES[label], split))
    manifest = folder / "cohort.tsv"
    manifest.write_text("Slide_ID\tPath\tLabel\tSplit\n" + "".join("\t".join(r) + "\n" for r in rows),
                        encoding="utf-8-sig")
    return manifest, rows


@pytest.fixture(scope="session")
def cohort_run(cohort, tmp_path_factory):
    manifest, _ = cohort
    out = tmp_path_factory.mktemp("cohort_run") / "run"
    proc = cli("train", manifest, "--out", out, "--epochs", "2", *TRAIN_ARGS, "--select", "auc",
               "--class-weights", "balanced", env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    return out, proc


def test_a_tsv_with_capitalised_headers_string_labels_and_split_names_trains(cohort_run, cohort):
    out, proc = cohort_run
    _, rows = cohort
    assert "val_auc" in proc.stdout and "Traceback" not in proc.stderr
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["config"]["class_names"] == ["normal", "tumor"] and payload["config"]["n_classes"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["select"] == "auc" and config["train"]["class_weights"] == "balanced"
    metrics = read_csv(out / "metrics.csv")
    assert list(metrics[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "seconds", "lr",
                                 "encoder_busy", "attention_sd"]
    # Two val slides, one per class: the AUC is 0, 0.5 or 1.
    assert all(float(m["val_auc"]) in (0.0, 0.5, 1.0) for m in metrics)
    # best.pt is the epoch of the highest val AUC (then lower loss, then later).
    best = max(metrics, key=lambda m: (float(m["val_auc"]), -float(m["val_loss"]), int(m["epoch"])))
    assert (out / "best.pt").read_bytes() == (out / "checkpoints" / f"epoch-00{best['epoch']}.pt").read_bytes()
    assert not (out / "skipped.csv").exists()


def test_predict_on_a_manifest_writes_labels_and_metrics_equal_to_sklearn(cohort_run, cohort, tmp_path):
    run, _ = cohort_run
    manifest, rows = cohort
    out = tmp_path / "R"
    proc = cli("predict", run / "best.pt", manifest, "--split", "test", "--out", out, "--no-progress",
               "--bootstrap", "300")
    assert proc.returncode == 0, explain(proc)
    written = read_csv(out / "predictions.csv")
    test_rows = [r for r in rows if r[3] == "TEST"]
    assert [w["slide"] for w in written] == [r[1] for r in test_rows]
    assert list(written[0])[:11] == ["slide", "name", "p0", "p1", "predicted", "seconds", "patches_read",
                                     "pixels_read", "slide_pixels", "fraction_read", "checkpoint"]
    assert list(written[0])[11:] == ["p_normal", "p_tumor", "predicted_class", "label", "label_class",
                                     "slide_id", "split"]
    # the manifest's slide IDs are carried, and name the outputs (issue 25)
    assert [(w["slide_id"], w["name"], w["split"]) for w in written] == [(r[0], r[0], "test") for r in test_rows]
    assert all((out / "overlays" / f"{r[0]}.png").is_file() for r in test_rows)
    assert [w["label_class"] for w in written] == [r[2] for r in test_rows]
    assert [int(w["label"]) for w in written] == [{"normal": 0, "tumor": 1}[r[2]] for r in test_rows]
    for w in written:
        assert w["p_normal"] == w["p0"] and w["p_tumor"] == w["p1"]
        assert w["predicted_class"] == NAMES[int(w["predicted"])]

    m = json.loads((out / "metrics.json").read_text())
    y = np.array([int(w["label"]) for w in written])
    p1 = np.array([float(w["p1"]) for w in written])
    pred = np.array([int(w["predicted"]) for w in written])
    assert m["n"] == len(written) and m["class_names"] == ["normal", "tumor"]
    assert m["roc_auc"]["value"] == pytest.approx(sk.roc_auc_score(y, p1), abs=1e-12)
    assert m["accuracy"]["value"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"]["value"] == pytest.approx(sk.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["bootstrap"] == {"resamples": 300, "seed": 0, "level": 0.95, "method": "percentile"}
    for key in ("accuracy", "balanced_accuracy"):
        assert m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"]
    # The printed table says the same.
    assert "300 bootstrap resamples, seed 0" in proc.stdout
    assert f"ROC AUC (binary)   {m['roc_auc']['value']:.3f}" in proc.stdout
    assert "confusion matrix (rows: true class, columns: predicted)" in proc.stdout


def test_predict_on_a_whole_manifest_reports_metrics_per_split_never_pooled(cohort_run, cohort, tmp_path):
    run, _ = cohort_run
    manifest, rows = cohort
    out = tmp_path / "R"
    proc = cli("predict", run / "best.pt", manifest, "--out", out, "--no-progress", "--bootstrap", "50")
    assert proc.returncode == 0, explain(proc)
    written = read_csv(out / "predictions.csv")
    assert [w["split"] for w in written] == [{"train": "train", "Validation": "val", "TEST": "test"}[r[3]]
                                             for r in rows]
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] is None and sorted(m["splits"]) == ["test", "train", "val"] and "accuracy" not in m
    for split, got in m["splits"].items():
        mine = [w for w in written if w["split"] == split]
        y = np.array([int(w["label"]) for w in mine])
        pred = np.array([int(w["predicted"]) for w in mine])
        assert got["n"] == len(mine)
        assert got["accuracy"]["value"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
        assert f"split {split}: metrics of {len(mine)} labelled slide(s)" in proc.stdout


def test_predict_on_plain_slides_with_a_named_checkpoint_adds_only_class_columns(cohort_run, cohort, tmp_path):
    run, _ = cohort_run
    _, rows = cohort
    proc = cli("predict", run / "best.pt", rows[0][1], "--out", tmp_path / "R", "--no-progress")
    assert proc.returncode == 0, explain(proc)
    written = read_csv(tmp_path / "R" / "predictions.csv")
    assert list(written[0])[11:] == ["p_normal", "p_tumor", "predicted_class"]
    assert not (tmp_path / "R" / "metrics.json").exists()


@pytest.fixture(scope="session")
def bad_manifest(slide_set, predict_input, tmp_path_factory):
    """Four good training slides, one good val slide, and three bad rows: missing, garbage, truncated."""
    folder = tmp_path_factory.mktemp("bad")
    lines = ["path,label,split"]
    lines += [f"{p},{lab},train" for p, lab in zip(slide_set.slides[:4], slide_set.labels[:4])]
    lines += [f"{folder / 'missing.svs'},0,train", f"{predict_input.garbage},1,train",
              f"{slide_set.slides[4]},{slide_set.labels[4]},val", f"{predict_input.truncated},1,val"]
    manifest = folder / "bad.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, folder


def test_three_bad_rows_are_all_named_before_training_and_it_exits_1(bad_manifest, tmp_path):
    manifest, folder = bad_manifest
    proc = cli("train", manifest, "--out", tmp_path / "run", "--epochs", "1", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr and "epoch" not in proc.stdout
    assert "3 of 8 slide(s) cannot be read" in proc.stderr and "--skip-unreadable" in proc.stderr
    assert f"line 6: {folder / 'missing.svs'}: SlideNotFoundError" in proc.stderr
    assert "line 7: " in proc.stderr and "garbage.svs: CorruptSlideError" in proc.stderr
    assert "line 9: " in proc.stderr and "truncated.svs: CorruptSlideError" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_unreadable_trains_on_the_rest_and_lists_the_skipped_rows(bad_manifest, tmp_path):
    manifest, folder = bad_manifest
    out = tmp_path / "run"
    proc = cli("train", manifest, "--out", out, "--epochs", "1", *TRAIN_ARGS, "--skip-unreadable", env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert "3 unreadable slide(s) skipped" in proc.stdout
    skipped = read_csv(out / "skipped.csv")
    assert [(r["line"], Path(r["path"]).name, r["split"]) for r in skipped] == [
        ("6", "missing.svs", "train"), ("7", "garbage.svs", "train"), ("9", "truncated.svs", "val")]
    assert skipped[0]["reason"].startswith("SlideNotFoundError")
    assert all(r["reason"].startswith("CorruptSlideError") for r in skipped[1:])
    assert (out / "best.pt").is_file()
    # Reader warnings of the truncated slide go to the run's log, not the terminal.
    assert "tifffile" not in proc.stderr and "invalid page offset" not in proc.stderr
    assert "truncated.svs" in (out / "train.log").read_text()


def test_an_unknown_split_value_is_an_error_naming_the_row(slide_set, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,split\n{slide_set.slides[0]},0,train\n{slide_set.slides[1]},1,holdout\n")
    proc = cli("train", manifest, "--out", tmp_path / "run", *TRAIN_ARGS)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{manifest}:3: split 'holdout' is not train, val (validation, valid, dev) or test" in proc.stderr


def test_classes_as_names_set_the_label_order(slide_set, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{NAMES[lab]}\n" for p, lab in
                                                 zip(slide_set.slides[:3], slide_set.labels[:3])))
    out = tmp_path / "run"
    proc = cli("train", manifest, "--out", out, "--epochs", "1", *TRAIN_ARGS, "--classes", "tumor,normal",
               "--batch-size", "3", env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert torch.load(out / "last.pt", weights_only=True)["config"]["class_names"] == ["tumor", "normal"]
    proc = cli("train", manifest, "--out", tmp_path / "r2", *TRAIN_ARGS, "--classes", "3")
    assert proc.returncode == 2 and "--classes 3, but the manifest's labels are 2 class names" in proc.stderr
