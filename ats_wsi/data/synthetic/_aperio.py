"""Aperio SVS files: the ImageDescription of each page, and the page order openslide expects.

An Aperio file is a TIFF whose first page is level 0, tiled, with an
ImageDescription that starts ``Aperio Image Library`` and carries
``|key = value`` pairs (openslide reads them as ``aperio.<key>`` and takes
``openslide.mpp-x`` from ``MPP`` and ``openslide.objective-power`` from
``AppMag``); the second page is a small stripped thumbnail; the next pages
are the lower levels, tiled. :func:`aperio_description` is the one writer of
these descriptions in the project (the synthetic slides and the tests' own
Aperio files use it).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

_HEADER = "Aperio Image Library v12.0.15 \r\n"
_THUMB_PX = 768  # longer side of the thumbnail page at most
_PAGES = ("level0", "level", "thumbnail")


def aperio_description(
    width: int,
    height: int,
    *,
    mpp: float | None = None,
    tile: int = 256,
    quality: int = 85,
    app_mag: float | None = None,
    page: str = "level0",
    size: tuple[int, int] | None = None,
    fields: Mapping[str, object] | None = None,
) -> str:
    """The ImageDescription of one page of an Aperio (SVS) file, as an Aperio scanner writes it.

    Args:
        width, height: level-0 size of the slide in pixels (every page names it).
        mpp: µm per level-0 pixel (``MPP``); ``None`` leaves out ``MPP`` (and
            ``AppMag`` unless ``app_mag`` is given).
        tile: tile side in pixels (the ``(t x t)`` of the header, ``StripeWidth``).
        quality: JPEG quality named in the header (``JPEG/RGB Q=...``).
        app_mag: objective magnification (``AppMag``); ``None``: ``10 / mpp``
            (20 at 0.5 µm/px).
        page: ``"level0"`` (header and the ``|key = value`` pairs openslide
            parses), ``"level"`` (a lower level of size ``size``) or
            ``"thumbnail"`` (the stripped thumbnail page, of size ``size``).
        size: ``(w, h)`` of a ``"level"`` or ``"thumbnail"`` page.
        fields: extra or replaced ``key: value`` pairs of a level-0 page.

    Returns:
        the description text (``\\r\\n`` after the header line, as Aperio writes it).

    Raises:
        ValueError: an unknown ``page``, or ``size`` missing for a lower page.
    """
    if page not in _PAGES:
        raise ValueError(f"aperio_description: page must be one of {_PAGES}, got {page!r}")
    if page != "level0" and size is None:
        raise ValueError(f"aperio_description: page {page!r} needs its size (w, h)")
    if page == "thumbnail":
        return f"{_HEADER}{width}x{height} -> {size[0]}x{size[1]} - "
    head = f"{_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    if page == "level":
        return f"{head} -> {size[0]}x{size[1]} JPEG/RGB Q={quality}"
    pairs = _level0_fields(width, height, mpp, tile, app_mag)
    pairs.update({str(k): str(v) for k, v in (fields or {}).items()})
    return "|".join([f"{head} JPEG/RGB Q={quality}", *(f"{k} = {v}" for k, v in pairs.items())])


def _level0_fields(width: int, height: int, mpp: float | None, tile: int, app_mag: float | None) -> dict[str, str]:
    """The ``key = value`` pairs of level 0, in the order an Aperio scanner writes them."""
    if app_mag is None and mpp is not None:
        app_mag = 10.0 / mpp
    pairs = {
        "AppMag": None if app_mag is None else f"{app_mag:g}",
        "StripeWidth": str(tile),
        "ScanScope ID": "ATS-WSI-SYNTHETIC",
        "Filename": "synthetic",
        "Date": "01/01/26",
        "Time": "00:00:00",
        "MPP": None if mpp is None else f"{mpp:g}",
        "Left": "0.000000",
        "Top": "0.000000",
        "OriginalWidth": str(width),
        "OriginalHeight": str(height),
    }
    return {k: v for k, v in pairs.items() if v is not None}


def write_aperio_tiff(tmp: Path, renderer, level_dims, mpp: float, thumb_level: int | None) -> None:
    """Write a rendered slide's pages in Aperio order: level 0, thumbnail (strips), levels 1..

    Args:
        tmp: the file to write (a temporary name: the caller renames it).
        renderer: the slide's ``_Renderer`` (tiles of each level, the thumbnail).
        level_dims: ``(w, h)`` of each level, level 0 first.
        mpp: µm per level-0 pixel.
        thumb_level: the level the thumbnail is rendered from, or ``None`` for no thumbnail.
    """
    import tifffile

    width, height = level_dims[0]
    tile, quality = renderer.tile_size, renderer.quality
    bigtiff = width * height > 1_500_000_000  # JPEG files of this size may pass 4 GB
    page = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="jpeg",
                subsampling=(2, 2), metadata=None, software=False)
    describe = dict(tile=tile, quality=quality, mpp=mpp)
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for level, (w, h) in enumerate(level_dims):
            text = (aperio_description(width, height, **describe) if level == 0
                    else aperio_description(width, height, page="level", size=(w, h), **describe))
            tw.write(renderer.encoded_tiles(level, w, h), shape=(h, w, 3), description=text, **page)
            if level == 0 and thumb_level is not None:
                thumb = renderer.thumbnail(thumb_level, width, height, _THUMB_PX)
                tw.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                         subsampling=(2, 2), rowsperstrip=16, metadata=None, software=False,
                         description=aperio_description(width, height, page="thumbnail",
                                                        size=(thumb.shape[1], thumb.shape[0])))
