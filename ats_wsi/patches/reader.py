"""PatchReader: read only the sampled patches of a slide, each tile decoded once.

Reading a patch costs decoding the tiles under it, so a batch is read in
three steps:

1. plan: for every patch, the tiles of ``level`` it overlaps (vectorised);
   the union of those tiles is what must be decoded;
2. decode: each needed tile exactly once, in a thread pool (the decoders
   release the GIL), skipping tiles still held by a small byte-bounded LRU
   cache;
3. assemble: as a tile is decoded, its worker pastes it into every patch of
   the batch that overlaps it, inside one preallocated ``uint8 [n, C, h, w]``
   buffer (pinned when the target is a CUDA device); pixels outside the slide
   keep :data:`ats_wsi.slide.FILL_VALUE`.

Nothing here ever materialises a whole level.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RegionError

__all__ = ["PatchReader", "ReaderStats", "TileCache", "plan_tiles"]


class TileCache:
    """A thread-safe LRU cache of decoded tiles bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key: tuple, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass
class ReaderStats:
    """Counters since the reader was made (or :meth:`PatchReader.reset_stats`)."""

    patches: int = 0
    tiles_decoded: int = 0
    cache_hits: int = 0
    batches: int = 0


def plan_tiles(
    origin_xy: np.ndarray, patch_wh: tuple[int, int], tile_wh: tuple[int, int], level_wh: tuple[int, int]
) -> dict[tuple[int, int], list[tuple[int, int, int, int, int, int, int]]]:
    """Which tiles each patch needs, and where each tile's pixels go.

    Args:
        origin_xy: int64 [n, 2], top-left (x, y) of each patch in pixels of the level.
        patch_wh: (w, h) of a patch in pixels of the level.
        tile_wh: (w, h) of the level's tiles.
        level_wh: (w, h) of the level.

    Returns:
        ``{(col, row): [(patch, py0, py1, px0, px1, ty0, tx0), ...]}``: for
        each needed tile, the patches it contributes to, the destination
        window ``[py0:py1, px0:px1]`` inside the patch and the matching
        top-left ``(ty0, tx0)`` inside the tile.
    """
    pw, ph = patch_wh
    tw, th = tile_wh
    lw, lh = level_wh
    x0 = origin_xy[:, 0].astype(np.int64)
    y0 = origin_xy[:, 1].astype(np.int64)
    # The part of each patch that lies inside the level.
    vx0, vy0 = np.maximum(x0, 0), np.maximum(y0, 0)
    vx1, vy1 = np.minimum(x0 + pw, lw), np.minimum(y0 + ph, lh)
    inside = (vx1 > vx0) & (vy1 > vy0)
    c0, c1 = vx0 // tw, (vx1 - 1) // tw
    r0, r1 = vy0 // th, (vy1 - 1) // th
    plan: dict[tuple[int, int], list] = {}
    for i in np.flatnonzero(inside):
        for row in range(int(r0[i]), int(r1[i]) + 1):
            # Rows of the patch covered by this tile row, in level pixels.
            ya, yb = max(int(vy0[i]), row * th), min(int(vy1[i]), (row + 1) * th)
            for col in range(int(c0[i]), int(c1[i]) + 1):
                xa, xb = max(int(vx0[i]), col * tw), min(int(vx1[i]), (col + 1) * tw)
                plan.setdefault((col, row), []).append(
                    (int(i), ya - int(y0[i]), yb - int(y0[i]), xa - int(x0[i]), xb - int(x0[i]), ya - row * th, xa - col * tw)
                )
    return plan


