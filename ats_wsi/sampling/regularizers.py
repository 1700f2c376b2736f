"""Entropy of attention maps, and the entropy regulariser of the reference.

A young attention network tends to collapse onto a few cells (often image
borders) before the feature network has learnt anything; penalising low
entropy keeps it exploring.
"""
from __future__ import annotations

import torch

from ..errors import SamplingError

__all__ = ["multinomial_entropy", "entropy_regularizer"]


def multinomial_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_k a_k log a_k`` of each map, in nats.

    Args:
        attention: float ``[B, ...]``, one probability map per batch element.

    Returns:
        ``[B]``, same dtype. Cells with ``a_k = 0`` contribute 0, and the
        gradient there is finite (``log a`` is evaluated at ``max(a, tiny)``).
    """
    _check(attention)
    flat = attention.reshape(attention.shape[0], -1)
    safe = flat.clamp_min(torch.finfo(flat.dtype).tiny)
    return -(flat * torch.log(safe)).sum(dim=1)


def entropy_regularizer(attention: torch.Tensor, strength: float, eps: float = 1e-8) -> torch.Tensor:
    """Loss term ``strength * sum a log(a + eps) / B`` (the reference's convention).

    It equals ``-strength`` times the mean entropy (up to ``eps``): adding it
    to a loss that is minimised with a positive ``strength`` raises the
    entropy of the attention.

    Args:
        attention: float ``[B, ...]`` probability maps.
        strength: weight of the term; 0 gives an exact 0 that still has a
            graph.
        eps: keeps ``log`` finite at 0 cells. Half-precision maps are
            evaluated in float32 so that ``eps`` does not underflow.

    Returns:
        scalar tensor (dtype of ``attention``, at least float32).
    """
    _check(attention)
    a = attention if torch.finfo(attention.dtype).bits >= 32 else attention.float()
    return strength * (a * torch.log(a + eps)).sum() / attention.shape[0]


def _check(attention: torch.Tensor) -> None:
    if not isinstance(attention, torch.Tensor) or not attention.is_floating_point():
        raise SamplingError("attention must be a floating-point torch.Tensor")
    if attention.dim() < 2:
        raise SamplingError(
            f"attention must be [B, ...] with at least one cell axis, got shape {tuple(attention.shape)}"
        )
