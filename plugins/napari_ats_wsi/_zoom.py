"""The stage-2 maps of a two-stage (zoom) prediction as napari layers.

A zoom's second attention stage has a map only inside the ``n1`` regions the
first stage drew: a sparse record. Each region's map becomes one small heatmap
layer placed over the slide where the region lies (the same transform as the
stage-1 heatmap, :func:`ats_wsi.geometry.cell_transform`, from the region's own
cell size and origin in level-0 pixels), on the same absolute scale (attention
× the cells of its own map, 1 = uniform), as the ``zoom tile`` detections of
the GeoJSON QuPath imports (:func:`ats_wsi.geojson.zoom_geojson`). The widget
makes them from a prediction in memory; the attention-map reader (``ats-wsi
view --results``) from the ``zoom`` group that ``predict`` writes in the map
(:func:`ats_wsi.outputs.read_zoom_maps`): the same layers either way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._reader import LayerData, attention_layer_data

__all__ = ["zoom_layer_data", "zoom_map_layer_data"]


def zoom_layer_data(records: Sequence, *, name: str, scale_yx, translate_yx, units_um: bool,
                    slide: str | None = None) -> list[LayerData]:
    """One heatmap layer per drawn region of each sampling of a zoom prediction.

    Args:
        records: the prediction's ``zoom`` (:class:`ats_wsi.zoom.ZoomRecord` per sampling; empty
            or None for a one-stage prediction: no layers).
        name: the slide layer's name (the layers are ``NAME zoom region K``, with
            ``(sampling S)`` when there are several samplings).
        scale_yx, translate_yx: the slide layer's transform (per level-0 pixel).
        units_um: the slide layer is in µm (its mpp is known).
        slide: the slide's path, in each layer's metadata (so that a new run removes them).

    Returns:
        ``[(data, kwargs, "image"), ...]``, region after region.
    """
    from ats_wsi.geometry import cell_transform
    from ats_wsi.outputs import AttentionMap

    maps = []
    for s, record in enumerate(records or []):
        cell = tuple(float(v) for v in record.zoom_cell_size_xy)
        for k, (a2, origin) in enumerate(zip(np.asarray(record.zoom_attention), np.asarray(record.zoom_origin_xy))):
            scale, translate = cell_transform(cell, origin, scale_yx, translate_yx)
            maps.append(AttentionMap(data=np.asarray(a2, dtype=np.float32), scale=scale, translation=translate,
                                     unit="micrometer" if units_um else None, cell_size_xy=cell,
                                     origin_xy=tuple(float(v) for v in origin),
                                     mpp=float(np.asarray(scale_yx)[-1]) if units_um else None,
                                     metadata={"slide": slide, "zoom_region": k + 1, "sampling": s + 1}))
    return zoom_map_layer_data(maps, name=name)


def zoom_map_layer_data(maps: Sequence, *, name: str) -> list[LayerData]:
    """One heatmap layer per stage-2 map, each at its own place and on its own absolute scale.

    Args:
        maps: :class:`ats_wsi.outputs.AttentionMap` per drawn region (their ``metadata`` has
            ``zoom_region`` and ``sampling``, from 1): built from a prediction in memory
            (:func:`zoom_layer_data`) or read from a ``predict`` map's ``zoom`` group
            (:func:`ats_wsi.outputs.read_zoom_maps`).
        name: the layers are ``NAME zoom region K`` (``(sampling S)`` added when there are several).

    Returns:
        ``[(data, kwargs, "image"), ...]`` in the order of ``maps``.
    """
    several = len({m.metadata.get("sampling", 1) for m in maps}) > 1
    out = []
    for amap in maps:
        label = f"{name} zoom region {amap.metadata['zoom_region']}"
        out.append(attention_layer_data(amap, name=label + (f" (sampling {amap.metadata['sampling']})"
                                                             if several else "")))
    return out
