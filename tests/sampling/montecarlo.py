"""Monte-Carlo helpers for the sampling tests: a small attention problem solved
exactly, the estimators run on many copies of it at once, and the statistics
that compare the two (z-scores from the samples' own standard errors,
chi-square quantiles)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ats_wsi.sampling import expectation, sample


@dataclass
class Problem:
    """K cells with D-dimensional features and a fixed upstream gradient g.

    logits ``[K]``, attention ``[K]`` = softmax(logits), features ``[K, D]``,
    g ``[D]``; the exact value ``phi [D]`` of ``Phi = sum_k a_k f_k`` and the
    exact gradients of ``<g, Phi>``: ``grad_logits [K] = a_k (<g, f_k> - <g, Phi>)``
    and ``grad_features [K, D] = a_k g``. With a ``mask [K]`` (True = may be
    drawn) the attention is the softmax over the unmasked cells, which is
    what ``sample`` draws from after renormalising.
    """

    logits: torch.Tensor
    features: torch.Tensor
    g: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def attention(self) -> torch.Tensor:
        if self.mask is None:
            return torch.softmax(self.logits, dim=0)
        return torch.softmax(self.logits.masked_fill(~self.mask, float("-inf")), dim=0)

    @property
    def phi(self) -> torch.Tensor:
        return self.attention @ self.features

    @property
    def grad_logits(self) -> torch.Tensor:
        a = self.attention
        return a * (self.features @ self.g - self.g @ self.phi)

    @property
    def grad_features(self) -> torch.Tensor:
        return self.attention[:, None] * self.g


@dataclass
class Draws:
    """One estimate per copy of the problem (B copies).

    positions ``[B, n]`` (flat cell index), sampled_attention ``[B, n]``,
    value ``[B, D]``, grad_logits ``[B, K]``, grad_features ``[B, K, D]``.
    """

    positions: torch.Tensor
    sampled_attention: torch.Tensor
    value: torch.Tensor
    grad_logits: torch.Tensor
    grad_features: torch.Tensor


def make_problem(logits, dim: int = 3, seed: int = 0, mask=None) -> Problem:
    """A problem with the given logits (and mask) and seeded random features and g (float64)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.as_tensor(logits, dtype=torch.float64)
    features = torch.randn(logits.numel(), dim, generator=gen, dtype=torch.float64)
    g = torch.randn(dim, generator=gen, dtype=torch.float64)
    mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    return Problem(logits, features, g, mask)


def run_estimator(problem: Problem, n: int, replace: bool, copies: int, seed: int) -> Draws:
    """Sample and estimate on ``copies`` copies of ``problem`` in one batch.

    The loss ``<g, Phi_hat>`` is back-propagated to a separate copy of the
    logits and of the features per batch element, so each row of the
    gradients is one independent gradient estimate. The sampler gets the
    softmax over ALL cells and the mask, so its renormalisation is part of
    the path the gradient takes.
    """
    K, D = problem.features.shape
    logits = problem.logits.repeat(copies, 1).requires_grad_()
    features = problem.features.repeat(copies, 1, 1).requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    positions, sampled = sample(
        torch.softmax(logits, dim=1), n, replace=replace, mask=problem.mask, generator=gen
    )
    index = positions[..., 0]
    picked = features.gather(1, index[..., None].expand(-1, -1, D))
    value = expectation(picked, sampled, replace)
    grad_logits, grad_features = torch.autograd.grad((value @ problem.g).sum(), (logits, features))
    return Draws(index, sampled.detach(), value.detach(), grad_logits, grad_features)


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """(mean - exact) / standard error, per coordinate; ``samples [B, ...]``.

    A mean within rounding (1e-12, relative to 1 + |exact|) of the exact
    value counts as exact (z = 0): coordinates that are 0 for every sample
    up to rounding (e.g. the logits of masked cells) have a standard error
    of rounding size too, and their ratio means nothing.
    """
    mean = samples.mean(dim=0)
    se = samples.std(dim=0) / math.sqrt(samples.shape[0])
    diff = mean - exact
    exact_match = diff.abs() <= 1e-12 * (1 + exact.abs())
    return torch.where(exact_match, 0.0, diff / se)


def chi2_upper(dof: int, z: float = 4.0) -> float:
    """Upper quantile of chi-square(dof) at the normal z-score ``z``.

    Wilson-Hilferty: (X/dof)^(1/3) is close to normal with mean
    1 - 2/(9 dof) and variance 2/(9 dof). z = 4 is a one-sided level of
    about 3e-5.
    """
    v = 2.0 / (9.0 * dof)
    return dof * (1.0 - v + z * math.sqrt(v)) ** 3


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of observed ``counts [M]`` against ``probs [M]``."""
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())
