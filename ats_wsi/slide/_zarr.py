"""zarr backend: OME-Zarr multiscales (NGFF 0.4 on zarr v2, 0.5 on zarr v3) or a
plain zarr group whose arrays are the levels.

A tile is one zarr chunk (its y and x extent); channels may be chunked
separately. Axes other than y, x and c (t, z) are read at index 0.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import CorruptSlideError, SlideNotFoundError, UnsupportedFormatError
from ._checks import tile_too_big
from ._levels import Level
from ._ngff import check_levels, validate_multiscale
from .slide import Slide

_UM_PER_UNIT = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "micron": 1.0,
    "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
}
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def is_zarr_dir(path: str) -> bool:
    """True if ``path`` is a directory holding zarr metadata."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ZARR_MARKERS)


def _multiscales(attrs: dict) -> tuple[list | None, str]:
    if "multiscales" in attrs:
        return attrs["multiscales"], "ome-zarr"
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"], "ome-zarr"
    return None, "zarr"


def _axis_names(multiscale: dict, ndim: int) -> list[str]:
    axes = multiscale.get("axes")
    if axes is None:  # NGFF 0.1 / 0.2: always 5-D
        return list("tczyx")[-ndim:]
    return [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes]


def _guess_axes(shape: tuple[int, ...], dimension_names) -> list[str]:
    if dimension_names and all(dimension_names):
        return [str(n).lower() for n in dimension_names]
    if len(shape) == 2:
        return ["y", "x"]
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return ["y", "x", "c"]
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return ["c", "y", "x"]
    return []


def _scale(transforms, ndim: int) -> np.ndarray:
    scale = np.ones(ndim)
    for t in transforms or ():
        if t.get("type") == "scale" and len(t.get("scale", ())) == ndim:
            scale = scale * np.asarray(t["scale"], dtype=float)
    return scale


def _mpp(multiscale: dict, axes: list[str]) -> tuple[float, float] | None:
    """µm per pixel of level 0 from the scale transforms and the axes' units."""
    ndim = len(axes)
    scale = _scale(multiscale["datasets"][0].get("coordinateTransformations"), ndim)
    scale = scale * _scale(multiscale.get("coordinateTransformations"), ndim)
    units = {}
    for a in multiscale.get("axes") or ():
        if isinstance(a, dict):
            units[a["name"].lower()] = a.get("unit")
    out = []
    for name in ("x", "y"):
        um = _UM_PER_UNIT.get(units.get(name))
        value = scale[axes.index(name)]
        if um is None or not value > 0:  # no length unit: the scale means nothing in µm
            return None
        out.append(float(value) * um)
    return (out[0], out[1])


def _open_group(path: str):
    import zarr

    try:
        return zarr.open_group(path, mode="r")
    except (zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError, FileNotFoundError):
        pass
    except Exception as exc:
        raise CorruptSlideError(path, f"broken zarr metadata: {exc}") from exc
    try:  # a bare array is a one-level slide
        return zarr.open_array(path, mode="r")
    except Exception as exc:
        raise SlideNotFoundError(path, f"directory holds no readable zarr group or array: {exc}") from exc


