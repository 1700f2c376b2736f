"""The one door from a model config to its feature net.

A config names its feature net one of two ways, and only
:func:`build_feature_net` reads the fields that say which:

- by name (``feature_net``, ``feature_kwargs``, ``feature_dim``,
  ``feature_mean``/``feature_std``): a net of :mod:`ats_wsi.nets`
  (``"feature-small"``, ``"timm:<name>"``, ...) behind a :class:`Normalize`;
- as a pretrained encoder (``feature_spec``, ``feature_frozen``,
  ``feature_adapter``): a :class:`~ats_wsi.encoders.PatchEncoder` that
  normalises its own input, read through the encoder's feature step
  (:class:`~ats_wsi.classifier.features.EncoderFeatures`: resolution check and
  feature cache).

Either way the result is a :class:`BuiltFeatureNet`: the module, the width
the head takes, the feature step, and the config as built (an encoder fills
in its weights' place, sha256 and ``dim``). The module tree is the one older
checkpoints were saved with, so their state dicts load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn

from ..nets import create_feature_net
from .config import ModelConfig
from .features import EncoderFeatures

__all__ = ["BuiltFeatureNet", "Normalize", "build_feature_net"]


class Normalize(nn.Module):
    """Pixels -> normalised float: ``(x - mean) / std`` per channel of ``[N, C, h, w]``.

    uint8 input is scaled to [0, 1] first; float input is taken as already in
    [0, 1] and keeps its dtype. Put first in a net, it lets the net take raw
    uint8 tiles, so a big low view is converted to float one tile at a time.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


@dataclass(frozen=True)
class BuiltFeatureNet:
    """A config's feature net, ready for the sampler.

    Attributes:
        module: pixels ``[N, 3, ph, pw]`` (uint8, or float in [0, 1]) -> ``[N, width]``.
        width: ``D`` the head takes (an encoder's adapter width, else its ``dim``
            or the config's ``feature_dim``).
        step: the sampler's feature step (``None``: the plain one, read and embed).
        config: the config as built (for an encoder: its spec resolved, ``feature_dim`` its ``dim``).
    """

    module: nn.Module
    width: int
    step: Callable | None
    config: ModelConfig


def build_feature_net(config: ModelConfig, *, encoder_weights: bool = True) -> BuiltFeatureNet:
    """The feature net of ``config``, by name or as a pretrained encoder.

    Args:
        config: the model config.
        encoder_weights: False builds a fine-tuned encoder without reading its
            pretrained weights (a checkpoint's state dict fills them); a frozen
            encoder always reads them from the file its spec names.

    Raises:
        ValueError, TypeError: an unknown net name or arguments it does not take.
        EncoderError: an encoder that cannot be built (missing weights, timm, ...).
    """
    if config.feature_spec is None:
        net = create_feature_net(config.feature_net, in_channels=3, out_features=config.feature_dim,
                                 **config.feature_kwargs)
        module = nn.Sequential(Normalize(config.feature_mean or config.mean, config.feature_std or config.std), net)
        return BuiltFeatureNet(module, config.feature_dim, None, config)
    from ..encoders import build_encoder

    encoder = build_encoder(config.feature_spec, frozen=config.feature_frozen, adapter=config.feature_adapter,
                            pretrained=encoder_weights or config.feature_frozen, mpp_tolerance=config.mpp_tolerance)
    built = replace(config, feature_spec=encoder.spec.to_dict(), feature_dim=encoder.spec.dim)
    return BuiltFeatureNet(encoder, encoder.out_features, EncoderFeatures(), built)
