"""A prediction as GeoJSON that QuPath imports (*File > Import objects*, QuPath 0.4 and later).

One FeatureCollection in level-0 pixel coordinates (x right, y down, as
openslide and QuPath count them). Attention is given in one unit everywhere:
attention × the map's number of cells (1 = uniform), as on the overlay PNG and
in napari (:func:`ats_wsi.outputs.attention_scale`).

- the slide's prediction: one annotation over the whole slide, named
  ``ats-wsi prediction``, classified as the predicted class, with the
  measurements ``probability`` (of that class) and ``p_<class>`` per class
  (a survival or regression model's: classified ``risk`` or ``value``, with that number)
  (QuPath ignores the collection's own ``properties``, so this is where it
  sees the prediction);
- the attention map as detection tiles: one ``detection`` per cell with
  attention ≥ ``DETECTION_FLOOR`` (the top ``MAX_DETECTIONS`` at most), with
  the measurement ``attention`` (named ``attention tile``), so that QuPath's *Measure > Show measurement
  maps* colours the heatmap;
- one annotation ``Polygon`` per sampled box, in draw order, named ``patch K``
  (K = 1, 2, ... as the overlay numbers them), with the measurements
  ``attention`` (its cell's), ``attention_probability`` (the same as a
  probability of the map) and ``draw_order`` (K);
- one annotation ``Polygon`` (with holes where needed) per connected region
  of the top cells: cells at or above the ``quantile`` of the map and at
  least ``REGION_FLOOR`` × uniform, merged along their shared edges so that
  the outline follows the cells' borders exactly (a flat map has none).
  Measurements: ``attention_mean``, ``attention_max`` (over its cells),
  ``attention_mass`` (the share of the map's attention in it) and ``cells``.

Every feature has ``properties.objectType`` (``annotation`` or
``detection``), a ``classification`` (``{"name", "color"}``) and numeric
``measurements`` (a name -> number object), the shape QuPath reads.
Coordinates are plain floats; rings are closed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .outputs import attention_scale

__all__ = ["TOP_QUANTILE", "DETECTION_FLOOR", "REGION_FLOOR", "MAX_DETECTIONS", "attention_regions",
           "attention_detections", "prediction_geojson", "write_geojson", "zoom_geojson", "prediction_zoom_geojson"]

TOP_QUANTILE = 0.9
"""Cells at or above this quantile of the attention map are outlined (the top 10 %)."""

DETECTION_FLOOR = 1.0
"""Cells with at least this attention × cells (uniform attention) become detection tiles."""

REGION_FLOOR = 2.0
"""Outlined regions hold only cells of at least this attention × cells (twice uniform)."""

MAX_DETECTIONS = 50_000
"""At most this many detection tiles per slide (the highest); bounds the file (~10 MB) and QuPath's load."""

PATCH_CLASS = {"name": "ats-wsi patch", "color": [0, 255, 255]}
DETECTION_CLASS = {"name": "ats-wsi attention tile", "color": [215, 48, 39]}
_CLASS_COLOURS = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [140, 86, 75]]
REGION_CLASS = {"name": "ats-wsi attention", "color": [252, 141, 89]}
ZOOM_REGION_CLASS = {"name": "ats-wsi zoom region", "color": [255, 255, 0]}
ZOOM_TILE_CLASS = {"name": "ats-wsi zoom tile", "color": [117, 107, 177]}

