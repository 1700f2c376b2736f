"""Training, prediction and the demo (torch); ``commands`` holds their CLI.

The names below are imported lazily so that ``ats-wsi info`` starts fast.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "ModelConfig": "ats_wsi.run.config",
    "SlideClassifier": "ats_wsi.run.config",
    "build_model": "ats_wsi.run.config",
    "save_checkpoint": "ats_wsi.run.checkpoint",
    "load_checkpoint": "ats_wsi.run.checkpoint",
    "predict_slide": "ats_wsi.run.predict",
    "predict_slides": "ats_wsi.run.predict",
    "PredictSettings": "ats_wsi.run.predict",
    "SlidePrediction": "ats_wsi.run.predict",
    "train": "ats_wsi.run.train",
    "TrainSettings": "ats_wsi.run.train",
    "run_demo": "ats_wsi.run.demo",
    "DemoSettings": "ats_wsi.run.demo",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
