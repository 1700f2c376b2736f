"""Results on disk: attention maps (OME-Zarr), overlay PNGs, CSV tables.

Every writer here publishes its result atomically: it writes under a
temporary name in the destination folder and renames it into place only once
complete, so an interrupted run never leaves a half-written file under a
final name.

Attention maps are stored as OME-Zarr (NGFF 0.4 by default, which most
viewers read; 0.5 on request) holding one float32 array of shape
(rows, cols) = (y, x). Its coordinate transformations put every cell exactly
over the slide region it covers, in micrometres when the slide's µm/px is
known and in level-0 pixels otherwise, using the pixel-centre convention of
napari and NGFF: array index (r, c) sits at ``translation + (r, c) * scale``.
A two-stage (zoom) prediction's map also holds, in its ``zoom`` group, one
such image per drawn region: that region's stage-2 map, placed over the
region on the same slide coordinates (:func:`write_zoom_maps`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import atomic_path

__all__ = [
    "AttentionMap",
    "write_attention_zarr",
    "read_attention_zarr",
    "write_image",
    "MAX_ZOOM_MAP_CELLS",
    "check_zoom_maps",
    "write_zoom_maps",
    "read_zoom_maps",
    "colorize",
    "render_overlay",
    "draw_colorbar",
    "blend_heatmap",
    "write_overlay_png",
]

NGFF_VERSIONS = ("0.4", "0.5")


# --------------------------------------------------------------------------- OME-Zarr


@dataclass(frozen=True)
class AttentionMap:
    """An attention map read back from OME-Zarr.

    Attributes:
        data: float32 (rows, cols) attention probabilities (or any score).
        scale: (sy, sx) physical size of one cell, in ``unit``.
        translation: (ty, tx) physical position of the CENTRE of cell (0, 0).
        unit: "micrometer" when the slide's µm/px was known, else None
            (then scale and translation are in level-0 pixels).
        cell_size_xy: (w, h) of one cell in level-0 pixels.
        origin_xy: (x, y) level-0 position of the top-left corner of cell (0, 0).
        mpp: the slide's µm/px used for the transform, or None.
        metadata: the free-form ``ats_wsi`` attributes stored with the map.
    """

    data: np.ndarray
    scale: tuple[float, float]
    translation: tuple[float, float]
    unit: str | None
    cell_size_xy: tuple[float, float]
    origin_xy: tuple[float, float]
    mpp: float | None
    metadata: dict = field(default_factory=dict)

    def cell_center_xy(self, row: int, col: int) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of cell (row, col) (continuous coordinates)."""
        return (
            self.origin_xy[0] + (col + 0.5) * self.cell_size_xy[0],
            self.origin_xy[1] + (row + 0.5) * self.cell_size_xy[1],
        )


def _transforms(cell_size_xy, origin_xy, mpp):
    """NGFF scale/translation lists (y, x) for a grid of cells over level 0, in µm
    (pixels when ``mpp`` is None): :func:`ats_wsi.geometry.cell_transform`."""
    from .geometry import cell_transform

    unit_size = 1.0 if mpp is None else float(mpp)
    scale, translation = cell_transform(cell_size_xy, origin_xy, (unit_size, unit_size))
    return list(scale), list(translation)


