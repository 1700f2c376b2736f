"""The plain feature step: read the drawn boxes, run the feature net on every patch.

:class:`~ats_wsi.model.AttentionSampler` calls a feature step for every draw;
this one is its default. A pretrained encoder with a resolution contract and
a feature cache uses another step with the same signature
(:class:`ats_wsi.classifier.features.EncoderFeatures`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["as_float", "plain_features"]


def as_float(patches: Tensor, like: Tensor) -> Tensor:
    """Patches on ``like``'s device, floating point; uint8 scaled to [0, 1]."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    patches = patches.to(like.device, non_blocking=True)
    if patches.dtype == torch.uint8:
        return patches.to(dtype) / 255
    return patches if patches.is_floating_point() else patches.to(dtype)


def plain_features(feature_net: nn.Module, source, xy: Tensor, patch_wh, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(patches [B, n, C, h, w], features [B, n, ...])`` of the boxes at ``xy`` of ``source``.

    Args:
        feature_net: ``[B·n, C, h, w] -> [B·n, D]``.
        source: a patch source (:class:`~ats_wsi.patches.PatchSource`).
        xy: long ``[B, n, 2]`` top-left corners in the source's frame.
        patch_wh: ``(w, h)``.
        like: a tensor whose device (and float dtype) the patches take.
    """
    patches = as_float(source.extract(xy, patch_wh), like)  # [B, n, C, h, w]
    features = feature_net(patches.flatten(0, 1))  # [B·n, D]
    return patches, features.reshape(*patches.shape[:2], *features.shape[1:])
