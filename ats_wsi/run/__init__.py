"""Training loops, batch prediction and the demo (torch).

The command line over them is :mod:`ats_wsi.cli`. The names below are
imported lazily so that ``ats-wsi info`` starts fast.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "predict_slides": "ats_wsi.run.predict",
    "PredictSettings": "ats_wsi.run.predict",
    "train": "ats_wsi.run.train",
    "TrainSettings": "ats_wsi.run.train",
    "EpochMetrics": "ats_wsi.run.train",
    "run_demo": "ats_wsi.run.demo",
    "DemoSettings": "ats_wsi.run.demo",
    "DemoReport": "ats_wsi.run.demo",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
