"""Pretrained patch encoders as the feature net, with their input contracts.

- :class:`EncoderSpec`: how to build an encoder and the input it takes
  (pixels at µm/px, mean/std, dtype, pooling, D); :func:`load_spec` reads a
  registry name or a JSON file; :data:`REGISTRY` holds UNI, UNI2-h, CONCH,
  Virchow2, H-optimus-0/1, Prov-GigaPath, Phikon and CTransPath as data.
- :func:`build_encoder` -> :class:`PatchEncoder`: timm with a local weights
  file or Hugging Face folder, a TorchScript file or a ``torch.export``
  ``.pt2``; never downloads (a missing file is a
  :class:`~ats_wsi.errors.WeightsNotFoundError` saying where it looked).
- :class:`FeatureCache`: a frozen encoder's features per box, in memory
  (bounded) and on disk.

Pixels in, features out: nothing here knows slides or patch sources (the
classifier's feature step, :mod:`ats_wsi.classifier.features`, composes a
source, an encoder and its cache).

timm is imported only when a timm encoder is built.
"""
from __future__ import annotations

from .cache import FeatureCache, slide_fingerprint
from .loaders import build_backbone, find_weights
from .module import PatchEncoder, attach_feature_cache, build_encoder
from .registry import REGISTRY, get_spec, list_specs, load_spec
from .spec import EncoderSpec

__all__ = [
    "EncoderSpec",
    "FeatureCache",
    "PatchEncoder",
    "REGISTRY",
    "attach_feature_cache",
    "build_backbone",
    "build_encoder",
    "find_weights",
    "get_spec",
    "list_specs",
    "load_spec",
    "slide_fingerprint",
]