# directed boundary edges, each with the region on its right in (x right, y down) coordinates
_STEPS = {(1, 0): "E", (0, 1): "S", (-1, 0): "W", (0, -1): "N"}


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed edges between cell corners along the border of ``mask`` (bool [rows, cols]),
    walking clockwise on screen around regions: start corner (col, row) -> end corners."""
    padded = np.pad(mask, 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    inside = padded[1:-1, 1:-1]
    rows, cols = np.nonzero(inside & ~padded[:-2, 1:-1])  # top edges, walked east
    for r, c in zip(rows, cols):
        edges.setdefault((c, r), []).append((c + 1, r))
    rows, cols = np.nonzero(inside & ~padded[1:-1, 2:])  # right edges, walked south
    for r, c in zip(rows, cols):
        edges.setdefault((c + 1, r), []).append((c + 1, r + 1))
    rows, cols = np.nonzero(inside & ~padded[2:, 1:-1])  # bottom edges, walked west
    for r, c in zip(rows, cols):
        edges.setdefault((c + 1, r + 1), []).append((c, r + 1))
    rows, cols = np.nonzero(inside & ~padded[1:-1, :-2])  # left edges, walked north
    for r, c in zip(rows, cols):
        edges.setdefault((c, r + 1), []).append((c, r))
    return edges


def _turn_rank(incoming: tuple[int, int], outgoing: tuple[int, int]) -> int:
    """0 for a right turn (on screen), 1 straight, 2 left: at a corner where two cells
    touch diagonally, turning right keeps each ring on its own cell."""
    cross = incoming[0] * outgoing[1] - incoming[1] * outgoing[0]
    return 0 if cross > 0 else (1 if cross == 0 else 2)


def _rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed rings of cell corners (col, row) along the borders of ``mask``, corners
    where the direction does not change left out."""
    edges = _boundary_edges(mask)
    rings = []
    while edges:
        start = next(iter(edges))
        ring, here, heading = [start], start, None
        while True:
            options = edges[here]
            if heading is None or len(options) == 1:
                nxt = options[0]
            else:
                nxt = min(options, key=lambda p: _turn_rank(heading, (p[0] - here[0], p[1] - here[1])))
            options.remove(nxt)
            if not options:
                del edges[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:
                break
            ring.append(here)
        rings.append(_drop_collinear(ring))
    return rings


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    n = len(ring)
    for i, p in enumerate(ring):
        a, b = ring[i - 1], ring[(i + 1) % n]
        if (p[0] - a[0]) * (b[1] - p[1]) - (p[1] - a[1]) * (b[0] - p[0]) != 0:
            out.append(p)
    return out


def _signed_area(ring) -> float:
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of bool [rows, cols]: (int32 labels, 0 = outside; count)."""
    from collections import deque

    labels = np.zeros(mask.shape, np.int32)
    n = 0
    rows, cols = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if labels[r0, c0]:
            continue
        n += 1
        labels[r0, c0] = n
        todo = deque([(r0, c0)])
        while todo:
            r, c = todo.popleft()
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not labels[rr, cc]:
                    labels[rr, cc] = n
                    todo.append((rr, cc))
    return labels, n


def attention_regions(attention: np.ndarray, quantile: float = TOP_QUANTILE, floor: float = 0.0) -> list[dict]:
    """The connected regions of the top cells of an attention map.

    Args:
        attention: float [rows, cols], the map (sums to 1).
        quantile: cells with attention >= this quantile of the map (and > 0)
            are kept; 4-connected cells form one region.
        floor: and only cells of at least ``floor`` × uniform attention
            (attention × cells; 0: any).

    Returns:
        one dict per region, largest attention first: ``rings`` (list of
        rings of cell corners (col, row), the outer ring first, then holes),
        ``attention`` (the sum of its cells' attention: its share of the map),
        ``attention_max``, ``cells``.
    """
    values = np.nan_to_num(np.asarray(attention, dtype=np.float64))
    if values.size == 0 or not (values > 0).any():
        return []
    top = (values >= np.quantile(values, quantile)) & (values > 0) & (values * values.size >= floor)
    labels, n = _label(top)
    regions = []
    for k in range(1, n + 1):
        cells = labels == k
        rings = sorted(_rings(cells), key=lambda r: -abs(_signed_area(r)))
        regions.append({"rings": rings, "attention": float(values[cells].sum()),
                        "attention_max": float(values[cells].max()), "cells": int(cells.sum())})
    return sorted(regions, key=lambda r: -r["attention"])


def attention_detections(attention: np.ndarray, cell_size_xy, origin_xy, *, floor: float = DETECTION_FLOOR,
                         limit: int = MAX_DETECTIONS) -> list[dict]:
    """One QuPath detection tile per cell of at least ``floor`` attention × cells, highest first.

    Args:
        attention: float [rows, cols], the map (sums to 1).
        cell_size_xy, origin_xy: (w, h) of a cell and (x, y) of cell (0, 0)'s corner, level-0 pixels.
        floor: the least attention × cells of a tile.
        limit: at most this many tiles (the highest; the cut is made before any is built).

    Returns:
        GeoJSON features, ``objectType: "detection"``, measurement ``attention`` (× cells).
    """
    scaled = np.nan_to_num(attention_scale(attention)).ravel()
    keep = np.flatnonzero(scaled >= floor)
    if len(keep) > limit:
        keep = keep[np.argpartition(-scaled[keep], limit - 1)[:limit]]
    keep = keep[np.argsort(-scaled[keep], kind="stable")]
    cols = np.asarray(attention).shape[1]
    (cw, ch), (ox, oy) = (tuple(float(v) for v in pair) for pair in (cell_size_xy, origin_xy))
    out = []
    for index in keep.tolist():
        r, c = divmod(index, cols)
        feature = _feature([_box_ring(ox + c * cw, oy + r * ch, cw, ch)], "attention tile", DETECTION_CLASS,
                           {"attention": float(scaled[index])}, object_type="detection")
        out.append(feature)
    return out


def _box_ring(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]


def _feature(ring_lists: list, name: str, classification: dict, measurements: dict,
             object_type: str = "annotation") -> dict:
    properties = {"objectType": object_type, "name": name, "classification": dict(classification),
                  "measurements": measurements}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring_lists}, "properties": properties}


def _prediction_feature(prediction, bounds_xywh) -> dict:
    """The slide's prediction as one annotation over ``bounds_xywh``, classified as the predicted class."""
    names = [str(n) for n in prediction.class_names]
    probs = [float(v) for v in np.asarray(prediction.probabilities).ravel()]
    k = int(prediction.predicted)
    measurements = {"probability": probs[k], **{f"p_{n}": p for n, p in zip(names, probs)}}
    if getattr(prediction, "value", None) is not None:  # survival ("risk") or regression ("value"): the number
        measurements = {names[k]: float(prediction.value)}
    return _feature([_box_ring(*bounds_xywh)], "ats-wsi prediction",
                    {"name": names[k], "color": _CLASS_COLOURS[k % len(_CLASS_COLOURS)]}, measurements)


def prediction_geojson(prediction, *, quantile: float = TOP_QUANTILE, slide: str | None = None,
                       slide_wh: tuple[int, int] | None = None) -> dict:
    """The GeoJSON FeatureCollection of a prediction (see the module docstring).

    Args:
        prediction: a :class:`~ats_wsi.classifier.SlidePrediction` (or anything
            with ``boxes_xywh`` int [n, 4] level-0 (x, y, w, h) in draw order,
            ``box_attention`` float [n], ``attention`` float [rows, cols],
            ``cell_size_xy`` and ``origin_xy`` in level-0 pixels; with
            ``probabilities``, ``predicted`` and ``class_names`` the
            prediction annotation is written too).
        quantile: which cells are outlined (:func:`attention_regions`).
        slide: the slide's path, recorded in the collection's properties.
        slide_wh: the slide's level-0 (width, height): the prediction
            annotation's extent (default: the attention map's).
    """
    values = np.asarray(prediction.attention, dtype=np.float64)
    cells = max(values.size, 1)
    boxes = np.asarray(prediction.boxes_xywh, dtype=np.float64).reshape(-1, 4)
    box_attention = np.asarray(prediction.box_attention, dtype=np.float64).reshape(-1)
    cw, ch = (float(v) for v in prediction.cell_size_xy)
    ox, oy = (float(v) for v in prediction.origin_xy)
    features = []
    if hasattr(prediction, "probabilities"):
        extent = (0.0, 0.0, *map(float, slide_wh)) if slide_wh else (ox, oy, values.shape[1] * cw,
                                                                     values.shape[0] * ch)
        features.append(_prediction_feature(prediction, extent))
    features += attention_detections(values, (cw, ch), (ox, oy))
    for k, box in enumerate(boxes):
        a = float(box_attention[k]) if k < len(box_attention) else 0.0
        features.append(_feature([_box_ring(*map(float, box))], f"patch {k + 1}", PATCH_CLASS,
                                 {"attention": a * cells, "attention_probability": a, "draw_order": k + 1}))
    for k, region in enumerate(attention_regions(values, quantile, floor=REGION_FLOOR)):
        rings = [[[ox + c * cw, oy + r * ch] for c, r in [*ring, ring[0]]] for ring in region["rings"]]
        measurements = {"attention_mean": region["attention"] / region["cells"] * cells,
                        "attention_max": region["attention_max"] * cells, "attention_mass": region["attention"],
                        "cells": region["cells"]}
        features.append(_feature(rings, f"attention region {k + 1}", REGION_CLASS, measurements))
    properties = {"coordinates": "level-0 pixels (x right, y down)", "top_quantile": float(quantile),
                  "attention_unit": "attention x cells (1 = uniform)", "detection_floor": DETECTION_FLOOR,
                  "region_floor": REGION_FLOOR}
    if slide is not None:
        properties["slide"] = str(slide)
    return {"type": "FeatureCollection", "properties": properties, "features": features}


def write_geojson(path: str | os.PathLike, prediction, **kwargs) -> Path:
    """Write :func:`prediction_geojson` (a two-stage prediction: :func:`prediction_zoom_geojson`)
    to ``path`` atomically; returns the path."""
    zoomed = getattr(prediction, "zoom", None)
    data = prediction_zoom_geojson(prediction, **kwargs) if zoomed else prediction_geojson(prediction, **kwargs)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data), encoding="utf-8")
    return Path(path)


