"""The feature net over the patches of drawn boxes: the step
:class:`~ats_wsi.model.AttentionSampler` calls for every draw.

A plain feature net sees every patch. A net with a ``features_at`` method (a
:class:`~ats_wsi.encoders.PatchEncoder`) is handed the source and the boxes
instead, so that a frozen encoder with a feature cache reads and encodes only
the boxes it has never seen, and checks the resolution it is read at.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["as_float", "patch_features"]


def as_float(patches: Tensor, like: Tensor) -> Tensor:
    """Patches on ``like``'s device, floating point; uint8 scaled to [0, 1]."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    patches = patches.to(like.device, non_blocking=True)
    if patches.dtype == torch.uint8:
        return patches.to(dtype) / 255
    return patches if patches.is_floating_point() else patches.to(dtype)


def patch_features(feature_net: nn.Module, source, xy: Tensor, patch_wh, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(patches [B, n, C, h, w], features [B, n, ...])`` of the boxes at ``xy`` of ``source``.

    Args:
        feature_net: ``[B·n, C, h, w] -> [B·n, D]``, or a net with
            ``features_at(source, xy, patch_wh, like)`` that does it all.
        source: a patch source (``extract(xy, patch_wh)``).
        xy: long ``[B, n, 2]`` top-left corners in the source's frame.
        patch_wh: ``(w, h)``.
        like: a tensor whose device (and float dtype) the patches take.
    """
    hook = getattr(feature_net, "features_at", None)
    if hook is not None:
        return hook(source, xy, patch_wh, like)
    patches = as_float(source.extract(xy, patch_wh), like)  # [B, n, C, h, w]
    features = feature_net(patches.flatten(0, 1))  # [B·n, D]
    return patches, features.reshape(*patches.shape[:2], *features.shape[1:])
