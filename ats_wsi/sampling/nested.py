"""Two attention stages, one unbiased estimator: attention that zooms.

Stage 1 draws ``n1`` regions ``i ~ a1`` over the low view; stage 2 draws
``n2`` positions ``j ~ a2(. | i)`` inside each drawn region. The target is::

    Phi = sum_i a1_i sum_j a2_{j|i} f_ij = E_{i ~ a1}[ E_{j ~ a2(.|i)}[ f_ij ] ].

It is built from the one-stage estimators of :mod:`.expectation`, nothing
new: the inner estimate ``F_hat_r`` (one-stage estimator over region r's
draws) is unbiased for ``F_i = sum_j a2_{j|i} f_ij`` given that ``i_r = i``;
the outer estimator is linear in its features, with weights and attention
gradients that depend only on the stage-1 draws, so feeding it ``F_hat_r``
in place of ``F_{i_r}`` keeps its value and its gradient to ``a1`` unbiased
(tower rule). The upstream gradient the outer estimator sends to
``F_hat_r`` is ``w_r g``, with ``w_r`` its own feature weight, whose sum over
the draws landing on region i has mean ``a1_i``; the inner estimator's
gradients (linear in their upstream gradient) are therefore scaled by
``w_r`` and their mean is ``a1_i`` times the one-stage gradient with respect
to ``a2(. | i)`` and ``f_i.``: exactly the gradient of ``Phi``. docs/zoom.md
writes the derivation out; tests/sampling/test_nested.py checks it by Monte
Carlo for the four with/without-replacement combinations.
"""
from __future__ import annotations

import torch

from ..errors import SamplingError
from .distribution import sample
from .expectation import expectation

__all__ = ["nested_expectation", "sample_within"]


def sample_within(
    attention: torch.Tensor,
    n: int,
    replace: bool = False,
    logits: bool = False,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` cells in each of the ``n1`` stage-2 maps of every batch element.

    :func:`~ats_wsi.sampling.sample` over the ``B · n1`` maps at once (each
    region's draws are independent of the others' given the regions).

    Args:
        attention: float ``[B, n1, *spatial]``: the stage-2 map of each drawn
            region (probabilities, or logits with ``logits=True``).
        n: cells drawn per region.
        replace, logits, generator, deterministic: as in
            :func:`~ats_wsi.sampling.sample`.
        mask: optional bool ``[B, n1, *spatial]``, True where a cell may be
            drawn.

    Returns:
        positions: int64 ``[B, n1, n, len(spatial)]``, the drawn cells of
            each region's map (without replacement in sequential order).
        sampled_attention: ``[B, n1, n]``, each drawn cell's probability
            under its region's (renormalised) map; differentiable.

    Raises:
        SamplingError: ``attention`` with fewer than 3 axes, a mask of
            another shape, or whatever :func:`~ats_wsi.sampling.sample` refuses.
    """
    if not isinstance(attention, torch.Tensor) or attention.dim() < 3:
        shape = tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
        raise SamplingError(f"stage-2 attention must be [B, n1, *spatial], got {shape}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != attention.shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SamplingError(f"stage-2 mask must have the attention's shape {tuple(attention.shape)}, got {got}")
    lead = attention.shape[:2]
    flat_mask = None if mask is None else mask.flatten(0, 1)
    positions, sampled = sample(attention.flatten(0, 1), n, replace=replace, logits=logits, mask=flat_mask,
                                generator=generator, deterministic=deterministic)
    return positions.unflatten(0, lead), sampled.unflatten(0, lead)


def nested_expectation(
    features: torch.Tensor,
    sampled_attention_1: torch.Tensor,
    sampled_attention_2: torch.Tensor,
    replace_1: bool,
    replace_2: bool,
) -> torch.Tensor:
    """Estimate ``sum_i a1_i sum_j a2_{j|i} f_ij`` from the features of the drawn cells.

    Args:
        features: float ``[B, n1, n2, ...]``: ``features[b, r, s]`` is the
            feature of the ``s``-th cell drawn in the ``r``-th region drawn,
            both in draw order.
        sampled_attention_1: float ``[B, n1]``, each drawn region's
            probability under the stage-1 map (:func:`~ats_wsi.sampling.sample`).
        sampled_attention_2: float ``[B, n1, n2]``, each drawn cell's
            probability under its region's map (:func:`sample_within`).
        replace_1, replace_2: whether stage 1 and stage 2 drew with
            replacement; each must match its draw.

    Returns:
        ``[B, ...]``: the estimate, with unbiased gradients to ``features``
        and to both sampled attentions (hence to both attention nets).

    Raises:
        SamplingError: shapes that do not nest (``features [B, n1, n2, ...]``
            against ``[B, n1]`` and ``[B, n1, n2]``), or whatever
            :func:`~ats_wsi.sampling.expectation` refuses.
    """
    _check_nesting(features, sampled_attention_1, sampled_attention_2)
    lead = features.shape[:2]
    inner = expectation(features.flatten(0, 1), sampled_attention_2.flatten(0, 1), replace_2)  # [B·n1, ...]
    return expectation(inner.unflatten(0, lead), sampled_attention_1, replace_1)


def _check_nesting(features, first, second) -> None:
    tensors = (features, first, second)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise SamplingError("features and both sampled attentions must be torch tensors")
    if features.dim() < 3 or first.dim() != 2 or second.dim() != 3 \
            or tuple(second.shape) != tuple(features.shape[:3]) or tuple(first.shape) != tuple(features.shape[:2]):
        raise SamplingError(
            f"features must be [B, n1, n2, ...], sampled_attention_1 [B, n1] and sampled_attention_2 "
            f"[B, n1, n2]; got {tuple(features.shape)}, {tuple(first.shape)} and {tuple(second.shape)}")
