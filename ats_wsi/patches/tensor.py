"""Patches from an in-memory high-resolution batch, in one gather."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SamplingError


class TensorSource:
    """A patch source over a high-resolution batch already in memory.

    The patches of the whole batch come out of ONE advanced-indexing gather;
    there is no Python loop per patch and no padded copy of the image:

    - patches inside the image are read from a sliding-window view of
      ``x_high`` (``unfold``: no copy), indexed by (batch, row, col) of their
      top-left corners, so each patch row is copied as a contiguous run;
    - the few patches that cross the border are gathered again with clamped
      per-pixel index grids, and the pixels outside the image set to zero.
      Finding them costs one small device-to-host sync on CUDA.

    When ``x_high`` requires grad (and grad is enabled), or a patch is larger
    than the image, every patch takes the per-pixel path, which autograd
    differentiates: the gradient of the patches flows back to ``x_high``
    (overlapping patches accumulate; pixels outside the image get none).

    Any dtype (uint8 and float alike) on any device.

    Args:
        x_high: ``[B, C, H, W]``, the high-resolution images.
    """

    def __init__(self, x_high: Tensor):
        if not isinstance(x_high, Tensor) or x_high.ndim != 4:
            shape = tuple(x_high.shape) if isinstance(x_high, Tensor) else type(x_high).__name__
            raise SamplingError(f"TensorSource needs a [B, C, H, W] tensor, got {shape}")
        self.x_high = x_high

    def __repr__(self) -> str:
        return (f"TensorSource(shape={tuple(self.x_high.shape)}, dtype={self.x_high.dtype}, "
                f"device={self.x_high.device})")

    def scale(self, low_shape) -> tuple[float, float]:
        """``(H / rows, W / cols)``: high pixels per low pixel.

        Args:
            low_shape: ``(rows, cols)`` of the low image (a full ``x_low.shape``
                works too: its last two entries are used).
        """
        rows, cols = tuple(low_shape)[-2:]
        height, width = self.x_high.shape[-2:]
        return height / rows, width / cols

    def extract(self, xy: Tensor, size) -> Tensor:
        """Patches whose top-left corners are ``xy``, zeros outside the image.

        Args:
            xy: integer ``[B, n, 2]``, ``(x, y)`` top-left of each box in
                pixels of ``x_high``; may be negative or run past the image.
            size: ``(ph, pw)`` (or one int for a square patch).

        Returns:
            ``[B, n, C, ph, pw]`` of ``x_high``'s dtype and device.
        """
        x = self.x_high
        batch, _, height, width = x.shape
        ph, pw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if xy.ndim != 3 or xy.shape[0] != batch or xy.shape[2] != 2:
            raise SamplingError(f"xy must be [B={batch}, n, 2] (x, y), got {tuple(xy.shape)}")
        if xy.is_floating_point() or xy.is_complex():
            raise SamplingError(f"xy must hold integer pixels, got {xy.dtype}")
        if ph < 1 or pw < 1:
            raise SamplingError(f"patch size must be positive, got {(ph, pw)}")
        xy = xy.to(device=x.device, dtype=torch.long)
        b = torch.arange(batch, device=x.device)[:, None].expand(xy.shape[:2])  # [B, n]
        if (x.requires_grad and torch.is_grad_enabled()) or ph > height or pw > width:
            return _gather_grid(x, b, xy, ph, pw)
        x0, y0 = xy[..., 0], xy[..., 1]
        windows = x.unfold(2, ph, 1).unfold(3, pw, 1)  # view [B, C, H-ph+1, W-pw+1, ph, pw]
        patches = windows[b, :, y0.clamp(0, height - ph), x0.clamp(0, width - pw)]
        crossing = (x0 < 0) | (y0 < 0) | (x0 > width - pw) | (y0 > height - ph)  # [B, n]
        where = crossing.nonzero(as_tuple=True)
        if where[0].numel():
            patches[where] = _gather_grid(x, where[0], xy[where], ph, pw)
        return patches  # [B, n, C, ph, pw]


def _gather_grid(x: Tensor, b: Tensor, xy: Tensor, ph: int, pw: int) -> Tensor:
    """Per-pixel gather with zero padding, differentiable w.r.t. ``x``.

    Args:
        x: ``[B, C, H, W]``.
        b: long ``[...]``, the batch item of each box.
        xy: long ``[..., 2]``, ``(x, y)`` top-left of each box.
        ph, pw: patch rows and cols.

    Returns:
        ``[..., C, ph, pw]``: pixels outside the image are zero.
    """
    channels, height, width = x.shape[1:]
    rows = xy[..., 1, None] + torch.arange(ph, device=x.device)  # [..., ph]
    cols = xy[..., 0, None] + torch.arange(pw, device=x.device)  # [..., pw]
    c = torch.arange(channels, device=x.device)[:, None, None]  # [C, 1, 1]
    patches = x[b[..., None, None, None], c,
                rows.clamp(0, height - 1)[..., None, :, None],
                cols.clamp(0, width - 1)[..., None, None, :]]  # [..., C, ph, pw]
    inside = (((rows >= 0) & (rows < height))[..., None, :, None]
              & ((cols >= 0) & (cols < width))[..., None, None, :])  # [..., 1, ph, pw]
    return torch.where(inside, patches, patches.new_zeros(()))
