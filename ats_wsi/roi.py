"""Regions of interest from annotations: where on a slide patches may be drawn.

A :class:`Roi` is read from GeoJSON (QuPath's *Export objects*, or any
FeatureCollection / Feature / geometry / list of features) in level-0 pixels.
``Polygon`` (with holes) and ``MultiPolygon`` geometries count (inside a
``GeometryCollection`` too); points and lines are left out. A feature's class
is QuPath's ``properties.classification.name`` (or a string
``classification``).

- ``include`` class names: only features of those classes make the region;
  without it every feature does, except the excluded ones;
- ``exclude`` class names (e.g. ``Artifact``, ``Pen``): their polygons are
  cut out of the region; a file of excluded features only leaves the whole
  slide but them.

Inside means even-odd over a polygon's rings (a hole is outside), the union
over polygons. The region is rasterised at pixel centres
(:meth:`Roi.raster`); :meth:`Roi.boxes_inside` tells whether whole boxes lie
in it, to the raster's resolution and with one raster pixel of margin.

A binary mask image (PNG, or TIFF at any pyramid level) works too
(:class:`MaskRoi`): nonzero is inside, and it is aligned to the slide by
size (it spans the whole slide, at any resolution).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import RoiError

__all__ = ["Roi", "MaskRoi", "read_roi", "read_mask_roi", "roi_file_for", "roi_for_slide", "MAX_RASTER_PIXELS"]

MAX_RASTER_PIXELS = 16 * 2**20
"""The largest raster :meth:`Roi.boxes_inside` makes (its downsample grows to stay under it)."""

ROI_SUFFIXES = (".geojson", ".json", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")

Ring = np.ndarray  # float64 [m, 2], (x, y) in level-0 pixels


@dataclass
class Roi:
    """Polygons in level-0 pixels: the region is the union of ``include`` minus the union of ``exclude``.

    Attributes:
        include: polygons, each a list of rings (outer first, then holes), float64 [m, 2] (x, y).
        exclude: polygons cut out of the region.
        path: the file it was read from ("" when built in code).
    """

    include: list[list[Ring]] = field(default_factory=list)
    exclude: list[list[Ring]] = field(default_factory=list)
    path: str = ""

    @property
    def everywhere_else(self) -> bool:
        """True when the region is the whole plane minus ``exclude`` (no included polygon)."""
        return not self.include

    def raster(self, shape: tuple[int, int], downsample: float, slide_wh=None) -> np.ndarray:
        """bool [rows, cols]: pixel (r, c), centred at level-0 ((c + ½)·ds, (r + ½)·ds), lies in the region.

        Args:
            shape: (rows, cols) of the raster.
            downsample: level-0 pixels per raster pixel.
            slide_wh: the slide's level-0 (width, height) (used by a :class:`MaskRoi`).
        """
        rows, cols = (int(v) for v in shape)
        if rows * cols > 4 * MAX_RASTER_PIXELS:
            raise RoiError(self.path, f"a raster of {rows} x {cols} pixels is too large; use a larger downsample")
        inside = (np.ones if self.everywhere_else else np.zeros)((rows, cols), dtype=bool)
        for polygon in self.include:
            inside |= _fill(polygon, rows, cols, downsample)
        for polygon in self.exclude:
            inside &= ~_fill(polygon, rows, cols, downsample)
        return inside

    def boxes_inside(self, boxes_xywh: np.ndarray, slide_wh: tuple[int, int]) -> np.ndarray:
        """bool [n]: whether each level-0 box (x, y, w, h) lies wholly in the region.

        The region is rasterised over the slide at the smallest downsample that
        keeps the raster within :data:`MAX_RASTER_PIXELS`; a box counts as inside
        when every raster pixel it touches, and their neighbours, are inside.
        Beyond the slide the region is what it is far from every polygon.
        """
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        width, height = (int(v) for v in slide_wh)
        ds = max(1.0, math.sqrt(width * height / MAX_RASTER_PIXELS))
        rows, cols = max(1, math.ceil(height / ds)), max(1, math.ceil(width / ds))
        inside = self.raster((rows, cols), ds, (width, height))
        table = np.zeros((rows + 1, cols + 1), dtype=np.int64)
        table[1:, 1:] = np.cumsum(np.cumsum(inside, axis=0), axis=1)
        c0 = np.floor(boxes[:, 0] / ds).astype(np.int64) - 1
        r0 = np.floor(boxes[:, 1] / ds).astype(np.int64) - 1
        c1 = np.ceil((boxes[:, 0] + boxes[:, 2]) / ds).astype(np.int64) + 1
        r1 = np.ceil((boxes[:, 1] + boxes[:, 3]) / ds).astype(np.int64) + 1
        beyond = (c0 < 0) | (r0 < 0) | (c1 > cols) | (r1 > rows)
        c0, c1 = np.clip(c0, 0, cols), np.clip(c1, 0, cols)
        r0, r1 = np.clip(r0, 0, rows), np.clip(r1, 0, rows)
        count = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        ok = count == (r1 - r0) * (c1 - c0)
        return ok & (~beyond | self.everywhere_else)


@dataclass
class MaskRoi(Roi):
    """A region given as a binary mask image over the whole slide (nonzero: inside), at any
    resolution: its pixel (r, c) covers level-0 [c·W/cols, (c+1)·W/cols) × [r·H/rows, (r+1)·H/rows).

    Attributes:
        mask: bool [rows, cols].
    """

    mask: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), bool))

    @property
    def everywhere_else(self) -> bool:
        return False

    def raster(self, shape: tuple[int, int], downsample: float, slide_wh=None) -> np.ndarray:
        rows, cols = (int(v) for v in shape)
        width, height = slide_wh if slide_wh is not None else (cols * downsample, rows * downsample)
        m_rows, m_cols = self.mask.shape
        r = np.clip(((np.arange(rows) + 0.5) * downsample * m_rows / height).astype(np.int64), 0, m_rows - 1)
        c = np.clip(((np.arange(cols) + 0.5) * downsample * m_cols / width).astype(np.int64), 0, m_cols - 1)
        return self.mask[np.ix_(r, c)]


def read_mask_roi(path: str | os.PathLike) -> MaskRoi:
    """A :class:`MaskRoi` from a PNG or (pyramidal) TIFF mask: the largest level within
    :data:`MAX_RASTER_PIXELS`, its first channel nonzero inside."""
    path = str(path)
    try:
        if path.lower().endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                if image.width * image.height > MAX_RASTER_PIXELS:
                    raise RoiError(path, f"a PNG mask of {image.width} x {image.height} pixels is over "
                                         f"{MAX_RASTER_PIXELS}; save it smaller (it is aligned by size)")
                pixels = np.asarray(image)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                levels = tif.series[0].levels
                fits = [lv for lv in levels if int(np.prod(lv.shape[:2])) <= MAX_RASTER_PIXELS]
                if not fits:
                    raise RoiError(path, f"no level of this TIFF mask is within {MAX_RASTER_PIXELS} pixels; "
                                         "add a smaller level or save it smaller")
                pixels = max(fits, key=lambda lv: int(np.prod(lv.shape[:2]))).asarray()
    except FileNotFoundError:
        raise RoiError(path, "no such ROI file") from None
    except (OSError, ValueError) as exc:
        raise RoiError(path, f"not a mask image ({type(exc).__name__}: {exc})") from None
    mask = (pixels[..., 0] if pixels.ndim == 3 else pixels) != 0
    if mask.ndim != 2 or not mask.any():
        raise RoiError(path, "the mask marks no pixel (nonzero is inside)")
    return MaskRoi(path=path, mask=mask)


def _fill(polygon: Sequence[Ring], rows: int, cols: int, ds: float) -> np.ndarray:
    """Even-odd fill of one polygon's rings at pixel centres: bool [rows, cols]."""
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    centres_y = (np.arange(rows) + 0.5) * ds
    for ring in polygon:
        a, b = ring, np.roll(ring, -1, axis=0)
        for (x0, y0), (x1, y1) in zip(a.tolist(), b.tolist()):
            if y0 == y1:
                continue
            lo, hi = (y0, y1) if y0 < y1 else (y1, y0)
            r_lo, r_hi = np.searchsorted(centres_y, lo, "left"), np.searchsorted(centres_y, hi, "left")
            if r_lo >= r_hi:
                continue
            y = centres_y[r_lo:r_hi]  # lo <= y < hi: each crossing counted once
            x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
            first = np.clip(np.ceil(x / ds - 0.5), 0, cols).astype(np.int64)  # first column whose centre >= x
            np.add.at(toggles, (np.arange(r_lo, r_hi), first), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] & 1).astype(bool)


