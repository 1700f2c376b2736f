"""Attention and feature nets by name, so that a config of names and numbers
(never pickled code) builds the same model again.

Built in, in plain torch:

- ``"attention-small"``: a few 3 × 3 convolutions ("same" padding) and a
  1 × 1 convolution to one logit channel: ``[B, C, h, w] -> [B, 1, h', w']``
  with ``h' = h // pool``.
- ``"feature-small"``, ``"feature-medium"``: conv-BN-ReLU blocks, 2 × 2 max
  pooling between blocks, global average pooling and a linear layer:
  ``[N, C, ph, pw] -> [N, out_features]``.

External backbones, imported only when asked: ``"timm:<name>"`` and
``"torchvision:<name>"`` feature nets (``timm.create_model`` /
``torchvision.models.get_model`` with ``num_classes=out_features``). timm
comes through :func:`ats_wsi.encoders.loaders.timm_model`, the one place
that imports it (a pretrained encoder's network comes through it too).

A slide classifier does not call these itself:
:func:`ats_wsi.classifier.feature_net.build_feature_net` is the one door from
a model config to its feature net (a net by name, or a pretrained encoder).

Every net built here carries ``net.config``: ``create_*_net(**net.config)``
builds it again.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = [
    "create_attention_net",
    "create_feature_net",
    "register_attention_net",
    "register_feature_net",
    "list_attention_nets",
    "list_feature_nets",
    "AttentionNet",
    "FeatureNet",
]

_ATTENTION: dict[str, Callable[..., nn.Module]] = {}
_FEATURE: dict[str, Callable[..., nn.Module]] = {}


def _register(table: dict, name: str):
    def decorate(builder):
        if name in table:
            raise ValueError(f"a net named {name!r} is already registered")
        table[name] = builder
        return builder
    return decorate


def register_attention_net(name: str):
    """Decorator: make ``builder(in_channels=..., **kw)`` buildable by ``name``."""
    return _register(_ATTENTION, name)


def register_feature_net(name: str):
    """Decorator: make ``builder(in_channels=..., out_features=..., **kw)`` buildable by ``name``."""
    return _register(_FEATURE, name)


def list_attention_nets() -> list[str]:
    """Names of the registered attention nets."""
    return sorted(_ATTENTION)


def list_feature_nets() -> list[str]:
    """Names of the registered feature nets (``timm:``/``torchvision:`` names come on top)."""
    return sorted(_FEATURE)


def create_attention_net(name: str, in_channels: int = 3, **kw) -> nn.Module:
    """An attention net ``[B, C, h, w] -> logits [B, 1, h', w']`` by name.

    Args:
        name: a registered name (see :func:`list_attention_nets`).
        in_channels: ``C`` of the low view.
        **kw: numbers the builder takes (e.g. ``hidden``, ``layers``, ``pool``).

    Returns:
        The net, with ``net.config`` set and ``net.receptive_field`` (its
        receptive field in low pixels, for tiling with a halo).

    Raises:
        ValueError: an unknown name, or an external backbone (those make
            feature nets only).
    """
    if ":" in name:
        raise ValueError(f"attention net {name!r}: external backbones serve as feature nets only; "
                         f"attention nets: {list_attention_nets()}")
    net = _lookup(_ATTENTION, name, "attention")(in_channels=in_channels, **kw)
    net.config = {"name": name, "in_channels": in_channels, **kw}
    return net


def create_feature_net(name: str, in_channels: int = 3, out_features: int = 64, **kw) -> nn.Module:
    """A feature net ``[N, C, ph, pw] -> [N, out_features]`` by name.

    Args:
        name: a registered name (see :func:`list_feature_nets`), or
            ``"timm:<model>"`` / ``"torchvision:<model>"``.
        in_channels: ``C`` of the patches.
        out_features: ``D``.
        **kw: numbers the builder takes (e.g. ``widths``; for timm and
            torchvision, their own keywords such as ``pretrained``).

    Returns:
        The net, with ``net.config`` set.

    Raises:
        ValueError: an unknown name.
        ImportError: ``timm`` or ``torchvision`` asked for but not installed
            (for timm a :class:`~ats_wsi.errors.TimmUnavailableError`, which
            is an ``ImportError`` too).
    """
    library, _, model = name.partition(":")
    if model:
        net = _external(library, model, in_channels, out_features, kw)
    else:
        net = _lookup(_FEATURE, name, "feature")(in_channels=in_channels, out_features=out_features, **kw)
    net.config = {"name": name, "in_channels": in_channels, "out_features": out_features, **kw}
    return net


# --------------------------------------------------------------------------
# Built-in nets.

class AttentionNet(nn.Module):
    """3 × 3 conv-ReLU layers ("same" padding) and a 1 × 1 conv to one logit.

    Args:
        in_channels: ``C`` of the low view.
        hidden: channels of the hidden layers.
        layers: number of 3 × 3 convolutions.
        pool: average pooling by this factor (1: none), so the map is
            ``[h // pool, w // pool]``.
        pool_first: pool the input before the convolutions (cheap: they run
            on ``1 / pool²`` of the pixels), or after them (the convolutions
            see the low view's own texture, at ``pool²`` times the cost).
        act: ``"relu"`` or ``"leaky"`` (LeakyReLU, slope 0.1): a unit that is
            negative everywhere on a slide still passes a gradient, so a net
            that starts flat can leave its start (docs/training.md, "A flat
            attention map"). No parameters: a checkpoint loads with either.

    Forward: ``[B, C, h, w] -> [B, 1, h // pool, w // pool]`` logits.

    Attributes:
        receptive_field: the net's receptive field in low pixels,
            ``pool · (1 + 2 · layers)`` pooling first, ``2 · layers + pool``
            after. With "same" padding the map covers the whole view: pass
            ``receptive_field=0`` to the sampler.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 8, layers: int = 3, pool: int = 1,
                 pool_first: bool = True, act: str = "relu"):
        super().__init__()
        if act not in ("relu", "leaky"):
            raise ValueError(f"attention net activation must be 'relu' or 'leaky', got {act!r}")
        body: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 and pool_first else []
        channels = in_channels
        for _ in range(layers):
            body += [nn.Conv2d(channels, hidden, 3, padding=1),
                     nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(0.1, inplace=True)]
            channels = hidden
        if pool > 1 and not pool_first:
            body.append(nn.AvgPool2d(pool))
        body.append(nn.Conv2d(channels, 1, 1))
        self.body = nn.Sequential(*body)
        self.receptive_field = pool * (1 + 2 * layers) if pool_first else 2 * layers + pool

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class FeatureNet(nn.Module):
    """Conv-BN-ReLU blocks, global average pooling and a linear layer.

    Args:
        in_channels: ``C`` of the patches.
        out_features: ``D``.
        widths: channels of each block; 2 × 2 max pooling between blocks.
        convs: convolutions per block.
        stem_stride: stride of the very first convolution (2 quarters the
            cost of large patches; 1 keeps full resolution).
        norm: "batch" (BatchNorm), "group" (GroupNorm, 8 groups or fewer) or
            "none". BatchNorm normalises over the patches of a batch, that
            is over the few patches sampled from one slide: their statistics
            then differ between training and inference. "group" normalises
            each patch on its own and is the safer choice for bags of patches.

    Forward: ``[N, C, ph, pw] -> [N, D]``.
    """

    def __init__(self, in_channels: int = 3, out_features: int = 64,
                 widths: Sequence[int] = (16, 32), convs: int = 1, stem_stride: int = 1,
                 norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for j in range(convs):
                stride = stem_stride if (i == 0 and j == 0) else 1
                layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=norm == "none"),
                           *_norm_layer(norm, width), nn.ReLU(inplace=True)]
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(channels, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def _norm_layer(norm: str, width: int) -> list[nn.Module]:
    if norm == "batch":
        return [nn.BatchNorm2d(width)]
    if norm == "group":
        return [nn.GroupNorm(math.gcd(8, width), width)]
    if norm == "none":
        return []
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")


@register_attention_net("attention-small")
def _attention_small(in_channels: int = 3, hidden: int = 8, layers: int = 3, pool: int = 1,
                     pool_first: bool = True, act: str = "relu"):
    return AttentionNet(in_channels, hidden=hidden, layers=layers, pool=pool, pool_first=pool_first, act=act)


@register_feature_net("feature-small")
def _feature_small(in_channels: int = 3, out_features: int = 64, widths=(16, 32), stem_stride: int = 1,
                   norm: str = "batch"):
    return FeatureNet(in_channels, out_features, widths=tuple(widths), convs=1, stem_stride=stem_stride, norm=norm)


@register_feature_net("feature-medium")
def _feature_medium(in_channels: int = 3, out_features: int = 128, widths=(32, 64, 128), stem_stride: int = 1,
                    norm: str = "batch"):
    return FeatureNet(in_channels, out_features, widths=tuple(widths), convs=2, stem_stride=stem_stride, norm=norm)


# --------------------------------------------------------------------------

def _lookup(table: dict, name: str, kind: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} net {name!r}; known: {sorted(table)} "
                         f"(feature nets also take 'timm:<name>' and 'torchvision:<name>')") from None


def _external(library: str, model: str, in_channels: int, out_features: int, kw: dict) -> nn.Module:
    if library == "timm":  # timm is imported in one place: the encoders' loader
        from .encoders.loaders import timm_model

        return timm_model(model, in_chans=in_channels, num_classes=out_features, **kw)
    if library != "torchvision":
        raise ValueError(f"unknown backbone library {library!r} in '{library}:{model}'; "
                         f"use 'timm:<name>' or 'torchvision:<name>'")
    try:
        models = importlib.import_module("torchvision.models")
    except Exception as error:  # a broken install fails on import with all sorts of errors
        raise ImportError(f"feature net '{library}:{model}' needs {library}, which could not be "
                          f"imported ({type(error).__name__}: {error}); install it, e.g. "
                          f"`pip install {library}`") from error
    if in_channels != 3:
        raise ValueError(f"torchvision backbones take 3 channels, not {in_channels} ('{library}:{model}')")
    return models.get_model(model, num_classes=out_features, **{"weights": None, **kw})
