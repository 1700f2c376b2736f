"""What :meth:`SlideClassifier.predict` returns for one slide, and its seed."""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MAX_SAMPLES", "NOT_FINITE", "SlidePrediction", "slide_seed"]

MAX_SAMPLES = 4096
"""Most samplings :meth:`SlideClassifier.predict` averages per slide (each reads its patches)."""


@dataclass
class SlidePrediction:
    """The result of classifying one slide.

    Attributes:
        slide: the slide's path.
        probabilities: float64 [n_classes], averaged over ``samples`` samplings.
        predicted: the predicted class (an index into ``class_names``): two classes, P(class 1) >=
            the model's threshold (:attr:`SlideClassifier.threshold`) when it has one; else the arg-max.
        class_names: one name per class (``"class 0"``, ... when the model has none).
        attention: float32 [rows, cols], the attention map (probabilities summing to 1).
        cell_size_xy: (w, h) of a map cell in level-0 pixels.
        origin_xy: (x, y) level-0 corner of cell (0, 0).
        boxes_xywh: int64 [samples · n, 4], the sampled patches as level-0
            (x, y, w, h), in draw order, sampling after sampling.
        box_attention: float32 [samples · n], the attention of each box's cell.
        seconds: wall time of the prediction, reading included.
        patches_read: patches read from the slide.
        pixels_read: level-0 pixels covered by the patches read (with repeats; boxes a
            feature cache served were not read and are not counted).
        slide_pixels: level-0 pixels of the slide.
        mpp: the slide's µm/px (None if unknown).
        low_downsample: level-0 pixels per pixel of the low view.
        patch_features: float32 [samples · n, D], each drawn patch's features,
            row for row with ``boxes_xywh`` (None if the feature net gave none).
        embeddings: float32 [samples, D], the estimator's output of each
            sampling (the slide embedding the head reads; its mean over the
            samplings is :attr:`embedding`).
        zoom: a two-stage model's draws, one :class:`ats_wsi.zoom.ZoomRecord`
            per sampling (regions, their stage-2 maps, patch boxes); ``None``
            for a one-stage model. ``attention`` is then the stage-1 map,
            ``boxes_xywh`` the patches (``n1 · n2`` per sampling, region after
            region) and ``box_attention`` each patch's probability through
            both stages (``a1 · a2``).
        task: the model's task (``"classification"``, ``"survival"``, ``"regression"``).
        value: survival: the slide's risk (higher: shorter survival; the
            discrete-time head's ``-sum S_k`` or the Cox head's log hazard
            ratio); regression: the predicted value in the target's unit; the
            mean over the samplings. None for classification. (Survival and
            regression predictions have one pseudo-class, ``class_names``
            ``("risk",)`` or ``("value",)``, of probability 1.)
    """

    slide: str
    probabilities: np.ndarray
    predicted: int
    class_names: tuple[str, ...]
    attention: np.ndarray
    cell_size_xy: tuple[float, float]
    origin_xy: tuple[float, float]
    boxes_xywh: np.ndarray
    box_attention: np.ndarray
    seconds: float
    patches_read: int
    pixels_read: int
    slide_pixels: int
    mpp: float | None
    low_downsample: float
    patch_features: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    zoom: list | None = None
    task: str = "classification"
    value: float | None = None

    @property
    def title(self) -> str:
        """What an overlay and the napari viewer say: ``"tumor  p = 0.93"``, ``"risk 0.412"``, ``"value 3.2"``."""
        if self.task == "survival" and self.value is not None:
            return f"risk {self.value:.3f}"
        if self.task == "regression" and self.value is not None:
            return f"value {self.value:.4g}"
        from ..outputs import prediction_title

        return prediction_title(self.predicted_name, self.probabilities[self.predicted])

    @property
    def predicted_name(self) -> str:
        """The name of the predicted class."""
        return self.class_names[self.predicted]

    @property
    def embedding(self) -> np.ndarray | None:
        """float32 [D]: the slide embedding, the mean of :attr:`embeddings` over the samplings."""
        return None if self.embeddings is None else self.embeddings.mean(axis=0)

    @property
    def draws_per_sampling(self) -> int:
        """Patches drawn in each sampling (``boxes_xywh`` holds the samplings one after another)."""
        samplings = 1 if self.embeddings is None else max(len(self.embeddings), 1)
        return len(self.boxes_xywh) // samplings

    @property
    def fraction_read(self) -> float:
        """Level-0 pixels read over the slide's level-0 pixels."""
        return self.pixels_read / max(self.slide_pixels, 1)


NOT_FINITE = ("the slide head gave NaN or inf logits: the model's weights or the patch features are not finite "
              "(check the checkpoint, the encoder and the feature cache)")
"""Why a prediction with NaN or inf logits stops (never written as ``nan``), one- and two-stage alike."""


def slide_seed(path: str | os.PathLike, seed: int) -> int:
    """A per-slide seed that depends on the slide's file name, not on run order."""
    return (zlib.crc32(Path(path).name.encode()) ^ (int(seed) * 0x9E3779B1)) & 0x7FFFFFFF
