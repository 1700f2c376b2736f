"""OME-Zarr (NGFF 0.1-0.5) ``multiscales`` metadata, checked before use.

What the zarr backend relies on, and what broken metadata gets instead of an
``IndexError`` / ``KeyError`` / ``ValueError`` (or, worse, a wrong pyramid):
:class:`~ats_wsi.errors.CorruptSlideError` saying which rule failed.

- ``multiscales`` is a non-empty list of objects; the first is used;
- its ``datasets`` is a non-empty list of objects, each with a string ``path``;
- ``axes`` (NGFF >= 0.3), when present, is a list with one entry per array
  dimension, each a string or an object with a string ``name``, names
  unique;
- every ``coordinateTransformations`` entry is an object; a ``scale`` is a
  list of finite numbers > 0, one per dimension;
- the levels (:func:`check_levels`) never grow from one to the next, and each
  has level 0's aspect ratio up to rounding.
"""
from __future__ import annotations

import math

from ..errors import CorruptSlideError

__all__ = ["check_levels", "validate_multiscale"]


def _fail(path: str, what: str):
    raise CorruptSlideError(path, f"OME-Zarr metadata breaks NGFF: {what}")


def _check_transforms(path: str, transforms, ndim: int | None, where: str) -> None:
    if transforms is None:
        return
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        _fail(path, f"{where} coordinateTransformations must be a list of objects")
    for t in transforms:
        if t.get("type") != "scale":
            continue
        scale = t.get("scale")
        if not isinstance(scale, list) or (ndim is not None and len(scale) != ndim):
            _fail(path, f"{where} scale must be a list of {ndim if ndim is not None else 'N'} numbers")
        for v in scale:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                _fail(path, f"{where} scale values must be finite numbers > 0, got {v!r}")


def validate_multiscale(path: str, multiscales, ndim_of) -> dict:
    """The first multiscale of ``multiscales``, checked.

    Args:
        path: the zarr directory (for messages).
        multiscales: the ``multiscales`` attribute as read.
        ndim_of: ``dataset path -> number of dimensions`` of that array
            (raises if the array is missing).
    """
    if not isinstance(multiscales, list) or not multiscales:
        _fail(path, "'multiscales' must be a non-empty list")
    ms = multiscales[0]
    if not isinstance(ms, dict):
        _fail(path, "'multiscales' entries must be objects")
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        _fail(path, "'datasets' must be a non-empty list")
    if not all(isinstance(d, dict) and isinstance(d.get("path"), str) and d["path"] for d in datasets):
        _fail(path, "every dataset must be an object with a 'path' string")
    try:
        ndim = ndim_of(datasets[0]["path"])
    except Exception:  # noqa: BLE001 - zarr raises several types for a missing array
        _fail(path, f"dataset {datasets[0]['path']!r} is not a readable array")
    axes = ms.get("axes")
    if axes is not None:
        if not isinstance(axes, list) or len(axes) != ndim:
            _fail(path, f"'axes' must list one entry per array dimension ({ndim})")
        names = [a.get("name") if isinstance(a, dict) else a for a in axes]
        if not all(isinstance(n, str) and n for n in names):
            _fail(path, "every axis needs a 'name' string")
        if len({n.lower() for n in names}) != len(names):
            _fail(path, f"axis names repeat: {names}")
    for i, d in enumerate(datasets):
        _check_transforms(path, d.get("coordinateTransformations"), ndim, f"dataset {i}")
    _check_transforms(path, ms.get("coordinateTransformations"), ndim, "multiscale")
    return ms


def check_levels(path: str, sizes: list[tuple[int, int]]) -> None:
    """Levels' ``(width, height)``, largest first: never growing, of level 0's
    aspect ratio (each axis within one pixel, or 1 %, of what the other
    axis's downsample predicts). CorruptSlideError otherwise."""
    w0, h0 = sizes[0]
    if w0 < 1 or h0 < 1:
        raise CorruptSlideError(path, f"level 0 is empty ({w0} x {h0} pixels)")
    for k, ((pw, ph), (w, h)) in enumerate(zip(sizes, sizes[1:]), start=1):
        if w < 1 or h < 1:
            raise CorruptSlideError(path, f"level {k} is empty ({w} x {h} pixels)")
        if w > pw or h > ph:
            raise CorruptSlideError(path, f"level {k} ({w} x {h}) is larger than level {k - 1} ({pw} x {ph}): "
                                          f"pyramid levels must not grow")
        tolerance_w, tolerance_h = max(1.0, 0.01 * w), max(1.0, 0.01 * h)
        if abs(w - w0 * h / h0) > tolerance_w + w0 / h0 or abs(h - h0 * w / w0) > tolerance_h + h0 / w0:
            raise CorruptSlideError(path, f"level {k} ({w} x {h}) does not have level 0's aspect ratio "
                                          f"({w0} x {h0})")
