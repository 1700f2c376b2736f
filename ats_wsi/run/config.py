"""A slide classifier described by a config of names and numbers.

A checkpoint stores this config (never pickled code); :func:`build_model`
turns the same config into the same network again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..model import AttentionResult, AttentionSampler
from ..nets import create_attention_net, create_feature_net

__all__ = ["ModelConfig", "SlideClassifier", "build_model"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a slide classifier.

    Attributes:
        n_classes: number of slide labels (0 .. n_classes - 1).
        attention_net, attention_kwargs: name and arguments in ``ats_wsi.nets``.
        feature_net, feature_kwargs: likewise (``"timm:<name>"`` works when installed).
        feature_dim: D, the feature vector per patch.
        n_patches: patches drawn per slide.
        patch_size: side of a square patch, in pixels of ``patch_level``.
        patch_level: pyramid level patches are read from (0: full resolution).
        low_downsample / low_mpp: resolution of the attention net's input
            (exactly one is set; µm/px is what pathology models should use).
        replace: sampling with replacement.
        entropy: weight of the entropy regulariser.
        min_tissue: fraction of tissue a cell needs to be drawn (0: any).
        tile_aligned: snap patches to the grid of multiples of
            ``patch_size``; with ``patch_size`` = the level's tile size each
            patch is one stored tile (see :class:`ats_wsi.model.AttentionSampler`).
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        class_names: optional names of the labels.
    """

    n_classes: int = 2
    attention_net: str = "attention-small"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_net: str = "feature-small"
    feature_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_dim: int = 64
    n_patches: int = 16
    patch_size: int = 128
    patch_level: int = 0
    low_downsample: float | None = 16.0
    low_mpp: float | None = None
    replace: bool = False
    entropy: float = 0.01
    min_tissue: float = 0.0
    tile_aligned: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    class_names: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path=None) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(path, f"unknown model config keys {unknown} (made by a newer ats-wsi?)")
        cfg = cls(**data)
        cfg.mean, cfg.std = tuple(cfg.mean), tuple(cfg.std)
        return cfg

    def low_resolution(self) -> dict[str, float]:
        """``{"downsample": ...}`` or ``{"mpp": ...}`` for :func:`ats_wsi.data.lowview.read_low_view`."""
        if (self.low_downsample is None) == (self.low_mpp is None):
            raise ValueError("set exactly one of low_downsample and low_mpp")
        return {"mpp": self.low_mpp} if self.low_mpp is not None else {"downsample": self.low_downsample}


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


class SlideClassifier(nn.Module):
    """Attention sampling over a slide, then a linear head on the features.

    ``forward(x_low, source, mask)`` takes the low view as uint8 (or float in
    [0, 1]) ``[B, 3, h, w]``, a patch source (a
    :class:`ats_wsi.patches.SlideSource` or a tensor) and an optional tissue
    mask, and returns ``(logits [B, n_classes], AttentionResult)``. Both nets
    normalise their own input, so a large uint8 view is only ever converted
    to float tile by tile.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        attention = create_attention_net(config.attention_net, in_channels=3, **config.attention_kwargs)
        feature = create_feature_net(config.feature_net, in_channels=3, out_features=config.feature_dim,
                                     **config.feature_kwargs)
        attention_in = nn.Sequential(Normalize(config.mean, config.std), attention)
        if hasattr(attention, "receptive_field"):  # lets tiling skip the probe
            attention_in.receptive_field = attention.receptive_field
        self.sampler = AttentionSampler(
            attention_in,
            nn.Sequential(Normalize(config.mean, config.std), feature),
            n_patches=config.n_patches,
            patch_size=config.patch_size,
            replace=config.replace,
            entropy=config.entropy,
            min_tissue=config.min_tissue,
            tile_aligned=config.tile_aligned,
        )
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def forward(self, x_low: Tensor, source, mask: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                deterministic: bool | None = None) -> tuple[Tensor, AttentionResult]:
        result = self.sampler(x_low, source, mask, generator=generator, deterministic=deterministic)
        return self.head(result.features), result


def build_model(config: ModelConfig | dict) -> SlideClassifier:
    """A fresh :class:`SlideClassifier` from a config (or its dict)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SlideClassifier(config)
