"""Survival losses over slide outputs, and the risk each survival head gives.

Discrete-time negative log-likelihood (Zadeh & Schmid 2020, "Bias in
cross-entropy-based training of deep survival networks"; the loss of
CLAM-surv and MIL-Lab). Follow-up is cut into ``K`` bins at quantiles of the
*event* times of the training slides (:func:`time_bin_cuts`); the head gives a
logit ``z_k`` per bin, the hazard ``h_k = sigmoid(z_k)`` is the probability of
the event in bin ``k`` given survival to it, and ``S_k = prod_{j<=k} (1 - h_j)``.
A slide whose time falls in bin ``y`` contributes

- with an event: ``-log S_{y-1} - log h_y`` (survived the bins before, died in ``y``);
- censored: ``-log S_y`` (survived through bin ``y``).

It works per slide, so it fits training that accumulates slide by slide.
The slide's risk is ``-sum_k S_k`` (:func:`nll_risk`; higher: shorter survival).

Cox partial likelihood (Breslow's handling of ties) over a batch of risks
``r``: ``-(1/E) sum_{i: event} [r_i - log sum_{j: T_j >= T_i} exp(r_j)]``,
``E`` the number of events. A batch without events gives 0 (no gradient).

Written here: the maintained packages that have these (torchsurv, pycox) pull
in their own torch or pandas pins; the formulas are a few lines each and the
tests check them against a direct computation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_BINS", "time_bin_cuts", "time_bins_of", "discrete_time_nll", "cox_partial_likelihood", "nll_risk",
           "survival_curve"]

MAX_BINS = 64
"""Most bins of the discrete-time head (its outputs)."""


def time_bin_cuts(times: Sequence[float], events: Sequence[int], n_bins: int) -> list[float]:
    """Inner cut points of ``n_bins`` bins at quantiles of the event times (censored times left out).

    Args:
        times: follow-up time per slide (any unit, the manifest's).
        events: 1 where the event was observed, 0 where censored.
        n_bins: bins wanted, 1..``MAX_BINS``.

    Returns:
        Strictly increasing cut points, at most ``n_bins - 1`` (fewer when
        quantiles coincide: ties among event times); bin ``k`` is ``(c_{k-1}, c_k]``.

    Raises:
        ValueError: ``n_bins`` out of range, or no event among the slides.
    """
    if not 1 <= int(n_bins) <= MAX_BINS:
        raise ValueError(f"n_bins must be in 1..{MAX_BINS}, got {n_bins!r}")
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events, dtype=np.int64)
    observed = t[e == 1]
    if observed.size == 0:
        raise ValueError("no event among the training slides: the time bins are quantiles of event times")
    cuts = np.quantile(observed, np.arange(1, int(n_bins)) / int(n_bins)) if n_bins > 1 else np.empty(0)
    return [float(c) for c in np.unique(cuts)]


def time_bins_of(times, cuts: Sequence[float]) -> np.ndarray:
    """int64 bin index of each time: the number of cut points strictly below it (bins are right-closed)."""
    return np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(times, dtype=np.float64), side="left")


def discrete_time_nll(logits: Tensor, bins: Tensor, events: Tensor) -> Tensor:
    """Mean discrete-time negative log-likelihood of a batch (see the module docstring).

    Args:
        logits: ``[B, K]`` hazard logits.
        bins: int ``[B]``, each slide's time bin ``0 .. K-1``.
        events: ``[B]``, 1 for an observed event, 0 for censored.

    Returns:
        A scalar, the mean over the ``B`` slides.
    """
    if logits.ndim != 2 or bins.shape != logits.shape[:1] or events.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [B, K] and bins, events [B]; got {tuple(logits.shape)}, "
                         f"{tuple(bins.shape)}, {tuple(events.shape)}")
    z = logits.float()
    log_survive = F.logsigmoid(-z).cumsum(dim=1)  # log S_k
    padded = torch.cat([torch.zeros_like(z[:, :1]), log_survive], dim=1)  # log S_{k-1}, k = 0..K
    y = bins.long().view(-1, 1)
    event = events.to(z.dtype)
    died = padded.gather(1, y).squeeze(1) + F.logsigmoid(z).gather(1, y).squeeze(1)
    lived = padded.gather(1, y + 1).squeeze(1)
    return -(event * died + (1 - event) * lived).mean()


def cox_partial_likelihood(risk: Tensor, times: Tensor, events: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood of a batch, Breslow's ties, mean over events.

    Args:
        risk: ``[B]`` log hazard ratios (higher: shorter survival).
        times: ``[B]`` follow-up times.
        events: ``[B]``, 1 for an observed event, 0 for censored.

    Returns:
        A scalar; ``0 * risk.sum()`` (a zero that keeps the graph) when the batch has no event.
    """
    r = risk.reshape(-1).float()
    t = times.reshape(-1).to(r.device, torch.float64)
    e = events.reshape(-1).to(r.device, r.dtype)
    if not (r.shape == t.shape == e.shape):
        raise ValueError(f"risk, times and events must have one value per slide, got {tuple(risk.shape)}, "
                         f"{tuple(times.shape)}, {tuple(events.shape)}")
    if float(e.sum()) == 0:
        return r.sum() * 0.0
    order = torch.argsort(t)
    r_sorted, t_sorted = r[order], t[order]
    # log sum_{j >= i} exp(r_j) in time order; tied times share the risk set of their first member
    tail = torch.logcumsumexp(r_sorted.flip(0), dim=0).flip(0)
    first = torch.searchsorted(t_sorted, t_sorted, right=False)
    log_risk_set = tail[first]
    return -((r_sorted - log_risk_set) * e[order]).sum() / e.sum()


def survival_curve(logits: Tensor) -> Tensor:
    """``[B, K]``: the survival ``S_k`` after each bin of discrete-time hazard logits ``[B, K]``."""
    return torch.exp(F.logsigmoid(-logits.float()).cumsum(dim=-1))


def nll_risk(logits: Tensor) -> Tensor:
    """``[B]``: the risk of discrete-time hazard logits ``[B, K]``, ``-sum_k S_k`` (higher: shorter survival)."""
    return -survival_curve(logits).sum(dim=-1)
