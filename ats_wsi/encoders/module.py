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
(LayerNorm, Linear, GELU) between encoder and head trains. With a
:class:`~ats_wsi.encoders.cache.FeatureCache` attached, :meth:`features_at`
reads and encodes only the boxes never encoded before.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import EncoderError, EncoderResolutionError
from .cache import FeatureCache, geometry_digest, slide_fingerprint
from .features import as_float
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
            slide's patches are read at against ``spec.mpp``.

    Attributes:
        out_features: what the head receives: ``adapter`` or ``spec.dim``.
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
        self._digest = spec.digest()
        self._checked: set[tuple] = set()
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
        return features if self.adapter is None else self.adapter(features)

    def features_at(self, source, xy: Tensor, patch_wh, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(patches, features [B, n, out_features])`` of the boxes at ``xy`` of ``source``.

        Checks the resolution first (:meth:`check_resolution`). Frozen with a
        cache and a slide source: only the boxes the cache lacks are read and
        encoded, and ``patches`` is then empty (``[B, 0, 3, h, w]``).
        """
        self.check_resolution(source)
        if self.cache is None or not self.frozen or not hasattr(source, "extract_slide"):
            patches = as_float(source.extract(xy, patch_wh), like)
            features = self(patches.flatten(0, 1))
            return patches, features.reshape(*patches.shape[:2], -1)
        return self._cached(source, xy, patch_wh, like)

    def check_resolution(self, source) -> None:
        """Refuse a slide whose patches are not read at the spec's µm/px.

        Raises:
            EncoderResolutionError: another resolution, or a slide without one.
        """
        slides = getattr(source, "slides", None)
        if slides is None:  # an in-memory source: no resolution to check
            return
        spec = self.spec
        for b, slide in enumerate(slides):
            key = (id(slide), getattr(source, "mpp", None), source.level_downsample(b))
            if key in self._checked:
                continue
            resolutions = getattr(source, "resolutions", None)
            if resolutions is not None:
                read = float(resolutions[b].read_mpp)
            else:
                mpp = getattr(slide, "mpp", None)
                if not mpp:
                    from ..slide.resolution import missing_mpp_reason

                    raise EncoderResolutionError(getattr(slide, "path", None), missing_mpp_reason(
                        f"encoder {spec.name!r} takes patches at {spec.mpp:g} µm/px", slide))
                read = float(mpp) * source.level_downsample(b)
            if abs(read / spec.mpp - 1.0) > self.mpp_tolerance:
                raise EncoderResolutionError(getattr(slide, "path", None), (
                    f"patches would be read at {read:.4g} µm/px, but encoder {spec.name!r} takes "
                    f"{spec.patch_px} px at {spec.mpp:g} µm/px (tolerance {self.mpp_tolerance:.0%}): its features "
                    f"would be garbage; set the model's patch_mpp to {spec.mpp:g}"))
            self._checked.add(key)

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

    def _group(self, source, b: int, patch_wh) -> str:
        slide = source.slides[b]
        resolutions = getattr(source, "resolutions", None)
        plan = resolutions[b] if resolutions is not None else None
        wh = (patch_wh, patch_wh) if isinstance(patch_wh, int) else patch_wh
        geometry = geometry_digest(
            patch_wh=[int(v) for v in wh], mpp=getattr(source, "mpp", None), level=int(source.levels[b]),
            downsample=round(float(source.level_downsample(b)), 9),
            factor=None if plan is None else round(float(plan.factor), 9))
        return FeatureCache.group(self._digest, slide_fingerprint(slide.path), geometry)

    def _cached(self, source, xy: Tensor, patch_wh, like: Tensor) -> tuple[Tensor, Tensor]:
        cache = self.cache
        cache.record_spec(self._digest, self.spec.to_dict())
        batch, n = xy.shape[:2]
        boxes = source.boxes_level0(xy, patch_wh).numpy()  # [B, n, 4] level-0 (x0, y0, w0, h0)
        groups = [self._group(source, b, patch_wh) for b in range(batch)]
        out = np.empty((batch, n, self.spec.dim), dtype=np.float32)
        todo: list[tuple[int, int]] = []
        for b in range(batch):
            for i, found in enumerate(cache.get(groups[b], boxes[b], dim=self.spec.dim)):
                if found is None:
                    todo.append((b, i))
                else:
                    out[b, i] = found
        if todo:  # read only the missing boxes, slide by slide (todo is in slide order)
            patches = torch.cat([source.extract_slide(b, xy[b, [i for bb, i in todo if bb == b]], patch_wh)
                                 for b in sorted({b for b, _ in todo})])
            with torch.no_grad():
                new = self.embed(as_float(patches, like)).cpu().numpy()
            for b in range(batch):
                rows = [k for k, (bb, _) in enumerate(todo) if bb == b]
                if rows:
                    cells = [todo[k][1] for k in rows]
                    out[b, cells] = new[rows]
                    cache.put(groups[b], boxes[b][cells], new[rows])
        features = torch.from_numpy(out).to(like.device)
        if self.adapter is not None:
            features = self.adapter(features)
        pw, ph = (patch_wh, patch_wh) if isinstance(patch_wh, int) else tuple(patch_wh)
        empty = torch.empty(batch, 0, 3, int(ph), int(pw), device=like.device)
        return empty, features


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
