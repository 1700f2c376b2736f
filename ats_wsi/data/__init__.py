"""Datasets over slide manifests, and synthetic data (Mega-MNIST, synthetic slides).

``SlideDataset``, ``SlideRef`` and ``collate_slides`` (:mod:`.datasets`) are
imported on first use, so ``import ats_wsi.data`` does not import torch.
"""
from .._lazy import lazy_exports
from .synthetic import SyntheticSlide, load_lesions, load_synthetic_slide, make_slide_set, write_synthetic_slide

__all__ = [
    "SyntheticSlide", "load_lesions", "load_synthetic_slide", "make_slide_set", "write_synthetic_slide",
    "SlideDataset", "SlideRef", "collate_slides", "MegaMNIST", "read_manifest", "read_low_view",
]

_LAZY = {
    "SlideDataset": ".datasets",
    "SlideRef": ".datasets",
    "collate_slides": ".datasets",
    "MegaMNIST": ".megamnist",
    "read_manifest": ".manifest",
    "read_low_view": ".lowview",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