def zoom_geojson(record, *, slide: str | None = None) -> dict:
    """A slide's zoom (two attention stages) as a GeoJSON FeatureCollection in level-0 pixels.

    - one annotation per drawn region, ``zoom region K`` (draw order), with
      ``attention_probability`` (stage 1) and ``attention`` (× the stage-1
      map's cells, 1 = uniform);
    - each region's stage-2 map as detection tiles ``zoom tile`` (cells of at
      least :data:`DETECTION_FLOOR` × uniform of that region's map), with
      ``attention`` (× the region map's cells) and ``region`` (K);
    - one annotation per patch read, ``patch K.L`` (region K, draw L), with
      ``attention_probability`` (stage 2, in its region), ``region`` and ``draw_order``.

    Args:
        record: a :class:`ats_wsi.zoom.ZoomRecord` (or anything with its fields).
        slide: the slide's path, recorded in the collection's properties.
    """
    features = []
    cells1 = max(int(record.stage1_cells), 1)
    for k, (box, p) in enumerate(zip(np.asarray(record.region_boxes, dtype=np.float64),
                                     np.asarray(record.region_probability, dtype=np.float64))):
        features.append(_feature([_box_ring(*map(float, box))], f"zoom region {k + 1}", ZOOM_REGION_CLASS,
                                 {"attention": float(p) * cells1, "attention_probability": float(p),
                                  "draw_order": k + 1}))
    for k, (a2, origin) in enumerate(zip(np.asarray(record.zoom_attention), np.asarray(record.zoom_origin_xy))):
        for tile in attention_detections(a2, record.zoom_cell_size_xy, origin):
            tile["properties"].update(name="zoom tile", classification=dict(ZOOM_TILE_CLASS))
            tile["properties"]["measurements"]["region"] = k + 1
            features.append(tile)
    boxes = np.asarray(record.patch_boxes, dtype=np.float64)
    probability = np.asarray(record.patch_probability, dtype=np.float64)
    for k in range(boxes.shape[0]):
        for j in range(boxes.shape[1]):
            features.append(_feature([_box_ring(*map(float, boxes[k, j]))], f"patch {k + 1}.{j + 1}", PATCH_CLASS,
                                     {"attention_probability": float(probability[k, j]), "region": k + 1,
                                      "draw_order": j + 1}))
    properties = {"coordinates": "level-0 pixels (x right, y down)",
                  "attention_unit": "attention x cells of its own map (1 = uniform)",
                  "detection_floor": DETECTION_FLOOR}
    if slide is not None:
        properties["slide"] = str(slide)
    return {"type": "FeatureCollection", "properties": properties, "features": features}


