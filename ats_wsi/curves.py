"""ROC and precision-recall curves, average precision, and an operating threshold, in plain numpy.

The numbers equal scikit-learn's ``roc_curve(..., drop_intermediate=False)``,
``precision_recall_curve`` and ``average_precision_score`` (the tests
compare them). A threshold ``t`` calls a slide positive when its score is
``>= t``, as scikit-learn counts.

The operating threshold of a binary model is chosen on the validation slides
during training by Youden's J (the threshold that maximises sensitivity +
specificity − 1; halfway between the highest such score and the next lower one) and stored in the
checkpoint; ``predict`` reports sensitivity and specificity at it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["roc_curve", "pr_curve", "average_precision", "youden_threshold", "sensitivity_specificity",
           "class_curves"]


def _counts(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds descending, true positives, false positives)`` at each distinct score."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last].astype(np.float64)
    return s[last], tps, (last + 1) - tps


def _check(positive, scores) -> tuple[np.ndarray, np.ndarray]:
    positive = np.asarray(positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if positive.shape != scores.shape:
        raise ValueError(f"{len(positive)} labels but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite numbers")
    return positive, scores


def roc_curve(positive: Sequence[bool], scores: Sequence[float]) -> dict[str, np.ndarray]:
    """The ROC curve of ``scores`` for the ``positive`` samples.

    Args:
        positive: bool [n], whether each sample is of the positive class.
        scores: float [n], the score of the positive class.

    Returns:
        ``{"threshold", "fpr", "tpr"}``, float64 [m + 1] each: the first point is
        (0, 0) at threshold ``inf``, then one point per distinct score, highest
        first. ``fpr`` (``tpr``) is NaN when there is no negative (positive).
    """
    positive, scores = _check(positive, scores)
    thresholds, tps, fps = _counts(positive, scores)
    n_pos, n_neg = float(positive.sum()), float(len(positive) - positive.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps] / n_pos if n_pos else np.full(len(tps) + 1, np.nan)
        fpr = np.r_[0.0, fps] / n_neg if n_neg else np.full(len(fps) + 1, np.nan)
    return {"threshold": np.r_[np.inf, thresholds], "fpr": fpr, "tpr": tpr}


def pr_curve(positive: Sequence[bool], scores: Sequence[float]) -> dict[str, np.ndarray]:
    """The precision-recall curve, as scikit-learn's ``precision_recall_curve``.

    Returns:
        ``{"threshold" [m], "precision" [m + 1], "recall" [m + 1]}``: the m
        distinct scores ascending, and a last point (precision 1, recall 0)
        without a threshold. Recall is NaN without a positive sample
        (scikit-learn warns and sets it to 1).
    """
    positive, scores = _check(positive, scores)
    thresholds, tps, fps = _counts(positive, scores)
    n_pos = float(positive.sum())
    precision = tps / np.maximum(tps + fps, 1)  # tps + fps >= 1 at every distinct score
    recall = tps / n_pos if n_pos else np.full(len(tps), np.nan)
    return {"threshold": thresholds[::-1].copy(), "precision": np.r_[precision[::-1], 1.0],
            "recall": np.r_[recall[::-1], 0.0]}


def average_precision(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """AUPRC as average precision: Σ (R_k − R_{k−1}) P_k over the PR curve's points (no interpolation);
    NaN without a positive sample."""
    curve = pr_curve(positive, scores)
    recall, precision = curve["recall"], curve["precision"]
    if not len(recall) or np.isnan(recall).any():
        return float("nan")
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def youden_threshold(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """A score threshold that maximises Youden's J = TPR − FPR; NaN without both classes.

    Of the points of best J the highest score is taken, and the threshold is
    placed halfway between it and the next lower score: every threshold in
    between calls the same slides positive, and the middle of the gap leaves
    the most room on both sides for slides not seen (a few validation slides
    that separate perfectly would otherwise set it at the lowest positive).
    """
    curve = roc_curve(positive, scores)
    j = curve["tpr"] - curve["fpr"]
    if np.isnan(j).all():
        return float("nan")
    best = int(np.nanargmax(j[1:])) + 1  # a finite threshold: the first point is "call nothing positive"
    at = float(curve["threshold"][best])
    if best + 1 < len(curve["threshold"]):
        below = float(curve["threshold"][best + 1])
        middle = below + (at - below) / 2
        if below < middle <= at:  # not when the two scores are neighbouring floats
            return middle
    return at


def sensitivity_specificity(positive: Sequence[bool], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity and the counts when ``score >= threshold`` is called positive."""
    positive, scores = _check(positive, scores)
    called = scores >= threshold
    tp, fn = int((called & positive).sum()), int((~called & positive).sum())
    tn, fp = int((~called & ~positive).sum()), int((called & ~positive).sum())
    return {"threshold": float(threshold), "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def class_curves(labels: Sequence[int], probabilities: np.ndarray) -> list[dict[str, Any]]:
    """One-vs-rest ROC and PR curves and AUPRC of each class.

    Args:
        labels: int [n], the true class of each slide.
        probabilities: float [n, K] class probabilities.

    Returns:
        K dicts ``{"class": k, "roc": roc_curve, "pr": pr_curve, "auprc": float}``.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), -1)
    return [{"class": k, "roc": roc_curve(labels == k, probs[:, k]), "pr": pr_curve(labels == k, probs[:, k]),
             "auprc": average_precision(labels == k, probs[:, k])} for k in range(probs.shape[1])]
