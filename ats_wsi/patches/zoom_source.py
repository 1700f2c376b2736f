"""ZoomSource: the pixels of attention that zooms, read from slide files.

Two reads per slide and batch, each one :class:`PatchReader` plan (every
tile under it decoded once):

1. regions: for the ``n1`` stage-1 cells drawn, a square of ``zoom_size`` µm
   around each cell's centre (:func:`ats_wsi.geometry.region_xy0`: shifted
   onto the slide, never cut, so that all regions share one size), read at
   ``zoom_mpp`` µm/px; overlapping regions share their tiles;
2. patches: for the ``n2`` stage-2 cells drawn in each region, a box of
   ``patch_size`` pixels at ``patch_mpp`` (:func:`ats_wsi.geometry.zoom_cell_to_xy0`).

Memory is ``n1 · R² · 3`` bytes of regions plus ``n1 · n2`` patches per
slide (``R = round(zoom_size / zoom_mpp)``), whatever the slide's size, and
both are checked against :data:`~._buffers.MAX_READ_BYTES` before anything
is allocated.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import SamplingError
from ..geometry import cell_centre_level0, cell_grid_level0, region_xy0, size_wh, zoom_cell_to_xy0
from ..slide.resolution import DEFAULT_MPP_TOLERANCE
from ._buffers import check_read_bytes
from .base import ReadGeometry
from .reader import PatchReader

__all__ = ["ZoomSource", "MAX_REGION_SIDE"]

MAX_REGION_SIDE = 1 << 14
"""Most pixels on a region's side at ``zoom_mpp`` (16 384: one region is then
768 MiB of RGB); a larger ``zoom_size / zoom_mpp`` is a typo, not a zoom."""


class ZoomSource:
    """Regions at ``zoom_mpp`` and patches at ``patch_mpp`` of a batch of slides.

    Args:
        slides: open slides (their µm/px known), one per batch element.
        low_downsample: level-0 pixels per pixel of the low view the
            stage-1 attention net sees; one float, or one per slide.
        zoom_mpp: µm/px the regions are read at (the stage-2 net's view).
        zoom_size: a region's side in µm.
        patch_mpp: µm/px of the patches the feature net sees.
        patch_size: ``(w, h)`` of a patch in pixels at ``patch_mpp``, or one int.
        mpp_tolerance, upsample, workers, cache_bytes, device, decoder: as
            in :class:`PatchReader` (two readers per slide).

    Raises:
        SamplingError: a non-positive or non-finite ``zoom_mpp``,
            ``zoom_size`` or ``low_downsample``; a region of more than
            :data:`MAX_REGION_SIDE` pixels a side; no slides.
        ResolutionError: a slide whose µm/px is unknown, or finer reads
            than its level 0 without ``upsample``.
    """

    def __init__(
        self,
        slides: Sequence,
        *,
        low_downsample: float | Sequence[float],
        zoom_mpp: float,
        zoom_size: float,
        patch_mpp: float,
        patch_size: int | tuple[int, int],
        mpp_tolerance: float = DEFAULT_MPP_TOLERANCE,
        upsample: bool = False,
        workers: int = 2,
        cache_bytes: int = 64 * 2**20,
        device: str | torch.device = "cpu",
        decoder: str = "auto",
    ):
        self.slides = list(slides)
        if not self.slides:
            raise SamplingError("ZoomSource needs at least one slide")
        for name, value in (("zoom_mpp", zoom_mpp), ("zoom_size", zoom_size)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SamplingError(f"{name} must be a positive number of µm(/px), got {value!r}")
        side = int(math.floor(zoom_size / zoom_mpp + 0.5))
        if not 1 <= side <= MAX_REGION_SIDE:
            raise SamplingError(f"a region of {zoom_size:g} µm at {zoom_mpp:g} µm/px is {side} px a side; "
                                f"it must be 1 to {MAX_REGION_SIDE} px (raise zoom_mpp or lower zoom_size)")
        lows = [float(low_downsample)] * len(self.slides) if np.isscalar(low_downsample) \
            else [float(v) for v in low_downsample]
        if len(lows) != len(self.slides) or not all(math.isfinite(v) and v > 0 for v in lows):
            raise SamplingError(f"low_downsample must be one positive number or one per slide "
                                f"({len(self.slides)}), got {low_downsample!r}")
        self.low_downsamples = lows
        self.zoom_mpp, self.zoom_size = float(zoom_mpp), float(zoom_size)
        self.region_wh = (side, side)
        self.patch_wh = size_wh(patch_size, "patch_size")
        common = dict(mpp_tolerance=mpp_tolerance, upsample=upsample, workers=workers,
                      cache_bytes=cache_bytes, device=device, decoder=decoder)
        self.region_readers = [PatchReader(s, patch_size=self.region_wh, mpp=zoom_mpp, **common)
                               for s in self.slides]
        self.patch_readers = [PatchReader(s, patch_size=self.patch_wh, mpp=patch_mpp, **common)
                              for s in self.slides]

    def zoom_downsample(self, b: int) -> float:
        """Level-0 pixels per region pixel of slide ``b`` (as read, snapped within the tolerance)."""
        return float(self.region_readers[b].downsample)

    def patch_downsample(self, b: int) -> float:
        """Level-0 pixels per patch pixel of slide ``b``."""
        return float(self.patch_readers[b].downsample)

    def region_corners(self, cells: Tensor, *, low_shape, map_shape, receptive_field=0) -> Tensor:
        """Where the regions of the drawn stage-1 cells lie.

        Args:
            cells: long ``[B, n1, 2]``, ``(row, col)`` on the stage-1 map.
            low_shape: ``(rows, cols)`` of the low view.
            map_shape: ``(rows, cols)`` of the stage-1 map.
            receptive_field: the stage-1 net's ``rf`` in low pixels.

        Returns:
            long ``[B, n1, 2]``: each region's top-left ``(x, y)`` in level-0
            pixels (on ``cells``' device), the square of side
            ``region_wh · zoom_downsample(b)`` around the cell's centre,
            shifted onto the slide.
        """
        self._check_lead(cells, 3, "cells")
        out = []
        for b, slide in enumerate(self.slides):
            centres = cell_centre_level0(cells[b].cpu(), low_shape=low_shape, map_shape=map_shape,
                                         low_downsample=self.low_downsamples[b], receptive_field=receptive_field)
            side0 = self.region_wh[0] * self.zoom_downsample(b)
            out.append(region_xy0(centres, side0, slide.dimensions))
        return torch.stack(out).to(cells.device)

    def read_regions(self, corners_xy0: Tensor) -> Tensor:
        """The regions at ``zoom_mpp``: uint8 ``[B, n1, 3, R, R]`` on the source's device.

        Args:
            corners_xy0: long ``[B, n1, 2]`` from :meth:`region_corners`.

        Each slide's regions are one read (one tile plan): a tile under
        several regions is decoded once.
        """
        self._check_lead(corners_xy0, 3, "region corners")
        n1 = corners_xy0.shape[1]
        check_read_bytes(self.slides[0].path, len(self.slides) * n1, self.region_wh, None, 0)
        return torch.stack([r.read(corners_xy0[b].cpu()) for b, r in enumerate(self.region_readers)])

    def region_inside(self, corners_xy0: Tensor) -> Tensor | None:
        """bool ``[B, n1, R, R]``: True on region pixels whose centre lies on the slide; None when all do.

        Regions are shifted onto the slide, so pixels fall outside only on
        slides smaller than a region (they are read as fill and must not be
        drawn at stage 2).
        """
        self._check_lead(corners_xy0, 3, "region corners")
        rows, cols = self.region_wh[1], self.region_wh[0]
        axes = []  # per slide: (y inside [n1, rows], x inside [n1, cols]); the [n1, R, R] mask only if needed
        for b, slide in enumerate(self.slides):
            w, h = slide.dimensions
            ds = self.zoom_downsample(b)
            xy = corners_xy0[b].cpu().double()
            x = xy[:, 0, None] + (torch.arange(cols, dtype=torch.float64) + 0.5) * ds
            y = xy[:, 1, None] + (torch.arange(rows, dtype=torch.float64) + 0.5) * ds
            axes.append(((y >= 0) & (y < h), (x >= 0) & (x < w)))
        if all(bool(y.all()) and bool(x.all()) for y, x in axes):
            return None
        return torch.stack([y[:, :, None] & x[:, None, :] for y, x in axes]).to(corners_xy0.device)

    def region_tissue(self, corners_xy0: Tensor, mask1: Tensor | None, *, low_shape,
                      receptive_field=0) -> Tensor | None:
        """bool ``[B, n1, R, R]``: True on region pixels that lie on the slide and in a stage-1 cell
        the stage-1 mask keeps (tissue); None when there is no mask and every pixel is on the slide.

        Stage 2 then draws only where stage 1 may (its grid pools this pixel mask, a cell kept
        if any of its pixels is): no patch of a region at the tissue's edge lands on the glass.

        Args:
            corners_xy0: long ``[B, n1, 2]`` from :meth:`region_corners`.
            mask1: bool ``[B, h1, w1]``, the stage-1 grid mask (None: no mask).
            low_shape: ``(rows, cols)`` of the low view.
            receptive_field: the stage-1 net's ``rf`` in low pixels.
        """
        inside = self.region_inside(corners_xy0)
        if mask1 is None:
            return inside
        self._check_lead(corners_xy0, 3, "region corners")
        rows, cols = self.region_wh[1], self.region_wh[0]
        h1, w1 = int(mask1.shape[-2]), int(mask1.shape[-1])
        out = []
        for b in range(len(self.slides)):
            (cw, ch), (ox, oy) = cell_grid_level0(low_shape=low_shape, map_shape=(h1, w1),
                                                  low_downsample=self.low_downsamples[b],
                                                  receptive_field=receptive_field)
            ds = self.zoom_downsample(b)
            xy = corners_xy0[b].cpu().double()
            x = xy[:, 0, None] + (torch.arange(cols, dtype=torch.float64) + 0.5) * ds  # [n1, cols] level 0
            y = xy[:, 1, None] + (torch.arange(rows, dtype=torch.float64) + 0.5) * ds
            col, row = torch.floor((x - ox) / cw).long(), torch.floor((y - oy) / ch).long()
            ok_c, ok_r = (col >= 0) & (col < w1), (row >= 0) & (row < h1)
            grid = mask1[b].cpu()
            kept = grid[row.clamp(0, h1 - 1)[:, :, None], col.clamp(0, w1 - 1)[:, None, :]]  # [n1, rows, cols]
            out.append(kept & ok_r[:, :, None] & ok_c[:, None, :])
        tissue = torch.stack(out).to(corners_xy0.device)
        return tissue if inside is None else tissue & inside

    def patch_corners(self, cells: Tensor, corners_xy0: Tensor, *, map_shape, receptive_field=0) -> Tensor:
        """Level-0 top-left corners of the patches of the drawn stage-2 cells.

        Args:
            cells: long ``[B, n1, n2, 2]``, ``(row, col)`` on each region's
                stage-2 map.
            corners_xy0: long ``[B, n1, 2]``, the regions' corners.
            map_shape: ``(rows, cols)`` of the stage-2 map.
            receptive_field: the stage-2 net's ``rf`` in region pixels.

        Returns:
            long ``[B, n1, n2, 2]``, ``(x, y)`` in level-0 pixels.
        """
        self._check_lead(cells, 4, "stage-2 cells")
        region_shape = self.region_wh[::-1]
        out = [zoom_cell_to_xy0(cells[b].cpu(), region_xy0=corners_xy0[b].cpu()[:, None, :],
                                region_shape=region_shape, map_shape=map_shape,
                                zoom_downsample=self.zoom_downsample(b), patch_downsample=self.patch_downsample(b),
                                patch_size=self.patch_wh, receptive_field=receptive_field)
               for b in range(len(self.slides))]
        return torch.stack(out).to(cells.device)

    def read_patches(self, corners_xy0: Tensor) -> Tensor:
        """The patches at ``patch_mpp``: uint8 ``[B, n1, n2, 3, h, w]``, each slide's in one read."""
        self._check_lead(corners_xy0, 4, "patch corners")
        lead = corners_xy0.shape[1:3]
        check_read_bytes(self.slides[0].path, len(self.slides) * lead.numel(), self.patch_wh, None, 0)
        return torch.stack([r.read(corners_xy0[b].reshape(-1, 2).cpu()).unflatten(0, lead)
                            for b, r in enumerate(self.patch_readers)])

    def read_patches_of(self, b: int, corners_xy0: Tensor) -> Tensor:
        """Some patches of slide ``b`` alone (those a feature cache lacks): uint8 ``[m, 3, h, w]``.

        Args:
            b: the slide of the batch.
            corners_xy0: long ``[m, 2]``, level-0 corners from :meth:`patch_corners`.
        """
        if not isinstance(corners_xy0, Tensor) or corners_xy0.dim() != 2 or corners_xy0.shape[-1] != 2:
            got = tuple(corners_xy0.shape) if isinstance(corners_xy0, Tensor) else type(corners_xy0).__name__
            raise SamplingError(f"patch corners of one slide must be a tensor [m, 2], got {got}")
        check_read_bytes(self.slides[b].path, len(corners_xy0), self.patch_wh, None, 0)
        return self.patch_readers[b].read(corners_xy0.cpu())

    def patch_geometry(self, b: int) -> ReadGeometry:
        """How slide ``b``'s patches are read (level, downsample, factor, µm/px): what a pretrained
        encoder's resolution check and feature cache key take, as for a one-stage source."""
        reader, slide = self.patch_readers[b], self.slides[b]
        return ReadGeometry(slide, str(slide.path), int(reader.level), float(reader.downsample), reader.mpp,
                            float(reader.factor), float(reader.resolution.read_mpp))

    def boxes_level0(self, corners_xy0: Tensor, kind: str) -> Tensor:
        """``(x0, y0, w0, h0)`` int64 ``[..., 4]`` in level-0 pixels of regions or patches.

        Args:
            corners_xy0: long ``[B, ..., 2]`` from :meth:`region_corners` or
                :meth:`patch_corners`.
            kind: ``"region"`` or ``"patch"``.
        """
        if kind not in ("region", "patch"):
            raise SamplingError(f"kind must be 'region' or 'patch', got {kind!r}")
        wh, ds = (self.region_wh, self.zoom_downsample) if kind == "region" else (self.patch_wh, self.patch_downsample)
        sizes = torch.tensor([[math.floor(v * ds(b) + 0.5) for v in wh] for b in range(len(self.slides))])
        sizes = sizes.reshape(len(self.slides), *([1] * (corners_xy0.dim() - 2)), 2).expand_as(corners_xy0.cpu())
        return torch.cat([corners_xy0.cpu().long(), sizes], dim=-1)

    def zoom_cell_grid(self, b: int, map_shape, receptive_field=0) -> tuple[tuple[float, float], tuple[float, float]]:
        """Where a region's stage-2 cells lie: ``((cw, ch), (ox, oy))`` in level-0 pixels, the
        origin relative to the region's corner (:func:`~ats_wsi.geometry.cell_grid_level0`)."""
        return cell_grid_level0(low_shape=self.region_wh[::-1], map_shape=map_shape,
                                low_downsample=self.zoom_downsample(b), receptive_field=receptive_field)

    def close(self) -> None:
        """Stop the readers (the slides stay open). Idempotent."""
        for reader in self.region_readers + self.patch_readers:
            reader.close()

    def _check_lead(self, t: Tensor, dims: int, name: str) -> None:
        if not isinstance(t, Tensor) or t.dim() != dims or t.shape[0] != len(self.slides) or t.shape[-1] != 2:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise SamplingError(f"{name} must be a tensor [B={len(self.slides)}, ..., 2] with {dims} axes, got {got}")