def _class_name(properties) -> str | None:
    if not isinstance(properties, dict):
        return None
    c = properties.get("classification")
    if isinstance(c, dict):
        return c.get("name") if isinstance(c.get("name"), str) else None
    return c if isinstance(c, str) else None


def _polygons(geometry, path: str) -> list[list[Ring]]:
    """The polygons of a GeoJSON geometry (lists of rings), points and lines left out."""
    if not isinstance(geometry, dict):
        return []
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    try:
        if kind == "Polygon":
            return [[_ring(r, path) for r in coords]]
        if kind == "MultiPolygon":
            return [[_ring(r, path) for r in poly] for poly in coords]
    except (TypeError, ValueError) as exc:
        raise RoiError(path, f"a {kind} with malformed coordinates ({exc}); expected [[[x, y], ...], ...]") from None
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _polygons(g, path)]
    return []


def _ring(coords, path: str) -> Ring:
    ring = np.asarray(coords, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3 or not np.isfinite(ring).all():
        raise ValueError(f"a ring of shape {ring.shape}")
    return ring[:, :2]


def _features(data) -> Iterable[dict]:
    if isinstance(data, list):
        for item in data:
            yield from _features(item)
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        yield from _features(data.get("features") or [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        yield data
    elif isinstance(data, dict) and "coordinates" in data or isinstance(data, dict) and "geometries" in data:
        yield {"type": "Feature", "geometry": data, "properties": {}}


def read_roi(path: str | os.PathLike, *, include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None) -> Roi:
    """The region of a GeoJSON file (see the module's doc).

    Args:
        path: a ``.geojson`` / ``.json`` file in level-0 pixels.
        include: class names whose polygons make the region (None: every class not excluded).
        exclude: class names whose polygons are cut out.

    Raises:
        RoiError: the file is missing, not JSON, or has no polygon to use.
    """
    path = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoiError(path, "no such ROI file; give a GeoJSON file, or a folder of NAME.geojson per slide") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RoiError(path, f"not a GeoJSON file ({type(exc).__name__}: {exc})") from None
    keep, cut, classes = [], [], set()
    excluded = set(exclude or ())
    for feature in _features(data):
        name = _class_name(feature.get("properties"))
        classes.add(name)
        polygons = _polygons(feature.get("geometry"), path)
        if name is not None and name in excluded:
            cut += polygons
        elif include is None or name in set(include):
            keep += polygons
    if not keep and not cut:
        seen = sorted(str(c) for c in classes if c is not None)
        raise RoiError(path, "no Polygon or MultiPolygon to restrict sampling to" +
                       (f" in the classes --roi-include names {list(include)} (the file has {seen})"
                        if include is not None else ""))
    return Roi(keep, cut, path)


def roi_file_for(roi: str | os.PathLike, slide: str | os.PathLike) -> Path:
    """The ROI file of ``slide``: ``roi`` itself when a file, else ``roi/<slide stem>.geojson`` (or ``.json``)."""
    roi = Path(roi)
    if not roi.is_dir():
        return roi
    stem = Path(slide).name.rsplit(".", 1)[0] if "." in Path(slide).name else Path(slide).name
    for suffix in ROI_SUFFIXES:
        candidate = roi / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise RoiError(roi, f"no ROI file for slide {Path(slide).name}: expected {stem}.geojson (or {stem}.json, "
                        f"or a mask {stem}.png / {stem}.tif) in this folder")


def roi_for_slide(roi: str | os.PathLike | None, slide: str | os.PathLike, *, include: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None) -> Roi | None:
    """The :class:`Roi` of ``slide`` from ``--roi`` (a file, or a folder matched by slide name), or None."""
    if roi is None or roi == "":
        return None
    path = roi_file_for(roi, slide)
    if path.suffix.lower() in MASK_SUFFIXES:
        return read_mask_roi(path)
    return read_roi(path, include=include, exclude=exclude)
