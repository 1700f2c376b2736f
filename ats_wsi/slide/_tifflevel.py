"""One stored level of an open TIFF: its tiles' bytes, their decoding, their check marks.

:class:`TiffTiles` is what a :class:`~._tifffile.TiffSlide` holds per stored
level. It owns the level's tile table (:class:`TiffLevel`: offsets, byte
counts and decoder, parsed once by :func:`~._tifffile.inspect_tiff`) and

- reads a tile's bytes with one positional read of the slide's
  :class:`PositionalFile` (shared by the levels; any number of threads);
- decodes a whole tile (JPEG through :mod:`._jpeg`, strict; others through
  tifffile's decoder for the page);
- decodes only the box of a JPEG tile a batch needs straight into its buffer
  (:mod:`._jpegcrop`, the optional ``ats_wsi_jpeg`` extension), checking the
  rest of the tile to its EOI once: one byte per tile marks the tiles already
  decoded whole without a warning (a tile that failed is never marked).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptSlideError, SlideError
from . import _jpegcrop
from ._cache import reset_after_fork
from ._jpeg import JpegDataError, decode_tile
from ._levels import Level

__all__ = ["PositionalFile", "TiffLevel", "TiffTiles"]

JPEG = 7  # TIFF compression code


@dataclass(frozen=True)
class TiffLevel:
    """Where one level's tiles are and how to decode them (as parsed from the file)."""

    level: Level
    offsets: np.ndarray  # int64 [n_tiles], row-major (row * cols + col)
    bytecounts: np.ndarray  # int64 [n_tiles]
    decode: object  # tifffile's TiffPage.decode closure
    jpegtables: bytes | None
    samples: int
    compression: int = 1
    photometric: int = 2
    jfif: bool = False
    ifd_offset: int = 0  # byte offset of the level's IFD (how nvImageCodec selects a page)