class ZarrSlide(Slide):
    """An OME-Zarr image or a zarr group of levels."""

    backend = "zarr"
    _reads_boxes = True

    def __init__(self, path):
        path = os.fspath(path)
        self._open_state(path)
        super().__init__(path, format=self._format, levels=self._zlevels, properties=self._zprops,
                         mpp_xy=self._zmpp, mpp_source="the OME-Zarr scale of x and y")

    def _open_state(self, path: str) -> None:
        import zarr

        node = _open_group(path)
        self._pid = os.getpid()
        self._reopen_lock = threading.Lock()
        mpp = None
        props: dict[str, str] = {}
        if isinstance(node, zarr.Array):
            arrays, fmt = [node], "zarr"
            axes = _guess_axes(node.shape, getattr(node.metadata, "dimension_names", None))
        else:
            attrs = node.attrs.asdict()
            multiscales, fmt = _multiscales(attrs)
            if multiscales is not None:
                ms = validate_multiscale(path, multiscales, lambda name: node[name].ndim)
                try:
                    arrays = [node[d["path"]] for d in ms["datasets"]]
                except Exception as exc:
                    raise CorruptSlideError(path, f"OME-Zarr multiscales name a missing dataset: {exc}") from exc
                axes = _axis_names(ms, arrays[0].ndim)
                version = ms.get("version") or (attrs.get("ome") or {}).get("version")
                if version:
                    props["ome-zarr.version"] = str(version)
                if {"x", "y"} <= set(axes):
                    mpp = _mpp(ms, axes)
            else:
                arrays = [node[k] for k in node.array_keys()]
                if not arrays:
                    raise SlideNotFoundError(path, "zarr group holds no arrays")
                arrays.sort(key=lambda a: -int(np.prod(a.shape)))
                axes = _guess_axes(arrays[0].shape, getattr(arrays[0].metadata, "dimension_names", None))
        self._check_arrays(path, arrays, axes)
        self._arrays = arrays
        self._axes = axes
        iy, ix = axes.index("y"), axes.index("x")
        self._zlevels = [Level(int(a.shape[ix]), int(a.shape[iy]), int(a.chunks[ix]), int(a.chunks[iy]))
                         for a in arrays]
        check_levels(path, [(lv.width, lv.height) for lv in self._zlevels])
        for k, lv in enumerate(self._zlevels):  # zarr decodes a whole chunk for any pixel of it
            too_big = tile_too_big(path, f"level {k} is stored in chunks", lv.tile_width, lv.tile_height)
            if too_big:
                raise UnsupportedFormatError(path, f"{too_big}; rechunk it (e.g. 512 x 512 chunks)")
        self._format, self._zprops, self._zmpp = fmt, props, mpp

    @staticmethod
    def _check_arrays(path: str, arrays, axes: list[str]) -> None:
        if not {"x", "y"} <= set(axes) or len(axes) != arrays[0].ndim:
            raise UnsupportedFormatError(path, f"cannot tell the y and x axes of arrays shaped {arrays[0].shape}")
        for a in arrays:
            if a.ndim != len(axes):
                raise CorruptSlideError(path, f"levels of {arrays[0].ndim} and of {a.ndim} dimensions")
            if a.dtype != np.uint8:
                raise UnsupportedFormatError(path, f"zarr arrays of {a.dtype} (only uint8 RGB / grey is read)")
            channels = a.shape[axes.index("c")] if "c" in axes else 1
            if channels not in (1, 3, 4):
                raise UnsupportedFormatError(path, f"{channels} channels (only grey, RGB or RGBA is read)")

    def _level_array(self, level: int):
        if self._pid != os.getpid():  # forked: reopen rather than share zarr's I/O state
            with self._reopen_lock:
                if self._pid != os.getpid():
                    self._open_state(self.path)
        return self._arrays[level]

    def _read_stored_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self._level_array(level)
        axes = self._axes
        key = tuple(slice(y, y + h) if a == "y" else slice(x, x + w) if a == "x" else
                    slice(None) if a == "c" else 0 for a in axes)
        try:
            block = np.asarray(arr[key])
        except Exception as exc:  # codec / store errors come in many types
            raise CorruptSlideError(self.path, f"cannot read level {level} box ({x}, {y}, {w}, {h}): {exc}") from exc
        kept = [a for a in axes if a in ("y", "x", "c")]
        if "c" not in kept:
            block, kept = block[..., None], kept + ["c"]
        block = block.transpose([kept.index("y"), kept.index("x"), kept.index("c")])
        if block.shape[2] == 1:
            return np.repeat(block, 3, axis=2)
        return np.ascontiguousarray(block[:, :, :3])
