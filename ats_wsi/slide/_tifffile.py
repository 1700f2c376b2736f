"""tifffile backend: raw tiles of pyramidal TIFF, OME-TIFF and Aperio SVS.

The file is parsed once with tifffile for its geometry, tile offsets and
decoder; after that every tile is one positional read (``os.pread``, no shared
file position, so any number of threads may read at once) and one call of
tifffile's decoder for that page (imagecodecs underneath, which releases the
GIL).
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptSlideError, UnsupportedFormatError
from . import _tiffextras, _tiffmeta
from ._checks import (data_pixels, data_table, describe_error as _describe, tile_table as _tile_table,
                      tile_too_big)
from ._levels import Level
from ._tifflevel import PositionalFile, TiffLevel, TiffTiles
from .slide import Slide

# compressions whose tiles tifffile + imagecodecs decode at least as fast as
# openslide; others (JPEG 2000, ...) are left to openslide by ``auto``
FAST_COMPRESSIONS = {
    1: "none", 5: "LZW", 7: "JPEG", 8: "deflate", 32946: "deflate",
    32773: "PackBits", 50000: "zstd", 50001: "WebP",
}
_PHOTOMETRIC_OK = {1, 2, 6}  # minisblack, RGB, YCbCr (JPEG only)

# tifffile logs (does not raise) when the IFD chain points past the end of the
# file and then silently drops the remaining pages: treat these as corruption
_CHAIN_ERRORS = ("invalid page offset", "invalid offset to first page", "corrupted tag list",
                 "invalid circular reference")  # a loop in the chain: the pages after it are lost


class NotForTifffile(UnsupportedFormatError):
    """A TIFF this backend does not read (``auto`` then tries openslide)."""


class TiffParseError(CorruptSlideError):
    """tifffile cannot parse the file's structure (``auto`` then tries openslide
    before giving up); truncation is reported as a plain CorruptSlideError."""


class _LogCapture(logging.Filter):
    """Sees tifffile's log records (and lets them through unchanged), keeping the
    messages of the threads that asked for them."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(self.local, "sink", None)
        if sink is not None and record.levelno >= logging.WARNING:
            sink.append(record.getMessage())
        return True


_capture = _LogCapture()
_capture_installed = False
_install_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a child forked while another thread held it would wait for ever
    os.register_at_fork(after_in_child=lambda: globals().update(_install_lock=threading.Lock()))


@contextmanager
def _tifffile_messages():
    global _capture_installed
    with _install_lock:
        if not _capture_installed:
            logging.getLogger("tifffile").addFilter(_capture)
            _capture_installed = True
    _capture.local.sink = sink = []
    try:
        yield sink
    finally:
        _capture.local.sink = None


@dataclass(frozen=True)
class TiffLayout:
    """Everything the backend needs, read from the file once."""

    format: str
    levels: list[TiffLevel]
    properties: dict
    mpp_xy: tuple[float, float] | None
    mpp_source: str
    associated: dict = field(default_factory=dict)  # name -> (page index, ICC bytes or None)
    icc: bytes | None = None  # level 0's ICC profile


def inspect_tiff(path: str, fast_only: bool = True) -> TiffLayout:
    """Parse a TIFF's pyramid, check it is complete and decodable.

    ``fast_only`` (what ``auto`` asks) refuses compressions openslide decodes
    faster (JPEG 2000); a forced tifffile backend reads whatever imagecodecs
    can decode.

    Raises:
        CorruptSlideError: not parseable, IFD chain broken, or tiles lying
            (partly) beyond the end of the file (truncated).
        NotForTifffile: a TIFF this backend should not read (NDPI, Philips,
            JPEG 2000, multi-channel, non-uint8, ...).
    """
    size = os.path.getsize(path)
    with _open_checked(path) as tif:
        try:
            series = tif.series
            if not series:
                raise CorruptSlideError(path, "TIFF holds no image")
            kind = _vendor_kind(tif)
            if kind is not None:
                raise NotForTifffile(path, f"{kind} TIFF: left to openslide")
            pages = [lv.pages[0] for lv in series[0].levels]
            if tif.is_svs:  # openslide's rule: every tiled page is a level (also in libvips-written SVS)
                pages = _tiffextras.aperio_levels(tif)
            levels = [_tiff_level(path, i, page, size, fast_only) for i, page in enumerate(pages)]
            fmt, props, mpp_xy, mpp_source = _tiffmeta.tiff_metadata(tif, pages[0])
            associated, icc = _tiffextras.openslide_extras(path, tif, fmt, pages[0], props)
        except (CorruptSlideError, NotForTifffile):
            raise
        except Exception as exc:
            raise TiffParseError(path, f"broken TIFF structure: {_describe(exc)}") from exc
    for prev, cur in zip(levels, levels[1:]):
        if cur.level.width > prev.level.width or cur.level.height > prev.level.height:
            raise NotForTifffile(path, "pyramid levels are not ordered from large to small")
    return TiffLayout(fmt, levels, props, mpp_xy, mpp_source, associated, icc)


