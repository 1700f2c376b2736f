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
    """napari Colormap: inferno RGB, alpha = sqrt(t) from 0 (transparent) at the low limit to 1."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    colors = np.array(AVAILABLE_COLORMAPS["inferno"].colors, dtype=np.float32)
    t = np.linspace(0.0, 1.0, len(colors), dtype=np.float32)
    colors[:, 3] = np.sqrt(t)
    return Colormap(colors, display_name="inferno (transparent low)", name=HEATMAP_COLORMAP_NAME, controls=t)


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
    """
    data = np.asarray(attention_map.data, dtype=np.float32)
    kwargs: dict[str, Any] = {
        "name": name,
        "colormap": heatmap_colormap(),
        "opacity": HEATMAP_OPACITY,
        "blending": HEATMAP_BLENDING,
        "contrast_limits": _contrast_limits(data),
        "scale": tuple(float(v) for v in attention_map.scale),
        "translate": tuple(float(v) for v in attention_map.translation),
        "metadata": {
            KIND_KEY: ATTENTION_KIND,
            "cell_size_xy": [float(v) for v in attention_map.cell_size_xy],
            "origin_xy": [float(v) for v in attention_map.origin_xy],
            "mpp": attention_map.mpp,
            "unit": attention_map.unit,
            "map_metadata": dict(attention_map.metadata),
        },
    }
    if attention_map.unit == "micrometer":
        kwargs["units"] = ("micrometer", "micrometer")
    return data, kwargs, "image"


def read_attention_maps(path: Any) -> list[LayerData]:
    """Read attention maps written by ``ats_wsi.outputs.write_attention_zarr``."""
    from ats_wsi.outputs import read_attention_zarr

    layers = []
    for p in _as_paths(path) or []:
        name = Path(p.rstrip("/\\")).name
        layers.append(attention_layer_data(read_attention_zarr(p), name=name))
        layers[-1][1]["metadata"]["path"] = os.fspath(p)
    return layers
