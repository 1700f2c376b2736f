"""napari readers: whole-slide images (lazy, multiscale) and attention maps.

Two reader contributions share the ``*.zarr`` pattern; they are told apart
by the ``ats_wsi`` attribute that :func:`ats_wsi.outputs.write_attention_zarr`
stores in every attention map: a zarr folder that has it is an attention map,
any other zarr folder is offered to the slide reader.

Both ``napari_get_reader_*`` functions follow napari's contract: given a path
(or a list of paths) they return a reader callable, or ``None`` when the path
is not theirs, and they never raise. They only look at names and, for zarr
folders, at the small JSON attribute files; no pixels are read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ats_wsi.slide.formats import SLIDE_SUFFIXES
from ats_wsi.slide.formats import is_slide_path as _has_slide_suffix

__all__ = [
    "SLIDE_SUFFIXES",
    "napari_get_reader",
    "napari_get_attention_reader",
    "read_slides",
    "read_attention_maps",
    "slide_layer_data",
    "attention_layer_data",
]

# napari layer metadata key that marks layers made by this plugin.
KIND_KEY = "ats_wsi"
SLIDE_KIND = "slide"
ATTENTION_KIND = "attention"

# The heatmap uses inferno's colours with an alpha that rises with attention,
# blended "translucent": where attention is low the slide shows unchanged and
# where it is high the bright end of inferno covers it. (Plain inferno at
# opacity 0.5 darkens the whole slide, and "additive" washes out on a
# brightfield slide, whose background is already near white.)
HEATMAP_COLORMAP_NAME = "ats-wsi inferno"
HEATMAP_OPACITY = 0.6
HEATMAP_BLENDING = "translucent"
HEATMAP_FLOOR = 1.0
"""Attention × cells below which the heatmap is fully transparent (below uniform: no halo of
faint colour around the tissue where the attention is low)."""

LayerData = tuple[Any, dict, str]
ReaderFunction = Callable[[Any], list[LayerData]]


# --------------------------------------------------------------------------- path checks


def _as_paths(path: Any) -> list[str] | None:
    """Normalise napari's ``str | list[str]`` argument; None when unusable."""
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    if isinstance(path, (list, tuple)) and path and all(isinstance(p, (str, os.PathLike)) for p in path):
        return [os.fspath(p) for p in path]
    return None


def _zarr_attributes(folder: Path) -> dict | None:
    """Root attributes of a zarr v2 or v3 group folder, or None if it is not one."""
    v3 = folder / "zarr.json"
    if v3.is_file():
        return json.loads(v3.read_text(encoding="utf-8")).get("attributes", {}) or {}
    v2 = folder / ".zattrs"
    if v2.is_file():
        return json.loads(v2.read_text(encoding="utf-8")) or {}
    if (folder / ".zgroup").is_file() or (folder / ".zarray").is_file():
        return {}
    return None


def is_attention_zarr(path: str | os.PathLike) -> bool:
    """True if ``path`` is a zarr folder written by ``write_attention_zarr``."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    attrs = _zarr_attributes(folder)
    return bool(attrs) and isinstance(attrs.get(KIND_KEY), dict) and "cell_size_xy" in attrs[KIND_KEY]


def is_slide_path(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a slide this plugin should try to open.

    Files need a slide suffix (:data:`ats_wsi.slide.SLIDE_SUFFIXES`, the
    patterns ``napari.yaml`` lists); folders must be zarr groups (``*.zarr``
    or any folder holding zarr metadata) that are not attention maps.
    """
    p = Path(path)
    if p.is_file():
        return _has_slide_suffix(p) and p.suffix.lower() != ".zarr"
    if p.is_dir():
        return _zarr_attributes(p) is not None and not is_attention_zarr(p)
    return False


def _reader_if(path: Any, accept: Callable[[str], bool], reader: ReaderFunction) -> ReaderFunction | None:
    try:
        paths = _as_paths(path)
        if paths and all(accept(p) for p in paths):
            return reader
    except Exception:  # a reader probe must never raise (unreadable attrs, permissions, ...)
        return None
    return None


def napari_get_reader(path: Any) -> ReaderFunction | None:
    """npe2 ``get_reader`` for slides: :func:`read_slides` or None."""
    return _reader_if(path, is_slide_path, read_slides)


def napari_get_attention_reader(path: Any) -> ReaderFunction | None:
    """npe2 ``get_reader`` for attention maps: :func:`read_attention_maps` or None."""
    return _reader_if(path, is_attention_zarr, read_attention_maps)


# --------------------------------------------------------------------------- slides


