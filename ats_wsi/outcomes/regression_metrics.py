"""Regression metrics of predicted values: MAE, RMSE, R², Pearson's and Spearman's
correlation, each with a 95 % percentile bootstrap interval (correlations from scipy,
in the ``survival`` and ``regression`` extras)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MissingExtraError
from .survival_metrics import bootstrap

__all__ = ["regression_summary", "mae", "rmse", "r2", "pearson", "spearman"]


def _stats():
    try:
        from scipy import stats
    except ImportError as exc:
        raise MissingExtraError(f"regression metrics need scipy, which is not installed ({exc}): "
                                f"pip install 'ats-wsi[regression]'") from None
    return stats


def mae(y, p) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(p, float) - np.asarray(y, float)))) if len(y) else float("nan")


def rmse(y, p) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))) if len(y) else float("nan")


def r2(y, p) -> float:
    """Coefficient of determination, ``1 - SS_res / SS_tot`` (NaN when the targets are all equal)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    total = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    return 1.0 - float(np.sum((y - p) ** 2)) / total if total > 0 else float("nan")


def _correlation(kind: str):
    def fn(y, p) -> float:
        y, p = np.asarray(y, float), np.asarray(p, float)
        if y.size < 3 or np.ptp(y) == 0 or np.ptp(p) == 0:
            return float("nan")
        return float(getattr(_stats(), kind)(y, p)[0])
    return fn


pearson = _correlation("pearsonr")
spearman = _correlation("spearmanr")


def regression_summary(targets, values, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The regression part of ``metrics.json``: ``n`` and each metric as ``{value, ci_low, ci_high}``."""
    _stats()
    y = np.asarray(targets, dtype=np.float64).ravel()
    p = np.asarray(values, dtype=np.float64).ravel()
    out: dict[str, Any] = {"n": int(y.size)}
    for name, fn in (("mae", mae), ("rmse", rmse), ("r2", r2), ("pearson", pearson), ("spearman", spearman)):
        out[name] = bootstrap(fn, [y, p], resamples, seed)
    out["bootstrap"] = {"resamples": int(resamples), "seed": int(seed)}
    return out