def write_attention_zarr(
    path: str | os.PathLike,
    attention: np.ndarray,
    *,
    cell_size_xy: tuple[float, float],
    origin_xy: tuple[float, float] = (0.0, 0.0),
    mpp: float | None = None,
    ngff_version: str = "0.4",
    metadata: Mapping[str, Any] | None = None,
    name: str = "attention",
    zoom: Sequence | None = None,
) -> Path:
    """Write an attention map as an OME-Zarr image aligned to level 0.

    Args:
        path: destination folder (``*.zarr``); replaced atomically if present.
        attention: float (rows, cols) = (y, x) map, one value per cell.
        cell_size_xy: (w, h) of one cell in level-0 pixels.
        origin_xy: (x, y) level-0 corner of cell (0, 0) (non-zero when the
            grid is offset, e.g. by half a receptive field).
        mpp: the slide's µm per level-0 pixel; None writes pixel units. With
            it, the cell size in µm is stored too (``cell_size_um_xy``).
        ngff_version: "0.4" (zarr v2, read by most viewers) or "0.5" (zarr v3).
        metadata: JSON-able extras stored under the ``ats_wsi`` attribute.
        name: the image's name in the multiscales metadata.
        zoom: a two-stage prediction's :class:`ats_wsi.zoom.ZoomRecord` per
            sampling: their stage-2 maps are written in the map's ``zoom``
            group, published with it in the same rename
            (:func:`write_zoom_maps`). None or empty: a one-stage map,
            nothing more is written.

    Returns:
        The final path.

    Raises:
        OutputError: the stage-2 maps would hold more than
            :data:`MAX_ZOOM_MAP_CELLS` cells (checked
            before anything is written).
    """
    import zarr

    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(f"ngff_version must be one of {NGFF_VERSIONS}, got {ngff_version!r}")
    data = np.ascontiguousarray(attention, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"attention must be 2-D (rows, cols), got shape {data.shape}")
    if zoom:
        check_zoom_maps(path, zoom)
        metadata = {**(dict(metadata) if metadata else {}), "zoom_maps": ZOOM_GROUP}
    zarr_format = 2 if ngff_version == "0.4" else 3
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
        write_image(root, data, cell_size_xy=cell_size_xy, origin_xy=origin_xy, mpp=mpp, metadata=metadata,
                    name=name)
        if zoom:
            write_zoom_maps(root.create_group(ZOOM_GROUP), zoom, mpp=mpp, slide=(metadata or {}).get("slide"))
    return Path(path)


ZOOM_GROUP = "zoom"
"""The group of an attention map that holds a two-stage prediction's stage-2 maps."""


def write_image(root, data: np.ndarray, *, cell_size_xy: tuple[float, float], origin_xy: tuple[float, float],
                mpp: float | None, metadata: Mapping[str, Any] | None, name: str) -> None:
    """Write ``data`` into the open zarr group ``root`` as one NGFF multiscale image (one level, array ``0``).

    Args:
        root: a writable zarr group (format 2: NGFF 0.4; format 3: NGFF 0.5).
        data: float32 (rows, cols) = (y, x).
        cell_size_xy, origin_xy, mpp, metadata, name: as for :func:`write_attention_zarr`.
    """
    scale, translation = _transforms(cell_size_xy, origin_xy, mpp)
    axis_unit = {"unit": "micrometer"} if mpp is not None else {}
    axes = [{"name": "y", "type": "space", **axis_unit}, {"name": "x", "type": "space", **axis_unit}]
    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        ],
    }
    extras = {
        "cell_size_xy": [float(v) for v in cell_size_xy],
        "origin_xy": [float(v) for v in origin_xy],
        "mpp": None if mpp is None else float(mpp),
        "cell_size_um_xy": None if mpp is None else [float(v) * float(mpp) for v in cell_size_xy],
        **(dict(metadata) if metadata else {}),
    }
    zarr_format = root.metadata.zarr_format
    chunks = tuple(min(s, 1024) for s in data.shape)
    kwargs = {"dimension_names": ["y", "x"]} if zarr_format == 3 else {}
    arr = root.create_array("0", shape=data.shape, chunks=chunks, dtype="float32", **kwargs)
    arr[...] = data
    if zarr_format == 2:
        root.attrs.update({"multiscales": [{"version": "0.4", **multiscale}], "ats_wsi": extras})
    else:
        root.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale]}, "ats_wsi": extras})