@contextmanager
def _open_checked(path: str):
    """tifffile.TiffFile with all pages parsed; CorruptSlideError if its IFD chain is broken."""
    import tifffile

    with _tifffile_messages() as messages:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types on broken input
            raise TiffParseError(path, f"not a readable TIFF: {_describe(exc)}") from exc
        try:
            try:
                len(tif.pages)  # walks the whole IFD chain now, so breaks are logged
            except Exception as exc:
                raise CorruptSlideError(path, f"broken TIFF directory chain: {_describe(exc)}") from exc
            broken = [m for m in messages if any(s in m for s in _CHAIN_ERRORS)]
            if broken:
                raise CorruptSlideError(path, f"broken TIFF directory chain (truncated file?): {broken[0]}")
            yield tif
        finally:
            tif.close()


def tiff_damage(path: str) -> None:
    """Raise CorruptSlideError if a TIFF's IFD chain is broken or any page's
    tiles / strips lie beyond the end of the file (a truncated file).

    Used before handing a TIFF to openslide, which would otherwise call a
    truncated file "unsupported" or fail only at a later read.
    """
    size = os.path.getsize(path)
    with _open_checked(path) as tif:
        for page in tif.pages:
            offsets, counts = _tile_table(path, f"page {page.index}", page, size)
            if len(offsets) and len(offsets) == len(counts):
                lost = (counts > 0) & (offsets + counts > size)
                if lost.any():
                    raise CorruptSlideError(path, f"truncated: {int(lost.sum())} of {len(offsets)} tiles of "
                                                  f"page {page.index} lie beyond the end of the file ({size} bytes)")


def _vendor_kind(tif) -> str | None:
    for name in ("ndpi", "philips", "scn", "bif", "qpi", "stk", "lsm", "nih", "fluoview",
                 "mdgel", "sis", "scanimage"):
        if getattr(tif, f"is_{name}", False):
            return name.upper()
    return None


APERIO_JP2K_YCBCR = 33003
"""Aperio's JPEG 2000 whose components are YCbCr without the codestream's colour
transform: openslide converts them, tifffile does not."""


def _tiff_level(path: str, index: int, page, file_size: int, fast_only: bool) -> TiffLevel:
    shape = page.shape  # (h, w) or (h, w, S) for contiguous samples
    samples = page.samplesperpixel
    if page.imagedepth != 1:
        raise NotForTifffile(path, "volumetric (ImageDepth > 1) TIFF")
    if page.dtype != np.uint8:
        raise NotForTifffile(path, f"{page.dtype} samples (only uint8 RGB / grey is read)")
    if samples not in (1, 3, 4) or (samples > 1 and page.planarconfig != 1):
        raise NotForTifffile(path, f"{samples} samples per pixel (planar config {page.planarconfig})")
    if page.photometric not in _PHOTOMETRIC_OK or (page.photometric == 6 and page.compression != 7):
        raise NotForTifffile(path, f"photometric {int(page.photometric)} with compression {int(page.compression)}")
    compression = int(page.compression)
    if fast_only and compression not in FAST_COMPRESSIONS:
        raise NotForTifffile(path, f"compression {compression} (openslide decodes it faster)")
    if compression == APERIO_JP2K_YCBCR:  # tifffile gives its YCbCr samples as RGB: wrong colours, silently
        raise NotForTifffile(path, "Aperio JPEG 2000 in YCbCr (compression 33003): tifffile would return its "
                                   "YCbCr samples as RGB (wrong colours); read it with backend='openslide' "
                                   "(or 'auto')")
    if compression != 1 and not _can_decode(compression):
        raise NotForTifffile(path, f"compression {compression} (no decoder in imagecodecs)")
    height, width = shape[0], shape[1]
    if page.is_tiled:
        tw, th = page.tilewidth, page.tilelength
    else:
        tw, th = width, min(page.rowsperstrip or height, height)
    too_big = tile_too_big(path, f"level {index} is stored in {'tiles' if page.is_tiled else 'strips'}", tw, th)
    if too_big:  # one strip of a whole 40000² image: gigabytes per decode
        raise NotForTifffile(path, f"{too_big}; convert it to a tiled pyramid (e.g. vips tiffsave --tile --pyramid)")
    level = Level(width, height, tw, th)
    offsets, counts = _tile_table(path, f"level {index}", page, file_size)
    if len(offsets) != level.cols * level.rows or len(counts) != len(offsets):
        raise CorruptSlideError(path, f"level {index} lists {len(offsets)} tiles, "
                                      f"expected {level.cols} x {level.rows}")
    lost = (counts > 0) & (offsets + counts > file_size)
    if lost.any():
        raise CorruptSlideError(path, f"truncated: {int(lost.sum())} of {len(offsets)} tiles of level "
                                      f"{index} lie beyond the end of the file ({file_size} bytes)")
    return TiffLevel(level, offsets, counts, page.decode, page.jpegtables, samples, compression,
                     int(page.photometric), bool(getattr(page, "is_jfif", False)), int(page.offset))


