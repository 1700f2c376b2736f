"""ats_wsi.metrics against scikit-learn: AUC with ties (binary and one-vs-rest macro),
accuracy, balanced accuracy, confusion matrix; the bootstrap is seeded and percentile."""
from __future__ import annotations

import numpy as np
import pytest

from ats_wsi import metrics

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(8))
def test_binary_auc_with_ties_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # 11 distinct values: many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    probs = np.stack([1 - scores, scores], axis=1)
    assert metrics.roc_auc(labels, probs) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("k", [3, 4, 6])
@pytest.mark.parametrize("seed", range(4))
def test_multiclass_one_vs_rest_macro_auc_with_ties_equals_sklearn(k, seed):
    rng = np.random.default_rng(100 + seed)
    n = 150
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    logits = np.round(rng.normal(size=(n, k)) + 0.8 * np.eye(k)[labels], 1)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = np.round(probs, 2)
    probs /= probs.sum(1, keepdims=True)  # sklearn wants rows summing to 1
    want = sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert metrics.roc_auc(labels, probs) == pytest.approx(want, abs=1e-12)


def test_auc_extremes_and_one_class():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_average_ranks_share_ties():
    assert metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_balanced_accuracy_and_confusion_matrix_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 4
    labels = rng.integers(0, k - 1, 60)  # class 3 never true: balanced accuracy leaves it out, as sklearn does
    predicted = rng.integers(0, k, 60)
    assert metrics.accuracy(labels, predicted) == pytest.approx(sk.accuracy_score(labels, predicted))
    with np.errstate(all="ignore"), pytest.warns(UserWarning):
        want = sk.balanced_accuracy_score(labels, predicted)
    assert metrics.balanced_accuracy(labels, predicted, k) == pytest.approx(want, abs=1e-12)
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predicted, k),
                                  sk.confusion_matrix(labels, predicted, labels=list(range(k))))


def test_evaluate_reports_values_seeded_percentile_intervals_and_the_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * labels + 0.7 * rng.random(40), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    got = metrics.evaluate(labels, probs, class_names=["benign", "tumor"], resamples=200, seed=5)
    assert got["n"] == 40 and got["class_names"] == ["benign", "tumor"] and got["roc_auc_kind"] == "binary"
    assert got["roc_auc"]["value"] == pytest.approx(sk.roc_auc_score(labels, p1), abs=1e-12)
    assert got["accuracy"]["value"] == pytest.approx(sk.accuracy_score(labels, probs.argmax(1)))
    assert got["balanced_accuracy"]["value"] == pytest.approx(sk.balanced_accuracy_score(labels, probs.argmax(1)))
    assert got["confusion_matrix"] == sk.confusion_matrix(labels, probs.argmax(1)).tolist()
    assert got["bootstrap"] == {"resamples": 200, "seed": 5, "level": 0.95, "method": "percentile"}
    # The interval, recomputed by hand: the same index draws, numpy's percentile.
    rng = np.random.default_rng(5)
    draws = [rng.integers(0, 40, 40) for _ in range(200)]
    aucs = [sk.roc_auc_score(labels[i], p1[i]) for i in draws if len(set(labels[i])) == 2]
    assert got["roc_auc"]["resamples_valid"] == len(aucs)
    assert got["roc_auc"]["ci_low"] == pytest.approx(np.percentile(aucs, 2.5), abs=1e-12)
    assert got["roc_auc"]["ci_high"] == pytest.approx(np.percentile(aucs, 97.5), abs=1e-12)
    accs = [np.mean(labels[i] == probs.argmax(1)[i]) for i in draws]
    assert got["accuracy"]["ci_low"] == pytest.approx(np.percentile(accs, 2.5), abs=1e-12)
    # Same seed, same numbers.
    assert metrics.evaluate(labels, probs, resamples=200, seed=5)["roc_auc"] == got["roc_auc"]


def test_evaluate_uses_the_given_predictions_and_checks_labels():
    got = metrics.evaluate([0, 1, 2], np.eye(3), predicted=[0, 1, 1], resamples=10)
    assert got["accuracy"]["value"] == pytest.approx(2 / 3)
    assert got["roc_auc_kind"] == "one-vs-rest macro"
    with pytest.raises(ValueError, match="labels must be 0..2"):
        metrics.evaluate([0, 3], np.eye(3)[:2])