def slide_layer_data(slide) -> LayerData:
    """Layer data of one open slide: a lazy multiscale RGB image.

    Args:
        slide: an ``ats_wsi.slide.Slide``.

    Returns:
        ``(levels, add_kwargs, "image")`` where ``levels`` is the list of
        per-level dask arrays (rows, cols, 3) uint8, from level 0 down: every
        level of ``slide.pyramid``, so a file stored without a pyramid gets
        its computed levels and napari never draws level 0 whole. Nothing
        is read: napari fetches the tiles it displays. ``scale`` is µm per
        level-0 pixel (y, x) when the slide's mpp is known, else 1 (pixels);
        napari derives the scale of the other levels from their shapes.
    """
    levels = [slide.level_array(i) for i in range(len(slide.pyramid))]
    kwargs: dict[str, Any] = {
        "name": Path(slide.path).name,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": (0, 255),
        "metadata": slide_metadata(slide),
    }
    mpp_xy = getattr(slide, "mpp_xy", None)
    if mpp_xy is None and slide.mpp is not None:
        mpp_xy = (slide.mpp, slide.mpp)
    if mpp_xy is not None and all(v is not None for v in mpp_xy):
        kwargs["scale"] = (float(mpp_xy[1]), float(mpp_xy[0]))  # (y, x)
        kwargs["units"] = ("micrometer", "micrometer")
    return levels, kwargs, "image"


def slide_metadata(slide) -> dict:
    """JSON-able description of a slide for the layer's ``metadata``."""
    return {
        KIND_KEY: SLIDE_KIND,
        "path": os.path.abspath(os.fspath(slide.path)),  # the widget reopens it by this path
        "backend": getattr(slide, "backend", None),
        "format": getattr(slide, "format", None),
        "mpp": None if slide.mpp is None else float(slide.mpp),
        "dimensions": [int(v) for v in slide.dimensions],
        "level_dimensions": [[int(w), int(h)] for w, h in slide.level_dimensions],
        "level_downsamples": [float(d) for d in slide.level_downsamples],
        "pyramid_dimensions": [[int(lv.width), int(lv.height)] for lv in slide.pyramid],
        "properties": {str(k): str(v) for k, v in dict(slide.properties).items()},
    }


def read_slides(path: Any) -> list[LayerData]:
    """Open each slide lazily; one multiscale image layer per slide.

    Raises:
        ats_wsi.errors.SlideError: a file that is not a readable slide (napari
            shows the message, which names the file, as a notification).
    """
    from ats_wsi.slide import open_slide

    return [slide_layer_data(open_slide(p)) for p in _as_paths(path) or []]


# --------------------------------------------------------------------------- attention maps


