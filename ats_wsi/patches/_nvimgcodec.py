"""The tiles of a batch decoded by NVIDIA nvImageCodec: on the GPU, or on its CPU backend.

Optional (``pip install 'ats-wsi[gpu]'``); imported only when a
:class:`~ats_wsi.patches.PatchReader` is asked for ``decoder="nvimgcodec"``
(or ``"auto"`` on a CUDA device), never by ``import ats_wsi``.

Why a library here and not our own code: decoding JPEG on the GPU (nvJPEG's
batched decoder, the hardware JPEG engines of A100/H100) is years of vendor
work; nvImageCodec drives it and also parses the TIFF (tile tables, Aperio's
shared ``JPEGTables``, YCbCr or RGB JPEG data) and decodes a list of regions
in ONE call. With its CPU backend the same call decodes with libjpeg-turbo,
giving exactly the native reader's pixels (measured: 0 difference on
libvips, tifffile and Aperio-style files), which is how this path is tested
on machines without a GPU.

What stays ours, and why: *which* pixels to decode is the reader's own plan
(:func:`~ats_wsi.patches.reader.plan_tiles`): each tile a batch needs is
decoded once, and only the box of it the batch needs (the union of its
windows), so a tile shared by two patches is not decoded twice, and the
memory of a batch is what its patches need. The paste of those boxes into
the patches and the reduction to the asked µm/px are a few array or torch
ops (on the GPU: :func:`device_block_mean` with ``avg_pool2d``, and
:func:`device_area_resample`, the CPU path's area weights as two small
matrix products), so a batch never leaves the device.

Where nvImageCodec cannot decode a tile (``None`` in its answer: a sparse or
broken tile, a JPEG flavour it refuses), that tile is decoded by the slide
itself (``slide.read_tile``, strict: a broken tile raises
``CorruptSlideError``) and counted in :attr:`NvTileDecoder.fallback_tiles`.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import torch

from ..errors import DecoderError, DecoderUnavailableError
from ..slide import FILL_VALUE
from ._resample import area_weights

__all__ = ["DECODERS", "NvTileDecoder", "device_area_resample", "device_block_mean", "select_decoder",
           "unsupported_reason"]

DECODERS = ("auto", "native", "nvimgcodec")
"""What ``PatchReader(decoder=...)`` accepts: ``native`` (our tile reader, the default on CPU),
``nvimgcodec`` (this module; an error where it cannot serve the slide), ``auto`` (this
module on a CUDA device where nvImageCodec is installed and serves the slide, else native)."""

_INSTALL = "pip install 'ats-wsi[gpu]' (NVIDIA nvImageCodec: nvidia-nvimgcodec-cu12)"
_decoders: dict[tuple, tuple] = {}  # (pid, device) -> (nvimgcodec.Decoder, its lock): one per process and device
_decoders_lock = threading.Lock()


def _nvimgcodec(path=None):
    """The ``nvidia.nvimgcodec`` module, or DecoderUnavailableError saying how to install it."""
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise DecoderUnavailableError(path, f"decoder='nvimgcodec' needs NVIDIA nvImageCodec, which is not "
                                            f"installed ({exc}); {_INSTALL}, or use decoder='native'") from None
    return nvimgcodec


def unsupported_reason(slide, level: int) -> str | None:
    """Why nvImageCodec cannot decode ``level`` of ``slide`` as the native reader would, or None if it can."""
    offset = getattr(slide, "jpeg_ifd_offset", None)
    if offset is None:
        return f"it is read by the {slide.backend} backend (nvImageCodec reads TIFF files, backend 'tifffile')"
    if int(level) >= slide.level_count:
        return f"level {level} is computed from level {slide.level_count - 1}, not stored in the file"
    if slide.srgb:
        return "its reads are converted to sRGB (open_slide(srgb=True)); nvImageCodec gives stored pixels"
    if offset(int(level)) is None:
        return f"level {level} is not stored as JPEG tiles"
    return None


def select_decoder(slide, level: int, decoder: str, device: torch.device) -> NvTileDecoder | None:
    """The :class:`NvTileDecoder` a PatchReader uses for ``level``, or None for the native reader.

    Raises:
        DecoderError: ``decoder`` is not one of :data:`DECODERS`, or is
            ``"nvimgcodec"`` for a level nvImageCodec cannot decode.
        DecoderUnavailableError: ``"nvimgcodec"`` without nvImageCodec installed.
    """
    if decoder not in DECODERS:
        raise DecoderError(slide.path, f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if decoder == "native" or (decoder == "auto" and device.type != "cuda"):
        return None
    reason = unsupported_reason(slide, level)
    if decoder == "auto":
        try:
            _nvimgcodec(slide.path)
        except DecoderUnavailableError:
            return None
        return None if reason is not None else NvTileDecoder(slide, level, device)
    _nvimgcodec(slide.path)
    if reason is not None:
        raise DecoderError(slide.path, f"decoder='nvimgcodec' cannot read it: {reason}; "
                                       f"use decoder='auto' (falls back to the native reader) or 'native'")
    return NvTileDecoder(slide, level, device)


def _shared_decoder(device: torch.device) -> tuple:
    """``(decoder, lock)``: one nvimgcodec Decoder per process and device, made on first use (a
    forked worker makes its own), and the lock that lets one batch through it at a time."""
    key = (os.getpid(), device.type, device.index)
    with _decoders_lock:
        found = _decoders.get(key)
        if found is None:
            nv = _nvimgcodec()
            if device.type == "cuda":
                index = torch.cuda.current_device() if device.index is None else device.index
                found = (nv.Decoder(device_id=index), threading.Lock())
            else:
                found = (nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY,
                                    backends=[nv.Backend(nv.BackendKind.CPU_ONLY)]), threading.Lock())
            _decoders[key] = found
        return found


class NvTileDecoder:
    """Decodes the tiles of a :class:`~ats_wsi.patches.reader.TilePlan` of one slide level in one call.

    Args:
        slide: an open slide of the tifffile backend (see :func:`unsupported_reason`).
        level: the stored level decoded.
        device: ``cuda`` decodes on that GPU; ``cpu`` on nvImageCodec's CPU backend.
    """

    def __init__(self, slide, level: int, device: torch.device):
        nv = _nvimgcodec(slide.path)
        self.slide, self.level, self.device = slide, int(level), torch.device(device)
        self._nv = nv
        self._ifd = slide.jpeg_ifd_offset(self.level)
        self._streams: dict[int, object] = {}  # pid -> the level's CodeStream (a forked worker opens its own)
        self._params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB,
                                       sample_format=nv.SampleFormat.I_RGB)
        self.fallback_tiles = 0

    def _code_stream(self):
        """The level's nvimgcodec CodeStream in this process (the file is opened once per process)."""
        pid = os.getpid()
        stream = self._streams.get(pid)
        if stream is None:
            stream = self._streams[pid] = self._nv.CodeStream(self.slide.path, bitstream_offset=self._ifd)
        return stream

    def boxes(self, plan) -> np.ndarray:
        """int64 [t, 4]: ``(y0, x0, y1, x1)`` of each planned tile the batch needs, in tile pixels."""
        pairs = plan.pairs
        if not len(pairs):
            return np.zeros((0, 4), np.int64)
        y0, x0 = pairs[:, 5], pairs[:, 6]
        y1, x1 = y0 + pairs[:, 2] - pairs[:, 1], x0 + pairs[:, 4] - pairs[:, 3]
        starts = plan.starts[:-1]
        return np.stack([np.minimum.reduceat(y0, starts), np.minimum.reduceat(x0, starts),
                         np.maximum.reduceat(y1, starts), np.maximum.reduceat(x1, starts)], axis=1)

    def decode(self, plan, tile_wh: tuple[int, int]) -> tuple[list, np.ndarray]:
        """Decode the needed box of every tile of ``plan`` with one nvImageCodec call.

        Returns:
            ``(images, boxes)``: per tile an array-like uint8 ``(y1 - y0, x1 - x0, 3)``
            (an nvimgcodec Image in GPU memory, else a numpy array: the CPU backend's, or the
            slide's own decode where nvImageCodec gave none), and ``boxes``
            from :meth:`boxes`.
        """
        boxes = self.boxes(plan)
        if not len(boxes):
            return [], boxes
        tw, th = tile_wh
        nv = self._nv
        decoder, lock = _shared_decoder(self.device)
        with lock:  # one batch at a time through a decoder (and through the level's code stream)
            level = self._code_stream()
            streams = [level.get_sub_code_stream(region=nv.Region(
                int(r * th + y0), int(c * tw + x0), int(r * th + y1), int(c * tw + x1)))
                for (c, r), (y0, x0, y1, x1) in zip(plan.tiles.tolist(), boxes.tolist())]
            if self.device.type == "cuda":
                stream = torch.cuda.current_stream(self.device).cuda_stream
                images = decoder.decode(streams, params=self._params, cuda_stream=stream)
            else:
                images = decoder.decode(streams, params=self._params)
        out = []
        for k, image in enumerate(images):
            if image is None:  # the slide's strict decoder answers for this tile
                (c, r), (y0, x0, y1, x1) = plan.tiles[k].tolist(), boxes[k].tolist()
                image = self.slide.read_tile(self.level, c, r)[y0:y1, x0:x1]
                self.fallback_tiles += 1
            elif image.buffer_kind != nv.ImageBufferKind.STRIDED_DEVICE:
                image = np.asarray(image)  # a host image (the CPU backend): numpy, no copy
            out.append(image)
        return out, boxes

    def run(self, plan, region: np.ndarray, tile_wh: tuple[int, int]) -> tuple[int, int]:
        """Decode ``plan``'s tiles and paste them into host ``region`` ``[n, h, w, 3]`` (numpy).

        The CPU twin of ``PatchReader._run``: pixels outside the level are
        left as they are (the reader fills them first).

        Returns:
            ``(tiles decoded, pixels decoded)``.
        """
        images, boxes = self.decode(plan, tile_wh)
        pairs, starts = plan.pairs.tolist(), plan.starts.tolist()
        pixels = 0
        for k, image in enumerate(images):
            tile = image if isinstance(image, np.ndarray) else np.asarray(image.cpu())  # a GPU image
            by0, bx0 = int(boxes[k, 0]), int(boxes[k, 1])
            pixels += tile.shape[0] * tile.shape[1]
            for i, py0, py1, px0, px1, ty0, tx0 in pairs[starts[k]:starts[k + 1]]:
                out_y, out_x = ty0 - by0, tx0 - bx0
                region[i, py0:py1, px0:px1] = tile[out_y:out_y + py1 - py0, out_x:out_x + px1 - px0]
        return len(images), pixels

    def read_device(self, plan, n: int, region_wh: tuple[int, int], tile_wh: tuple[int, int]) -> torch.Tensor:
        """The regions of a batch as uint8 ``[n, h, w, 3]`` on :attr:`device`, assembled there.

        Pixels outside the level are ``FILL_VALUE``. On a CPU device this
        runs the same torch code on host tensors (how it is tested without a GPU).
        """
        rw, rh = region_wh
        region = torch.full((n, rh, rw, 3), FILL_VALUE, dtype=torch.uint8, device=self.device)
        images, boxes = self.decode(plan, tile_wh)
        pairs, starts = plan.pairs.tolist(), plan.starts.tolist()
        for k, image in enumerate(images):
            tile = self._as_tensor(image)
            by0, bx0 = int(boxes[k, 0]), int(boxes[k, 1])
            for i, py0, py1, px0, px1, ty0, tx0 in pairs[starts[k]:starts[k + 1]]:
                out_y, out_x = ty0 - by0, tx0 - bx0
                region[i, py0:py1, px0:px1] = tile[out_y:out_y + py1 - py0, out_x:out_x + px1 - px0]
        return region

    def read_batch(self, plan, n: int, reader) -> tuple[torch.Tensor, int, int]:
        """A PatchReader's batch decoded, assembled and resampled on :attr:`device`.

        Args:
            plan: the :class:`~ats_wsi.patches.reader.TilePlan` of the ``n``
                patches' regions (``plan_tiles`` of their origins, ``region_wh``).
            n: number of patches.
            reader: the :class:`~ats_wsi.patches.PatchReader` (its
                ``region_wh``, ``tile_wh``, ``level_wh``, ``factor``,
                ``patch_wh`` say what to read and how to reduce it).

        Returns:
            ``(batch, tiles decoded, pixels decoded)``; ``batch`` is uint8
            ``[n, 3, h, w]`` on :attr:`device`, channels-last strides, the
            pixels of ``reader.read`` on the CPU within JPEG tolerance.
        """
        region = self.read_device(plan, n, reader.region_wh, reader.tile_wh)
        factor = float(reader.factor)
        if factor == 1:
            out = region.movedim(-1, 1)
        elif factor.is_integer():
            out = device_block_mean(region, int(factor))
        else:
            pw, ph = reader.patch_wh
            out = device_area_resample(region, area_weights(pw, factor), area_weights(ph, factor))
        pixels = int(sum(int((b[2] - b[0]) * (b[3] - b[1])) for b in self.boxes(plan)))
        return out.contiguous(memory_format=torch.channels_last), len(plan), pixels

    def _as_tensor(self, image) -> torch.Tensor:
        """A decoded tile as a uint8 ``(h, w, 3)`` tensor on :attr:`device` (no copy when it is there)."""
        if isinstance(image, np.ndarray):  # CPU backend, or the slide's own decode
            tile = torch.from_numpy(np.ascontiguousarray(image))
            return tile.to(self.device, non_blocking=False) if self.device.type != "cpu" else tile
        stream = torch.cuda.current_stream(self.device).cuda_stream  # the capsule is ordered on it
        return torch.from_dlpack(image.to_dlpack(stream))  # a GPU image, zero copy (nvImageCodec's torch sample)

    def close(self) -> None:
        """Drop the code streams (the shared decoder stays for the next reader)."""
        self._streams.clear()


