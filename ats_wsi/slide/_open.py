"""``open_slide``: the one way to get a :class:`~ats_wsi.slide.Slide`.

Imports go one way: this module -> :mod:`._detect` (which backend) ->
the backends -> :mod:`.slide` (the base). The base does not import this
module back; it reopens unpickled slides through ``Slide._opener``, which
is set here.
"""
from __future__ import annotations

from ._detect import open_path
from .slide import Slide

__all__ = ["open_slide"]


def open_slide(path, backend: str = "auto") -> Slide:
    """Open a whole-slide image.

    Args:
        path: a slide file (SVS, generic or OME-TIFF, NDPI, MRXS, ... anything
            openslide reads), or an OME-Zarr / zarr-group directory.
        backend: ``"auto"`` (default), ``"tifffile"``, ``"openslide"`` or ``"zarr"``.
            ``auto`` picks tifffile for TIFFs whose tiles it decodes fast
            (JPEG, deflate, LZW, zstd, WebP, uncompressed; generic TIFF, OME-TIFF,
            SVS), openslide for the rest (NDPI, MRXS, JPEG 2000 SVS, Philips,
            ...), zarr for directories. ``slide.backend`` says which was used.

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
    return open_path(path, backend)


Slide._opener = staticmethod(open_slide)  # a pickled Slide reopens by path and backend
