"""The survival losses against a direct computation, term by term, on small batches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ats_wsi.outcomes.losses import (cox_partial_likelihood, discrete_time_nll, nll_risk, time_bin_cuts,
                                     time_bins_of)


def _nll_direct(logits, bins, events):
    total = 0.0
    for z, y, e in zip(logits.tolist(), bins.tolist(), events.tolist()):
        h = [1 / (1 + math.exp(-v)) for v in z]
        survive_before = math.prod(1 - h[j] for j in range(y))
        if e:
            total += -math.log(survive_before * h[y])
        else:
            total += -math.log(survive_before * (1 - h[y]))
    return total / len(bins)


def test_discrete_time_nll_equals_the_likelihood_written_out():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=gen, dtype=torch.float64) * 2
    bins = torch.tensor([0, 1, 2, 3, 3, 0, 2])
    events = torch.tensor([1, 0, 1, 0, 1, 0, 1])
    got = discrete_time_nll(logits, bins, events)
    assert float(got) == pytest.approx(_nll_direct(logits, bins, events), rel=1e-5)


def test_discrete_time_nll_of_a_censored_slide_is_not_the_event_formula():
    # a wrong variant (censored slides scored as surviving only the bins *before* theirs) differs
    logits = torch.tensor([[0.3, -1.0, 2.0]])
    censored = float(discrete_time_nll(logits, torch.tensor([1]), torch.tensor([0])))
    h = torch.sigmoid(logits)[0].tolist()
    assert censored == pytest.approx(-math.log((1 - h[0]) * (1 - h[1])), rel=1e-6)
    assert censored != pytest.approx(-math.log(1 - h[0]), rel=1e-3)


def _cox_direct(risk, times, events):
    total, n_events = 0.0, 0
    for i in range(len(risk)):
        if events[i]:
            at_risk = [j for j in range(len(risk)) if times[j] >= times[i]]
            total += risk[i] - math.log(sum(math.exp(risk[j]) for j in at_risk))
            n_events += 1
    return -total / n_events


@pytest.mark.parametrize("times", [[5.0, 3.0, 8.0, 1.0, 6.0, 2.0], [3.0, 3.0, 8.0, 1.0, 3.0, 1.0]])
def test_cox_partial_likelihood_equals_breslow_written_out(times):
    risk = torch.tensor([0.5, -1.2, 0.1, 2.0, -0.3, 0.7], dtype=torch.float64)
    events = [1, 1, 0, 1, 0, 1]
    got = cox_partial_likelihood(risk, torch.tensor(times), torch.tensor(events))
    assert float(got) == pytest.approx(_cox_direct(risk.tolist(), times, events), rel=1e-5)


def test_cox_gradient_matches_finite_differences_and_no_event_gives_zero():
    risk = torch.tensor([0.5, -1.2, 0.1, 2.0], dtype=torch.float64, requires_grad=True)
    times, events = torch.tensor([4.0, 2.0, 3.0, 1.0]), torch.tensor([1, 0, 1, 1])
    cox_partial_likelihood(risk, times, events).backward()
    for k in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[k] = 1e-6
        plus = _cox_direct((risk.detach() + step).tolist(), times.tolist(), events.tolist())
        minus = _cox_direct((risk.detach() - step).tolist(), times.tolist(), events.tolist())
        assert float(risk.grad[k]) == pytest.approx((plus - minus) / 2e-6, abs=1e-4)
    none = cox_partial_likelihood(risk, times, torch.zeros(4))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_time_bins_are_quantiles_of_event_times_only():
    times = [1.0, 2.0, 3.0, 4.0, 100.0, 200.0]
    events = [1, 1, 1, 1, 0, 0]  # the censored long times do not move the cuts
    cuts = time_bin_cuts(times, events, 2)
    assert cuts == [2.5]
    assert time_bins_of([0.5, 2.5, 2.6, 300.0], cuts).tolist() == [0, 0, 1, 1]  # right-closed bins
    with pytest.raises(ValueError, match="no event"):
        time_bin_cuts(times, [0] * 6, 4)


def test_nll_risk_is_minus_the_summed_survival():
    logits = torch.tensor([[-3.0, -3.0], [3.0, 3.0]])
    s = torch.sigmoid(-logits)
    expected = -(s[:, 0] + s[:, 0] * s[:, 1])
    assert torch.allclose(nll_risk(logits), expected)
    assert nll_risk(logits)[1] > nll_risk(logits)[0]  # high hazards: high risk
    assert np.isfinite(nll_risk(torch.full((1, 64), 80.0)).numpy()).all()
