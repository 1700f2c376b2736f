"""napari writer: an attention (heatmap) image layer back to OME-Zarr.

The layer's ``scale`` and ``translate`` are turned back into the map's
placement over level 0 (``cell_size_xy``, ``origin_xy``) by inverting the
transform of :func:`ats_wsi.outputs.write_attention_zarr`, so a map that was
read, moved or computed in napari is written where it is shown.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._reader import ATTENTION_KIND, KIND_KEY

__all__ = ["write_attention_layer", "placement_from_transform"]


def placement_from_transform(
    scale_yx: tuple[float, float], translate_yx: tuple[float, float], mpp: float | None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Cell size and origin in level-0 pixels from a layer's scale and translate.

    Args:
        scale_yx: (sy, sx) layer scale, in µm when ``mpp`` is given, else in
            level-0 pixels.
        translate_yx: (ty, tx) world position of the centre of cell (0, 0).
        mpp: µm per level-0 pixel, or None for pixel units.

    Returns:
        ``(cell_size_xy, origin_xy)``: (w, h) of one cell and (x, y) of the
        top-left corner of cell (0, 0), both in level-0 pixels.
    """
    unit = 1.0 if mpp is None else float(mpp)
    ch, cw = scale_yx[0] / unit, scale_yx[1] / unit
    # inverse of translation = (origin + cell / 2 - 0.5) * unit
    oy = translate_yx[0] / unit - ch / 2 + 0.5
    ox = translate_yx[1] / unit - cw / 2 + 0.5
    return (cw, ch), (ox, oy)


def write_attention_layer(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: save a 2-D image layer as an attention OME-Zarr.

    Args:
        path: destination, ``*.zarr`` (the suffix is added if missing).
        data: the layer's data, float (rows, cols).
        meta: the layer's attributes (``scale``, ``translate``, ``metadata``...).

    Returns:
        The written path, in a list.

    Raises:
        TypeError: the layer is not a single-scale 2-D map (e.g. a slide).
            A TypeError, not a ValueError: napari turns ValueErrors of a
            writer into a vague "not a valid writer" warning, and this
            message is the one the user needs.
    """
    from ats_wsi.outputs import write_attention_zarr

    if meta.get("multiscale") or meta.get("rgb"):
        raise TypeError(
            f"{meta.get('name', 'layer')!r} is a multiscale or RGB image; only 2-D attention maps "
            "can be saved as an attention OME-Zarr"
        )
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 2:
        raise TypeError(f"an attention map must be 2-D (rows, cols), got shape {array.shape}")
    layer_meta = dict(meta.get("metadata") or {})
    array = array / np.float32(layer_meta.get("attention_scale") or 1.0)  # shown x cells, stored as attention
    mpp = layer_meta.get("mpp")
    scale = tuple(float(v) for v in (meta.get("scale") or (1.0, 1.0))[-2:])
    translate = tuple(float(v) for v in (meta.get("translate") or (0.0, 0.0))[-2:])
    cell_size_xy, origin_xy = placement_from_transform(scale, translate, mpp)
    extras = dict(layer_meta.get("map_metadata") or {})
    if layer_meta.get(KIND_KEY) == ATTENTION_KIND and layer_meta.get("slide"):
        extras.setdefault("slide", layer_meta["slide"])
    out = path if path.lower().endswith(".zarr") else f"{path}.zarr"
    written = write_attention_zarr(
        out,
        array,
        cell_size_xy=cell_size_xy,
        origin_xy=origin_xy,
        mpp=mpp,
        metadata=extras,
        name=str(meta.get("name") or "attention"),
    )
    return [os.fspath(written)]