def device_block_mean(region: torch.Tensor, factor: int) -> torch.Tensor:
    """Exact ``factor x factor`` block mean of uint8 ``region [n, f h, f w, 3]`` -> uint8 ``[n, 3, h, w]``.

    The pixels of :func:`ats_wsi.patches._resample.block_mean` (integer sums
    rounded half up, ``(sum + f*f // 2) // (f*f)``), computed where
    ``region`` lives with ``avg_pool2d`` (``divisor_override=1`` gives the
    exact sums: at most ``255 f²``, exact in float32).
    """
    f = int(factor)
    x = region.movedim(-1, 1)
    if f == 1:
        return x
    sums = torch.nn.functional.avg_pool2d(x.float(), f, stride=f, divisor_override=1).to(torch.int32)
    return torch.div(sums + f * f // 2, f * f, rounding_mode="floor").to(torch.uint8)


def device_area_resample(region: torch.Tensor, wx, wy) -> torch.Tensor:
    """Area-resample uint8 ``region [n, H, W, 3]`` -> uint8 ``[n, 3, h, w]`` with the CPU path's weights.

    ``wx``, ``wy``: :class:`ats_wsi.patches._resample.AxisWeights` of the x and
    y axes. The banded weights become dense ``[w, W]`` and ``[h, H]``
    matrices, applied as two matrix products in float32 (x then y, as
    :func:`~ats_wsi.patches._resample.resample_area`), rounded half up and
    clipped: the same pixels up to float rounding (at most 1 apart).
    """
    n, big_h, big_w = region.shape[:3]
    mx = _dense(wx, big_w, region.device)  # [w, W]
    my = _dense(wy, big_h, region.device)  # [h, H]
    x = region.movedim(-1, 1).float()  # [n, 3, H, W]
    x = torch.matmul(x, mx.T)  # [n, 3, H, w]
    x = torch.matmul(my, x)  # [n, 3, h, w]
    return torch.clamp(torch.floor(x + 0.5), 0, 255).to(torch.uint8)


def _dense(weights, n_in: int, device) -> torch.Tensor:
    """Banded AxisWeights -> dense float32 ``[n_out, n_in]`` on ``device``."""
    index = torch.as_tensor(weights.index, device=device)
    weight = torch.as_tensor(weights.weight, device=device)
    dense = torch.zeros((index.shape[0], n_in), dtype=torch.float32, device=device)
    return dense.scatter_add_(1, index, weight)
