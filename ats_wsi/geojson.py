"""A prediction as GeoJSON that QuPath imports as annotations.

One FeatureCollection in level-0 pixel coordinates (x right, y down, as
openslide and QuPath count them):

- one ``Polygon`` per sampled box, in draw order, named ``patch K``
  (K = 1, 2, ... as the overlay numbers them), with the measurements
  ``attention`` (the box's cell attention) and ``draw_order`` (K);
- one ``Polygon`` (with holes where needed) per connected region of the top
  cells: cells whose attention is at least the ``quantile`` of the map,
  merged along their shared edges so that the outline follows the cells'
  borders exactly. Measurements: ``attention`` (summed over the region's
  cells), ``attention_max`` and ``cells``.

Every feature has ``properties.objectType = "annotation"`` and a
``classification`` (``{"name", "color"}``), the shape QuPath's
*File > Import objects* reads (QuPath 0.4 and later). Coordinates are plain
floats; rings are closed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["TOP_QUANTILE", "attention_regions", "prediction_geojson", "write_geojson"]

TOP_QUANTILE = 0.9
"""Cells at or above this quantile of the attention map are outlined (the top 10 %)."""

PATCH_CLASS = {"name": "ats-wsi patch", "color": [0, 255, 255]}
REGION_CLASS = {"name": "ats-wsi attention", "color": [252, 141, 89]}

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


def attention_regions(attention: np.ndarray, quantile: float = TOP_QUANTILE) -> list[dict]:
    """The connected regions of the top cells of an attention map.

    Args:
        attention: float [rows, cols].
        quantile: cells with attention >= this quantile of the map (and > 0)
            are kept; 4-connected cells form one region.

    Returns:
        one dict per region, largest attention first: ``rings`` (list of
        rings of cell corners (col, row), the outer ring first, then holes),
        ``attention`` (sum), ``attention_max``, ``cells``.
    """
    values = np.nan_to_num(np.asarray(attention, dtype=np.float64))
    if values.size == 0 or not (values > 0).any():
        return []
    top = (values >= np.quantile(values, quantile)) & (values > 0)
    labels, n = _label(top)
    regions = []
    for k in range(1, n + 1):
        cells = labels == k
        rings = sorted(_rings(cells), key=lambda r: -abs(_signed_area(r)))
        regions.append({"rings": rings, "attention": float(values[cells].sum()),
                        "attention_max": float(values[cells].max()), "cells": int(cells.sum())})
    return sorted(regions, key=lambda r: -r["attention"])


def _box_ring(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]


def _feature(ring_lists: list, name: str, classification: dict, measurements: dict) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": ring_lists},
        "properties": {"objectType": "annotation", "name": name, "classification": dict(classification),
                       "measurements": measurements},
    }


def prediction_geojson(prediction, *, quantile: float = TOP_QUANTILE, slide: str | None = None) -> dict:
    """The GeoJSON FeatureCollection of a prediction (see the module docstring).

    Args:
        prediction: a :class:`~ats_wsi.classifier.SlidePrediction` (or anything
            with ``boxes_xywh`` int [n, 4] level-0 (x, y, w, h) in draw order,
            ``box_attention`` float [n], ``attention`` float [rows, cols],
            ``cell_size_xy`` and ``origin_xy`` in level-0 pixels).
        quantile: which cells are outlined (:func:`attention_regions`).
        slide: the slide's path, recorded in the collection's properties.
    """
    boxes = np.asarray(prediction.boxes_xywh, dtype=np.float64).reshape(-1, 4)
    box_attention = np.asarray(prediction.box_attention, dtype=np.float64).reshape(-1)
    features = [
        _feature([_box_ring(*map(float, box))], f"patch {k + 1}", PATCH_CLASS,
                 {"attention": float(box_attention[k]) if k < len(box_attention) else 0.0, "draw_order": k + 1})
        for k, box in enumerate(boxes)
    ]
    cw, ch = (float(v) for v in prediction.cell_size_xy)
    ox, oy = (float(v) for v in prediction.origin_xy)
    for k, region in enumerate(attention_regions(prediction.attention, quantile)):
        rings = [[[ox + c * cw, oy + r * ch] for c, r in [*ring, ring[0]]] for ring in region["rings"]]
        measurements = {key: region[key] for key in ("attention", "attention_max", "cells")}
        features.append(_feature(rings, f"attention region {k + 1}", REGION_CLASS, measurements))
    properties = {"coordinates": "level-0 pixels (x right, y down)", "top_quantile": float(quantile)}
    if slide is not None:
        properties["slide"] = str(slide)
    return {"type": "FeatureCollection", "properties": properties, "features": features}


def write_geojson(path: str | os.PathLike, prediction, **kwargs) -> Path:
    """Write :func:`prediction_geojson` to ``path`` atomically; returns the path."""
    data = prediction_geojson(prediction, **kwargs)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data), encoding="utf-8")
    return Path(path)
