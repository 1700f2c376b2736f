"""EncoderSpec: a patch encoder and its input contract, as plain data.

A pathology foundation model gives useful features only for the input it was
trained on: patches of ``patch_px`` pixels at ``mpp`` µm/px, scaled to
``input_px``, normalised with its own ``mean``/``std``, run in its
``dtype``, pooled its way (e.g. Virchow's CLS token ⊕ mean of the patch
tokens). An :class:`EncoderSpec` holds all of it; a checkpoint stores its
dict (:meth:`EncoderSpec.to_dict`) in the model config, and features of two
specs with different :meth:`EncoderSpec.digest` are never mixed (the feature
cache keys on it).

Specs come from the registry (:mod:`ats_wsi.encoders.registry`, by name) or
from a JSON file a user writes (:func:`ats_wsi.encoders.load_spec`); a JSON spec may start from
a registry entry with ``"base": "<name>"`` and override some fields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import EncoderError
from ..units import MAX_MPP, MIN_MPP

__all__ = ["EncoderSpec", "SOURCES", "POOLINGS", "DTYPES"]

SOURCES = ("timm", "hf", "torchscript", "export", "none")
"""How the encoder is built: ``timm`` (``timm.create_model(arch, **kwargs)`` with the
weights file), ``hf`` (a local Hugging Face folder of a timm model: ``config.json`` +
``model.safetensors``), ``torchscript`` (``torch.jit.load``), ``export``
(``torch.export.load`` of a ``.pt2``), ``none`` (a contract only: pass an exported file)."""
POOLINGS = ("model", "cls", "cls+mean", "mean")
"""``model``: the net's own output; else from the token sequence ``[N, T, d]`` the net (or
timm's ``forward_features``) returns: the CLS token, CLS ⊕ mean of the patch tokens
(registers excluded: ``prefix_tokens``), or the mean of the patch tokens."""
DTYPES = ("float32", "float16", "bfloat16")
"""Precision the encoder runs in: anything but float32 runs under autocast (bf16 on CPU,
the spec's dtype on CUDA); the features always come out float32."""

MAX_PATCH_PX = 4096
"""Largest ``patch_px`` / ``input_px`` a spec may ask for: one RGB float32 patch of
4096² is 192 MiB already (65536 would be 48 GiB per patch)."""
MAX_DIM = 1 << 16
"""Largest embedding width ``dim`` a spec may declare."""

# Fields that decide the features an encoder gives (the rest is documentation).
_FEATURE_FIELDS = ("source", "arch", "kwargs", "weights_sha256", "mpp", "patch_px", "input_px", "mean",
                   "std", "dtype", "pooling", "prefix_tokens", "dim")


@dataclass(frozen=True)
class EncoderSpec:
    """A patch encoder and its input contract.

    Attributes:
        name: a short name (the registry's key, or the user's).
        source: one of :data:`SOURCES`.
        arch: the timm model name (``source="timm"``; for ``"hf"`` read from
            the folder's ``config.json`` when not given).
        kwargs: keyword arguments of ``timm.create_model`` (JSON values; a
            string ``"timm.layers.X"`` or ``"torch.nn.X"`` names that class).
        hub_id: ``org/name`` on the Hugging Face hub: its local cache folder is
            looked in for the weights (never downloaded).
        weights: a weights file (safetensors / state dict), a Hugging Face
            folder, or the TorchScript / ``.pt2`` file; ``"random"`` builds the
            architecture untrained (tests, timing).
        weights_sha256: the weights file's content hash, recorded when the
            encoder is built, checked when a checkpoint is loaded.
        mpp: µm/px the patches are read at (the model's ``patch_mpp``).
        patch_px: patch side read at ``mpp``, in pixels.
        input_px: side the encoder sees (patches are resized to it when it
            differs from ``patch_px``).
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        dtype: one of :data:`DTYPES`.
        pooling: one of :data:`POOLINGS`.
        prefix_tokens: tokens before the patch tokens (CLS + registers), for
            ``cls+mean`` / ``mean`` pooling; ``None``: the timm model's
            ``num_prefix_tokens`` (1 for files).
        dim: the embedding dimension D the encoder gives.
        card: where the contract comes from (model card).
        unverified: names of fields whose values were not checked against
            the model card.
        notes: anything else a user must know.
    """

    name: str
    source: str = "timm"
    arch: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    mpp: float = 0.5
    patch_px: int = 224
    input_px: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    dtype: str = "float32"
    pooling: str = "model"
    prefix_tokens: int | None = None
    dim: int = 0
    card: str = ""
    unverified: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self):
        where = self.name or None
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.source == "timm" and not self.arch:
            problems.append("a timm encoder needs 'arch' (a timm model name)")
        for key, most in (("patch_px", MAX_PATCH_PX), ("input_px", MAX_PATCH_PX), ("dim", MAX_DIM)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                problems.append(f"{key} must be an integer in 1..{most}, got {value!r}")
        if isinstance(self.mpp, bool) or not isinstance(self.mpp, (int, float)) or not MIN_MPP <= self.mpp <= MAX_MPP:
            problems.append(f"mpp must be a number of µm/px in {MIN_MPP:g}..{MAX_MPP:g}, got {self.mpp!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            try:
                numbers = tuple(value)
            except TypeError:
                numbers = ()
            if len(numbers) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and math.isfinite(v) for v in numbers):
                problems.append(f"{key} must be 3 finite numbers, got {value!r}")
            elif key == "std" and not all(v > 0 for v in numbers):
                problems.append(f"std must be 3 numbers > 0 (pixels are divided by it), got {value!r}")
        if not isinstance(self.kwargs, dict):
            problems.append(f"kwargs must be an object, got {self.kwargs!r}")
        if problems:
            raise EncoderError(None, f"encoder spec {where!r}: " + "; ".join(problems))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "mpp", float(self.mpp))
        object.__setattr__(self, "unverified", tuple(self.unverified))

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists, not tuples), as a checkpoint stores them."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"], out["unverified"] = list(self.mean), list(self.std), list(self.unverified)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | os.PathLike | None = None) -> EncoderSpec:
        """A spec from plain values; unknown keys are an :class:`EncoderError` naming them."""
        if not isinstance(data, dict):
            raise EncoderError(path, f"an encoder spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EncoderError(path, f"unknown encoder spec keys {unknown}; the keys are {sorted(known)}")
        try:
            return cls(**data)
        except EncoderError as error:
            raise EncoderError(path, error.reason) from None
        except TypeError as error:
            raise EncoderError(path, f"not a valid encoder spec ({error})") from None

    def replace(self, **changes) -> EncoderSpec:
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """sha256 of what decides the features (not the name, notes or where the weights lie)."""
        payload = {k: getattr(self, k) for k in _FEATURE_FIELDS}
        if not self.weights_sha256:  # no content hash: the weights' place stands in for it
            payload["weights"] = self.weights
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> str:
        """One line: name, resolution, size, D, dtype, pooling."""
        return (f"{self.name}: {self.patch_px} px at {self.mpp:g} µm/px -> {self.input_px} px, D={self.dim}, "
                f"{self.dtype}, pooling {self.pooling}")

