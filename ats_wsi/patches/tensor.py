"""Patches from an in-memory high-resolution batch, in one gather."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SamplingError
from ..geometry import size_wh as _size_wh


class TensorSource:
    """A patch source over a high-resolution batch already in memory.

    The patches of the whole batch come out of ONE gather; there is no Python
    loop per patch and no padded copy of the image. Every row of every patch,
    channel and batch item is a run of ``pw`` pixels in ``x_high``'s memory,
    and one ``index_select`` over a strided view of that memory (no copy)
    copies them all. Rows above or below the image are clamped to the border
    and runs of boxes crossing the left or right border read into the
    neighbouring row; the pixels outside the image are then set to zero in
    place (whole rows by index, columns only in the patches crossing the left
    or right border). Finding those costs small device-to-host syncs on CUDA.

    The per-pixel path serves every patch when autograd must see it
    (``x_high`` requires grad and grad is enabled: the gradient of the patches
    then flows back to ``x_high``, overlapping patches accumulate, pixels
    outside the image get none), when a patch is larger than the image, or
    when ``x_high``'s columns are not contiguous (e.g. channels-last); it
    also re-reads the rare border patches whose runs would leave the storage.

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

    def extract(self, xy: Tensor, size_wh) -> Tensor:
        """Patches whose top-left corners are ``xy``, zeros outside the image.

        Args:
            xy: integer ``[B, n, 2]``, ``(x, y)`` top-left of each box in
                pixels of ``x_high``; may be negative or run past the image.
            size_wh: ``(w, h)`` of a patch (or one int for a square).

        Returns:
            ``[B, n, C, h, w]`` of ``x_high``'s dtype and device.
        """
        x = self.x_high
        batch, _, height, width = x.shape
        pw, ph = _size_wh(size_wh, "patch size")
        if xy.ndim != 3 or xy.shape[0] != batch or xy.shape[2] != 2:
            raise SamplingError(f"xy must be [B={batch}, n, 2] (x, y), got {tuple(xy.shape)}")
        if xy.is_floating_point() or xy.is_complex():
            raise SamplingError(f"xy must hold integer pixels, got {xy.dtype}")
        xy = xy.to(device=x.device, dtype=torch.long)
        b = torch.arange(batch, device=x.device)[:, None].expand(xy.shape[:2])  # [B, n]
        if (x.requires_grad and torch.is_grad_enabled()) or ph > height or pw > width \
                or x.stride(-1) != 1 or min(x.stride()) < 0:
            return _gather_grid(x, b, xy, ph, pw)
        patches, misplaced = _gather_runs(x, xy, ph, pw)
        _zero_outside_(patches, xy, height, width)
        if misplaced.any():
            where = misplaced.nonzero(as_tuple=True)
            patches[where] = _gather_grid(x, where[0], xy[where], ph, pw)
        return patches  # [B, n, C, ph, pw]


def _zero_outside_(patches: Tensor, xy: Tensor, height: int, width: int) -> None:
    """Zero, in place, the pixels of ``patches [B, n, C, ph, pw]`` outside the image.

    Whole rows above or below the image are filled by row index (only they
    are written); columns left or right of it are zeroed in the patches that
    cross those borders only. Finding either costs a small device-to-host
    sync on CUDA.
    """
    batch, n, channels, ph, pw = patches.shape
    rows = xy[..., 1, None] + torch.arange(ph, device=xy.device)  # [B, n, ph]
    cols = xy[..., 0, None] + torch.arange(pw, device=xy.device)  # [B, n, pw]
    rows_out = ((rows < 0) | (rows >= height))[:, :, None, :].expand(batch, n, channels, ph)
    out_rows = rows_out.reshape(-1).nonzero().squeeze(1)
    if out_rows.numel():
        patches.view(-1, pw).index_fill_(0, out_rows, 0)
    cols_in = (cols >= 0) & (cols < width)  # [B, n, pw]
    where = (~cols_in).any(-1).nonzero(as_tuple=True)
    if where[0].numel():
        crossing = patches[where]  # [k, C, ph, pw]
        patches[where] = torch.where(cols_in[where][:, None, None, :], crossing,
                                     crossing.new_zeros(()), out=crossing)


def _gather_runs(x: Tensor, xy: Tensor, ph: int, pw: int) -> tuple[Tensor, Tensor]:
    """Every patch row as one run of ``pw`` pixels, in one ``index_select``.

    ``x``'s memory is viewed (no copy) as overlapping runs: row ``r`` of the
    view is memory ``[r, r + pw)``. A patch row is the run starting at its
    row's first pixel plus ``x0``; rows above or below the image are clamped
    to the border, and ``x0`` is clamped to ``[-pw, W]``, so a run of a box
    crossing the left or right border reads into the neighbouring row: those
    pixels lie outside the image and the caller zeroes them. A run that would
    start before or end after ``x``'s storage is clamped into it and its
    patch flagged as ``misplaced`` (it can only happen at the first or last
    row of the whole batch; the caller gathers those patches again).

    Args:
        x: ``[B, C, H, W]`` with unit stride along W and no negative stride.
        xy: long ``[B, n, 2]``, ``(x, y)`` top-left of each box.
        ph, pw: patch rows and cols, ``pw <= W``.

    Returns:
        patches ``[B, n, C, ph, pw]`` (contiguous, not differentiable; right
        inside the image, unspecified outside) and misplaced bool ``[B, n]``.
    """
    batch, channels, height, width = x.shape
    s_b, s_c, s_h, _ = x.stride()
    span = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))
    start = x.storage_offset()
    before = min(pw, start)  # storage a run may read before x's first element
    after = min(pw, x.untyped_storage().nbytes() // x.element_size() - start - span)
    last = before + span + after - pw  # last valid run start
    runs = x.as_strided((last + 1, pw), (1, 1), start - before)
    rows = (xy[..., 1, None] + torch.arange(ph, device=x.device)).clamp(0, height - 1)  # [B, n, ph]
    channel = torch.arange(channels, device=x.device)[:, None] * s_c  # [C, 1]
    first = (before + torch.arange(batch, device=x.device)[:, None] * s_b
             + xy[..., 0].clamp(-pw, width))  # [B, n]
    offsets = first[..., None, None] + channel + rows[..., None, :] * s_h  # [B, n, C, ph]
    misplaced = ((offsets < 0) | (offsets > last)).flatten(2).any(-1)  # [B, n]
    patches = runs.index_select(0, offsets.clamp(0, last).reshape(-1))
    return patches.view(*offsets.shape, pw), misplaced


def _zero_outside(patches: Tensor, xy: Tensor, height: int, width: int) -> Tensor:
    """``patches [..., C, ph, pw]`` at top-left ``xy [..., 2]``, zero outside the image."""
    ph, pw = patches.shape[-2:]
    rows = xy[..., 1, None] + torch.arange(ph, device=xy.device)  # [..., ph]
    cols = xy[..., 0, None] + torch.arange(pw, device=xy.device)  # [..., pw]
    inside = (((rows >= 0) & (rows < height))[..., None, :, None]
              & ((cols >= 0) & (cols < width))[..., None, None, :])  # [..., 1, ph, pw]
    return torch.where(inside, patches, patches.new_zeros(()))


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
    return _zero_outside(patches, xy, height, width)
