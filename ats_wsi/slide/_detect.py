"""Which backend reads a path, and which typed error when none does.

Imported by :mod:`._open` (``open_slide``); the backends are imported where
they are needed (openslide is slow to import).
"""
from __future__ import annotations

import os
import stat

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
    mode = _file_mode(path)
    if stat.S_ISDIR(mode):
        return _open_dir(path, backend)
    if backend == "zarr":
        raise UnsupportedFormatError(path, "the zarr backend reads zarr directories, and this is a file")
    try:
        size = os.path.getsize(path)
        # O_NONBLOCK: should the path have been swapped for a FIFO since the check, open does not wait
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsupportedFormatError(path, "is not a regular file (it changed while being opened)")
            head = os.pread(fd, 16, 0) if hasattr(os, "pread") else os.read(fd, 16)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SlideError(path, f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
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


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _file_mode(path: str) -> int:
    """``st_mode`` of ``path`` (links followed), checked to be a regular file or a directory.

    Checked before anything opens the path: opening a FIFO blocks until a
    writer comes, and reading a device may never end.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SlideNotFoundError(path, "no such file or directory") from None
    except OSError as exc:
        raise SlideError(path, f"cannot look at the file: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return mode
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    raise UnsupportedFormatError(path, f"is {what}, not a slide file or directory (only regular files "
                                       f"and directories are opened)")


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
        except (UnsupportedFormatError, CorruptSlideError) as openslide_error:
            # a TIFF left to openslide for speed (JPEG 2000, ...) that openslide cannot read
            # (a generic TIFF rather than an Aperio one) is still read by tifffile when it can
            try:
                return TiffSlide(path)
            except (NotForTifffile, TiffParseError):
                pass
            if isinstance(openslide_error, CorruptSlideError):
                raise CorruptSlideError(path, f"{why.reason}, and {openslide_error.reason}") from None
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
    # the messages never quote the file's bytes: they end up in terminals and errors.csv
    if is_slide_path(path):
        raise CorruptSlideError(path, f"has a slide extension ({suffix}) but is not a slide any backend "
                                      f"reads (no TIFF header, and not a format openslide recognises)")
    raise UnsupportedFormatError(path, "unknown format (no TIFF header, and not a format openslide "
                                       "recognises); readable are TIFF, SVS, OME-TIFF, what openslide reads, "
                                       "and OME-Zarr directories")