class PatchReader:
    """Read fixed-size patches of one slide level into a uint8 batch tensor.

    Args:
        slide: an open :class:`ats_wsi.slide.Slide`.
        level: the pyramid level patches are read from.
        patch_size: int or (w, h), in pixels of ``level``.
        workers: decode threads (tile decoders release the GIL).
        cache_bytes: bound of the decoded-tile LRU cache (0 disables it).
        device: where :meth:`read` puts the batch; for CUDA the batch is
            assembled in pinned host memory and copied with ``non_blocking``.

    ``read(xy)`` takes level-0 top-left corners, like ``slide.read_region``,
    and returns exactly what ``read_region(xy[i], level, patch_size)`` would,
    for every i, as ``uint8 [n, C, h, w]``.
    """

    def __init__(
        self,
        slide,
        level: int = 0,
        patch_size: int | tuple[int, int] = 256,
        *,
        workers: int = 2,
        cache_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
    ):
        if not 0 <= level < slide.level_count:
            from ..errors import LevelError

            raise LevelError(slide.path, f"level {level} out of range 0..{slide.level_count - 1}")
        pw, ph = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if pw <= 0 or ph <= 0:
            raise RegionError(slide.path, f"patch size must be positive, got {(pw, ph)}")
        self.slide = slide
        self.level = int(level)
        self.patch_wh = (int(pw), int(ph))
        self.downsample = float(slide.level_downsamples[level])
        self.level_wh = tuple(int(v) for v in slide.level_dimensions[level])
        self.tile_wh = tuple(int(v) for v in slide.tile_size(level))
        self.device = torch.device(device)
        self.workers = max(1, int(workers))
        self.cache = TileCache(cache_bytes)
        self.stats = ReaderStats()
        self._stats_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ats-tile")
        self._batch_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ API

    def level_origin(self, xy) -> np.ndarray:
        """Level-0 (x, y) int [n, 2] -> top-left in pixels of the reader's level."""
        from ..slide import level_origin

        xy = np.asarray(xy, dtype=np.int64).reshape(-1, 2)
        return level_origin(xy, self.downsample)

    def read(self, xy) -> torch.Tensor:
        """Read patches whose top-left corners are ``xy`` (level-0 (x, y), int [n, 2]).

        Returns:
            uint8 tensor [n, C, h, w] on the reader's device.
        """
        origin = self.level_origin(xy)
        n = len(origin)
        pw, ph = self.patch_wh
        pin = self.device.type == "cuda"
        out_t = torch.empty((n, 3, ph, pw), dtype=torch.uint8, pin_memory=pin)
        out = out_t.numpy()
        from ..slide import FILL_VALUE

        out.fill(FILL_VALUE)
        plan = plan_tiles(origin, self.patch_wh, self.tile_wh, self.level_wh)
        futures = [self._pool.submit(self._fill_from_tile, key, targets, out) for key, targets in plan.items()]
        done, _ = wait(futures)
        for f in done:
            f.result()  # re-raise the first decode error (e.g. a truncated tile)
        with self._stats_lock:
            self.stats.patches += n
            self.stats.batches += 1
        if self.device.type == "cpu":
            return out_t
        return out_t.to(self.device, non_blocking=True)

    def read_async(self, xy) -> Future:
        """Start :meth:`read` in the background; returns a Future of the batch.

        Lets the next batch be read and decoded while the current one computes.
        """
        if self._batch_pool is None:
            self._batch_pool = ThreadPoolExecutor(1, thread_name_prefix="ats-batch")
        xy = np.array(xy, dtype=np.int64, copy=True)
        return self._batch_pool.submit(self.read, xy)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats = ReaderStats()

    def close(self) -> None:
        """Stop the worker threads and drop the cache (the slide stays open)."""
        self._pool.shutdown(wait=True)
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=True)
        self.cache.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals

    def _tile(self, col: int, row: int) -> np.ndarray:
        key = (self.level, col, row)
        tile = self.cache.get(key)
        if tile is not None:
            with self._stats_lock:
                self.stats.cache_hits += 1
            return tile
        tile = self.slide.read_tile(self.level, col, row)
        with self._stats_lock:
            self.stats.tiles_decoded += 1
        self.cache.put(key, tile)
        return tile

    def _fill_from_tile(self, key, targets, out: np.ndarray) -> None:
        tile = self._tile(*key)
        for i, py0, py1, px0, px1, ty0, tx0 in targets:
            block = tile[ty0 : ty0 + (py1 - py0), tx0 : tx0 + (px1 - px0), :3]
            out[i, :, py0:py1, px0:px1] = block.transpose(2, 0, 1)