def read_attention_zarr(path: str | os.PathLike) -> AttentionMap:
    """Read a map written by :func:`write_attention_zarr` (NGFF 0.4 or 0.5)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    multiscales = attrs["ome"]["multiscales"] if "ome" in attrs else attrs["multiscales"]
    ms = multiscales[0]
    ds = ms["datasets"][0]
    scale, translation = [1.0, 1.0], [0.0, 0.0]
    for t in ds.get("coordinateTransformations", []):
        if t["type"] == "scale":
            scale = t["scale"]
        elif t["type"] == "translation":
            translation = t["translation"]
    extras = attrs.get("ats_wsi", {})
    meta = {k: v for k, v in extras.items() if k not in ("cell_size_xy", "origin_xy", "mpp", "cell_size_um_xy")}
    return AttentionMap(
        data=np.asarray(root[ds["path"]][...], dtype=np.float32),
        scale=(float(scale[0]), float(scale[1])),
        translation=(float(translation[0]), float(translation[1])),
        unit=ms["axes"][0].get("unit"),
        cell_size_xy=tuple(extras.get("cell_size_xy", (scale[1], scale[0]))),
        origin_xy=tuple(extras.get("origin_xy", (0.0, 0.0))),
        mpp=extras.get("mpp"),
        metadata=meta,
    )


# --------------------------------------------------------------------------- a zoom's stage-2 maps

MAX_ZOOM_MAP_CELLS = 1 << 28
"""Most cells the stage-2 maps of one slide may hold (samplings x regions x cells a region;
1 GiB of float32), checked before anything is written."""


def check_zoom_maps(path: str | os.PathLike, zoom: Sequence, max_cells: int = MAX_ZOOM_MAP_CELLS) -> int:
    """The cells of ``zoom``'s stage-2 maps (``ZoomRecord.zoom_attention [n1, h2, w2]`` per
    sampling), or :class:`~ats_wsi.errors.OutputError` naming ``path`` when over ``max_cells``."""
    from .errors import OutputError

    shapes = [tuple(np.shape(record.zoom_attention)) for record in zoom]
    cells = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    if cells > max_cells:
        n1, h2, w2 = shapes[0]
        raise OutputError(path, f"the stage-2 maps of this zoom hold {cells:,} cells ({len(shapes)} sampling(s) x "
                                f"{n1} regions x {h2} x {w2} cells), over the {max_cells:,} one map may hold; "
                                f"predict with fewer --samples, or train with fewer --zoom-regions or a smaller "
                                f"--zoom-size")
    return cells


def write_zoom_maps(group, zoom: Sequence, *, mpp: float | None, slide: str | None = None) -> list[str]:
    """Write each drawn region's stage-2 map into the zarr ``group``, one NGFF image a region.

    The images are the sub-groups ``0, 1, ...`` (sampling after sampling, region
    after region in draw order; the ``bioformats2raw.layout`` of NGFF, which
    names a collection of images so), each placed over its region on the slide
    by its own scale and translation (:func:`write_image`; cells of
    ``zoom_cell_size_xy`` level-0 pixels from the region's ``zoom_origin_xy``).
    Each carries under ``ats_wsi`` its ``sampling`` and ``zoom_region`` (from 1,
    as the GeoJSON's ``zoom region K``), the region's box and stage-1
    probability, its patches' boxes and stage-2 probabilities.

    Args:
        group: an empty writable zarr group.
        zoom: :class:`ats_wsi.zoom.ZoomRecord` per sampling (checked with :func:`check_zoom_maps`).
        mpp: the slide's µm per level-0 pixel (None: pixel units).
        slide: the slide's path, stored with each image.

    Returns:
        The images' paths in ``group``.
    """
    paths = []
    for s, record in enumerate(zoom):
        for r, (a2, origin) in enumerate(zip(record.zoom_attention, np.asarray(record.zoom_origin_xy))):
            meta = {"slide": slide, "sampling": s + 1, "zoom_region": r + 1,
                    "region_box_xywh": [float(v) for v in record.region_boxes[r]],
                    "region_probability": float(record.region_probability[r]),
                    "stage1_cells": int(record.stage1_cells),
                    "patch_boxes_xywh": np.asarray(record.patch_boxes[r], dtype=np.float64).tolist(),
                    "patch_probability": [float(v) for v in record.patch_probability[r]]}
            paths.append(str(len(paths)))
            write_image(group.create_group(paths[-1]), np.ascontiguousarray(a2, dtype=np.float32),
                        cell_size_xy=record.zoom_cell_size_xy, origin_xy=tuple(float(v) for v in origin), mpp=mpp,
                        metadata=meta, name=f"zoom region {r + 1}" + (f" (sampling {s + 1})" if len(zoom) > 1 else ""))
    about = {"kind": "zoom maps", "samplings": len(zoom), "images": paths}
    if group.metadata.zarr_format == 2:
        group.attrs.update({"bioformats2raw.layout": 3, "ats_wsi": about})
    else:
        group.attrs.update({"ome": {"version": "0.5", "bioformats2raw.layout": 3}, "ats_wsi": about})
    return paths


def read_zoom_maps(path: str | os.PathLike) -> list[AttentionMap]:
    """The stage-2 maps a two-stage prediction's attention map holds (:func:`write_zoom_maps`), in the
    order written; ``[]`` for a one-stage map. Each map's ``metadata`` has its ``sampling`` and
    ``zoom_region`` (from 1), its region's and patches' boxes and probabilities."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    if root.attrs.get("ats_wsi", {}).get("zoom_maps") != ZOOM_GROUP:
        return []
    images = root[ZOOM_GROUP].attrs["ats_wsi"]["images"]
    return [read_attention_zarr(os.path.join(os.fspath(path), ZOOM_GROUP, image)) for image in images]


# --------------------------------------------------------------------------- overlays

# Anchor colours of a perceptually ordered dark-to-bright map (inferno-like),
# interpolated linearly; enough for a readable heatmap without matplotlib.
_HEAT_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map a float array (rows, cols) to uint8 RGB (rows, cols, 3) with a heat colormap."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    pos = t * (len(_HEAT_ANCHORS) - 1)
    i0 = np.minimum(pos.astype(np.int64), len(_HEAT_ANCHORS) - 2)
    frac = (pos - i0)[..., None]
    rgb = _HEAT_ANCHORS[i0] * (1 - frac) + _HEAT_ANCHORS[i0 + 1] * frac
    return np.round(rgb).astype(np.uint8)


ATTENTION_UNIT = "attention x cells (1 = uniform)"
"""The unit of attention on overlays, in napari and in the GeoJSON: what a colour bar is labelled."""

ATTENTION_SCALE_MAX = 16.0
"""Top of the absolute attention scale (attention x number of cells): 16 times uniform
and above get the brightest colour; 1 is uniform attention, 0 none."""


def attention_scale(attention: np.ndarray) -> np.ndarray:
    """Attention on the absolute scale of overlays and the napari heatmap.

    Args:
        attention: float (rows, cols), the map's attention (sums to 1).

    Returns:
        float32 (rows, cols): attention x number of cells, so 1 is uniform
        attention, 2 twice as much as uniform, whatever the map's size; the
        same colour means the same thing on every slide.
    """
    values = np.asarray(attention, dtype=np.float32)
    return values * np.float32(values.size)


def render_overlay(
    thumbnail: np.ndarray,
    thumb_downsample: float,
    attention: np.ndarray,
    *,
    cell_size_xy: tuple[float, float],
    origin_xy: tuple[float, float] = (0.0, 0.0),
    boxes_xywh: np.ndarray | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    colorbar: bool = True,
):
    """Blend a heatmap of ``attention`` over a slide thumbnail, draw and number the boxes.

    Args:
        thumbnail: uint8 (rows, cols, 3) image of the slide.
        thumb_downsample: level-0 pixels per thumbnail pixel.
        attention: float (rows, cols) map over the slide.
        cell_size_xy, origin_xy: the map's placement in level-0 pixels.
        boxes_xywh: optional int [n, 4] sampled boxes (x, y, w, h) in level-0
            pixels, in draw order: box ``k`` is labelled ``k + 1``.
        alpha: opacity of the heatmap at the top of the scale; it falls
            linearly to 0 at no attention, so the slide shows through.
        title: text written in the top-left corner (the predicted class and
            its probability: :func:`prediction_title`).
        colorbar: draw the scale (bottom right).

    Colours are absolute (:func:`attention_scale`: attention x number of
    cells, 0 to :data:`ATTENTION_SCALE_MAX`), never rescaled per slide, so a
    model that attends uniformly paints (almost) nothing.

    Returns:
        A ``PIL.Image.Image`` (RGB) the size of the thumbnail.
    """
    from PIL import Image, ImageDraw

    th, tw = thumbnail.shape[:2]
    values = np.asarray(attention, dtype=np.float32)
    # Place the map in thumbnail pixels: resize to its extent, paste at its origin.
    cw, ch = cell_size_xy[0] / thumb_downsample, cell_size_xy[1] / thumb_downsample
    ox, oy = int(round(origin_xy[0] / thumb_downsample)), int(round(origin_xy[1] / thumb_downsample))
    extent = (max(1, int(round(values.shape[1] * cw))), max(1, int(round(values.shape[0] * ch))))
    base = Image.fromarray(np.ascontiguousarray(thumbnail[..., :3]))
    out = blend_heatmap(base, values, extent, (ox, oy), alpha)
    draw = ImageDraw.Draw(out)
    if boxes_xywh is not None and len(boxes_xywh):
        font = _font(max(9, min(14, tw // 60)))
        for k, (x, y, w, h) in enumerate(np.asarray(boxes_xywh, dtype=np.float64)):
            x0, y0 = x / thumb_downsample, y / thumb_downsample
            x1, y1 = (x + w) / thumb_downsample, (y + h) / thumb_downsample
            draw.rectangle([x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)], outline=(0, 255, 255), width=1)
            draw.text((max(x0 + 1, x1) + 1, y0 + 1), str(k + 1), fill=(0, 255, 255), font=font,
                      stroke_width=1, stroke_fill=(0, 0, 0))
    if title:
        font = _font(max(10, min(20, tw // 40)))
        left, top, right, bottom = draw.textbbox((6, 4), title, font=font)
        draw.rectangle([left - 4, top - 3, right + 4, bottom + 3], fill=(255, 255, 255))
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
    if colorbar:
        draw_colorbar(draw, tw, th)
    return out


def blend_heatmap(image, attention: np.ndarray, extent_wh: tuple[int, int], corner_xy: tuple[int, int],
                  alpha: float = 0.5):
    """``image`` (a PIL RGB image) with ``attention`` blended over it on the absolute scale
    (:func:`attention_scale`, 0 .. :data:`ATTENTION_SCALE_MAX`), the map resized to ``extent_wh``
    pixels and placed at ``corner_xy``; its opacity grows from 0 at no attention to ``alpha`` at
    the top of the scale, so low-attention areas show the image (the overlay and the zoom sheet)."""
    from PIL import Image

    t = np.clip(np.nan_to_num(attention_scale(np.asarray(attention, dtype=np.float32))) / ATTENTION_SCALE_MAX, 0.0, 1.0)
    layer = Image.new("RGB", image.size, (0, 0, 0))
    mask = Image.new("L", image.size, 0)
    layer.paste(Image.fromarray(colorize(t, 0.0, 1.0)).resize(extent_wh, Image.NEAREST), corner_xy)
    mask.paste(Image.fromarray(np.round(t * alpha * 255).astype(np.uint8)).resize(extent_wh, Image.NEAREST), corner_xy)
    return Image.composite(layer, image, mask)


def prediction_title(class_name: str, probability: float) -> str:
    """``"tumor  p = 0.93"``: what an overlay and the napari viewer say about a prediction."""
    return f"{class_name}  p = {float(probability):.2f}"


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def draw_colorbar(draw, width: int, height: int) -> int:
    """Draw the absolute attention scale (0 .. :data:`ATTENTION_SCALE_MAX`) in the bottom-right corner.

    Args:
        draw: a ``PIL.ImageDraw.ImageDraw`` of an image ``width`` x ``height``.
        width, height: the image's size in pixels.

    Returns:
        The top row of the white box the scale is drawn on (the scale takes
        the rows from there to the bottom).
    """
    bar_w, bar_h = max(40, min(200, width * 2 // 5)), max(4, min(10, height // 30))
    font = _font(max(8, min(12, width // 60)))
    caption = ATTENTION_UNIT
    text_h = draw.textbbox((0, 0), caption, font=font)[3] + 2
    x0, y1 = width - bar_w - 8, height - 6
    y0 = y1 - bar_h - 2 * text_h
    draw.rectangle([x0 - 4, y0 - 3, x0 + bar_w + 4, y1 + 2], fill=(255, 255, 255))
    draw.text((x0, y0), caption, fill=(0, 0, 0), font=font)
    colours = colorize(np.linspace(0.0, 1.0, bar_w)[None], 0.0, 1.0)[0]
    by = y0 + text_h
    for i, c in enumerate(colours):
        draw.line([(x0 + i, by), (x0 + i, by + bar_h)], fill=tuple(int(v) for v in c))
    for tick in (0.0, 1.0, ATTENTION_SCALE_MAX / 2, ATTENTION_SCALE_MAX):
        tx = x0 + int(round(tick / ATTENTION_SCALE_MAX * (bar_w - 1)))
        label = f"{tick:g}" + ("+" if tick == ATTENTION_SCALE_MAX else "")
        lw = draw.textlength(label, font=font)
        draw.text((min(max(x0, tx - lw / 2), x0 + bar_w - lw), by + bar_h + 1), label, fill=(0, 0, 0), font=font)
    return y0 - 3


def write_overlay_png(path: str | os.PathLike, image) -> Path:
    """Save a PIL image as PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
