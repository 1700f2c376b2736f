"""The sampled patches' features as one HDF5 file per slide, in the layout TRIDENT and CLAM read.

``features/<name>.h5`` holds (N = samplings × patches per sampling, row k of
every per-patch dataset is the k-th drawn patch, sampling after sampling,
as in ``predictions.csv``'s boxes and the GeoJSON):

- ``features``: float32 [N, D], each drawn patch's features from the model's
  feature net (the encoder of a checkpoint trained on a pretrained one);
- ``coords``: int64 [N, 2], (x, y) in level-0 pixels of each patch's top-left
  corner (TRIDENT's and CLAM's ``coords``). Attributes: ``patch_size`` (pixels
  of the patch as the feature net saw it), ``patch_size_level0`` (its width in
  level-0 pixels), ``mpp`` (µm/px of the patch as read; NaN when the slide's
  µm/px is unknown), ``level0_mpp``, ``level0_magnification`` (10 / level-0
  µm/px, the convention of TRIDENT's magnification), ``patch_level`` (0: the
  coordinates' level);
- ``boxes_xywh``: int64 [N, 4], the full level-0 boxes (x, y, w, h);
- ``attention``: float32 [N], the attention of each patch's cell (a probability:
  the map sums to 1); ``attention_x_cells``: the same times the map's number of
  cells, the unit of the overlay PNG, napari and the GeoJSON (1 = uniform);
- ``draw_order``: int32 [N], 1, 2, ... N, as the overlay and the GeoJSON number
  the boxes; ``sampling``: int32 [N], which sampling drew it (0, 1, ...; the
  order within a sampling is the rows' order);
- ``slide_embedding``: float32 [D], the estimator's output (the attention-
  weighted mean of the features the head reads), averaged over the
  samplings; ``slide_embeddings``: float32 [samplings, D], each sampling's.

File attributes: ``slide``, ``name``, ``checkpoint`` (its id), ``feature_net``,
``encoder`` (the encoder spec as JSON, empty without one), ``encoder_weights_sha256``
and ``encoder_digest`` (empty where there is none), ``class_names``,
``probabilities``, ``predicted``, ``format`` (``ats-wsi features 1``).

h5py is optional: ``pip install 'ats-wsi[hdf5]'``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..atomic import atomic_path
from ..errors import MissingExtraError, OutputError

__all__ = ["FORMAT", "feature_arrays", "write_features_h5", "require_h5py"]

FORMAT = "ats-wsi features 1"


def require_h5py():
    """The ``h5py`` module; :class:`MissingExtraError` naming the extra when it is not installed."""
    try:
        import h5py
    except ImportError:
        raise MissingExtraError("--export-features writes HDF5 files and needs h5py, which is not installed: "
                                "pip install 'ats-wsi[hdf5]'") from None
    return h5py


def feature_arrays(prediction) -> dict[str, np.ndarray]:
    """The per-patch and per-slide arrays of the HDF5 file (see the module's doc) of a
    :class:`~ats_wsi.classifier.SlidePrediction`; :class:`OutputError` when it holds no features."""
    if prediction.patch_features is None or prediction.embeddings is None:
        raise OutputError(prediction.slide, "the model's feature net returned no per-patch features to export; "
                                            "predict without --export-features")
    boxes = np.asarray(prediction.boxes_xywh, dtype=np.int64).reshape(-1, 4)
    n = prediction.draws_per_sampling
    rows = np.arange(len(boxes))
    return {
        "features": np.asarray(prediction.patch_features, dtype=np.float32),
        "coords": boxes[:, :2].copy(),
        "boxes_xywh": boxes,
        "attention": np.asarray(prediction.box_attention, dtype=np.float32),
        "attention_x_cells": (np.asarray(prediction.box_attention, dtype=np.float32)
                              * np.float32(np.asarray(prediction.attention).size)),
        "draw_order": (rows + 1).astype(np.int32),
        "sampling": (rows // max(n, 1)).astype(np.int32),
        "slide_embedding": np.asarray(prediction.embedding, dtype=np.float32),
        "slide_embeddings": np.asarray(prediction.embeddings, dtype=np.float32),
    }


def _coords_attributes(prediction, patch_px: int) -> dict[str, Any]:
    """``coords``' attributes: the patch's size as read and at level 0, and its µm/px."""
    boxes = np.asarray(prediction.boxes_xywh).reshape(-1, 4)
    size0 = int(boxes[0, 2]) if len(boxes) else 0
    mpp0 = float(prediction.mpp) if prediction.mpp else float("nan")
    return {"patch_size": int(patch_px), "patch_size_level0": size0, "patch_level": 0,
            "level0_mpp": mpp0, "mpp": mpp0 * size0 / patch_px if patch_px else float("nan"),
            "level0_magnification": 10.0 / mpp0 if mpp0 == mpp0 and mpp0 > 0 else float("nan")}


def _encoder_attributes(encoder: Mapping[str, Any] | None, feature_net: str) -> dict[str, str]:
    """The encoder spec, its weights' sha256 and the digest of what decides its features."""
    if not encoder:
        return {"feature_net": feature_net, "encoder": "", "encoder_weights_sha256": "", "encoder_digest": ""}
    from ..encoders import EncoderSpec

    spec = EncoderSpec.from_dict(dict(encoder))
    return {"feature_net": spec.name, "encoder": json.dumps(spec.to_dict(), sort_keys=True, default=list),
            "encoder_weights_sha256": spec.weights_sha256 or "", "encoder_digest": spec.digest()}


def write_features_h5(path: str | os.PathLike, prediction, *, name: str, patch_px: int, checkpoint: str = "",
                      encoder: Mapping[str, Any] | None = None, feature_net: str = "") -> Path:
    """Write ``prediction``'s sampled features to ``path`` (HDF5, atomically; the module's doc says what).

    Args:
        path: the ``.h5`` file to write.
        prediction: a :class:`~ats_wsi.classifier.SlidePrediction` with ``patch_features``.
        name: the slide's output name.
        patch_px: pixels of a patch's side as the feature net saw it (the model's patch size).
        checkpoint: the checkpoint's id.
        encoder: the model's encoder spec (a dict), or None for a feature net trained from scratch.
        feature_net: the feature net's name (used when there is no encoder spec).
    """
    h5py = require_h5py()
    arrays = feature_arrays(prediction)
    attrs = {"format": FORMAT, "slide": str(prediction.slide), "name": name, "checkpoint": checkpoint,
             "class_names": json.dumps(list(prediction.class_names)),
             "probabilities": np.asarray(prediction.probabilities, dtype=np.float64),
             "predicted": int(prediction.predicted), **_encoder_attributes(encoder, feature_net)}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            for key, value in arrays.items():
                fh.create_dataset(key, data=value)
            fh["coords"].attrs.update(_coords_attributes(prediction, patch_px))
            fh.attrs.update(attrs)
    return Path(path)
