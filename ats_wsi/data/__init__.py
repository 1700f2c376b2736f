"""Slide manifests and synthetic data (Mega-MNIST, synthetic slides written as real TIFFs).

``MegaMNIST`` is imported on first use, so ``import ats_wsi.data`` does not
import torch. Slides go to a model through :class:`ats_wsi.classifier.SlideInput`.
"""
from .._lazy import lazy_exports
from .synthetic import SyntheticSlide, load_lesions, load_synthetic_slide, make_slide_set, write_synthetic_slide

__all__ = [
    "SyntheticSlide", "load_lesions", "load_synthetic_slide", "make_slide_set", "write_synthetic_slide",
    "MegaMNIST", "read_manifest",
]

_LAZY = {
    "MegaMNIST": ".megamnist",
    "read_manifest": ".manifest",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
