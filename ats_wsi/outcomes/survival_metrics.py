"""Survival metrics of slide risks: Harrell's and Uno's C-index with bootstrap intervals,
and risk groups with their Kaplan–Meier curves and log-rank test.

Harrell's C, the Kaplan–Meier estimator and the log-rank test come from
lifelines (the ``survival`` extra: ``pip install 'ats-wsi[survival]'``);
Uno's C (Uno et al. 2011, inverse-probability-of-censoring weights from the
Kaplan–Meier estimate of the censoring distribution) is written here, as
lifelines has none. Risks are "higher: shorter survival" throughout; lifelines
takes scores that are higher for longer survival, so it is given ``-risk``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import MissingExtraError

__all__ = ["lifelines", "harrell_c", "uno_c", "time_auc", "bootstrap", "risk_groups", "survival_summary",
           "RISK_GROUPS"]

RISK_GROUPS = ("median", "tertiles")
_BLOCK = 1024  # rows of the pairwise comparison done at once in uno_c (memory: _BLOCK x n floats)


def lifelines():
    """The lifelines package; :class:`MissingExtraError` naming the extra when it is absent."""
    try:
        import lifelines as module
        from lifelines import statistics, utils  # noqa: F401 - the submodules used here
    except ImportError as exc:
        raise MissingExtraError(f"survival metrics need lifelines, which is not installed ({exc}): "
                                f"pip install 'ats-wsi[survival]'") from None
    return module


def _arrays(risk, times, events):
    r = np.asarray(risk, dtype=np.float64).ravel()
    t = np.asarray(times, dtype=np.float64).ravel()
    e = np.asarray(events, dtype=np.int64).ravel()
    if not (r.shape == t.shape == e.shape):
        raise ValueError(f"{r.size} risks, {t.size} times and {e.size} events: one each per slide")
    return r, t, e


def harrell_c(risk, times, events) -> float:
    """Harrell's C: of the comparable pairs (the shorter time an event), the share where the
    shorter-lived slide has the higher risk, ties in risk one half (lifelines'
    ``concordance_index`` of ``-risk``); NaN without a comparable pair."""
    r, t, e = _arrays(risk, times, events)
    lifelines()
    from lifelines.utils import concordance_index

    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:  # lifelines: no admissible pairs
        return float("nan")


def _censoring_survival(times: np.ndarray, events: np.ndarray):
    """``G(t-)``: the Kaplan–Meier estimate of the censoring distribution just before each time."""
    order = np.unique(times)
    g, value = {}, 1.0
    for u in order:  # product-limit over the distinct times, censorings as the "events"
        g[u] = value
        at_risk = np.count_nonzero(times >= u)
        censored = np.count_nonzero((times == u) & (events == 0))
        value *= 1.0 - censored / at_risk
    return np.array([g[u] for u in times])


def uno_c(risk, times, events, tau: float | None = None) -> float:
    """Uno's C: Harrell's pairs weighted by ``1 / G(T_i-)^2`` (``G`` the censoring survival),
    which makes it consistent under censoring that does not depend on the risk; pairs
    with ``T_i >= tau`` (default: the last event time) are left out. NaN without a pair."""
    r, t, e = _arrays(risk, times, events)
    g = _censoring_survival(t, e)
    tau = float(t[e == 1].max()) if tau is None and np.any(e == 1) else tau
    if tau is None:
        return float("nan")
    usable = (e == 1) & (t <= tau) & (g > 0)
    num = den = 0.0
    idx = np.flatnonzero(usable)
    for start in range(0, idx.size, _BLOCK):
        i = idx[start:start + _BLOCK]
        w = 1.0 / g[i] ** 2
        pairs = t[i, None] < t[None, :]  # j outlived i
        concordant = (r[i, None] > r[None, :]) + 0.5 * (r[i, None] == r[None, :])
        num += float((w[:, None] * pairs * concordant).sum())
        den += float((w[:, None] * pairs).sum())
    return num / den if den > 0 else float("nan")


def time_auc(risk, times, events, horizon: float) -> float:
    """Cumulative/dynamic AUC at ``horizon`` (Uno et al. 2007; scikit-survival's
    ``cumulative_dynamic_auc``): of the pairs of a slide with an event by ``horizon`` and a slide
    still at risk after it, the share where the first has the higher risk (ties one half), each
    pair weighted by ``1 / G(T_i-)``. NaN without such a pair."""
    r, t, e = _arrays(risk, times, events)
    g = _censoring_survival(t, e)
    cases = (t <= horizon) & (e == 1) & (g > 0)
    controls = t > horizon
    if not cases.any() or not controls.any():
        return float("nan")
    w = 1.0 / g[cases]
    rc, rk = r[cases][:, None], r[controls][None, :]
    concordant = (rc > rk) + 0.5 * (rc == rk)
    return float((w[:, None] * concordant).sum() / (w.sum() * controls.sum()))


def bootstrap(fn, arrays: Sequence[np.ndarray], resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}``: ``fn(*arrays)`` and its 95 % percentile bootstrap
    interval over ``resamples`` resamples of the slides (resamples where it is NaN dropped)."""
    value = fn(*arrays)
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(int(resamples)):
        pick = rng.integers(0, n, n)
        v = fn(*(a[pick] for a in arrays))
        if v == v:
            draws.append(v)
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan")))
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}


def risk_groups(risk, how: str = "median") -> np.ndarray:
    """int64 group per slide: 0 low risk .. 1 (median split) or 2 (tertiles) high risk."""
    r = np.asarray(risk, dtype=np.float64).ravel()
    if how not in RISK_GROUPS:
        raise ValueError(f"risk groups must be one of {RISK_GROUPS}, got {how!r}")
    cuts = np.quantile(r, [0.5] if how == "median" else [1 / 3, 2 / 3]) if r.size else []
    return np.searchsorted(np.asarray(cuts), r, side="right") if r.size else np.zeros(0, np.int64)


def _logrank(t, e, groups) -> float:
    from lifelines.statistics import multivariate_logrank_test

    if len(np.unique(groups)) < 2 or not np.any(e == 1):
        return float("nan")
    return float(multivariate_logrank_test(t, groups, e).p_value)


def survival_summary(risk, times, events, *, resamples: int = 1000, seed: int = 0, groups: str = "median",
                     horizons: Sequence[float] = ()) -> dict[str, Any]:
    """The survival part of ``metrics.json``: ``n``, ``events``, ``c_index`` (Harrell) and
    ``uno_c`` with 95 % bootstrap intervals, the risk groups' sizes, events and log-rank p, and
    (``horizons``) the time-dependent AUC at each horizon with its interval."""
    r, t, e = _arrays(risk, times, events)
    lifelines()
    g = risk_groups(r, groups)
    return {
        "n": int(r.size), "events": int(e.sum()),
        "c_index": bootstrap(harrell_c, [r, t, e], resamples, seed),
        "uno_c": bootstrap(uno_c, [r, t, e], resamples, seed),
        "risk_groups": {"how": groups, "n": [int(np.sum(g == k)) for k in range(int(g.max()) + 1 if g.size else 0)],
                        "events": [int(e[g == k].sum()) for k in range(int(g.max()) + 1 if g.size else 0)],
                        "logrank_p": _logrank(t, e, g)},
        "bootstrap": {"resamples": int(resamples), "seed": int(seed)},
        **({"time_auc": {f"{h:g}": bootstrap(lambda a, b, c, h=h: time_auc(a, b, c, h), [r, t, e], resamples, seed)
                         for h in horizons}} if horizons else {}),
    }
