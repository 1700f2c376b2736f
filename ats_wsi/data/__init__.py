"""Datasets over slide manifests, and synthetic data (Mega-MNIST, synthetic slides).

``SlideDataset``, ``SlideRef`` and ``collate_slides`` (:mod:`.datasets`) are
imported on first use, so ``import ats_wsi.data`` does not import torch.
"""
import importlib as _importlib

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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
