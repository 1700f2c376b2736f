"""ats-wsi: attention sampling for gigapixel whole-slide images.

Look at the whole slide in low resolution, predict where to look, read only
the sampled patches at full resolution, and combine them with an estimator
whose gradient is unbiased (Katharopoulos & Fleuret, ICML 2019).

The top-level names are imported lazily so that ``import ats_wsi`` stays
light (no torch) for tools that only read slides.
"""
from __future__ import annotations

from ._lazy import lazy_exports
from .errors import (
    AtsError,
    CheckpointError,
    CorruptSlideError,
    LevelError,
    ManifestError,
    RegionError,
    SamplingError,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
)

__version__ = "0.1.0"

_LAZY = {
    "open_slide": "ats_wsi.slide",
    "Slide": "ats_wsi.slide",
    "AttentionSampler": "ats_wsi.model",
    "AttentionResult": "ats_wsi.model",
    "attention_sampling": "ats_wsi.reference_api",
    "load_model": "ats_wsi.classifier",
    "ModelConfig": "ats_wsi.classifier",
    "SlideClassifier": "ats_wsi.classifier",
    "SlidePrediction": "ats_wsi.classifier",
}

__all__ = [
    "__version__",
    "AtsError",
    "CheckpointError",
    "CorruptSlideError",
    "LevelError",
    "ManifestError",
    "RegionError",
    "SamplingError",
    "SlideError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
