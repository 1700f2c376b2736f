"""Survival and regression metrics against lifelines, scipy and direct computations."""
from __future__ import annotations

import numpy as np
import pytest

lifelines = pytest.importorskip("lifelines", reason="the survival extra (pip install 'ats-wsi[survival]')")
from lifelines.utils import concordance_index  # noqa: E402

from ats_wsi.outcomes.regression_metrics import regression_summary  # noqa: E402
from ats_wsi.outcomes.survival_metrics import harrell_c, risk_groups, survival_summary, uno_c  # noqa: E402


def _cohort(n=40, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk))
    censor = rng.exponential(2.0, size=n)
    return risk, np.minimum(time, censor).round(2), (time <= censor).astype(int)


def _uno_direct(risk, time, event):
    """Uno's C written as a double loop over pairs, with G the censoring distribution's KM at T_i-."""
    def g_before(t):
        value = 1.0
        for u in sorted(set(time)):
            if u >= t:
                break
            at_risk = np.sum(time >= u)
            value *= 1 - np.sum((time == u) & (event == 0)) / at_risk
        return value

    tau = time[event == 1].max()
    num = den = 0.0
    for i in range(len(risk)):
        if not event[i] or time[i] > tau:
            continue
        w = g_before(time[i]) ** -2
        for j in range(len(risk)):
            if time[i] < time[j]:
                den += w
                num += w * (1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0)
    return num / den


def test_harrell_c_is_lifelines_concordance_of_minus_risk():
    risk, time, event = _cohort()
    assert harrell_c(risk, time, event) == pytest.approx(concordance_index(time, -risk, event))
    assert harrell_c(risk, time, event) > 0.6  # the risk does drive the times


def test_uno_c_equals_the_pairwise_definition_and_harrell_without_censoring():
    risk, time, event = _cohort()
    risk[3] = risk[5]  # a tie in risk counts one half
    assert uno_c(risk, time, event) == pytest.approx(_uno_direct(risk, time, event), rel=1e-9)
    assert uno_c(risk, time, event) != pytest.approx(harrell_c(risk, time, event), abs=1e-4)
    full = np.ones_like(event)
    t = np.arange(1.0, len(risk) + 1)
    assert uno_c(risk, t, full) == pytest.approx(harrell_c(risk, t, full))


def test_survival_summary_has_intervals_around_the_value_and_groups():
    risk, time, event = _cohort(60, seed=1)
    m = survival_summary(risk, time, event, resamples=200, seed=0, groups="tertiles")
    assert m["n"] == 60 and m["events"] == int(event.sum())
    c = m["c_index"]
    assert c["ci_low"] < c["value"] < c["ci_high"]
    assert m["risk_groups"]["n"] == [20, 20, 20]
    assert 0 < m["risk_groups"]["logrank_p"] < 0.05  # high-risk slides die sooner
    assert risk_groups([3.0, 1.0, 2.0, 4.0], "median").tolist() == [1, 0, 0, 1]


def test_regression_summary_matches_scipy_and_numpy():
    from scipy import stats

    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    m = regression_summary(y, p, resamples=200)
    assert m["mae"]["value"] == pytest.approx(np.mean(np.abs(p - y)))
    assert m["rmse"]["value"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
    assert m["r2"]["value"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["pearson"]["value"] == pytest.approx(stats.pearsonr(y, p)[0])
    assert m["spearman"]["value"] == pytest.approx(stats.spearmanr(y, p)[0])
    assert m["pearson"]["ci_low"] < m["pearson"]["value"] < m["pearson"]["ci_high"]


def test_time_dependent_auc_is_the_weighted_case_control_share():
    from ats_wsi.metrics import roc_auc
    from ats_wsi.outcomes.survival_metrics import _censoring_survival, time_auc

    risk, time, event = _cohort(50, seed=2)
    horizon = float(np.median(time))
    g = _censoring_survival(time, event)
    num = den = 0.0
    for i in range(len(risk)):  # cases: an event by the horizon; controls: still at risk after it
        if time[i] <= horizon and event[i]:
            for j in range(len(risk)):
                if time[j] > horizon:
                    den += 1 / g[i]
                    num += (1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0) / g[i]
    assert time_auc(risk, time, event, horizon) == pytest.approx(num / den, rel=1e-12)
    full = np.ones_like(event)  # without censoring: the ROC AUC of "died by the horizon"
    assert time_auc(risk, time, full, horizon) == pytest.approx(roc_auc((time <= horizon).astype(int), risk))
    m = survival_summary(risk, time, event, resamples=50, horizons=[horizon])
    assert m["time_auc"][f"{horizon:g}"]["value"] == pytest.approx(num / den)
