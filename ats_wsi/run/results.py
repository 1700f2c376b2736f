"""The results folder of a batch prediction: its layout, slide names, and a finished slide.

Every path inside a folder written by :func:`ats_wsi.run.predict_slides` is
spelled here once (:class:`ResultsFolder`): ``maps/NAME.zarr``,
``overlays/NAME.png`` (and a zoom model's ``overlays/NAME.zoom.png``),
``geojson/NAME.geojson``, ``.done/NAME.json``,
``predictions.csv``, ``errors.csv``; so is the slide -> NAME mapping
(:func:`output_names`). :class:`SlideResult` is one finished slide as
``predict_slides`` hands it to its ``on_result`` callback.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["MAX_NAME_BYTES", "ResultsFolder", "SlideResult", "labelled_row", "output_names", "prediction_fields"]

MAX_NAME_BYTES = 200
"""Longer output names are cut to 180 bytes + ``-`` + 8 hex digits of their hash, so that
``NAME.geojson`` and the like stay within the 255 bytes a file name may have."""


@dataclass(frozen=True)
class ResultsFolder:
    """Where each output of a batch prediction lies under ``root``.

    Relative names (``map_rel`` ...) are what done markers record; the
    methods without ``_rel`` give the paths.
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @staticmethod
    def map_rel(name: str) -> str:
        """``maps/NAME.zarr``: the attention map as OME-Zarr."""
        return f"maps/{name}.zarr"

    @staticmethod
    def overlay_rel(name: str) -> str:
        """``overlays/NAME.png``: thumbnail, heatmap, boxes and the predicted class."""
        return f"overlays/{name}.png"

    @staticmethod
    def zoom_overlay_rel(name: str) -> str:
        """``overlays/NAME.zoom.png``: a two-stage (zoom) model's drawn regions with their stage-2 maps."""
        return f"overlays/{name}.zoom.png"

    @staticmethod
    def geojson_rel(name: str) -> str:
        """``geojson/NAME.geojson``: the prediction for QuPath."""
        return f"geojson/{name}.geojson"

    def map(self, name: str) -> Path:
        """The attention map of slide NAME."""
        return self.root / self.map_rel(name)

    def overlay(self, name: str) -> Path:
        """The overlay PNG of slide NAME."""
        return self.root / self.overlay_rel(name)

    def zoom_overlay(self, name: str) -> Path:
        """The zoom sheet PNG of slide NAME (a two-stage model's only)."""
        return self.root / self.zoom_overlay_rel(name)

    def geojson(self, name: str) -> Path:
        """The GeoJSON of slide NAME."""
        return self.root / self.geojson_rel(name)

    def marker(self, name: str) -> Path:
        """``.done/NAME.json``: slide NAME's finished row, written after its outputs."""
        return self.root / ".done" / f"{name}.json"

    @property
    def predictions(self) -> Path:
        """``predictions.csv``: one row per finished slide."""
        return self.root / "predictions.csv"

    @property
    def errors(self) -> Path:
        """``errors.csv``: one row per slide that failed."""
        return self.root / "errors.csv"

    def overlays(self) -> list[Path]:
        """Every overlay PNG in the folder, sorted (a zoom model's sheets ``NAME.zoom.png`` among them)."""
        return sorted((self.root / "overlays").glob("*.png"))

    def read_marker(self, marker: Path) -> dict | None:
        """The row a done marker holds; None when it cannot be read."""
        try:
            row = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) else None

    def map_of(self, slide: str | os.PathLike) -> Path | None:
        """The attention map written for ``slide``, or None.

        NAME is found in the finished rows (``.done/*.json``, whose ``slide``
        is the path predicted), else it is the slide's file stem.
        """
        slide = Path(slide)
        for marker in sorted((self.root / ".done").glob("*.json")):
            row = self.read_marker(marker)
            if row is not None and Path(row.get("slide", "")).resolve() == slide.resolve():
                candidate = self.map(row.get("name", marker.stem))
                if candidate.is_dir():
                    return candidate
        candidate = self.map(slide.stem)
        return candidate if candidate.is_dir() else None


