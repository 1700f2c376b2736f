"""Classification metrics of slide predictions, in plain numpy.

ROC AUC (the Mann-Whitney statistic, ties counted one half; one-vs-rest
macro average for more than two classes), accuracy, balanced accuracy, the
confusion matrix, and percentile bootstrap intervals of each. The numbers
equal scikit-learn's ``roc_auc_score`` (``multi_class="ovr"``,
``average="macro"``), ``accuracy_score``, ``balanced_accuracy_score`` and
``confusion_matrix``; the tests compare them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["average_ranks", "roc_auc", "accuracy", "balanced_accuracy", "confusion_matrix",
           "bootstrap_ci", "evaluate"]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie); NaN without both kinds."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(labels: Sequence[int], probabilities: np.ndarray) -> float:
    """ROC AUC of class probabilities.

    Args:
        labels: true class per sample, ``0 .. K-1``.
        probabilities: ``[n, K]`` scores (or ``[n]``: the score of class 1
            for two classes).

    Returns:
        For K = 2 the AUC of class 1's score; for K > 2 the mean over classes
        of each class's one-vs-rest AUC (classes with no positive or no
        negative sample left out); NaN when no class has both.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 1:
        return _binary_auc(labels == 1, probs)
    if probs.shape[0] != len(labels):
        raise ValueError(f"{len(labels)} labels but {probs.shape[0]} rows of probabilities")
    if probs.shape[1] == 2:
        return _binary_auc(labels == 1, probs[:, 1])
    per_class = [_binary_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]
    valid = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def accuracy(labels: Sequence[int], predicted: Sequence[int]) -> float:
    """Fraction of samples predicted right (NaN for none)."""
    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    return float(np.mean(labels == predicted)) if len(labels) else float("nan")


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``[K, K]`` counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out


def balanced_accuracy(labels: Sequence[int], predicted: Sequence[int], n_classes: int | None = None) -> float:
    """Mean recall over the classes that occur in ``labels`` (NaN for none)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if not len(labels):
        return float("nan")
    k = int(n_classes or max(labels.max(), predicted.max()) + 1)
    cm = confusion_matrix(labels, predicted, k)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def bootstrap_ci(statistic, n: int, *, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, int]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` samples.

    Each of ``resamples`` draws ``n`` indices with replacement from
    ``numpy.random.default_rng(seed)``; draws where the statistic is NaN (an
    AUC of a resample with one class) are left out.

    Returns:
        ``(low, high, valid draws)``; NaNs when no draw was valid.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(resamples)):
        v = statistic(rng.integers(0, n, size=n))
        if not np.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan"), 0
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high), len(values)


def evaluate(labels: Sequence[int], probabilities: np.ndarray, *, predicted: Sequence[int] | None = None,
             class_names: Sequence[str] | None = None, resamples: int = 1000, seed: int = 0,
             level: float = 0.95) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC and the confusion matrix, with bootstrap intervals.

    Args:
        labels: true class per slide, ``0 .. K-1``.
        probabilities: ``[n, K]`` class probabilities.
        predicted: predicted class per slide (default: the argmax).
        class_names: names of the K classes (default ``"0" .. "K-1"``).
        resamples, seed, level: of the percentile bootstrap (one stream of
            index draws, shared by the three metrics).

    Returns:
        A JSON-able dict: ``n``, ``class_names``, for each metric
        ``{"value", "ci_low", "ci_high", "resamples_valid"}``, ``roc_auc_kind``
        (``"binary"`` or ``"one-vs-rest macro"``), ``confusion_matrix`` (rows:
        true class, columns: predicted) and ``bootstrap`` (its settings).
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), -1)
    k = probs.shape[1]
    pred = np.argmax(probs, axis=1) if predicted is None else np.asarray(predicted, dtype=np.int64).ravel()
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be 0..{k - 1}, got {sorted(set(labels.tolist()))}")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    metrics = {
        "accuracy": lambda i: accuracy(labels[i], pred[i]),
        "balanced_accuracy": lambda i: balanced_accuracy(labels[i], pred[i], k),
        "roc_auc": lambda i: roc_auc(labels[i], probs[i]),
    }
    out: dict[str, Any] = {"n": int(len(labels)), "n_classes": k, "class_names": names}
    everything = np.arange(len(labels))
    for name, fn in metrics.items():
        value = fn(everything) if len(labels) else float("nan")
        # The same seed for each metric: every metric sees the same resamples.
        low, high, valid = (bootstrap_ci(fn, len(labels), resamples=resamples, seed=seed, level=level)
                            if len(labels) else (float("nan"), float("nan"), 0))
        out[name] = {"value": value, "ci_low": low, "ci_high": high, "resamples_valid": valid}
    out["roc_auc_kind"] = "binary" if k == 2 else "one-vs-rest macro"
    out["confusion_matrix"] = confusion_matrix(labels, pred, k).tolist()
    out["bootstrap"] = {"resamples": int(resamples), "seed": int(seed), "level": float(level),
                        "method": "percentile"}
    return out
