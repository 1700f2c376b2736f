"""Patches from an in-memory high-resolution batch, in one gather."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SamplingError


class TensorSource:
    """A patch source over a high-resolution batch already in memory.

    The patches of the whole batch come out of ONE gather; there is no Python
    loop per patch and no padded copy of the image:

    - patches inside the image are copied as runs of ``pw`` pixels: one
      ``index_select`` over a strided view of ``x_high``'s memory (no copy)
      takes every row of every patch, channel and batch item at once;
    - the few patches that cross the border are gathered again with clamped
      per-pixel index grids, and the pixels outside the image set to zero.
      Finding them costs one small device-to-host sync on CUDA.

    The per-pixel path serves every patch when autograd must see it
    (``x_high`` requires grad and grad is enabled: the gradient of the patches
    then flows back to ``x_high``, overlapping patches accumulate, pixels
    outside the image get none), when a patch is larger than the image, or
    when ``x_high``'s columns are not contiguous (e.g. channels-last).

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
        if (x.requires_grad and torch.is_grad_enabled()) or ph > height or pw > width \
                or x.stride(-1) != 1 or min(x.stride()) < 0:
            return _gather_grid(x, b, xy, ph, pw)
        x0, y0 = xy[..., 0], xy[..., 1]
        inner = torch.stack([x0.clamp(0, width - pw), y0.clamp(0, height - ph)], dim=-1)
        patches = _gather_rows(x, inner, ph, pw)
        crossing = (x0 < 0) | (y0 < 0) | (x0 > width - pw) | (y0 > height - ph)  # [B, n]
        where = crossing.nonzero(as_tuple=True)
        if where[0].numel():
            patches[where] = _gather_grid(x, where[0], xy[where], ph, pw)
        return patches  # [B, n, C, ph, pw]


def _gather_rows(x: Tensor, xy: Tensor, ph: int, pw: int) -> Tensor:
    """Gather boxes lying inside ``x`` as whole runs of ``pw`` pixels.

    Each patch row is one row of a view of ``x``'s memory as overlapping runs
    ``[offset, offset + pw)`` (stride 1 both ways, no copy), so one
    ``index_select`` copies every row of every patch of every channel.

    Args:
        x: ``[B, C, H, W]`` with unit stride along W.
        xy: long ``[B, n, 2]``, ``(x, y)`` top-left, each box inside the image.
        ph, pw: patch rows and cols.

    Returns:
        ``[B, n, C, ph, pw]``, contiguous. Not differentiable.
    """
    batch, channels = x.shape[:2]
    s_b, s_c, s_h, _ = x.stride()
    span = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))
    runs = x.as_strided((span - pw + 1, pw), (1, 1))  # row r = memory [r, r + pw)
    c = torch.arange(channels, device=x.device)[:, None] * s_c  # [C, 1]
    i = torch.arange(ph, device=x.device) * s_h  # [ph]
    first = torch.arange(batch, device=x.device)[:, None] * s_b + xy[..., 1] * s_h + xy[..., 0]
    offsets = first[..., None, None] + c + i  # [B, n, C, ph]
    return runs.index_select(0, offsets.reshape(-1)).view(*offsets.shape, pw)


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
