"""Cropped decoding of a TIFF's JPEG tiles straight into patch buffers.

The optional C extension ``ats_wsi_jpeg`` (``native/``, built against the
system libjpeg-turbo by ``scripts/_env.sh``) decodes only the box of a tile a
batch needs: ``jpeg_crop_scanline`` to its iMCU columns, ``jpeg_skip_scanlines``
over the rows above it (entropy decoding only), then its rows, copied from
libjpeg's scanlines into every patch that needs them. It is as strict as
:mod:`._jpeg`: every libjpeg warning is an error, and after the last needed
row the rest of the tile is entropy-decoded up to its EOI, so a tile broken
anywhere raises :class:`~ats_wsi.errors.CorruptSlideError` (naming the file,
level and tile) rather than giving pixels. That check of the rest of a tile is
made once per tile and open slide: a tile that has been decoded to its EOI
without a warning is marked (one byte per tile and level), and later reads of
it decode only the rows they need — still strictly (a warning in those rows
raises). A tile that failed is never marked, so it raises on every read. The
pixels are those of a
whole-tile decode (same libjpeg, JDCT_ISLOW, fancy upsampling; a pixel of
margin around the box keeps the upsampling context), hence openslide's.

Without the extension :func:`available` is False and PatchReader decodes
whole tiles through ``Slide.read_tile``.
"""
from __future__ import annotations

import numpy as np

from ..errors import CorruptSlideError

try:  # optional: built from native/ (pip install ./native)
    import ats_wsi_jpeg as _native
except ImportError:  # pragma: no cover - depends on the environment
    _native = None

__all__ = ["available", "can_decode_into", "decode_into", "verified_tiles"]


def available() -> bool:
    """Whether the ``ats_wsi_jpeg`` extension is importable."""
    return _native is not None


def can_decode_into(slide, level: int) -> bool:
    """Whether ``decode_into`` serves this stored level of a tifffile-backend slide
    (JPEG tiles, grey or RGB, pixels as stored: no sRGB conversion)."""
    levels = getattr(slide, "_tiff_levels", None)
    if _native is None or levels is None or not 0 <= level < len(levels):
        return False
    if slide.pyramid[level].computed or getattr(slide, "_srgb", None) is not None:
        return False
    tl = levels[level]
    return tl.compression == 7 and tl.samples in (1, 3)


def decode_into(slide, level: int, col: int, row: int, out: np.ndarray, pairs) -> int:
    """Decode the part of tile ``(col, row)`` that ``pairs`` need into ``out``.

    Args:
        slide: a TiffSlide for which :func:`can_decode_into` holds.
        out: uint8 ``[n, h, w, 3]``, pixel-contiguous rows.
        pairs: rows ``(i, py0, py1, px0, px1, ty0, tx0)`` of a
            :class:`~ats_wsi.patches.reader.TilePlan`: tile pixels from
            ``(ty0, tx0)`` go to ``out[i, py0:py1, px0:px1]``.

    Returns:
        pixels decoded (the cropped box; 0 for a sparse tile).

    Raises:
        CorruptSlideError: unreadable, truncated or broken tile data.
    """
    tl = slide._tiff_levels[level]
    data = slide.tile_bytes(level, col, row)
    if data is None:  # sparse tile: the file stores no pixels here (read_tile gives zeros)
        for i, py0, py1, px0, px1, _, _ in pairs:
            out[i, py0:py1, px0:px1] = 0
        return 0
    rgb = tl.photometric == 2 and tl.samples == 3 and not tl.jfif
    marks = verified_tiles(slide, level)
    index = row * tl.level.cols + col
    check = not marks[index]
    try:
        pixels = _native.decode_into(data, tl.jpegtables, rgb, out, pairs, verify=check)
    except _native.JpegError as exc:
        raise CorruptSlideError(slide.path, f"level {level} tile ({col}, {row}) has broken JPEG data "
                                            f"({exc})") from None
    if check:
        marks[index] = 1  # decoded to its EOI without a warning: later reads need not check the rest again
    return pixels


def verified_tiles(slide, level: int) -> bytearray:
    """One byte per tile of ``level``: 1 where the whole tile has been decoded without a warning."""
    marks = slide._verified_tiles.get(level)
    if marks is None:  # setdefault: two threads get the same marks
        marks = slide._verified_tiles.setdefault(level, bytearray(len(slide._tiff_levels[level].offsets)))
    return marks
