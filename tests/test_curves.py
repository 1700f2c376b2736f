"""ROC / PR curves, average precision and Youden's threshold (ats_wsi.curves) equal scikit-learn's."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ats_wsi.curves import (average_precision, class_curves, pr_curve, roc_curve, sensitivity_specificity,
                            youden_threshold)


def _cases():
    rng = np.random.default_rng(0)
    for n, levels in ((7, 3), (40, 5), (200, 1000)):  # few distinct scores: many ties
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        yield y, rng.integers(0, levels, n) / levels + 0.3 * y * rng.random(n)


@pytest.mark.parametrize("case", range(3))
def test_curves_and_average_precision_equal_scikit_learn(case):
    y, s = list(_cases())[case]
    mine = roc_curve(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(mine["fpr"], fpr) and np.allclose(mine["tpr"], tpr)
    assert np.array_equal(mine["threshold"][1:], thr[1:]) and mine["threshold"][0] == np.inf
    pr = pr_curve(y, s)
    precision, recall, thr = skm.precision_recall_curve(y, s)
    assert np.allclose(pr["precision"], precision) and np.allclose(pr["recall"], recall)
    assert np.array_equal(pr["threshold"], thr)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    # the trapezoid under the PR curve (a common slip) is another number on these scores
    assert abs(skm.auc(recall, precision) - average_precision(y, s)) > 1e-6


@pytest.mark.parametrize("case", range(3))
def test_youden_threshold_maximises_j_and_counts_equal_the_confusion_matrix(case):
    y, s = list(_cases())[case]
    t = youden_threshold(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    top = max(thr[1:][j[1:] == j[1:].max()])  # the highest threshold of the best J ...
    lower = s[s < top]
    assert t == (pytest.approx((top + lower.max()) / 2) if lower.size else top)  # ... halfway to the next score
    assert ((s >= t) == (s >= top)).all()  # the same slides called positive
    at = sensitivity_specificity(y, s, t)
    tn, fp, fn, tp = skm.confusion_matrix(y, s >= t, labels=[False, True]).ravel()
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (tp, fp, tn, fn)
    assert at["sensitivity"] == pytest.approx(skm.recall_score(y, s >= t))
    assert at["sensitivity"] - (1 - at["specificity"]) == pytest.approx(j.max())


def test_youden_threshold_of_separated_classes_is_halfway_between_them():
    assert youden_threshold([False, False, True, True], [0.1, 0.6, 0.9, 0.95]) == pytest.approx(0.75)
    assert youden_threshold([True, False], [1.0, np.nextafter(1.0, 0)]) == 1.0  # no float between: the score


def test_one_class_gives_nan_not_a_number_made_up():
    y, s = np.zeros(4, bool), np.array([0.1, 0.2, 0.3, 0.4])
    assert np.isnan(youden_threshold(y, s)) and np.isnan(average_precision(y, s))
    assert np.isnan(roc_curve(y, s)["tpr"]).all()


def test_class_curves_are_one_vs_rest_per_class():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 30)
    probs = rng.dirichlet(np.ones(3), 30)
    curves = class_curves(labels, probs)
    assert [c["class"] for c in curves] == [0, 1, 2]
    for k, c in enumerate(curves):
        assert c["auprc"] == pytest.approx(skm.average_precision_score(labels == k, probs[:, k]))
        assert np.allclose(c["roc"]["tpr"], skm.roc_curve(labels == k, probs[:, k], drop_intermediate=False)[1])