class PositionalFile:
    """A read-only file read with ``os.pread``: no shared position, so thread-safe.

    ``close`` waits for reads in flight, so a read never lands on a reused
    file descriptor.
    """

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._active = 0
        self._cond = threading.Condition()
        self._seek_lock = None if hasattr(os, "pread") else threading.Lock()
        reset_after_fork(self)

    def _after_fork(self) -> None:  # reads in flight in the parent's threads do not exist here
        self._active = 0
        self._cond = threading.Condition()
        self._seek_lock = None if self._seek_lock is None else threading.Lock()

    def pread(self, count: int, offset: int) -> bytes:
        """``count`` bytes at ``offset`` (fewer at the end of the file); ValueError once closed."""
        with self._cond:
            if self._fd < 0:
                raise ValueError("file is closed")
            self._active += 1
            fd = self._fd
        try:
            if self._seek_lock is None:
                return os.pread(fd, count, offset)
            with self._seek_lock:  # platforms without pread (Windows)
                os.lseek(fd, offset, os.SEEK_SET)
                return os.read(fd, count)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Close the descriptor once the reads in flight are done. Idempotent."""
        with self._cond:
            while self._active:
                self._cond.wait()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class TiffTiles:
    """The tiles of stored level ``index`` of an open TIFF (see the module's docstring).

    Args:
        path: the slide's path (for error messages).
        index: the level's index in the slide's pyramid.
        layout: its :class:`TiffLevel`.
        file: the slide's open :class:`PositionalFile` (closed by the slide).
    """

    def __init__(self, path: str, index: int, layout: TiffLevel, file: PositionalFile):
        self.path = path
        self.index = index
        self.layout = layout
        self.level = layout.level
        self._file = file
        self._jpeg = layout.compression == JPEG and layout.samples in (1, 3)
        # libjpeg is told the components are RGB (no YCbCr transform) for RGB without JFIF
        self._rgb = layout.photometric == 2 and layout.samples == 3 and not layout.jfif
        # 1 per JPEG tile decoded to its EOI without a warning (checked once per open slide)
        self._verified = bytearray(len(layout.offsets) if self._jpeg else 0)

    def tile_bytes(self, col: int, row: int) -> bytes | None:
        """The stored bytes of tile ``(col, row)`` (None: sparse, no bytes stored).

        Raises:
            SlideError: the slide is closed.
            CorruptSlideError: the bytes cannot be read or are cut short.
        """
        index = row * self.level.cols + col
        offset, count = int(self.layout.offsets[index]), int(self.layout.bytecounts[index])
        if count == 0:
            return None
        try:
            data = self._file.pread(count, offset)
        except ValueError:
            raise SlideError(self.path, "the slide is closed") from None
        except OSError as exc:
            raise CorruptSlideError(self.path, f"cannot read {self._tile(col, row)}: {exc}") from exc
        if len(data) != count:
            raise CorruptSlideError(self.path, f"{self._tile(col, row)} is truncated: got "
                                               f"{len(data)} of {count} bytes at offset {offset}")
        return data

    def read_tile(self, col: int, row: int) -> np.ndarray:
        """uint8 (rows, cols, 3) of tile ``(col, row)``, clipped to the level (zeros where sparse).

        Raises:
            CorruptSlideError: unreadable, truncated or undecodable tile data.
        """
        tl, lv = self.layout, self.level
        w = min(lv.tile_width, lv.width - col * lv.tile_width)
        h = min(lv.tile_height, lv.height - row * lv.tile_height)
        data = self.tile_bytes(col, row)
        if data is None:  # sparse tile: the file stores no pixels here
            return np.zeros((h, w, 3), np.uint8)
        if self._jpeg:  # libjpeg's warnings are errors
            try:
                pixels = decode_tile(data, tl.jpegtables, photometric=tl.photometric, samples=tl.samples,
                                     jfif=tl.jfif)[:h, :w]
            except JpegDataError as exc:
                raise CorruptSlideError(self.path, f"{self._tile(col, row)} has broken JPEG data ({exc})") from None
        else:
            try:
                segment, _, _ = tl.decode(data, row * lv.cols + col, jpegtables=tl.jpegtables)
            except Exception as exc:  # codec errors come in many types
                raise CorruptSlideError(self.path, f"cannot decode {self._tile(col, row)}: "
                                                   f"{type(exc).__name__}: {exc}") from exc
            pixels = segment[0, :h, :w]  # (depth, length, width, samples) -> clipped (h, w, S)
        if pixels.shape[:2] != (h, w):
            raise CorruptSlideError(self.path, f"{self._tile(col, row)} decodes to "
                                               f"{pixels.shape[:2]}, expected {(h, w)}")
        if tl.samples == 1:
            return np.repeat(pixels, 3, axis=2)
        pixels = pixels[:, :, :3]
        return pixels if pixels.flags.writeable else pixels.copy()

    def can_decode_into(self) -> bool:
        """Whether :meth:`decode_into` serves this level: JPEG tiles (grey or RGB) and the
        ``ats_wsi_jpeg`` extension importable."""
        return self._jpeg and _jpegcrop.available()

    def decode_into(self, col: int, row: int, out: np.ndarray, pairs) -> int:
        """Decode the part of tile ``(col, row)`` that ``pairs`` need into ``out``.

        The first decode of a tile also checks the rest of it to its EOI; later
        ones (same open slide) stop after their last row, still strictly.

        Args:
            out: uint8 ``[n, h, w, 3]``, pixel-contiguous rows.
            pairs: rows ``(i, py0, py1, px0, px1, ty0, tx0)`` of a
                :class:`~ats_wsi.patches.reader.TilePlan`: tile pixels from
                ``(ty0, tx0)`` go to ``out[i, py0:py1, px0:px1]``.

        Returns:
            pixels decoded (the cropped box; 0 for a sparse tile).

        Raises:
            CorruptSlideError: unreadable, truncated or broken tile data.
        """
        data = self.tile_bytes(col, row)
        if data is None:  # sparse tile: the file stores no pixels here (read_tile gives zeros)
            for i, py0, py1, px0, px1, _, _ in pairs:
                out[i, py0:py1, px0:px1] = 0
            return 0
        index = row * self.level.cols + col
        check = not self._verified[index]
        try:
            pixels = _jpegcrop.decode_box(data, self.layout.jpegtables, self._rgb, out, pairs, check)
        except JpegDataError as exc:
            raise CorruptSlideError(self.path, f"{self._tile(col, row)} has broken JPEG data ({exc})") from None
        if check:
            self._verified[index] = 1  # decoded to its EOI without a warning: later reads need not check again
        return pixels

    def verified_count(self) -> int:
        """How many tiles have been decoded to their EOI without a warning (checked)."""
        return self._verified.count(1)

    def forget_verified(self) -> None:
        """Unmark every tile: the next decode of each checks it to its EOI again (as on a new open)."""
        self._verified[:] = bytes(len(self._verified))

    @property
    def jpeg_ifd_offset(self) -> int | None:
        """Byte offset of the level's IFD when its tiles are JPEG (grey or RGB), else None:
        what :mod:`ats_wsi.patches._nvimgcodec` hands nvImageCodec."""
        return self.layout.ifd_offset if self._jpeg and self.layout.ifd_offset > 0 else None

    def _tile(self, col: int, row: int) -> str:
        return f"level {self.index} tile ({col}, {row})"
