"""openslide backend: every format openslide reads (NDPI, MRXS, JPEG 2000 SVS, ...).

One openslide handle is shared by all threads: openslide documents its API as
thread-safe and parallelises concurrent ``read_region`` calls on one handle
(since 3.3.1). A handle is never shared across processes: a forked child
(DataLoader workers) opens its own on first use.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import CorruptSlideError, UnsupportedFormatError
from ._levels import Level
from .slide import Slide

DEFAULT_TILE = 512
"""Tile size used when openslide gives no tile geometry for a level."""


def _open(path: str):
    import openslide

    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise UnsupportedFormatError(path, "openslide cannot read this file (unknown or unsupported format)") from exc
    except openslide.OpenSlideError as exc:
        raise CorruptSlideError(path, f"openslide cannot open it: {exc}") from exc


def _mpp(props: dict) -> tuple[float, float] | None:
    try:
        mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]))
    except (KeyError, ValueError):
        return None
    return mpp if all(v > 0 and np.isfinite(v) for v in mpp) else None


class OpenSlideSlide(Slide):
    """A slide read through openslide."""

    backend = "openslide"
    _reads_boxes = True

    def __init__(self, path):
        path = os.fspath(path)
        osr = _open(path)
        self._osr = osr
        self._pid = os.getpid()
        self._reopen_lock = threading.Lock()
        props = dict(osr.properties)
        levels = []
        for i, (w, h) in enumerate(osr.level_dimensions):
            tw = int(props.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE))
            th = int(props.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE))
            # openslide's own downsample: some vendors store it rather than the size ratio
            levels.append(Level(int(w), int(h), tw, th, float(osr.level_downsamples[i])))
        super().__init__(path, format=props.get("openslide.vendor", "openslide"), levels=levels,
                         properties=props, mpp_xy=_mpp(props),
                         mpp_source="openslide.mpp-x/-y (from the file's metadata"
                                    + (", aperio.MPP)" if "aperio.MPP" in props else ")"))

    def _handle(self):
        if self._pid != os.getpid():  # forked: never use the parent's handle
            with self._reopen_lock:
                if self._pid != os.getpid():
                    self._osr = _open(self.path)
                    self._pid = os.getpid()
        return self._osr

    def _read_stored_box(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self._levels[level].downsample
        x0, y0 = int(np.floor(x * ds + 0.5)), int(np.floor(y * ds + 0.5))
        try:
            rgba = np.asarray(self._handle().read_region((x0, y0), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise CorruptSlideError(self.path, f"openslide failed reading level {level} at "
                                               f"({x}, {y}) size ({w}, {h}): {exc}") from exc
        rgb = rgba[:, :, :3]
        alpha = rgba[:, :, 3]
        if alpha.min() < 255:
            # openslide-python un-premultiplies; composite over FILL_VALUE (black) again
            rgb = ((rgb.astype(np.uint16) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
        else:
            rgb = np.ascontiguousarray(rgb)
        return rgb

    def _associated_names(self) -> tuple[str, ...]:
        return tuple(self._handle().associated_images)

    def _read_associated(self, name: str):
        return self._handle().associated_images[name]

    def _icc_bytes(self) -> bytes | None:
        profile = self._handle().color_profile
        return None if profile is None else profile.tobytes()

    def _close(self) -> None:
        if self._pid == os.getpid():
            self._osr.close()
