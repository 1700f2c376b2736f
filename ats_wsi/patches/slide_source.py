"""SlideSource: slide files as the high-resolution source of AttentionSampler."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import SamplingError
from ..sampling.geometry import level_to_level0
from .reader import PatchReader

__all__ = ["SlideSource"]


class SlideSource:
    """Patches of a batch of slides, read from ``level`` by one PatchReader each.

    Its high-resolution frame is the pixel grid of ``level``; the low image
    the attention net sees is a level (or resampling) of downsample
    ``low_downsample``, so ``scale = low_downsample / level_downsample`` for
    every slide of the batch (the low images of a batch share one µm/px,
    which is what makes them batchable).

    Args:
        slides: open slides, one per batch element.
        level: int, or one level per slide, patches are read from.
        low_downsample: level-0 pixels per low-image pixel (same for all).
        readers: optional existing PatchReaders to reuse (keyed like slides);
            their decoded-tile caches then serve repeated draws across calls.
        workers, cache_bytes, device: passed to new PatchReaders.

    ``extract`` returns uint8 ``[B, n, 3, ph, pw]``; boxes reaching outside a
    slide are filled with :data:`ats_wsi.slide.FILL_VALUE`.
    """

    def __init__(
        self,
        slides: Sequence,
        level: int | Sequence[int] = 0,
        *,
        low_downsample: float,
        readers: Sequence[PatchReader] | None = None,
        workers: int = 2,
        cache_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
    ):
        self.slides = list(slides)
        levels = [int(level)] * len(self.slides) if np.isscalar(level) else [int(v) for v in level]
        if len(levels) != len(self.slides):
            raise SamplingError(f"got {len(levels)} levels for {len(self.slides)} slides")
        self.levels = levels
        self.low_downsample = float(low_downsample)
        self.device = torch.device(device)
        self._workers, self._cache_bytes = workers, cache_bytes
        self._readers: dict[tuple[int, tuple[int, int]], PatchReader] = {}
        for reader in readers or ():
            self._readers[(id(reader.slide), reader.patch_wh)] = reader
        self._owned: list[PatchReader] = []
        self.patches_read = 0

    def level_downsample(self, b: int) -> float:
        return float(self.slides[b].level_downsamples[self.levels[b]])

    def scale(self, low_shape) -> tuple[float, float]:
        """``low_downsample / level_downsample`` on both axes (same for every slide)."""
        ratios = {round(self.low_downsample / self.level_downsample(b), 6) for b in range(len(self.slides))}
        if len(ratios) != 1:
            raise SamplingError(
                "the slides of one batch read patches at levels of different downsamples "
                f"({sorted(ratios)}); batch slides whose chosen levels agree, or use batch size 1"
            )
        s = ratios.pop()
        return s, s

    def reader(self, b: int, size_wh: tuple[int, int]) -> PatchReader:
        """The PatchReader of slide ``b`` for patches of ``size_wh`` (made once)."""
        slide = self.slides[b]
        key = (id(slide), tuple(size_wh))
        reader = self._readers.get(key)
        if reader is None or reader.level != self.levels[b]:
            reader = PatchReader(slide, self.levels[b], size_wh, workers=self._workers,
                                 cache_bytes=self._cache_bytes, device="cpu")
            self._readers[key] = reader
            self._owned.append(reader)
        return reader

    def level0_xy(self, xy: Tensor) -> Tensor:
        """``xy`` long [B, n, 2] in pixels of each slide's level -> level-0 (x, y)."""
        return torch.stack([level_to_level0(xy[b], self.level_downsample(b)) for b in range(xy.shape[0])])

    def extract(self, xy: Tensor, size) -> Tensor:
        """Patches at top-left ``xy`` (long [B, n, 2], pixels of the level), size (ph, pw)."""
        ph, pw = (size, size) if isinstance(size, int) else tuple(size)
        if xy.shape[0] != len(self.slides):
            raise SamplingError(f"xy has {xy.shape[0]} batch entries for {len(self.slides)} slides")
        xy0 = self.level0_xy(xy.detach().cpu())
        futures = [self.reader(b, (pw, ph)).read_async(xy0[b].numpy()) for b in range(len(self.slides))]
        batch = torch.stack([f.result() for f in futures])
        self.patches_read += int(xy.shape[0] * xy.shape[1])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.device != batch.device:
            batch = batch.to(self.device)
        return batch

    def close(self) -> None:
        """Stop the readers this source made (not the slides, nor readers given to it)."""
        for reader in self._owned:
            reader.close()
        self._owned.clear()
