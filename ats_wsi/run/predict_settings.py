"""What a batch prediction is told (:class:`PredictSettings`) and the key of what makes its outputs
(:func:`run_key`): plain values, apart from the run that uses them (:mod:`.predict`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PredictSettings", "run_key"]


@dataclass
class PredictSettings:
    """Settings of a batch prediction (plain values: they travel to dask workers)."""

    checkpoint: str
    out_dir: str
    samples: int = 1
    n_patches: int | None = None
    device: str = "cpu"
    seed: int = 0
    deterministic: bool = False
    workers: int = 2
    ngff_version: str = "0.4"
    overlay_size: int = 1024
    geojson: bool = False
    """Also write ``geojson/<name>.geojson`` (boxes and top-attention regions for QuPath, ``--geojson``)."""
    torch_threads: int = 1
    checkpoint_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    """The owner of this run's temporaries (12 hex digits; see run/outdir.py): ``""`` gives
    :func:`predict_slides` a new one, in the copy of the settings it runs on."""
    mpp: float | None = None
    """Level-0 µm/px given for every slide, overriding its metadata (``--mpp``)."""
    slide_mpp: dict[str, float] = field(default_factory=dict)
    """Level-0 µm/px of single slides by path (a manifest's ``mpp`` column); before ``mpp``."""
    slide_roi: dict[str, str] = field(default_factory=dict)
    """Regions of interest of single slides by path (a manifest's ``roi`` column); before ``roi``."""
    feature_cache: str | None = None
    """Folder of a frozen encoder's features per patch box (``--feature-cache``)."""
    feature_weights: str | None = None
    """Where the checkpoint's encoder weights are on this machine (``--feature-weights``)."""
    sampler: str | None = None
    """``"uniform"``: draw uniformly over tissue instead of from the attention (``--sampler``); None: the model's."""
    readout: str | None = None
    """``"head"`` or ``"top"``: how a draw's class probabilities are read (``--readout``); None: the model's."""
    threshold: float | None = None
    """Two classes: a slide's ``predicted`` class is 1 when P(class 1) >= this (``--threshold``); None: the
    checkpoint's validation threshold, or the arg-max when it has none (:attr:`SlideClassifier.threshold`)."""
    export_features: bool = False
    """Also write ``features/<name>.h5``: the sampled patches' features, TRIDENT/CLAM layout (``--export-features``)."""
    export_patches: int = 0
    """Also write the K top-attention patches as PNG and a contact sheet, ``patches/<name>/`` (``--export-patches``)."""
    roi: str | None = None
    """A GeoJSON file, or a folder of ``<slide name>.geojson``: draw only inside its polygons (``--roi``)."""
    roi_include: list[str] | None = None
    roi_exclude: list[str] = field(default_factory=list)
    """Class names of the ROI's features that make the region / are cut out of it (``--roi-include/-exclude``)."""
    read_ahead: int = 1
    """Slides prepared ahead in a background thread (opened, attended, their patches read) while the encoder
    works on the current one (``--read-ahead``; 0..8, 0: one slide at a time). In process only: each dask
    worker predicts one slide at a time. Results do not depend on it."""



def run_key(settings: PredictSettings) -> str:
    """A short hash of what makes a slide's outputs (checkpoint and sampling settings).

    A finished slide is skipped on a re-run only if its marker has the same key,
    so a re-run with other settings never mixes old and new results. How the
    same thing is computed (device, threads) is not part of it: that changes
    only the last digits of floats.
    """
    parts = [settings.checkpoint_id, settings.samples, settings.n_patches, settings.seed,
             settings.deterministic, settings.ngff_version, settings.overlay_size]
    if settings.mpp is not None or settings.slide_mpp:  # (absent otherwise: keys of earlier runs stay valid)
        parts.append(["mpp", settings.mpp, sorted(settings.slide_mpp.items())])
    if settings.geojson:  # (absent otherwise, as above)
        parts.append("geojson")
    if settings.sampler is not None:  # (absent otherwise, as above)
        parts.append(["sampler", settings.sampler])
    if settings.readout is not None:  # (absent otherwise, as above)
        parts.append(["readout", settings.readout])
    if settings.threshold is not None:  # (absent otherwise, as above)
        parts.append(["threshold", settings.threshold])
    if settings.roi is not None or settings.slide_roi:  # (absent otherwise, as above)
        parts.append(["roi", settings.roi, settings.roi_include, list(settings.roi_exclude),
                      sorted(settings.slide_roi.items())])
    if settings.export_features or settings.export_patches:  # (absent otherwise, as above)
        parts.append(["exports", settings.export_features, settings.export_patches])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]
