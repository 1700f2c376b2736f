"""Which backend reads a path, and which typed error when none does.

Imported by :mod:`._open` (``open_slide``); the backends are imported where
they are needed (openslide is slow to import).
"""
from __future__ import annotations

import os

from ..errors import CorruptSlideError, SlideError, SlideNotFoundError, UnsupportedFormatError
from .formats import is_slide_path
from .slide import Slide

BACKENDS = ("openslide", "tifffile", "zarr")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_path(path, backend: str = "auto") -> Slide:
    """Implementation of :func:`ats_wsi.slide.open_slide`."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideNotFoundError(path, "no such file or directory")
    if os.path.isdir(path):
        return _open_dir(path, backend)
    if backend == "zarr":
        raise UnsupportedFormatError(path, "the zarr backend reads zarr directories, and this is a file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise SlideError(path, f"cannot read the file: {exc}") from exc
    if size == 0:
        raise CorruptSlideError(path, "the file is empty (0 bytes)")
    is_tiff = head[:4] in TIFF_MAGIC
    if backend == "tifffile":
        return _open_tifffile(path, is_tiff)
    if backend == "openslide":
        return _open_openslide(path, is_tiff)
    if is_tiff:
        return _auto_tiff(path)
    return _auto_other(path, head)


def _open_dir(path: str, backend: str) -> Slide:
    from ._zarr import ZarrSlide, is_zarr_dir

    if backend not in ("auto", "zarr"):
        raise UnsupportedFormatError(path, f"is a directory; the {backend} backend reads single files")
    if not is_zarr_dir(path):
        raise SlideNotFoundError(path, "is a directory without a slide (no zarr.json, .zgroup or .zarray: "
                                       "not an OME-Zarr or zarr group)")
    return ZarrSlide(path)


def _open_tifffile(path: str, is_tiff: bool) -> Slide:
    from ._tifffile import NotForTifffile, TiffParseError, TiffSlide

    if not is_tiff:
        raise UnsupportedFormatError(path, "not a TIFF file (the tifffile backend reads TIFF, OME-TIFF and SVS)")
    try:
        return TiffSlide(path)
    except TiffParseError as exc:  # the backends' internal classes never reach users
        raise CorruptSlideError(path, exc.reason) from None
    except NotForTifffile as exc:
        raise UnsupportedFormatError(path, exc.reason) from None


def _open_openslide(path: str, is_tiff: bool) -> Slide:
    from ._openslide import OpenSlideSlide
    from ._tifffile import TiffParseError, tiff_damage

    unparsable = None
    if is_tiff:
        try:
            tiff_damage(path)  # openslide would call a truncated TIFF "unsupported", or fail later
        except TiffParseError as exc:
            unparsable = exc
    try:
        return OpenSlideSlide(path)
    except UnsupportedFormatError:
        if unparsable is not None:
            raise CorruptSlideError(path, unparsable.reason) from None
        raise


def _auto_tiff(path: str) -> Slide:
    from ._openslide import OpenSlideSlide
    from ._tifffile import NotForTifffile, TiffParseError, TiffSlide, inspect_tiff, tiff_damage

    try:
        layout = inspect_tiff(path)
    except TiffParseError as broken:  # a TIFF-like file tifffile chokes on may still be openslide's
        try:
            return OpenSlideSlide(path)
        except (UnsupportedFormatError, CorruptSlideError):
            raise CorruptSlideError(path, broken.reason) from None
    except NotForTifffile as why:
        try:
            tiff_damage(path)
        except TiffParseError:
            pass
        try:
            return OpenSlideSlide(path)
        except UnsupportedFormatError:
            raise UnsupportedFormatError(path, f"{why.reason}, and openslide cannot read it") from None
    return TiffSlide(path, layout)


def _auto_other(path: str, head: bytes) -> Slide:
    import openslide

    from ._openslide import OpenSlideSlide

    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except openslide.OpenSlideError:
        vendor = None
    if vendor is not None:
        return OpenSlideSlide(path)
    suffix = os.path.splitext(path)[1].lower()
    if is_slide_path(path):
        raise CorruptSlideError(path, f"has a slide extension ({suffix}) but is not a slide any backend "
                                      f"reads (it starts with {head[:8]!r})")
    raise UnsupportedFormatError(path, f"unknown format (starts with {head[:8]!r}); readable are TIFF, SVS, "
                                       f"OME-TIFF, what openslide reads, and OME-Zarr directories")
