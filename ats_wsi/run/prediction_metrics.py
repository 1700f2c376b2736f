"""Metrics of a classifier's predictions against labels (``predictions.csv`` rows).

:func:`prediction_metrics`: accuracy, balanced accuracy, ROC AUC and the
confusion matrix of ``predict_slides``' rows, with bootstrap intervals
(:mod:`ats_wsi.metrics`), computed from the cells as written to the file;
:func:`write_prediction_metrics` and :func:`write_split_metrics` write them to
``metrics.json`` (rows of several splits never pooled). Survival and
regression models: :mod:`.outcome_metrics`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import json_safe, write_json_atomic
from ..metrics import evaluate

__all__ = ["prediction_metrics", "write_prediction_metrics", "write_split_metrics"]


def prediction_metrics(rows: Sequence[dict], n_classes: int, class_names: Sequence[str] | None = None, *,
                       resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``predict_slides`` rows that have a ``label``.

    The probabilities are the ``p0 .. p{K-1}`` cells as written to
    ``predictions.csv`` (so anyone recomputing them from the file gets the same
    numbers); the predicted class is the ``predicted`` cell.
    """
    labelled = [r for r in rows if r.get("label") not in (None, "")]
    labels = [int(r["label"]) for r in labelled]
    probs = np.array([[float(r[f"p{k}"]) for k in range(n_classes)] for r in labelled],
                     dtype=np.float64).reshape(len(labelled), n_classes)
    predicted = [int(r["predicted"]) for r in labelled]
    out = evaluate(labels, probs, predicted=predicted, class_names=class_names, resamples=resamples, seed=seed)
    out["n_unlabelled"] = len(rows) - len(labelled)
    return out


def write_prediction_metrics(out: Path, rows: Sequence[dict], n_classes: int,
                             class_names: Sequence[str] | None = None, *, resamples: int = 1000,
                             seed: int = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`prediction_metrics` of ``rows``, also written to ``out/metrics.json``."""
    result = {**prediction_metrics(rows, n_classes, class_names, resamples=resamples, seed=seed),
              **(extra or {})}
    write_json_atomic(Path(out) / "metrics.json", json_safe(result))
    return result


def write_split_metrics(out: Path, rows: Sequence[dict], n_classes: int, class_names: Sequence[str] | None = None,
                        *, resamples: int = 1000, seed: int = 0,
                        extra: dict[str, Any] | None = None,
                        per_split: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`prediction_metrics` of each split of ``rows`` (their ``split`` cell), in
    ``out/metrics.json`` as ``{"splits": {split: metrics}, "split": null, ...extra}``: training slides
    are never pooled with held-out ones. ``per_split[split]`` is added to that split's metrics.
    Returns ``{split: metrics}`` (train, val, test first)."""
    names = sorted({r.get("split") or "" for r in rows if r.get("label") not in (None, "")},
                   key=lambda s: (("train", "val", "test").index(s) if s in ("train", "val", "test") else 3, s))
    per = {s: prediction_metrics([r for r in rows if (r.get("split") or "") == s], n_classes, class_names,
                                 resamples=resamples, seed=seed) | (per_split or {}).get(s, {}) for s in names}
    write_json_atomic(Path(out) / "metrics.json", json_safe({"splits": per, **(extra or {}), "split": None}))
    return per
