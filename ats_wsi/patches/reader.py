"""PatchReader: read only the sampled patches of a slide, each tile decoded once.

Reading a patch costs decoding the tiles under it, so a batch is read in
three steps:

1. plan (:func:`plan_tiles`, vectorised numpy): for every patch the tiles of
   ``level`` it overlaps; their union is what must be decoded, and for every
   (patch, tile) pair the window the tile fills in the patch;
2. decode: each needed tile exactly once (``slide.read_tile``), by the
   calling thread and ``workers - 1`` pool threads pulling tiles from one
   shared queue (the decoders release the GIL); tiles still held by a small
   byte-bounded LRU cache are not decoded again. Without a cache
   (``cache_bytes=0``), JPEG tiles of the tifffile backend are decoded only
   in part when the optional ``ats_wsi_jpeg`` extension is installed
   (``slide.decode_tile_into``, :mod:`ats_wsi.slide._jpegcrop`): the box of
   the tile the batch needs (libjpeg-turbo's cropped decode of its iMCU
   columns, rows above it entropy-decoded only), written by libjpeg's
   scanlines straight into the patches (steps 2 and 3 in one); the pixels
   are those of the whole-tile decode, and a tile broken anywhere still
   raises;
3. assemble: the thread that decoded a tile pastes it into every patch that
   overlaps it (one row-contiguous copy per pair) inside ONE preallocated
   buffer, pinned when the batch goes to a CUDA device. Pixels outside the
   slide are :data:`ats_wsi.slide.FILL_VALUE`.

The buffer is channels-last, ``uint8 [n, h, w, C]``, because a decoded tile
is ``(rows, cols, 3)``: pasting into NHWC copies whole pixel rows, while
pasting into NCHW transposes every pixel (measured: 6-70x slower than the
row copy, up to as slow as decoding the tile). :meth:`PatchReader.read` returns
it as an ``[n, C, h, w]`` view with channels-last strides (what
``torch.channels_last`` means); ``.float()`` and convolutions keep that
layout (on CPU the "feature-small" net ran 1.6x faster on it than on NCHW),
and ``.contiguous()`` makes a plain NCHW copy for code that needs one.

Nothing here ever materialises a whole level: memory is the batch plus the
tile cache.

Physical resolution: ``PatchReader(slide, patch_size=224, mpp=0.5)`` reads
patches at 0.5 µm/px from any slide whose µm/px is known. It decodes the
coarsest stored level at least as fine as that (within ``mpp_tolerance``,
:func:`ats_wsi.slide.resolution.resolution_plan`), assembles for each patch
the region of that level it covers (``factor`` times the patch, same three
steps, each tile still decoded once per batch) and reduces it
(:mod:`._resample`): the exact 2 x 2 mean of level 0 for 0.25 -> 0.5 µm/px
(integers, rounded half up), an area filter with fractional weights for
other ratios (the 2 x 2 mean in C when the optional ``ats_wsi_jpeg`` extension
is installed, same pixels). The regions are the only extra memory: ``n x
factor² x patch`` bytes, one such buffer kept for the next batch (a fresh
one would be page-faulted anew on every read).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LevelError, RegionError, SamplingError
from ..geometry import level0_to_level, size_wh
from ..slide import FILL_VALUE, TileCache
from ..slide._cache import reset_after_fork
from ..slide.resolution import DEFAULT_MPP_TOLERANCE, ResolutionPlan, resolution_plan
from ._buffers import MAX_READ_BYTES, Recycler, check_read_bytes
from ._nvimgcodec import select_decoder
from ._plan import TilePlan, plan_tiles
from ._resample import area_weights, block_mean, region_size, resample_area

try:  # optional C extension (native/): cropped JPEG decoding, and a fast exact block mean
    from ats_wsi_jpeg import block_mean as _native_block_mean
except ImportError:  # pragma: no cover - depends on the environment
    _native_block_mean = None

__all__ = ["MAX_READ_BYTES", "PatchReader", "ReaderStats", "TileCache", "TilePlan", "empty_batch", "plan_tiles"]


@dataclass
class ReaderStats:
    """Counters since the reader was made (or :meth:`PatchReader.reset_stats`).

    Attributes:
        patches: patches returned.
        tiles_decoded: ``slide.read_tile`` calls.
        cache_hits: needed tiles served by the tile cache instead.
        batches: calls of :meth:`PatchReader.read` (and SlideSource reads).
        pixels_read: pixels of the tiles decoded, counted at the level they
            were decoded from (cache hits not counted): what a read cost.
    """

    patches: int = 0
    tiles_decoded: int = 0
    cache_hits: int = 0
    batches: int = 0
    pixels_read: int = 0


def corners(xy, path=None) -> np.ndarray:
    """Patch corners ``(x, y)`` as a new int64 ``[n, 2]`` array, or RegionError.

    Integers pass, and floats that are whole numbers; fractions, NaN, inf,
    strings or a shape that is not ``[n, 2]`` are refused rather than
    truncated or read as black patches.
    """
    if isinstance(xy, torch.Tensor):
        xy = xy.detach().cpu().numpy()
    try:
        arr = np.asarray(xy)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.dtype.kind not in "iuf" or arr.ndim < 1 or arr.shape[-1] != 2:
        raise RegionError(path, f"patch corners must be numbers shaped [n, 2] (x, y), got "
                                f"{arr.dtype} {tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.floor(arr)).any() or (np.abs(arr) >= 2.0 ** 62).any():
            raise RegionError(path, "patch corners must be whole numbers of pixels (no fractions, NaN or inf)")
    elif arr.dtype.kind == "u" and arr.size and arr.max() >= 2 ** 63:
        raise RegionError(path, "patch corners out of range")
    return arr.astype(np.int64).reshape(-1, 2)


def empty_batch(shape: tuple[int, ...], pin: bool = False) -> torch.Tensor:
    """An uninitialised uint8 host tensor of ``shape``; pinned when ``pin``.

    Unpinned batches are numpy allocations wrapped by torch (no copy): the C
    heap hands the same pages back batch after batch, while a fresh
    ``torch.empty`` of a few MB is mapped anew and page-faulted on every
    first write (measured: 12 ms against 1 ms to fill 64 patches of 256²).
    Pinned batches come from torch's caching host allocator.
    """
    if pin:
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    return torch.from_numpy(np.empty(shape, dtype=np.uint8))


class PatchReader:
    """Read fixed-size patches of one slide level, or at a physical resolution, into a uint8 batch tensor.

    Args:
        slide: an open :class:`ats_wsi.slide.Slide` (any backend).
        level: the pyramid level patches are read from (default 0); not
            with ``mpp``.
        patch_size: int or ``(w, h)``, in pixels of ``level``, or at ``mpp``.
        mpp: read patches at this µm/px instead of a level (needs the
            slide's µm/px: its metadata, ``open_slide(path, mpp=...)`` or
            ``slide.mpp = ...``); see the module docstring.
        mpp_tolerance: relative tolerance of ``mpp`` (default 5 %): a
            level within it is read as it is, a ratio within it of an
            integer is an exact block mean.
        upsample: allow ``mpp`` finer than level 0 (else
            :class:`~ats_wsi.errors.ResolutionError`).
        workers: threads decoding tiles, the calling thread included
            (1: everything in the calling thread, no hand-off at all).
        cache_bytes: bound of the decoded-tile LRU cache (0 disables it).
        crop: with no cache (``cache_bytes=0``), decode only the part of each
            JPEG tile the batch needs, straight into the batch (the optional
            ``ats_wsi_jpeg`` extension, tifffile backend; same pixels, see
            the module docstring); False always decodes whole tiles.
        device: where :meth:`read` puts the batch; for CUDA the batch is
            assembled in pinned host memory and copied with ``non_blocking``
            (unless nvImageCodec decodes it there, see ``decoder``).
        decoder: ``"auto"``, ``"native"`` or ``"nvimgcodec"`` (on ``device``,
            its CPU backend for ``"cpu"``), see :data:`._nvimgcodec.DECODERS`.

    ``read(xy)`` takes level-0 top-left corners, like ``slide.read_region``,
    and returns exactly what ``read_region(xy[i], level, patch_size)`` would,
    for every i, as ``uint8 [n, C, h, w]`` (channels-last strides, see the
    module docstring). One reader may be used by several threads at once.

    With ``mpp``, patch ``i`` is the region of ``read_region(xy[i], level,
    region_wh)`` reduced by ``factor`` (``level``, ``factor``, ``region_wh``
    are attributes; ``downsample`` is level-0 pixels per output pixel, so a
    patch covers ``patch_size x downsample`` level-0 pixels).
    """

    def __init__(
        self,
        slide,
        level: int | None = None,
        patch_size: int | tuple[int, int] = 256,
        *,
        mpp: float | None = None,
        mpp_tolerance: float = DEFAULT_MPP_TOLERANCE,
        upsample: bool = False,
        workers: int = 2,
        cache_bytes: int = 64 * 2**20,
        crop: bool = True,
        device: str | torch.device = "cpu",
        decoder: str = "auto",
    ):
        self.mpp: float | None = None
        self.resolution: ResolutionPlan | None = None
        if mpp is not None:
            if level is not None:
                raise TypeError("PatchReader takes a level or an mpp, not both")
            self.resolution = resolution_plan(slide, mpp, tolerance=mpp_tolerance, upsample=upsample)
            self.mpp = self.resolution.mpp
            level = self.resolution.level
        elif level is None:
            level = 0
        pyramid = slide.pyramid  # stored levels, then computed ones (Slide.pyramid)
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) \
                or not 0 <= int(level) < len(pyramid):
            raise LevelError(slide.path, f"level must be an int in 0..{len(pyramid) - 1}, got {level!r}")
        try:
            pw, ph = size_wh(patch_size, "patch size")
        except SamplingError as error:
            raise RegionError(slide.path, str(error)) from None
        self.slide = slide
        self.level = int(level)
        self.patch_wh = (int(pw), int(ph))
        self.level_downsample = float(pyramid[self.level].downsample)
        self.downsample = self.level_downsample if self.resolution is None else self.resolution.downsample
        self.factor = 1.0 if self.resolution is None else self.resolution.factor
        self.region_wh = region_size(self.patch_wh, self.factor)
        self._weights = None if float(self.factor).is_integer() else (
            area_weights(self.patch_wh[0], self.factor), area_weights(self.patch_wh[1], self.factor))
        self.level_wh = (int(pyramid[self.level].width), int(pyramid[self.level].height))
        self.tile_wh = tuple(int(v) for v in slide.tile_size(self.level))
        self.device = torch.device(device)
        self.workers = max(1, int(workers))
        self.cache = TileCache(cache_bytes)
        can = getattr(slide, "can_decode_into", None)
        self.crop = bool(crop and self.cache.max_bytes <= 0 and can is not None and can(self.level))
        self.stats = ReaderStats()
        self._batches = Recycler()  # returned batches, reused once the caller has dropped them
        self._regions = Recycler()  # region buffers of the mpp path (no page faults per batch)
        self._nv = select_decoder(slide, self.level, decoder, self.device)  # None: the native decoder
        self.decoder = "native" if self._nv is None else "nvimgcodec"
        self._start_threads()
        reset_after_fork(self)

    def _start_threads(self) -> None:
        """The decode pool, the read-ahead pool (made on first use) and the locks."""
        self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="ats-tile") if self.workers > 1 else None
        self._batch_pool: ThreadPoolExecutor | None = None
        self._batch_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker): the parent's pool threads do not exist here,
        and a lock one of them held stays held; make new ones (the parent's are left alone)."""
        self._start_threads()
        self._batches = Recycler()
        self._regions = Recycler()

    def __repr__(self) -> str:
        at = "" if self.mpp is None else f"mpp={self.mpp:g}, factor={self.factor:g}, "
        return (f"PatchReader({self.slide.path!r}, {at}level={self.level}, patch_wh={self.patch_wh}, "
                f"tile_wh={self.tile_wh}, workers={self.workers}, cache_bytes={self.cache.max_bytes})")

    # ------------------------------------------------------------------ API

    def level_origin(self, xy) -> np.ndarray:
        """Level-0 ``(x, y)`` int [n, 2] -> int64 [n, 2] top-left in pixels of the reader's level."""
        return level0_to_level(corners(xy, self.slide.path), self.level_downsample)

    def read(self, xy) -> torch.Tensor:
        """Read the patches whose top-left corners are ``xy``.

        Args:
            xy: int [n, 2] (array, tensor or list), ``(x, y)`` in level-0
                pixels; boxes may reach outside the slide.

        Returns:
            uint8 ``[n, C, h, w]`` (C = 3, ``(w, h) = patch_size``) on the
            reader's device, channels-last strides. Patch ``i`` equals
            ``slide.read_region(xy[i], level, patch_size)`` transposed to CHW
            (with ``mpp``: that of ``region_wh``, reduced by ``factor``).
            Its memory is handed to a later read of the same size only once
            nothing holds it any more (no tensor, view or array made from
            it alive; :mod:`._buffers`), so a batch you keep never changes.

        Raises:
            whatever ``slide.read_tile`` raises (e.g. ``CorruptSlideError``
            for a truncated or garbled tile), unchanged.
        """
        if isinstance(xy, torch.Tensor):
            xy = xy.detach().cpu().numpy()
        return self.read_level(self.level_origin(xy))

    def read_level(self, origin_xy: np.ndarray) -> torch.Tensor:
        """:meth:`read` of top-left corners int64 ``[n, 2]`` given in pixels of the reader's level."""
        self._check_bytes(len(origin_xy))
        if self._nv is not None and self.device.type == "cuda":  # decoded and resampled on the GPU
            plan = plan_tiles(origin_xy, self.region_wh, self.tile_wh, self.level_wh)
            out, tiles, pixels = self._nv.read_batch(plan, len(origin_xy), self)
            self._count(1, len(origin_xy), tiles, pixels)
            return out
        out = self._empty((len(origin_xy),))
        self.read_level_into(origin_xy, out.numpy())
        return self._deliver(out)

    def read_async(self, xy) -> Future:
        """Start :meth:`read` in a background thread; returns a Future of its result.

        The next batch is then read and decoded while the current one computes.
        ``xy`` is copied at once, so the caller may reuse its array.
        """
        if isinstance(xy, torch.Tensor):
            xy = xy.detach().cpu().numpy()
        xy = corners(xy, self.slide.path)  # checked (and copied) now, in the caller's thread
        with self._batch_lock:
            if self._batch_pool is None:
                self._batch_pool = ThreadPoolExecutor(1, thread_name_prefix="ats-batch")
        return self._batch_pool.submit(self.read, xy)

    def read_level_into(self, origin_xy: np.ndarray, out: np.ndarray) -> TilePlan:
        """Fill ``out`` with the patches at ``origin_xy``, given in pixels of the reader's level.

        The primitive under :meth:`read` and :class:`~ats_wsi.patches.SlideSource`
        (which already holds level pixels and fills one slot of a larger batch).
        With ``mpp``, ``level`` is the level decoded: each patch is the
        ``region_wh`` region there, reduced by ``factor``.

        Args:
            origin_xy: int [n, 2], top-left ``(x, y)`` in pixels of ``level``.
            out: uint8 ``[n, h, w, 3]`` (any writable array whose rows are
                contiguous; its content is overwritten).

        Returns:
            the :class:`TilePlan` that was executed.
        """
        pw, ph = self.patch_wh
        if out.shape != (len(origin_xy), ph, pw, 3):
            raise ValueError(f"out must be [{len(origin_xy)}, {ph}, {pw}, 3], got {out.shape}")
        self._check_bytes(len(origin_xy), batch=False)
        plan = plan_tiles(origin_xy, self.region_wh, self.tile_wh, self.level_wh)
        region = out if self.factor == 1 else self._regions.empty((len(origin_xy), *self.region_wh[::-1], 3))
        for i in plan.partial.tolist():
            region[i] = FILL_VALUE
        if self._nv is None:
            self._run(plan, region)
        else:
            self._count(0, 0, *self._nv.run(plan, region, self.tile_wh))
        if self._weights is not None:
            resample_area(region, *self._weights, out)
        elif self.factor != 1:
            (_native_block_mean or block_mean)(region, int(self.factor), out)
        self._count(1, len(origin_xy), 0, 0)
        return plan

    def _count(self, batches: int, patches: int, tiles: int, pixels: int) -> None:
        with self._stats_lock:
            self.stats.batches += batches
            self.stats.patches += patches
            self.stats.tiles_decoded += tiles
            self.stats.pixels_read += pixels

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats = ReaderStats()

    def close(self) -> None:
        """Stop the worker threads and drop the cache (the slide stays open). Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=True)
        self.cache.clear()
        if self._nv is not None:
            self._nv.close()
        self._regions.clear()
        self._batches.clear()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_bytes(self, n: int, batch: bool = True) -> None:
        """Refuse a read of ``n`` patches that would hold over :data:`MAX_READ_BYTES`."""
        check_read_bytes(self.slide.path, n, self.patch_wh if batch else None,
                         self.region_wh if self.factor != 1 else None, self.level)

    def _empty(self, lead: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised uint8 ``[*lead, h, w, 3]`` host tensor (pinned for CUDA)."""
        pw, ph = self.patch_wh
        if self.device.type == "cuda":
            return empty_batch((*lead, ph, pw, 3), pin=True)
        return torch.from_numpy(self._batches.empty((*lead, ph, pw, 3)))

    def _deliver(self, nhwc: torch.Tensor) -> torch.Tensor:
        """NHWC host batch -> ``[..., C, h, w]`` channels-last view on the reader's device."""
        if self.device.type != "cpu":
            nhwc = nhwc.to(self.device, non_blocking=nhwc.is_pinned())
        return nhwc.movedim(-1, -3)

    def _run(self, plan: TilePlan, out: np.ndarray) -> None:
        """Decode every tile of ``plan`` once and paste it, with up to ``workers`` threads."""
        if not len(plan):
            return
        jobs = iter(range(len(plan)))  # shared queue: next() on a range iterator is atomic under the GIL
        pairs = plan.pairs.tolist()  # Python ints: slicing with them is several times cheaper
        tiles = plan.tiles.tolist()
        starts = plan.starts.tolist()
        failed: list[BaseException] = []
        helpers = min(self.workers, len(plan)) - 1
        futures = [self._pool.submit(self._drain, jobs, tiles, starts, pairs, out, failed)
                   for _ in range(helpers)] if helpers > 0 else []
        self._drain(jobs, tiles, starts, pairs, out, failed)
        for f in futures:
            f.result()
        if failed:
            raise failed[0]

    def _drain(self, jobs, tiles, starts, pairs, out: np.ndarray, failed: list) -> None:
        """Take tiles from ``jobs`` until none is left (or one failed); decode and paste each."""
        decoded = hits = pixels = 0
        level, cache = self.level, self.cache
        use_cache = cache.max_bytes > 0
        read_tile = self.slide.read_tile
        decode_into = self.slide.decode_tile_into if self.crop else None
        try:
            for k in jobs:
                if failed:
                    return
                col, row = tiles[k]
                if decode_into is not None:  # only the batch's part of the tile, straight into out
                    pixels += decode_into(level, col, row, out, pairs[starts[k]:starts[k + 1]])
                    decoded += 1
                    continue
                tile = cache.get((level, col, row)) if use_cache else None
                if tile is None:
                    tile = read_tile(level, col, row)
                    decoded += 1
                    pixels += tile.shape[0] * tile.shape[1]
                    if use_cache:
                        cache.put((level, col, row), tile)
                else:
                    hits += 1
                for i, py0, py1, px0, px1, ty0, tx0 in pairs[starts[k]:starts[k + 1]]:
                    out[i, py0:py1, px0:px1] = tile[ty0:ty0 + py1 - py0, tx0:tx0 + px1 - px0]
        except BaseException as exc:  # noqa: BLE001 - re-raised by _run in the caller's thread
            failed.append(exc)
        finally:
            with self._stats_lock:
                self.stats.tiles_decoded += decoded
                self.stats.cache_hits += hits
                self.stats.pixels_read += pixels