def prediction_zoom_geojson(prediction, **kwargs) -> dict:
    """A two-stage prediction (its ``zoom`` records set) as one FeatureCollection.

    The prediction annotation, the stage-1 map's detections and top regions
    as :func:`prediction_geojson` writes them (without its patch boxes), then
    :func:`zoom_geojson` of each sampling: the regions, their stage-2 tiles
    and the patches, with a ``sampling`` measurement (1, 2, ...) when there
    are several.

    Args:
        prediction: a :class:`~ats_wsi.classifier.SlidePrediction` whose ``zoom`` is a list of
            :class:`ats_wsi.zoom.ZoomRecord`.
        kwargs: as :func:`prediction_geojson` (``quantile``, ``slide``, ``slide_wh``).
    """
    import dataclasses

    stage1 = dataclasses.replace(prediction, boxes_xywh=np.zeros((0, 4), np.int64),
                                 box_attention=np.zeros(0, np.float32))
    data = prediction_geojson(stage1, **kwargs)
    records = list(prediction.zoom)
    for s, record in enumerate(records):
        zoomed = zoom_geojson(record)
        for feature in zoomed["features"]:
            if len(records) > 1:
                feature["properties"].setdefault("measurements", {})["sampling"] = s + 1
            data["features"].append(feature)
    data["properties"]["zoom_samplings"] = len(records)
    return data
