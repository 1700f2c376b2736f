"""Strict decoding of the JPEG tiles of a TIFF: libjpeg's warnings are errors.

libjpeg decodes broken entropy-coded data (zeroed, random, cut by an early
EOI) *with a warning* ("Corrupt JPEG data: ...", "Premature end of data
segment") and returns pixels; imagecodecs, which tifffile uses, ignores the
warning, so a damaged tile reads as plausible garbage. openslide treats the
warnings as errors; so does this module, through simplejpeg (libjpeg-turbo's
TurboJPEG API with ``TJFLAG_STOPONWARNING``).

The stream handed to libjpeg is the tile's own bytes with, where the TIFF has
one, its ``JPEGTables`` (quantisation and Huffman tables shared by all tiles)
spliced in after the SOI marker. Colour: tifffile decodes photometric-RGB
tiles without a JFIF marker (Aperio's) as RGB, not YCbCr; libjpeg is told the
same by an Adobe APP14 marker with transform 0 put before the tile's own
markers. The pixels are then the same as tifffile's (both are libjpeg-turbo
with the accurate integer IDCT and fancy upsampling).

The price is measured in ``benchmarks/jpeg_strict.py`` (docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np

__all__ = ["JpegDataError", "decode_tile", "jpeg_stream"]

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
"""APP14 'Adobe' marker, transform 0: the three components are R, G, B (no YCbCr)."""


class JpegDataError(Exception):
    """A tile's JPEG data is broken (libjpeg warned or failed). Internal: the
    slide turns it into a CorruptSlideError naming the file, level and tile."""


def jpeg_stream(data: bytes, tables: bytes | None, force_rgb: bool) -> bytes:
    """The complete JPEG stream of one tile.

    Args:
        data: the tile's bytes (an abbreviated stream when the TIFF has tables).
        tables: the TIFF's JPEGTables (SOI, DQT/DHT segments, EOI), or None.
        force_rgb: put an Adobe transform-0 marker first, so that the three
            components are read as RGB whatever libjpeg would guess.
    """
    if data[:2] != SOI:
        raise JpegDataError("the tile does not start with a JPEG SOI marker")
    head = [SOI]
    if force_rgb:
        head.append(ADOBE_RGB)
    if tables:
        if tables[:2] != SOI or tables[-2:] != EOI:
            raise JpegDataError("the TIFF's JPEGTables are not a JPEG tables-only stream")
        head.append(tables[2:-2])
    if len(head) == 1:
        return data
    head.append(data[2:])
    return b"".join(head)


def decode_tile(data: bytes, tables: bytes | None, *, photometric: int, samples: int, jfif: bool,
                strict: bool = True) -> np.ndarray:
    """Decode one JPEG tile of a TIFF page to uint8 (rows, cols, samples).

    Args:
        data, tables: the tile's bytes and the page's JPEGTables (or None).
        photometric: the page's PhotometricInterpretation (1 grey, 2 RGB, 6 YCbCr).
        samples: 1 or 3.
        jfif: whether the page's JPEG data carry a JFIF marker (tifffile's
            ``page.is_jfif``); photometric RGB without JFIF is decoded as RGB.
        strict: libjpeg's warnings (corrupt data) raise; False decodes like
            imagecodecs does (for the benchmark).

    Raises:
        JpegDataError: broken data, with libjpeg's message.
    """
    import simplejpeg

    stream = jpeg_stream(data, tables, force_rgb=photometric == 2 and samples == 3 and not jfif)
    try:
        if samples == 1:
            return simplejpeg.decode_jpeg(stream, colorspace="GRAY", strict=strict)
        return simplejpeg.decode_jpeg(stream, colorspace="RGB", strict=strict)
    except (ValueError, RuntimeError) as exc:
        raise JpegDataError(str(exc).strip() or type(exc).__name__) from None
