"""The slide check before training (run/preflight.py), class weights (run/objective.py), the choice of
best.pt (run/selection.py)."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest

from ats_wsi.classifier import ModelConfig, SlideInputs
from ats_wsi.data.manifest import ManifestRow
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.run.objective import class_weights
from ats_wsi.run.preflight import check_slides
from ats_wsi.run.selection import best_epoch
from ats_wsi.run.unreadable import UnreadableSlides
from ats_wsi.run.train import EpochMetrics


def test_balanced_class_weights_are_n_over_k_times_count():
    rows = [ManifestRow(Path(f"/s{i}"), lab) for i, lab in enumerate([0, 0, 0, 1])]
    assert class_weights(rows, 2, None) is None
    assert class_weights(rows, 2, "balanced") == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    # A class without training slides gets 1 (it is never a target).
    assert class_weights(rows, 3, "balanced") == pytest.approx([4 / 6, 2.0, 1.0])
    with pytest.raises(ValueError):
        class_weights(rows, 2, "inverse")


def _m(epoch, loss, acc, auc):
    return EpochMetrics(epoch, 0.0, 0.0, loss, acc, 1.0, 1e-3, auc)


def test_best_epoch_by_accuracy_auc_or_loss():
    history = [_m(1, 0.50, 0.8, 0.70), _m(2, 0.40, 0.8, 0.90), _m(3, 0.30, 0.6, 0.80), _m(4, 0.45, 0.8, 0.90)]
    assert best_epoch(history, "accuracy").epoch == 2  # tie on 0.8: lower loss
    assert best_epoch(history, "auc").epoch == 2  # tie on 0.9: lower loss
    assert best_epoch(history, "loss").epoch == 3
    nan = float("nan")
    no_val = [_m(1, nan, nan, nan), _m(2, nan, nan, nan)]
    assert all(best_epoch(no_val, s).epoch == 2 for s in ("accuracy", "auc", "loss"))
    one_class = [_m(1, 0.5, 1.0, nan), _m(2, 0.4, 1.0, nan)]  # AUC undefined: then the loss decides
    assert best_epoch(one_class, "auc").epoch == 2
    with pytest.raises(ValueError):
        best_epoch(history, "f1")


def test_check_slides_opens_in_parallel_keeps_good_ones_and_reports_every_bad_one(tmp_path):
    good = tmp_path / "good.svs"
    write_synthetic_slide(good, 2048, 1536, n_lesions=0, seed=1)
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"\x00" * 5000)
    rows = [ManifestRow(good, 0, line=2), ManifestRow(tmp_path / "missing.svs", 1, line=3),
            ManifestRow(garbage, 1, "val", line=4)]
    config = ModelConfig(n_patches=2, patch_size=32, feature_dim=4)
    with SlideInputs(config) as inputs:
        bad, _ = check_slides(rows, inputs, threads=3)
        assert str(good) in inputs._inputs  # opened once, kept for training
    assert [(u.row.line, u.reason.split(":")[0]) for u in bad] == [(3, "SlideNotFoundError"),
                                                                   (4, "CorruptSlideError")]
    err = UnreadableSlides(tmp_path / "m.csv", bad, len(rows))
    assert "2 of 3 slide(s) cannot be read" in str(err)
    assert "line 3: " in str(err) and "line 4: " in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and not math.isnan(len(again.bad))
