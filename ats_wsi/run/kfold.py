"""k-fold cross-validation: stratified folds of a manifest, a training run per fold, the held-out
fold predicted with the fold's ``best.pt``, and a summary of the folds.

:func:`make_fold_manifest` deals the manifest's rows into folds
(:func:`ats_wsi.data.folds.make_folds`, stratified by class, event or target
quartile) and writes them to ``OUT/folds.csv``. Fold ``K`` then trains in
``OUT/fold-K`` with test = fold ``K``, val = fold ``K + 1`` and train = the
others (:func:`ats_wsi.data.folds.assign_fold`); :func:`fold_score` reads the
test fold's ``metrics.json``. :func:`write_fold_summary` writes
``OUT/folds-summary.csv`` (one row per fold) and ``OUT/folds-summary.json``
(mean and sample standard deviation over the folds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_csv_atomic, write_json_atomic
from ..data.folds import make_folds, strata_of, write_folds
from ..data.manifest import read_cohort

__all__ = ["FoldResult", "make_fold_manifest", "fold_score", "write_fold_summary", "SCORE_OF"]

SCORE_OF = {"classification": "roc_auc", "survival": "c_index", "regression": "r2"}
"""The test-fold metric each task's summary is of."""


@dataclass
class FoldResult:
    """One fold's run: its folder, the slides per split, and the test metric ``{value, ci_low, ci_high}``."""

    fold: int
    out: str
    n_train: int
    n_val: int
    n_test: int
    metric: str
    value: float
    ci_low: float
    ci_high: float


def make_fold_manifest(manifest, out: Path, n_folds: int, *, task: str, classes=None, seed: int = 0,
                       time_column=None, event_column=None, target_column=None) -> tuple[Path, list[int]]:
    """Deal the manifest's rows into ``n_folds`` stratified folds; ``(OUT/folds.csv, fold per row)``."""
    cohort = read_cohort(manifest, classes=classes, task=task, time_column=time_column, event_column=event_column,
                         target_column=target_column)
    folds = make_folds(strata_of(cohort.rows, task), n_folds, seed=seed)
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_folds(out, cohort.rows, folds), folds


def fold_score(metrics: dict[str, Any], task: str) -> dict[str, float]:
    """The summary metric of a test fold's ``metrics.json`` (``{value, ci_low, ci_high}``, NaN when absent)."""
    found = metrics.get(SCORE_OF[task]) or {}
    nan = float("nan")
    return {k: (nan if found.get(k) is None else float(found[k])) for k in ("value", "ci_low", "ci_high")}


def write_fold_summary(out: Path, results: Sequence[FoldResult]) -> dict[str, Any]:
    """``OUT/folds-summary.csv`` (one row per fold) and ``OUT/folds-summary.json`` (the rows, the
    mean and the sample standard deviation of the metric over the folds); returns the JSON's content."""
    rows = [vars(r) for r in results]
    write_csv_atomic(Path(out) / "folds-summary.csv", rows, list(FoldResult.__dataclass_fields__))
    values = np.array([r.value for r in results if not math.isnan(r.value)], dtype=np.float64)
    summary = {"metric": results[0].metric if results else None, "folds": len(results),
               "mean": float(values.mean()) if values.size else None,
               "sd": float(values.std(ddof=1)) if values.size > 1 else None,
               "per_fold": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                            for r in rows]}
    write_json_atomic(Path(out) / "folds-summary.json", summary)
    return summary


def test_fold(folds_csv: Path, fold: int, fold_out: Path, *, device: str = "cpu", seed: int = 0,
              resamples: int = 1000, workers: int = 2) -> tuple[dict[str, Any], int]:
    """Predict fold ``fold``'s test slides with ``fold_out/best.pt`` into ``fold_out/test``
    (``predictions.csv``, ``metrics.json``, maps and overlays, as ``ats-wsi predict``);
    returns ``(metrics, test slides)``."""
    from ..classifier.checkpoint import read_checkpoint
    from ..data.folds import assign_fold
    from .prediction_metrics import write_prediction_metrics
    from .outcome_metrics import write_outcome_metrics
    from .predict import PredictSettings, predict_slides

    checkpoint = Path(fold_out) / "best.pt"
    config = read_checkpoint(checkpoint)["config"]
    task, names = config.get("task", "classification"), config.get("class_names")
    cohort = read_cohort(folds_csv, classes=names, task=task)
    test = [r for r in assign_fold(folds_csv, cohort.rows, fold) if r.split == "test"]
    keys = {"survival": ("time", "event"), "regression": ("target",)}.get(task, ())
    settings = PredictSettings(checkpoint=str(checkpoint), out_dir=str(Path(fold_out) / "test"), device=device,
                               seed=seed, workers=workers, slide_mpp={str(r.path): r.mpp for r in test if r.mpp},
                               slide_roi={str(r.path): str(r.roi) for r in test if r.roi})
    rows, errors = predict_slides([r.path for r in test], settings, labels=[r.label for r in test],
                                  slide_ids=[r.slide_id for r in test],
                                  outcomes=[{k: getattr(r, k) for k in keys} for r in test] if keys else None)
    out, extra = Path(settings.out_dir), {"failed": len(errors), "checkpoint": str(checkpoint), "fold": fold}
    if task == "classification":
        metrics = write_prediction_metrics(out, rows, int(config["n_classes"]), names, resamples=resamples,
                                           seed=0, extra=extra)
    else:
        metrics = write_outcome_metrics(out, rows, task, resamples=resamples, seed=0, extra=extra)[""]
    return metrics, len(test)
