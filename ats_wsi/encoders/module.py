"""PatchEncoder: a pretrained encoder with its input contract, frozen or fine-tuned.

``PatchEncoder(spec, backbone)`` takes patches as uint8 (or float in [0, 1])
``[N, 3, h, w]`` and gives ``[N, D]``: it resizes them to the spec's
``input_px``, normalises them with the spec's own mean/std, runs the backbone
in the spec's precision and pools its tokens the spec's way. The attention
net keeps its own normalisation (the model config's ``mean``/``std``).

Frozen (``frozen=True``): the backbone runs in eval mode without gradients,
its parameters never change, and it is left out of the model's
``state_dict`` (a checkpoint records the spec with the weights' sha256 and
rebuilds the backbone from the same file). An optional adapter
(LayerNorm, Linear, GELU) between encoder and head trains.

Pixels in, features out: the encoder knows nothing of slides or patch
sources. Reading the drawn boxes, checking the µm/px they are read at and
looking features up in an attached :class:`~ats_wsi.encoders.cache.FeatureCache`
(``encoder.cache``) is the classifier's feature step
(:class:`ats_wsi.classifier.features.EncoderFeatures`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import EncoderError
from .cache import FeatureCache
from .loaders import build_backbone
from .registry import load_spec
from .spec import EncoderSpec

__all__ = ["PatchEncoder", "attach_feature_cache", "build_encoder"]


class PatchEncoder(nn.Module):
    """A patch encoder with its input contract: ``[N, 3, h, w]`` pixels -> ``[N, out_features]``.

    Args:
        spec: the :class:`EncoderSpec` (its ``dim`` is checked on every call).
        backbone: the network (timm model, TorchScript module, exported module).
        frozen: eval mode, no gradients, weights unchanged, not in ``state_dict``.
        adapter: width of a trainable adapter after the encoder (0: none).
        mpp_tolerance: relative tolerance when checking the resolution a
            slide's patches are read at against ``spec.mpp`` (the classifier's
            feature step checks it).

    Attributes:
        out_features: what the head receives: ``adapter`` or ``spec.dim``.
        digest: the spec's digest (:meth:`EncoderSpec.digest`), the first part
            of a feature cache key.
        cache: a :class:`FeatureCache` or None (used only when frozen).
    """

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, *, frozen: bool = False, adapter: int = 0,
                 mpp_tolerance: float = 0.05):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.frozen = bool(frozen)
        self.mpp_tolerance = float(mpp_tolerance)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.adapter = (nn.Sequential(nn.LayerNorm(spec.dim), nn.Linear(spec.dim, int(adapter)), nn.GELU())
                        if adapter else None)
        self.out_features = int(adapter) if adapter else spec.dim
        self.cache: FeatureCache | None = None
        self.digest = spec.digest()
        if self.frozen:
            for parameter in backbone.parameters():  # a ScriptModule has no requires_grad_()
                parameter.requires_grad_(False)
            _set_mode(backbone, False)
            self.register_state_dict_post_hook(_drop_backbone)
            self.register_load_state_dict_pre_hook(_keep_backbone)

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, frozen={self.frozen}, out_features={self.out_features}"

    def train(self, mode: bool = True) -> PatchEncoder:
        self.training = bool(mode)
        for child in self.children():
            _set_mode(child, bool(mode) and not (child is self.backbone and self.frozen))
        return self

    # -- features ------------------------------------------------------------

    def embed(self, patches: Tensor) -> Tensor:
        """The encoder's embedding ``[N, spec.dim]`` (float32) of pixels ``[N, 3, h, w]``."""
        x = patches.float().div(255) if patches.dtype == torch.uint8 else patches.float()
        size = self.spec.input_px
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        with self._autocast(x.device):
            try:
                if self.spec.pooling == "model":
                    out = self.backbone(x)
                else:
                    forward = getattr(self.backbone, "forward_features", None)
                    out = self._pool(forward(x) if callable(forward) else self.backbone(x))
            except EncoderError:
                raise
            except Exception as error:  # noqa: BLE001 - a user's network may raise anything
                first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                raise EncoderError(self.spec.weights, f"encoder {self.spec.name!r} failed on a batch of "
                                                      f"{tuple(x.shape)} ({type(error).__name__}: {first})") from None
        return self._valid_output(out, len(x)).float()

    def _valid_output(self, out, n: int) -> Tensor:
        """The encoder's output if it is a finite tensor ``[n, spec.dim]``, else :class:`EncoderError`."""
        name, dim = self.spec.name, self.spec.dim
        if not isinstance(out, Tensor):
            raise EncoderError(self.spec.weights, f"encoder {name!r} returned a {type(out).__name__}, not a tensor "
                                                  f"[N, {dim}]: export a module whose forward returns the "
                                                  f"features alone (pooling {self.spec.pooling!r})")
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] != dim:
            raise EncoderError(self.spec.weights, f"encoder {name!r} gave features of shape {tuple(out.shape)} for "
                                                  f"{n} patches, its spec says [N, {dim}] with N = {n} "
                                                  f"(pooling {self.spec.pooling!r})")
        if not bool(torch.isfinite(out).all()):
            raise EncoderError(self.spec.weights, f"encoder {name!r} gave NaN or inf features: broken weights, or "
                                                  f"an input its spec does not fit (mean/std, dtype "
                                                  f"{self.spec.dtype})")
        return out

    def forward(self, patches: Tensor) -> Tensor:
        """``[N, 3, h, w]`` -> ``[N, out_features]`` (the adapter after the encoder, if any)."""
        if self.frozen:
            with torch.no_grad():
                features = self.embed(patches)
        else:
            features = self.embed(patches)
        return self.adapt(features)

    def adapt(self, features: Tensor) -> Tensor:
        """The trainable adapter over embeddings ``[N, spec.dim]`` (the embeddings themselves without one)."""
        return features if self.adapter is None else self.adapter(features)

    # -- inside ------------------------------------------------------------

    def _autocast(self, device: torch.device):
        if self.spec.dtype == "float32" or device.type not in ("cpu", "cuda"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if device.type == "cpu" else getattr(torch, self.spec.dtype)
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _pool(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.ndim != 3:
            raise EncoderError(None, f"encoder {self.spec.name!r}: pooling {self.spec.pooling!r} needs tokens "
                                     f"[N, T, d], got {_shape(tokens)}")
        prefix = self.spec.prefix_tokens
        if prefix is None:
            prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
        if self.spec.pooling == "cls":
            return tokens[:, 0]
        mean = tokens[:, prefix:].mean(dim=1)
        return mean if self.spec.pooling == "mean" else torch.cat([tokens[:, 0], mean], dim=-1)


def _shape(value) -> str:
    """A tensor's shape, or what the value is instead."""
    return str(tuple(value.shape)) if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _set_mode(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)``; a ``torch.export`` module keeps the mode it was exported in."""
    try:
        module.train(mode)
    except NotImplementedError:
        pass


def _drop_backbone(module: PatchEncoder, state_dict, prefix: str, local_metadata) -> None:
    """A frozen backbone stays out of checkpoints: its spec names the weights and their hash."""
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        del state_dict[key]


def _keep_backbone(module: PatchEncoder, state_dict, prefix, local_metadata, strict, missing, unexpected,
                   errors) -> None:
    """Loading a state dict without the frozen backbone keeps the backbone as built."""
    if not any(k.startswith(prefix + "backbone.") for k in state_dict):
        for name, value in module.backbone.state_dict().items():
            state_dict[prefix + "backbone." + name] = value


def build_encoder(spec, *, weights=None, frozen: bool = False, adapter: int = 0, pretrained: bool = True,
                  mpp_tolerance: float = 0.05) -> PatchEncoder:
    """A :class:`PatchEncoder` from a spec (a name, JSON file, dict or :class:`EncoderSpec`).

    Args:
        spec: the encoder spec.
        weights: where the weights (or the TorchScript / ``.pt2`` file) are;
            overrides the spec's ``weights``.
        frozen, adapter, mpp_tolerance: as in :class:`PatchEncoder`.
        pretrained: False builds a timm architecture without reading weights
            (a checkpoint of a fine-tuned encoder carries them).

    The returned encoder's ``spec`` has ``weights`` and ``weights_sha256``
    filled in: store it (a checkpoint does), and the same features come back.
    """
    spec = load_spec(spec)
    backbone, resolved = build_backbone(spec, weights, pretrained=pretrained)
    return PatchEncoder(resolved, backbone, frozen=frozen, adapter=adapter, mpp_tolerance=mpp_tolerance)


def attach_feature_cache(model: nn.Module, cache) -> FeatureCache | None:
    """Give the frozen :class:`PatchEncoder` of ``model`` a feature cache.

    Args:
        model: a model holding a frozen encoder (e.g. a ``SlideClassifier``).
        cache: a :class:`FeatureCache`, a folder for one, or None (none: detach).

    Returns:
        The cache (None for None).

    Raises:
        EncoderError: a cache asked for without a frozen encoder (a trained
            feature net's features change with every step).
    """
    encoders = [m for m in model.modules() if isinstance(m, PatchEncoder)]
    if cache is None:
        for encoder in encoders:
            encoder.cache = None
        return None
    frozen = [e for e in encoders if e.frozen]
    if not frozen:
        raise EncoderError(None, "a feature cache needs a frozen pretrained encoder (--feature-spec with "
                                 "--freeze-features): the features of a feature net that trains change every step")
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    for encoder in frozen:
        encoder.cache = cache
    return cache