def heatmap_colormap():
    """napari Colormap over the contrast limits (0, ATTENTION_SCALE_MAX): inferno's 256 colours;
    alpha 0 (transparent) at every control up to :data:`HEATMAP_FLOOR`, then rising as sqrt to 1."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    from ats_wsi.outputs import ATTENTION_SCALE_MAX

    colors = np.array(AVAILABLE_COLORMAPS["inferno"].colors, dtype=np.float32)
    t = np.linspace(0.0, 1.0, len(colors), dtype=np.float32)
    floor = HEATMAP_FLOOR / ATTENTION_SCALE_MAX
    colors[:, 3] = np.sqrt(np.clip((t - floor) / (1 - floor), 0.0, 1.0))
    return Colormap(colors, display_name="attention x cells (1 = uniform)", name=HEATMAP_COLORMAP_NAME, controls=t)


def _contrast_limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def attention_layer_data(attention_map, *, name: str = "attention") -> LayerData:
    """Layer data of an ``ats_wsi.outputs.AttentionMap``: a heatmap over its slide.

    The layer's ``scale`` and ``translate`` are the map's NGFF transform (µm
    when the slide's mpp was known, else level-0 pixels), so it lies exactly
    over the slide layer, whose level-0 pixel (r, c) sits at (r, c) × mpp.
    Its values are on the absolute scale of the overlays
    (:func:`ats_wsi.outputs.attention_scale`: attention × number of cells,
    1 = uniform) with fixed contrast limits ``(0, ATTENTION_SCALE_MAX)``, so a
    colour means the same on every slide; ``metadata["attention_scale"]`` is
    the factor (the writer divides it out again).
    """
    from ats_wsi.outputs import ATTENTION_SCALE_MAX, attention_scale

    raw = np.asarray(attention_map.data, dtype=np.float32)
    data = attention_scale(raw)
    kwargs: dict[str, Any] = {
        "name": name,
        "colormap": heatmap_colormap(),
        "opacity": HEATMAP_OPACITY,
        "blending": HEATMAP_BLENDING,
        "contrast_limits": (0.0, ATTENTION_SCALE_MAX),
        "scale": tuple(float(v) for v in attention_map.scale),
        "translate": tuple(float(v) for v in attention_map.translation),
        "metadata": {
            KIND_KEY: ATTENTION_KIND,
            "cell_size_xy": [float(v) for v in attention_map.cell_size_xy],
            "origin_xy": [float(v) for v in attention_map.origin_xy],
            "mpp": attention_map.mpp,
            "unit": attention_map.unit,
            "attention_scale": float(raw.size),
            "map_metadata": dict(attention_map.metadata),
        },
    }
    if attention_map.unit == "micrometer":
        kwargs["units"] = ("micrometer", "micrometer")
    return data, kwargs, "image"


def box_rectangles(boxes_xywh: np.ndarray) -> np.ndarray:
    """Rectangles for a Shapes layer from level-0 boxes.

    Args:
        boxes_xywh: int [n, 4], (x, y, w, h) in level-0 pixels.

    Returns:
        float [n, 2, 2]: for each box its top-left and bottom-right corners as
        (row, col) in level-0 pixel-centre coordinates (napari's convention:
        pixel x spans x - 0.5 .. x + 0.5), so a box covering pixels
        x .. x + w - 1 has its edges at x - 0.5 and x + w - 0.5.
    """
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = b.T
    top_left = np.stack([y - 0.5, x - 0.5], axis=1)
    bottom_right = np.stack([y + h - 0.5, x + w - 0.5], axis=1)
    return np.stack([top_left, bottom_right], axis=1)


def boxes_layer_data(boxes_xywh, box_attention, *, name: str, scale_yx=(1.0, 1.0), translate_yx=(0.0, 0.0),
                     micrometer: bool = False, level0_extent: float = 1.0, slide: str | None = None) -> LayerData:
    """Layer data of sampled boxes: a Shapes layer of rectangles in level-0 pixels,
    numbered in draw order (1, 2, ...), edge colour by attention.

    Args:
        boxes_xywh: int [n, 4], (x, y, w, h) in level-0 pixels, in draw order.
        box_attention: float [n], each box's attention.
        scale_yx, translate_yx: the slide layer's transform (µm per level-0
            pixel when ``micrometer``).
        level0_extent: the slide's larger side in level-0 pixels (edge width).
    """
    from napari.utils.colormaps import Colormap

    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    attention = np.asarray(box_attention, dtype=np.float64).reshape(-1)
    edge_width = max(float(np.median(boxes[:, 2:])) / 10 if len(boxes) else 1.0, level0_extent / 500)
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "scale": tuple(float(v) for v in scale_yx),
        "translate": tuple(float(v) for v in translate_yx),
        "face_color": "transparent",
        "edge_width": edge_width,
        "features": {"attention": attention, "draw_order": np.arange(1, len(boxes) + 1)},
        "text": {"string": "{draw_order}", "color": "cyan", "anchor": "upper_left", "size": 10},
        "metadata": {KIND_KEY: "patches", "boxes_xywh": boxes.astype(np.int64).tolist(), "slide": slide},
    }
    if len(boxes) and np.ptp(attention) > 0:
        colormap = Colormap([[0.15, 0.35, 1.0, 1.0], [0.0, 1.0, 0.85, 1.0]], name="ats-wsi boxes",
                            display_name="attention (boxes)")
        kwargs.update(edge_color="attention", edge_colormap=colormap)
    else:
        kwargs.update(edge_color="cyan")
    if micrometer:
        kwargs["units"] = ("micrometer", "micrometer")
    return (box_rectangles(boxes) if len(boxes) else None), kwargs, "shapes"


def read_attention_maps(path: Any) -> list[LayerData]:
    """Read attention maps written by ``ats_wsi.outputs.write_attention_zarr``: per map its heatmap,
    then (a two-stage prediction's map) each drawn region's stage-2 map where the region lies
    (``NAME zoom region K``, :func:`._zoom.zoom_map_layer_data`), then its sampled boxes."""
    from ats_wsi.outputs import read_attention_zarr, read_zoom_maps

    from ._zoom import zoom_map_layer_data

    layers = []
    for p in _as_paths(path) or []:
        name = Path(p.rstrip("/\\")).name
        attention_map = read_attention_zarr(p)
        layers.append(attention_layer_data(attention_map, name=name))
        layers[-1][1]["metadata"]["path"] = os.fspath(p)
        heat = layers[-1][1]
        layers += zoom_map_layer_data(read_zoom_maps(p), name=name)
        boxes = attention_map.metadata.get("boxes_xywh")
        if boxes:  # a map of `ats-wsi predict` carries its sampled boxes
            layers.append(boxes_layer_data(
                boxes, attention_map.metadata.get("box_attention") or [0.0] * len(boxes),
                name=f"{name} patches", scale_yx=(attention_map.mpp or 1.0,) * 2,
                translate_yx=(0.0, 0.0), micrometer=heat.get("units") is not None,
                level0_extent=max(np.shape(attention_map.data)) * max(attention_map.cell_size_xy),
                slide=attention_map.metadata.get("slide")))
    return layers