def _can_decode(compression: int) -> bool:
    import tifffile

    try:
        tifffile.TIFF.DECOMPRESSORS[compression]
    except (KeyError, ValueError, ImportError):
        return False
    return True


class TiffSlide(Slide):
    """A TIFF / OME-TIFF / SVS read tile by tile with tifffile's decoders."""

    backend = "tifffile"

    def __init__(self, path, layout: TiffLayout | None = None):
        path = os.fspath(path)
        layout = inspect_tiff(path, fast_only=False) if layout is None else layout
        self._associated, self._icc = layout.associated, layout.icc
        self._file = PositionalFile(path)
        self._tiles = tuple(TiffTiles(path, i, tl, self._file) for i, tl in enumerate(layout.levels))
        super().__init__(path, format=layout.format, levels=[t.level for t in layout.levels],
                         properties=layout.properties, mpp_xy=layout.mpp_xy, mpp_source=layout.mpp_source)

    @property
    def tiff_levels(self) -> tuple[TiffTiles, ...]:
        """The stored levels' tiles (:class:`~._tifflevel.TiffTiles`), largest first: their bytes,
        decoding and check marks."""
        return self._tiles

    def tile_bytes(self, level: int, col: int, row: int) -> bytes | None:
        """The stored bytes of a tile (None: sparse); see :meth:`._tifflevel.TiffTiles.tile_bytes`."""
        return self._tiles[level].tile_bytes(col, row)

    def _read_stored_tile(self, level: int, col: int, row: int) -> np.ndarray:
        return self._tiles[level].read_tile(col, row)

    def can_decode_into(self, level: int) -> bool:
        """Whether :meth:`decode_tile_into` serves ``level``: a stored level of JPEG tiles, the
        ``ats_wsi_jpeg`` extension, pixels as stored (no sRGB conversion)."""
        return 0 <= level < len(self._tiles) and self._srgb is None and self._tiles[level].can_decode_into()

    def decode_tile_into(self, level: int, col: int, row: int, out: np.ndarray, pairs) -> int:
        """Decode only the part of a stored JPEG tile that ``pairs`` (rows of a
        PatchReader TilePlan) need, straight into ``out``; pixels decoded
        (:meth:`._tifflevel.TiffTiles.decode_into`)."""
        return self._tiles[level].decode_into(col, row, out, pairs)

    def jpeg_ifd_offset(self, level: int) -> int | None:
        """Stored ``level``'s IFD offset if its tiles are JPEG (for nvImageCodec), else None."""
        return self._tiles[int(level)].jpeg_ifd_offset if 0 <= int(level) < len(self._tiles) else None

    def _associated_names(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def _read_associated(self, name: str):
        index, icc = self._associated[name]
        try:
            pixels = _tiffextras.read_page(self.path, index)
        except Exception as exc:  # codec errors come in many types
            raise CorruptSlideError(self.path, f"cannot decode associated image {name!r}: {exc}") from exc
        return _tiffextras.rgba_image(pixels, icc)

    def _icc_bytes(self) -> bytes | None:
        return self._icc

    def _stored_data_pixels(self, x0: int, y0: int, x1: int, y1: int) -> int:
        """Level-0 pixels under the box in tiles that hold data (byte count > 0)."""
        if self._data_table is None:
            self._data_table = data_table(self._tiles[0].layout.bytecounts, self._tiles[0].level)
        return data_pixels(self._data_table, self._tiles[0].level, x0, y0, x1, y1)

    _data_table = None

    def _close(self) -> None:
        self._file.close()
