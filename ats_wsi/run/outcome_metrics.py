"""Metrics and figures of a survival or regression model's predictions (``predictions.csv`` rows).

The numbers are computed from the cells as written to ``predictions.csv``
(``risk``, ``time``, ``event``; ``value``, ``target``), so anyone recomputing
them from the file (lifelines' ``concordance_index(time, -risk, event)``)
gets the same. Rows of several splits are never pooled: ``metrics.json`` then
holds ``{"splits": {split: metrics}}``, as for classifiers
(:func:`ats_wsi.run.prediction_metrics.write_split_metrics`).

Figures, PNG beside ``metrics.json``: ``km.png`` (Kaplan–Meier curves of the
risk groups, median split or tertiles, with the log-rank p-value; lifelines'
estimator, drawn with matplotlib) and ``scatter.png`` (predicted against true
value, with the identity line).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_path, json_safe, write_json_atomic
from ..errors import MissingExtraError
from ..outcomes.regression_metrics import regression_summary
from ..outcomes.survival_metrics import lifelines, risk_groups, survival_summary

__all__ = ["outcome_metrics", "write_outcome_metrics", "write_outcome_figure", "FIGURE"]

FIGURE = {"survival": "km.png", "regression": "scatter.png"}


def _cells(rows: Sequence[dict], task: str) -> tuple[np.ndarray, ...]:
    """The labelled rows' numbers: ``(risk, time, event)`` or ``(value, target)``."""
    keys = ("risk", "time", "event") if task == "survival" else ("value", "target")
    kept = [r for r in rows if all(r.get(k) not in (None, "") for k in keys)]
    return tuple(np.array([float(r[k]) for r in kept], dtype=np.float64) for k in keys)


def outcome_metrics(rows: Sequence[dict], task: str, *, resamples: int = 1000, seed: int = 0,
                    groups: str = "median", horizons: Sequence[float] = ()) -> dict[str, Any]:
    """Survival (:func:`~ats_wsi.outcomes.survival_metrics.survival_summary`) or regression
    (:func:`~ats_wsi.outcomes.regression_metrics.regression_summary`) metrics of the rows
    that have an outcome; ``n_unlabelled`` counts the others."""
    cells = _cells(rows, task)
    if task == "survival":
        out = survival_summary(cells[0], cells[1], cells[2].astype(np.int64), resamples=resamples, seed=seed,
                               groups=groups, horizons=horizons)
    else:
        out = regression_summary(cells[1], cells[0], resamples=resamples, seed=seed)
    out["task"] = task
    out["n_unlabelled"] = len(rows) - len(cells[0])
    return out


def _split_order(split: str) -> tuple[int, str]:
    return (("train", "val", "test").index(split) if split in ("train", "val", "test") else 3, split)


def write_outcome_metrics(out: Path, rows: Sequence[dict], task: str, *, resamples: int = 1000, seed: int = 0,
                          groups: str = "median", horizons: Sequence[float] = (),
                          extra: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``out/metrics.json`` of :func:`outcome_metrics` (per split when the rows have several) and a
    figure beside it (:func:`write_outcome_figure`, per split in ``splits/SPLIT/``). Returns
    ``{split or "": metrics}``."""
    out = Path(out)
    key = "risk" if task == "survival" else "value"
    splits = sorted({r.get("split") or "" for r in rows if r.get(key) not in (None, "")}, key=_split_order)
    per = {}
    for split in splits or [""]:
        mine = [r for r in rows if (r.get("split") or "") == split]
        where = out if len(splits) <= 1 else out / "splits" / (split or "none")
        per[split] = outcome_metrics(mine, task, resamples=resamples, seed=seed, groups=groups, horizons=horizons)
        figure = write_outcome_figure(where, mine, task, groups=groups)
        if figure is not None:
            per[split]["figure"] = str(figure.relative_to(out))
    body = per[splits[0] if splits else ""] if len(per) == 1 else {"splits": per, "split": None}
    write_json_atomic(out / "metrics.json", json_safe({**body, **(extra or {})}))
    return per


def write_outcome_figure(out: Path, rows: Sequence[dict], task: str, *, groups: str = "median") -> Path | None:
    """``out/km.png`` (survival) or ``out/scatter.png`` (regression); None when fewer than 2 rows
    have an outcome. :class:`MissingExtraError` without matplotlib."""
    cells = _cells(rows, task)
    if len(cells[0]) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError(f"the {FIGURE[task]} figure needs matplotlib ({exc}): "
                                f"pip install 'ats-wsi[{task}]'") from None
    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.add_subplot()
    if task == "survival":
        _km(ax, *cells, groups)
    else:
        value, target = cells
        ax.scatter(target, value, s=12)
        low, high = float(min(target.min(), value.min())), float(max(target.max(), value.max()))
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--")
        ax.set_xlabel("true value")
        ax.set_ylabel("predicted value")
    fig.tight_layout()
    path = Path(out) / FIGURE[task]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _km(ax, risk, time, event, groups: str) -> None:
    """Kaplan–Meier curve of each risk group, and the log-rank p-value in the title."""
    lifelines()
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    g = risk_groups(risk, groups)
    names = ["low risk", "high risk"] if groups == "median" else ["low risk", "middle risk", "high risk"]
    for k in range(int(g.max()) + 1):
        if np.any(g == k):
            KaplanMeierFitter().fit(time[g == k], event[g == k], label=f"{names[k]} (n={int(np.sum(g == k))})") \
                .plot_survival_function(ax=ax, ci_show=False)
    p = (multivariate_logrank_test(time, g, event).p_value if len(np.unique(g)) > 1 and event.any()
         else float("nan"))
    ax.set_title(f"risk groups ({groups}): log-rank p = {p:.3g}")
    ax.set_xlabel("time")
    ax.set_ylabel("survival")

