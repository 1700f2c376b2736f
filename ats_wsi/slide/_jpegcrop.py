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

The slide's side (which tile, which marks, the error naming the file, level
and tile) is :meth:`._tifflevel.TiffTiles.decode_into`; this module is the
call into the extension. Without it :func:`available` is False and
PatchReader decodes whole tiles through ``Slide.read_tile``.
"""
from __future__ import annotations

import numpy as np

from ._jpeg import JpegDataError

try:  # optional: built from native/ (pip install ./native)
    import ats_wsi_jpeg as _native
except ImportError:  # pragma: no cover - depends on the environment
    _native = None

__all__ = ["available", "decode_box"]


def available() -> bool:
    """Whether the ``ats_wsi_jpeg`` extension is importable."""
    return _native is not None


def decode_box(data: bytes, tables: bytes | None, rgb: bool, out: np.ndarray, pairs, verify: bool) -> int:
    """Decode the box of one JPEG tile that ``pairs`` need into ``out`` (``ats_wsi_jpeg``).

    Args:
        data, tables: the tile's bytes and the page's JPEGTables (or None).
        rgb: the three components are R, G, B (no YCbCr transform).
        out: uint8 ``[n, h, w, 3]``, pixel-contiguous rows.
        pairs: rows ``(i, py0, py1, px0, px1, ty0, tx0)`` of a
            :class:`~ats_wsi.patches.reader.TilePlan`.
        verify: also entropy-decode the rest of the tile up to its EOI.

    Returns:
        pixels decoded (the cropped box).

    Raises:
        JpegDataError: libjpeg warned or failed, with its message.
    """
    try:
        return _native.decode_into(data, tables, rgb, out, pairs, verify=verify)
    except _native.JpegError as exc:
        raise JpegDataError(str(exc)) from None
