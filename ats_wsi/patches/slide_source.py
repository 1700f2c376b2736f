"""SlideSource: slide files as the high-resolution source of AttentionSampler."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import SamplingError
from ..geometry import level_to_level0, size_wh as _size_wh
from ..slide.resolution import DEFAULT_MPP_TOLERANCE, downsample_to_mpp, resolution_plan
from ._buffers import check_read_bytes
from .base import PatchBoxes, ReadGeometry
from .reader import PatchReader, empty_batch

__all__ = ["SlideSource"]


class SlideSource:
    """Patches of a batch of slides, read from ``level`` by one PatchReader per slide.

    Its high-resolution frame is the pixel grid of ``level``; the low image
    the attention net sees has downsample ``low_downsample`` (level-0 pixels
    per low pixel), so ``scale = low_downsample / level_downsample``.

    Slides of one batch may differ slightly in both downsamples (a pyramid
    level of a 99 999-pixel-wide slide is not exactly 4x smaller; a
    :class:`~ats_wsi.data.SlideDataset` keeps a level within 1 % of the
    wanted downsample as it is). ``scale`` then answers for slide 0 and
    ``extract`` moves every other slide's box centres by its own ratio,
    so each box still covers the field of its cell (box centres are linear in
    the scale, see :func:`ats_wsi.geometry.cell_to_xy`).

    At a physical resolution (``mpp`` given, ``level`` ignored), the
    high-resolution frame of slide ``b`` is its pixel grid at ``mpp`` µm/px:
    ``level_downsample(b)`` is then the *effective* downsample, level-0
    pixels per patch pixel as read (``mpp / slide.mpp``, snapped within the
    tolerance, :func:`~ats_wsi.slide.resolution.resolution_plan`), and every
    formula below holds with it: a box of ``patch_size`` covers
    ``patch_size x level_downsample(b)`` level-0 pixels.

    Args:
        slides: open slides, one per batch element.
        level: int, or one level per slide, that patches are read from.
        mpp, mpp_tolerance, upsample: read patches at ``mpp`` µm/px instead
            (see :class:`PatchReader`).
        low_downsample: level-0 pixels per low-image pixel; one float, or one
            per slide.
        readers: optional existing PatchReaders to reuse (matched by slide,
            level and patch size); their decoded-tile caches then serve
            repeated draws across calls.
        workers, cache_bytes: passed to the PatchReaders this source makes.
        device: where ``extract`` puts the batch (pinned host memory and a
            non-blocking copy for CUDA, unless nvImageCodec decodes there).
        decoder: ``"auto"``, ``"native"`` or ``"nvimgcodec"``, passed to the
            PatchReaders this source makes (see :class:`PatchReader`).

    ``extract`` returns uint8 ``[B, n, 3, h, w]`` (channels-last strides,
    like :meth:`PatchReader.read`); boxes reaching outside a slide are
    filled with :data:`ats_wsi.slide.FILL_VALUE`.
    """

    def __init__(
        self,
        slides: Sequence,
        level: int | Sequence[int] = 0,
        *,
        low_downsample: float | Sequence[float],
        readers: Sequence[PatchReader] | None = None,
        workers: int = 2,
        cache_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
        mpp: float | None = None,
        mpp_tolerance: float = DEFAULT_MPP_TOLERANCE,
        upsample: bool = False,
        decoder: str = "auto",
    ):
        self.slides = list(slides)
        n = len(self.slides)
        if n == 0:
            raise SamplingError("SlideSource needs at least one slide")
        self.mpp = None if mpp is None else float(mpp)
        self._mpp_args = dict(mpp_tolerance=mpp_tolerance, upsample=upsample)
        given = {id(r.slide): r.resolution for r in readers or () if r.mpp is not None and r.mpp == self.mpp}
        self.resolutions = None if mpp is None else [
            given.get(id(s)) or resolution_plan(s, mpp, tolerance=mpp_tolerance, upsample=upsample)
            for s in self.slides]
        if self.resolutions is not None:
            level = [r.level for r in self.resolutions]
        self.levels = [int(level)] * n if np.isscalar(level) else [int(v) for v in level]
        lows = [float(low_downsample)] * n if np.isscalar(low_downsample) else [float(v) for v in low_downsample]
        if len(self.levels) != n or len(lows) != n:
            raise SamplingError(f"got {len(self.levels)} levels and {len(lows)} low downsamples for {n} slides")
        if min(lows) <= 0:
            raise SamplingError(f"low_downsample must be positive, got {lows}")
        self.low_downsamples = lows
        self.device = torch.device(device)
        self._workers, self._cache_bytes, self._decoder = workers, cache_bytes, decoder
        self._readers: dict[tuple, PatchReader] = {}
        for reader in readers or ():
            self._readers[(id(reader.slide), reader.level, reader.patch_wh, reader.mpp)] = reader
        self._owned: list[PatchReader] = []
        self.patches_read = 0

    @property
    def low_downsample(self) -> float:
        """Slide 0's low downsample (the one ``scale`` answers for)."""
        return self.low_downsamples[0]

    def level_downsample(self, b: int) -> float:
        """Downsample of slide ``b``'s patch level (with ``mpp``: level-0 pixels per patch pixel as read)."""
        if self.resolutions is not None:
            return float(self.resolutions[b].downsample)
        return float(self.slides[b].pyramid[self.levels[b]].downsample)

    def geometry(self, b: int) -> ReadGeometry:
        """How slide ``b``'s patches are read: level, downsample, resample factor, µm/px.

        ``read_mpp`` is the plan's at a physical resolution, else the slide's
        µm/px times the level's downsample (None where the slide has none).
        """
        slide, downsample = self.slides[b], self.level_downsample(b)
        if self.resolutions is not None:
            plan = self.resolutions[b]
            return ReadGeometry(slide, str(slide.path), int(self.levels[b]), downsample, self.mpp,
                                float(plan.factor), float(plan.read_mpp))
        mpp = slide.mpp
        return ReadGeometry(slide, str(slide.path), int(self.levels[b]), downsample, None, None,
                            downsample_to_mpp(downsample, mpp) if mpp else None)

    def ratio(self, b: int) -> float:
        """Pixels of slide ``b``'s patch level per pixel of its low image."""
        return self.low_downsamples[b] / self.level_downsample(b)

    def scale(self, low_shape) -> tuple[float, float]:
        """``(sy, sx)`` = ``low_downsample / level_downsample`` of slide 0, on both axes.

        Args:
            low_shape: ``(rows, cols)`` of the (padded) low batch; unused: a
                slide's scale does not depend on the low image's size.
        """
        s = self.ratio(0)
        return s, s

    def reader(self, b: int, size_wh: tuple[int, int]) -> PatchReader:
        """The PatchReader of slide ``b`` for patches of ``size_wh`` = (w, h) (made once)."""
        slide = self.slides[b]
        key = (id(slide), self.levels[b], tuple(size_wh), self.mpp)
        reader = self._readers.get(key)
        if reader is None:  # kept: made once per slide and size, mpp or not, and closed by close()
            where = dict(mpp=self.mpp, **self._mpp_args) if self.mpp is not None else dict(level=self.levels[b])
            reader = PatchReader(slide, patch_size=tuple(size_wh), workers=self._workers, cache_bytes=self._cache_bytes,
                                 device=self.device, decoder=self._decoder, **where)
            self._readers[key] = reader
            self._owned.append(reader)
        return reader

    def level_xy(self, xy: Tensor, size_wh) -> Tensor:
        """Boxes placed with slide 0's scale -> boxes of each slide's own scale.

        Args:
            xy: long ``[B, n, 2]``, top-left ``(x, y)`` in pixels of the patch
                level, as placed with :meth:`scale`.
            size_wh: ``(w, h)`` of a patch, or one int.

        Returns:
            long ``[B, n, 2]``: the same cells' boxes for each slide's own
            ratio (box centres scaled by ``ratio(b) / ratio(0)``; unchanged
            where the ratios agree).
        """
        out = xy.clone()
        for b in range(1, xy.shape[0]):
            out[b] = self._own_scale(b, xy[b], size_wh)
        return out

    def _own_scale(self, b: int, xy: Tensor, size_wh) -> Tensor:
        """Slide ``b``'s boxes ``[k, 2]`` placed with slide 0's scale -> its own (see :meth:`level_xy`)."""
        pw, ph = _size_wh(size_wh, "patch size")
        factor = self.ratio(b) / self.ratio(0)
        if abs(factor - 1.0) <= 1e-9:
            return xy
        half = torch.tensor([pw / 2, ph / 2], dtype=torch.float64)
        return torch.floor((xy.to(torch.float64) + half) * factor - half + 0.5).long()

    def level0_xy(self, xy: Tensor) -> Tensor:
        """``xy`` long ``[B, n, 2]`` in pixels of each slide's level -> level-0 ``(x, y)`` (round half up)."""
        return torch.stack([level_to_level0(xy[b], self.level_downsample(b)) for b in range(xy.shape[0])])

    def boxes_level0(self, xy: Tensor, size_wh) -> Tensor:
        """The boxes :meth:`extract` reads for ``xy``, in level-0 pixels.

        Args:
            xy: long ``[B, n, 2]``, top-left ``(x, y)`` in pixels of the patch
                level, placed with :meth:`scale` (an ``AttentionResult.xy``).
            size_wh: ``(w, h)`` of a patch in pixels of the patch level, or
                one int (the sampler's ``patch_size``).

        Returns:
            int64 ``[B, n, 4]``, ``(x0, y0, w0, h0)`` in level-0 pixels of
            each slide: ``slides[b].read_region((x0, y0), level, (w, h))``
            reads patch ``[b, i]``; ``(w0, h0)`` is ``(w, h)`` times the
            level's downsample, rounded half up.
        """
        pw, ph = _size_wh(size_wh, "patch size")
        xy0 = self.level0_xy(self.level_xy(xy.detach().to("cpu", torch.long), (pw, ph)))
        size0 = torch.stack([level_to_level0(torch.tensor([pw, ph]), self.level_downsample(b))
                             for b in range(xy0.shape[0])])  # [B, 2]
        return torch.cat([xy0, size0[:, None, :].expand_as(xy0)], dim=-1)

    def boxes(self, xy: Tensor, size_wh) -> PatchBoxes:
        """:meth:`boxes_level0` of ``xy`` with each slide's :meth:`geometry`."""
        return PatchBoxes(self.boxes_level0(xy, size_wh), tuple(self.geometry(b) for b in range(len(self.slides))))

    def extract(self, xy: Tensor, size_wh) -> Tensor:
        """Patches at top-left ``xy`` of the patch level.

        Args:
            xy: long ``[B, n, 2]``, ``(x, y)`` in pixels of the patch level
                (placed with :meth:`scale`, i.e. slide 0's ratio).
            size_wh: ``(w, h)`` of a patch, or one int.

        Returns:
            uint8 ``[B, n, 3, h, w]`` on ``device``: patch ``[b, i]`` equals
            ``slides[b].read_region(level0_xy(level_xy(xy))[b, i], level, (w, h))``.
        """
        pw, ph = _size_wh(size_wh, "patch size")
        if xy.ndim != 3 or xy.shape[0] != len(self.slides) or xy.shape[2] != 2:
            raise SamplingError(f"xy must be [B={len(self.slides)}, n, 2] (x, y), got {tuple(xy.shape)}")
        xy = self.level_xy(xy.detach().to("cpu", torch.long), (pw, ph))
        batch, n = xy.shape[:2]
        check_read_bytes(self.slides[0].path, batch * n, (pw, ph), None, self.levels[0])  # before allocating
        if self.device.type == "cuda" and any(self.reader(b, (pw, ph)).decoder == "nvimgcodec" for b in range(batch)):
            out = torch.empty((batch, n, ph, pw, 3), dtype=torch.uint8, device=self.device)
            for b in range(batch):  # on the GPU where nvImageCodec decodes; pinned + non_blocking elsewhere
                out[b] = self._read_level(b, xy[b], (pw, ph)).movedim(1, -1)
            return out.movedim(-1, -3)
        pin = self.device.type == "cuda"
        out = empty_batch((batch, n, ph, pw, 3), pin=pin)
        buf = out.numpy()
        for b in range(batch):
            self._read_into(b, xy[b], (pw, ph), buf[b])
        return self._deliver(out, pin)

    def extract_slide(self, b: int, xy: Tensor, size_wh) -> Tensor:
        """Patches of slide ``b`` alone: :meth:`extract` of ``xy`` long ``[k, 2]`` -> uint8 ``[k, 3, h, w]``.

        What a feature cache uses to read only the boxes it lacks, slide by slide.
        """
        pw, ph = _size_wh(size_wh, "patch size")
        if xy.ndim != 2 or xy.shape[1] != 2 or not 0 <= int(b) < len(self.slides):
            raise SamplingError(f"extract_slide needs a slide index in 0..{len(self.slides) - 1} and xy [k, 2], "
                                f"got {b} and {tuple(xy.shape)}")
        xy = self._own_scale(int(b), xy.detach().to("cpu", torch.long), (pw, ph))  # as extract does for slide b
        check_read_bytes(self.slides[int(b)].path, len(xy), (pw, ph), None, self.levels[int(b)])
        if self.device.type == "cuda" and self.reader(int(b), (pw, ph)).decoder == "nvimgcodec":
            return self._read_level(int(b), xy, (pw, ph))
        pin = self.device.type == "cuda"
        out = empty_batch((len(xy), ph, pw, 3), pin=pin)
        self._read_into(int(b), xy, (pw, ph), out.numpy())
        return self._deliver(out, pin)

    def _read_level(self, b: int, xy: Tensor, size_wh: tuple[int, int]) -> Tensor:
        """Slide ``b``'s patches at ``xy`` ``[k, 2]`` (as :meth:`_read_into`) -> uint8 ``[k, 3, h, w]`` on device."""
        reader = self.reader(b, size_wh)
        self.patches_read += len(xy)
        if self.mpp is None:
            return reader.read_level(xy.numpy())
        return reader.read_level(reader.level_origin(level_to_level0(xy, self.level_downsample(b)).numpy()))

    def _read_into(self, b: int, xy: Tensor, size_wh: tuple[int, int], buf) -> None:
        """Slide ``b``'s patches at level pixels ``xy`` ``[k, 2]`` into ``buf`` ``[k, h, w, 3]``."""
        reader = self.reader(b, size_wh)
        if self.mpp is None:  # level pixels go to the reader as they are: no round trip through level 0
            reader.read_level_into(xy.numpy(), buf)
        else:  # patch-frame pixels -> level 0 (what boxes_level0 reports) -> the level decoded
            xy0 = level_to_level0(xy, self.level_downsample(b))
            reader.read_level_into(reader.level_origin(xy0.numpy()), buf)
        self.patches_read += len(xy)

    def _deliver(self, out: Tensor, pin: bool) -> Tensor:
        if self.device.type != "cpu":
            out = out.to(self.device, non_blocking=pin)
        return out.movedim(-1, -3)

    def close(self) -> None:
        """Stop the readers this source made (not the slides, nor readers given to it)."""
        for reader in self._owned:
            reader.close()
        owned = {id(r) for r in self._owned}
        self._readers = {k: r for k, r in self._readers.items() if id(r) not in owned}
        self._owned.clear()
