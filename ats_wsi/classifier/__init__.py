"""The slide classifier: its config, the network, checkpoints, and the one slide path.

``SlideClassifier.predict(slide)`` is how a slide becomes a prediction
everywhere (``ats-wsi predict``, the demo, the napari widget);
:func:`load_model` gives the classifier of a checkpoint.
"""
from __future__ import annotations

from .checkpoint import checkpoint_id, load_model, read_checkpoint, save_checkpoint
from .config import ModelConfig
from .inputs import SlideInput, SlideInputs
from .network import Normalize, SlideClassifier, build_model
from .prediction import SlidePrediction, slide_seed

__all__ = [
    "ModelConfig", "Normalize", "SlideClassifier", "SlideInput", "SlideInputs", "SlidePrediction",
    "build_model", "checkpoint_id", "load_model", "read_checkpoint", "save_checkpoint", "slide_seed",
]
