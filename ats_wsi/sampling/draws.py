"""What a draw of attention sampling returns: plain tuples of tensors.

:class:`CellDraw` is a draw before any pixel is read (the cells and where
their patches lie); :class:`AttentionResult` is a whole pass of
:class:`~ats_wsi.model.AttentionSampler` (features, map, draws). Both are
re-exported by :mod:`ats_wsi.model`.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["AttentionResult", "CellDraw"]


class AttentionResult(NamedTuple):
    """What one forward pass of :class:`AttentionSampler` returns.

    Attributes:
        features: ``[B, D]`` (``[B, ...]`` for feature nets with more axes),
            the estimate of the attention-weighted mean of the patch features.
        attention: ``[B, h', w']``, the full attention map (probabilities,
            each map sums to 1; 0 on masked cells). Differentiable.
        positions: long ``[B, n, 2]``, the drawn cells as ``(row, col)`` on
            the map, in draw order.
        sampled_attention: ``[B, n]``, the probability of each drawn cell; the
            only path of gradient from the loss to the attention net.
        patches: ``[B, n, C, ph, pw]``, the patches the feature net saw
            (float; uint8 sources scaled to [0, 1]); ``[B, 0, C, ph, pw]``
            when a frozen encoder served them from its feature cache.
        xy: long ``[B, n, 2]``, ``(x, y)`` top-left of each patch in the
            source's high-resolution pixels (may be negative at borders).
        entropy_loss: scalar, the regulariser term to ADD to the loss, already
            weighted: ``entropy · Σ a log a / B`` (= −entropy × mean entropy).
        patch_features: ``[B, n, D]``, each drawn patch's own features (what
            the estimator averaged), for per-patch losses and scores.
        sampled_logits: ``[B, n]``, the attention net's logit at each drawn
            cell (``log`` of the probability for nets that return
            probabilities; 0 under ``sampler="uniform"``), for losses that
            train the attention to predict per-patch scores.
        logits: ``[B, h', w']``, the attention net's logits over the whole map (as
            ``sampled_logits``), for losses over cells drawn in earlier steps.
    """

    features: Tensor
    attention: Tensor
    positions: Tensor
    sampled_attention: Tensor
    patches: Tensor
    xy: Tensor
    entropy_loss: Tensor
    patch_features: Tensor | None = None
    sampled_logits: Tensor | None = None
    logits: Tensor | None = None


class CellDraw(NamedTuple):
    """Cells drawn from an attention map and where their patches lie (:meth:`ats_wsi.model.AttentionSampler.draw_cells`).

    Attributes:
        positions: long ``[B, n, 2]``, the cells as ``(row, col)`` on the map, in draw order.
        sampled_attention: ``[B, n]``, the probability of each drawn cell.
        xy: long ``[B, n, 2]``, ``(x, y)`` top-left of each patch in the source's pixels.
        patch_wh: ``(w, h)`` of a patch in the source's pixels.
    """

    positions: Tensor
    sampled_attention: Tensor
    xy: Tensor
    patch_wh: tuple[int, int]
