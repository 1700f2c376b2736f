"""Unbiased estimators of the attention-weighted feature average.

With attention ``a`` over K cells and features ``f_k``, the model wants
``Phi = sum_k a_k f_k = E_{k ~ a}[f_k]`` but computes features only at ``n``
sampled cells. Each estimator below is a ``torch.autograd.Function`` whose
forward is an unbiased estimate of ``Phi`` and whose backward is an unbiased
estimate of the gradient of ``Phi`` with respect to the attention (and to the
features). The draws themselves carry no gradient; the gradient reaches the
attention map through ``sampled_attention`` (see :func:`ats_wsi.sampling.sample`).

Notation used in the docstrings, for one map: draws ``q_0 .. q_{n-1}``,
``a_i = a[q_i]``, ``f_i = f[q_i]``, ``g`` the upstream gradient, and
``phi_i = <g, f_i>`` (contraction over the feature axes).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..errors import SamplingError

__all__ = ["expectation", "ExpectationWithReplacement", "ExpectationWithoutReplacement"]


def expectation(features: torch.Tensor, sampled_attention: torch.Tensor, replace: bool) -> torch.Tensor:
    """Estimate ``sum_k a_k f_k`` from features at sampled cells.

    Args:
        features: float ``[B, n, ...]``, the features of the drawn cells, in
            the order they were drawn.
        sampled_attention: float ``[B, n]``, the probability of each drawn cell
            (the second output of :func:`ats_wsi.sampling.sample`).
        replace: whether the cells were drawn with replacement. It must match
            the draw: the without-replacement estimator relies on the
            sequential-sampling order of the draws.

    Raises:
        SamplingError: not tensors, not floating point, shapes that do not
            match, an empty batch or no samples, NaN, inf or negative
            sampled attention (a probability).

    Returns:
        ``[B, ...]`` (features' trailing shape and dtype): the estimate, with
        unbiased gradients to ``features`` and ``sampled_attention``.
    """
    _check_inputs(features, sampled_attention)
    if replace:
        return ExpectationWithReplacement.apply(features, sampled_attention)
    return ExpectationWithoutReplacement.apply(features, sampled_attention)


class ExpectationWithReplacement(torch.autograd.Function):
    """Mean of i.i.d. draws ``q_i ~ a``.

    forward:  ``features [B, n, ...], sampled_attention [B, n] -> [B, ...]``,
              ``Phi_hat = (1/n) sum_i f_i``.
    backward: to the features ``g / n`` per draw; to the sampled attention
              ``phi_i / (n a_i)`` (score function: ``E[1[q_i = k] / a_k] = 1``,
              so the sum over draws of ``phi_i / (n a_i)`` landing on cell k
              has mean ``<g, f_k> = d<g, Phi>/d a_k``).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, sampled_attention: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, sampled_attention)
        return features.mean(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        features, attention = ctx.saved_tensors
        n = features.shape[1]
        grad_features = grad_attention = None
        if ctx.needs_input_grad[0]:
            grad_features = (grad / n).unsqueeze(1).expand_as(features)
        if ctx.needs_input_grad[1]:
            phi = _contract(features, grad).to(attention.dtype)
            grad_attention = _safe_divide(phi, n * attention)
        return grad_features, grad_attention


class ExpectationWithoutReplacement(torch.autograd.Function):
    """Average of per-draw unbiased estimates under sequential sampling.

    With ``pm_i = 1 - sum_{j<i} a_j`` (mass left before draw i; an EXCLUSIVE
    cumulative sum), ``Fe_i = sum_{j<i} a_j f_j + pm_i f_i`` is unbiased for
    ``Phi`` given the earlier draws.

    forward:  ``features [B, n, ...], sampled_attention [B, n] -> [B, ...]``,
              ``Phi_hat = (1/n) sum_i Fe_i = sum_m w_m f_m`` with
              ``w_m = (pm_m + (n - 1 - m) a_m) / n``.
    backward: to the features ``w_m g`` (``Phi_hat`` is linear in them); to
              the sampled attention, with ``e_i = <g, Fe_i>``,
              ``(1/n) [ sum_{i>m} (phi_m - phi_i)``            (pathwise)
              ``      + (sum_{i>=m} e_i) / a_m``               (score of draw m)
              ``      + sum_{j>m} (1/pm_j) sum_{i>=j} e_i ]``  (score of the
              renormalisations after m).
              The score terms use the law of the ordered draws,
              ``P(q) = prod_j a_j / pm_j``; each draw's score is paired only
              with the terms ``Fe_i``, ``i >= j``, that depend on it (earlier
              terms multiply a score of conditional mean 0).

    ``pm_i`` is clamped below by ``a_i``: exactly, the mass left before a draw
    includes the drawn cell, so the clamp only undoes rounding in the
    cumulative sum, and it bounds ``1/pm_i`` by ``1/a_i``, which the score term
    already carries. Cells drawn with probability 0 (possible only when a map
    has fewer positive cells than draws) contribute no attention gradient.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, sampled_attention: torch.Tensor) -> torch.Tensor:
        a = sampled_attention
        n = a.shape[1]
        pm = _mass_left(a)
        later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)  # n - 1 - m
        weights = (pm + later * a) / n
        ctx.save_for_backward(features, a, pm, weights)
        return _weighted_sum(features, weights.to(features.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        features, a, pm, weights = ctx.saved_tensors
        n = a.shape[1]
        grad_features = grad_attention = None
        if ctx.needs_input_grad[0]:
            shape = weights.shape + (1,) * (features.dim() - 2)
            grad_features = weights.to(features.dtype).reshape(shape) * grad.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            phi = _contract(features, grad).to(a.dtype)  # [B, n]
            later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)
            pathwise = later * phi - _reverse_cumsum(phi, exclusive=True)
            e = _exclusive_cumsum(a * phi) + pm * phi  # <g, Fe_i>
            tail = _reverse_cumsum(e, exclusive=False)  # sum_{i>=m} e_i
            score = _safe_divide(tail, a) + _reverse_cumsum(_safe_divide(tail, pm), exclusive=True)
            grad_attention = (pathwise + score) / n
        return grad_features, grad_attention


def _check_inputs(features: torch.Tensor, sampled_attention: torch.Tensor) -> None:
    if not (isinstance(features, torch.Tensor) and isinstance(sampled_attention, torch.Tensor)):
        raise SamplingError("features and sampled_attention must be torch tensors")
    if not (features.is_floating_point() and sampled_attention.is_floating_point()):
        raise SamplingError(
            f"features and sampled_attention must be floating point, got "
            f"{features.dtype} and {sampled_attention.dtype}"
        )
    if features.dim() < 2 or sampled_attention.dim() != 2 or features.shape[:2] != sampled_attention.shape:
        raise SamplingError(
            f"features must be [B, n, ...] and sampled_attention [B, n]; got "
            f"{tuple(features.shape)} and {tuple(sampled_attention.shape)}"
        )
    if sampled_attention.shape[1] == 0:
        raise SamplingError("expectation over 0 samples")
    if sampled_attention.shape[0] == 0:
        raise SamplingError("expectation over an empty batch (0 maps)")
    values = sampled_attention.detach()
    if not bool(((values >= 0) & (values < float("inf"))).all()):  # NaN fails both: one check, one sync
        raise SamplingError("sampled_attention must hold finite probabilities >= 0 (got NaN, inf or a "
                            "negative value); pass the second output of sample()")
    if features.device != sampled_attention.device:
        raise SamplingError(
            f"features on {features.device} but sampled_attention on {sampled_attention.device}"
        )


def _contract(features: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``<grad_b, f_bi>`` over the feature axes: ``[B, n, ...], [B, ...] -> [B, n]``."""
    batch, n = features.shape[:2]
    dtype = torch.promote_types(features.dtype, grad.dtype)
    flat = features.reshape(batch, n, -1).to(dtype)
    return torch.bmm(flat, grad.reshape(batch, -1, 1).to(dtype)).squeeze(2)


def _weighted_sum(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_bi f_bi``: ``[B, n, ...], [B, n] -> [B, ...]``."""
    batch, n = features.shape[:2]
    flat = torch.bmm(weights.unsqueeze(1), features.reshape(batch, n, -1))
    return flat.reshape(features.shape[:1] + features.shape[2:])


def _mass_left(a: torch.Tensor) -> torch.Tensor:
    """``pm_i = 1 - sum_{j<i} a_j``, clamped below by ``a_i``: ``[B, n] -> [B, n]``."""
    return torch.maximum(1 - _exclusive_cumsum(a), a)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``sum_{j<i} x_j`` along dim 1."""
    return torch.nn.functional.pad(x.cumsum(dim=1)[:, :-1], (1, 0))


def _reverse_cumsum(x: torch.Tensor, exclusive: bool) -> torch.Tensor:
    """``sum_{j>i} x_j`` (exclusive) or ``sum_{j>=i} x_j`` along dim 1."""
    total = x.flip(1).cumsum(dim=1).flip(1)
    if exclusive:
        return torch.nn.functional.pad(total[:, 1:], (0, 1))
    return total


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else 0."""
    positive = den > 0
    return torch.where(positive, num / den.where(positive, 1), 0)