@dataclass
class SlideResult:
    """One finished slide of a batch prediction.

    Attributes:
        path: the slide predicted (absolute).
        name: its output NAME in the folder.
        row: its row of ``predictions.csv`` as its done marker holds it.
        folder: the results folder.
        prediction: the :class:`~ats_wsi.classifier.SlidePrediction`; None
            when an earlier run finished the slide (read back from its marker)
            or a dask worker predicted it (only the row travels back).
    """

    path: str
    name: str
    row: dict[str, Any]
    folder: ResultsFolder
    prediction: Any = None

    @property
    def predicted(self) -> int:
        """The predicted class index."""
        return int(self.row["predicted"])

    @property
    def seconds(self) -> float:
        """Wall time of the prediction, reading included."""
        return float(self.prediction.seconds if self.prediction is not None else self.row["seconds"])

    @property
    def fraction_read(self) -> float:
        """Level-0 pixels read over the slide's level-0 pixels."""
        return float(self.prediction.fraction_read if self.prediction is not None else self.row["fraction_read"])

    @property
    def boxes_xywh(self) -> np.ndarray:
        """int64 [samples · n, 4]: the sampled boxes in level-0 pixels, in draw order."""
        if self.prediction is not None:
            return np.asarray(self.prediction.boxes_xywh, dtype=np.int64)
        return np.asarray(self.row["boxes_xywh"], dtype=np.int64).reshape(-1, 4)

    def top_cell_xywh(self) -> tuple[float, float, float, float]:
        """The level-0 box ``(x, y, w, h)`` of the most attended map cell (the map read where not in memory)."""
        if self.prediction is not None:
            data, cell_wh, origin = self.prediction.attention, self.prediction.cell_size_xy, self.prediction.origin_xy
        else:
            from ..outputs import read_attention_zarr

            amap = read_attention_zarr(self.folder.map(self.name))
            data, cell_wh, origin = amap.data, amap.cell_size_xy, amap.origin_xy
        row, col = np.unravel_index(int(np.argmax(data)), data.shape)
        cw, ch = cell_wh
        cx, cy = origin[0] + (int(col) + 0.5) * cw, origin[1] + (int(row) + 0.5) * ch  # the cell's centre
        return cx - cw / 2, cy - ch / 2, cw, ch


def _short(stem: str) -> str:
    if len(os.fsencode(stem)) <= MAX_NAME_BYTES:
        return stem
    cut = stem
    while len(os.fsencode(cut)) > 180:
        cut = cut[:-1]
    return f"{cut}-{hashlib.sha1(os.fsencode(stem)).hexdigest()[:8]}"


def _safe_id(slide_id: str) -> str:
    """A slide ID as a file name: characters other than letters, digits, ``.``, ``_``, ``-`` as ``_``."""
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in slide_id.strip())
    return name if name.strip("._") else ""


def output_names(paths: Sequence[Path], slide_ids: Sequence[str | None] | None = None) -> list[str]:
    """A file-system-safe output name per slide: its slide ID where one is given (a manifest's
    ``slide_id`` column, unsafe characters as ``_``), else its stem (cut with a hash when over
    ``MAX_NAME_BYTES``), made unique when names repeat (or when ``X.zoom`` would share the
    zoom sheet file ``overlays/X.zoom.png`` of a slide ``X``)."""
    ids = [_safe_id(i) if i else "" for i in (slide_ids or [None] * len(paths))]
    stems = [_short(i or (p.name[: -len(p.suffix)] if p.suffix else p.name)) for p, i in zip(paths, ids)]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = []
    for p, s in zip(paths, stems):
        # ... and "X.zoom" beside "X" too: X's zoom sheet is overlays/X.zoom.png, X.zoom's overlay as well
        if counts[s] > 1 or (s.lower().endswith(".zoom") and s[:-5] in counts):
            s = f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
        names.append(s)
    return names


def prediction_fields(n_classes: int, class_names: Sequence[str] | None = None,
                      labelled: bool = False, feature_cache: bool = False, slide_ids: bool = False,
                      splits: bool = False, task: str = "classification", outcomes: Sequence[str] = ()) -> list[str]:
    """Columns of ``predictions.csv``. After the columns of every run come, with a
    feature cache, ``feature_hits`` / ``feature_misses`` / ``feature_disk_hits``
    (patch features served by the cache, computed, and served from its folder);
    for a checkpoint with class names, ``p_<name>`` per class and
    ``predicted_class``; for slides given with labels (a manifest), ``label``
    (and ``label_class``); then the manifest's ``slide_id`` and ``split`` where given. A survival
    model's rows have ``risk`` (higher: shorter survival) where a classifier's have ``p0 ..``,
    ``predicted``; a regression model's ``value``; then the manifest's ``outcomes`` (``time``,
    ``event``; ``target``)."""
    if task != "classification":
        fields = ["slide", "name", "risk" if task == "survival" else "value", "seconds", "patches_read",
                  "pixels_read", "slide_pixels", "fraction_read", "checkpoint"]
        fields += ["feature_hits", "feature_misses", "feature_disk_hits"] if feature_cache else []
        return fields + list(outcomes) + (["slide_id"] if slide_ids else []) + (["split"] if splits else [])
    fields = ["slide", "name", *[f"p{k}" for k in range(n_classes)], "predicted", "seconds",
              "patches_read", "pixels_read", "slide_pixels", "fraction_read", "checkpoint"]
    if feature_cache:
        fields += ["feature_hits", "feature_misses", "feature_disk_hits"]
    if class_names:
        fields += [f"p_{n}" for n in class_names] + ["predicted_class"]
    if labelled:
        fields += ["label"] + (["label_class"] if class_names else [])
    return fields + (["slide_id"] if slide_ids else []) + (["split"] if splits else [])


def labelled_row(row: dict, class_names: Sequence[str] | None, label: int | None, labelled: bool) -> dict:
    """``row`` with the class-name columns and the label (see :func:`prediction_fields`)."""
    row = dict(row)
    if class_names:
        row.update({f"p_{n}": row[f"p{k}"] for k, n in enumerate(class_names)})
        row["predicted_class"] = class_names[int(row["predicted"])]
    if labelled:
        row["label"] = "" if label is None else int(label)
        if class_names:
            row["label_class"] = "" if label is None else class_names[int(label)]
    return row
