"""``open_slide``: the one way to get a :class:`~ats_wsi.slide.Slide`.

Imports go one way: this module -> :mod:`._detect` (which backend) ->
the backends -> :mod:`.slide` (the base). The base does not import this
module back; it reopens unpickled slides through ``Slide._opener``, which
is set here.
"""
from __future__ import annotations

import os

from ._detect import open_path
from .slide import Slide

__all__ = ["detect_format", "open_slide"]


def open_slide(path, backend: str = "auto", *, mpp: float | None = None, srgb: bool = False) -> Slide:
    """Open a whole-slide image.

    Args:
        path: a slide file (SVS, generic or OME-TIFF, NDPI, MRXS, ... anything
            openslide reads), or an OME-Zarr / zarr-group directory.
        backend: ``"auto"`` (default), ``"tifffile"``, ``"openslide"`` or ``"zarr"``.
            ``auto`` picks tifffile for TIFFs whose tiles it decodes fast
            (JPEG, deflate, LZW, zstd, WebP, uncompressed; generic TIFF, OME-TIFF,
            SVS), openslide for the rest (NDPI, MRXS, JPEG 2000 SVS, Philips,
            ...), zarr for directories. ``slide.backend`` says which was used.
        mpp: the slide's level-0 µm/px, overriding its metadata (for files that
            store none, or a wrong one); ``None``: from the metadata. See the
            ``Slide.mpp`` setter.
        srgb: convert every read from the slide's ICC profile
            (``slide.color_profile``) to sRGB; a slide without a profile is
            read as stored. Off by default, like openslide.

    Returns:
        a :class:`Slide`.

    Raises:
        SlideNotFoundError: missing path, or a directory that holds no slide.
        CorruptSlideError: empty, truncated or garbled file (also garbage with
            a slide extension); for truncated TIFFs this is raised at open
            (tile offsets are checked against the file size) or, for other
            damage, at the first read of a broken tile.
        UnsupportedFormatError: no backend reads this file.
        ValueError: an unknown backend name.
    """
    slide = open_path(path, backend)
    try:
        if mpp is not None:
            slide.mpp = mpp
        if srgb:
            slide.convert_to_srgb()
    except BaseException:
        slide.close()
        raise
    return slide


def detect_format(path) -> str | None:
    """The format name of a slide file, or None when no backend reads it.

    For every file openslide reads this is openslide's own answer
    (``OpenSlide.detect_format``: ``"aperio"``, ``"generic-tiff"`` (also for
    OME-TIFF), ``"hamamatsu"``, ...); for what only ats-wsi reads, the name
    :attr:`Slide.format` would say (``"generic-tiff"`` for stripped TIFFs,
    ``"ome-zarr"``, ``"zarr"``). Nothing is decoded; it never raises for an
    unreadable path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from ._zarr import ZarrSlide, is_zarr_dir

        if not is_zarr_dir(path):
            return None
        try:
            with ZarrSlide(path) as slide:
                return slide.format
        except Exception:  # not a slide: detection never raises
            return None
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(path)
    except Exception:  # openslide missing, unreadable file
        vendor = None
    if vendor is not None:
        return vendor
    try:
        from ._tifffile import inspect_tiff

        fmt = inspect_tiff(path, fast_only=False).format
    except Exception:  # not a TIFF this package reads
        return None
    return "generic-tiff" if fmt == "ome-tiff" else fmt


Slide._opener = staticmethod(open_slide)  # a pickled Slide reopens by path and backend
Slide._format_detector = staticmethod(detect_format)  # Slide.detect_format, as openslide has it

