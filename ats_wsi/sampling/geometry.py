"""Where an attention-map cell lies in the high-resolution image, and back.

Three frames take part:

- the **low** image ``x_low`` of shape ``(rows, cols)`` that the attention
  net sees;
- the **attention map** of shape ``(map_rows, map_cols)`` that the attention
  net returns; cells are addressed as ``(row, col)``;
- the **high** frame the patches are read from; a patch is addressed by the
  top-left ``(x, y)`` of its box, in high-resolution pixels.

``scale = (sy, sx)`` is high-resolution pixels per low-resolution pixel. The
map's stride over the low image is *derived* from the shapes, never assumed.
``rf`` is the attention net's receptive field in low pixels when its
convolutions are "valid" (the map then shrinks by about ``rf`` at the
borders), and ``0`` for "same" padding, where the map covers the whole view
whatever the true receptive field. Per axis, in high-resolution pixels, as
in the reference library::

    steps = (low − rf) · scale / map             # one cell's extent
    start = round((rf / 2) · scale + cell · steps + steps / 2 − patch / 2)

so each patch is centred on its cell's block, shifted by half the receptive
field. ``round`` is round-half-up (``floor(v + 0.5)``), computed in float64.

Border boxes are **not** shifted inside the image: ``start`` may be negative
and ``start + patch`` may run past the edge. Patch sources read the pixels
outside the image as zeros (``TensorSource``, ``Slide.read_region``), so a
border cell's patch stays centred on its cell and its content is zero-padded
on the outside.

Arrays are ``(row, col) = (y, x)``; boxes and points are ``(x, y)``. The one
place that swaps the two orders is :func:`rowcol_to_xy` / :func:`xy_to_rowcol`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import SamplingError

__all__ = [
    "rowcol_to_xy",
    "xy_to_rowcol",
    "cell_steps",
    "cell_to_xy",
    "point_to_cell",
    "box_to_cell",
    "level_to_level0",
    "level0_to_level",
    "cell_to_level0_box",
    "level0_to_cell",
]

# --------------------------------------------------------------------------
# (x, y) <-> (row, col): the one place the order changes.

def rowcol_to_xy(rowcol):
    """``(row, col)`` → ``(x, y)``: swap the last axis.

    Args:
        rowcol: Tensor or array ``[..., 2]`` holding ``(row, col)``.

    Returns:
        The same type and dtype, ``[..., 2]`` holding ``(x, y) = (col, row)``.
    """
    return _swap_last(rowcol)


def xy_to_rowcol(xy):
    """``(x, y)`` → ``(row, col)``: swap the last axis.

    Args:
        xy: Tensor or array ``[..., 2]`` holding ``(x, y)``.

    Returns:
        The same type and dtype, ``[..., 2]`` holding ``(row, col) = (y, x)``.
    """
    return _swap_last(xy)


def _swap_last(a):
    if a.shape[-1] != 2:
        raise SamplingError(f"expected coordinates of shape [..., 2], got {tuple(a.shape)}")
    if isinstance(a, Tensor):
        return a.flip(-1)
    return np.ascontiguousarray(np.asarray(a)[..., ::-1])


# --------------------------------------------------------------------------
# Cells <-> boxes in the high-resolution frame.

def cell_steps(low_shape, map_shape, scale, receptive_field=0) -> tuple[float, float]:
    """One cell's extent in high-resolution pixels, ``(step_y, step_x)``.

    Args:
        low_shape: ``(rows, cols)`` of the low image.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        scale: ``(sy, sx)`` high-resolution pixels per low-resolution pixel
            (a number means the same on both axes).
        receptive_field: ``rf`` of the module notes, ``int`` or ``(ry, rx)``;
            ``0`` for "same" padding.

    Returns:
        ``((rows − ry) · sy / map_rows, (cols − rx) · sx / map_cols)``.
    """
    low, mp, sc, rf = _check(low_shape, map_shape, scale, receptive_field)
    return tuple((low[i] - rf[i]) * sc[i] / mp[i] for i in range(2))


def cell_to_xy(cells: Tensor, *, low_shape, map_shape, scale, patch_size,
               receptive_field=0) -> Tensor:
    """Top-left corner of the patch box of each attention cell.

    Args:
        cells: long ``[..., 2]``, ``(row, col)`` on the attention map.
        low_shape: ``(rows, cols)`` of the low image.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        scale: ``(sy, sx)`` high-resolution pixels per low pixel.
        patch_size: ``(ph, pw)`` in high-resolution pixels (or one int).
        receptive_field: ``int`` or ``(ry, rx)``, ``rf`` of the module notes.

    Returns:
        long ``[..., 2]``: ``(x, y)`` top-left of each box in high-resolution
        pixels, on ``cells``' device. May be negative, or run past the image
        at the far border (see the module notes: sources zero-pad).
    """
    low, mp, sc, rf = _check(low_shape, map_shape, scale, receptive_field)
    patch = _pair(patch_size, "patch_size")
    steps = [(low[i] - rf[i]) * sc[i] / mp[i] for i in range(2)]
    # start = (rf/2)·scale + (cell + 1/2)·steps − patch/2, per (row, col) axis
    offset = torch.tensor([rf[i] / 2 * sc[i] + steps[i] / 2 - patch[i] / 2 for i in range(2)],
                          dtype=torch.float64, device=cells.device)
    step = torch.tensor(steps, dtype=torch.float64, device=cells.device)
    start_rowcol = torch.floor(cells.to(torch.float64) * step + offset + 0.5).long()
    return rowcol_to_xy(start_rowcol)


def point_to_cell(xy: Tensor, *, low_shape, map_shape, scale, receptive_field=0) -> Tensor:
    """The attention cell whose block holds a point of the high frame.

    Args:
        xy: ``[..., 2]`` (any real dtype), ``(x, y)`` continuous coordinates in
            high-resolution pixels; pixel ``i`` spans ``[i, i + 1)``, so pass
            ``x + 0.5`` for a pixel's centre.
        low_shape, map_shape, scale, receptive_field: as in :func:`cell_to_xy`.

    Returns:
        long ``[..., 2]``: ``(row, col)``, clamped to the map, so points in the
        receptive-field margin or outside the image get the nearest cell.
    """
    low, mp, sc, rf = _check(low_shape, map_shape, scale, receptive_field)
    steps = [(low[i] - rf[i]) * sc[i] / mp[i] for i in range(2)]
    rowcol = xy_to_rowcol(xy).to(torch.float64)
    origin = torch.tensor([rf[i] / 2 * sc[i] for i in range(2)], dtype=torch.float64,
                          device=rowcol.device)
    step = torch.tensor(steps, dtype=torch.float64, device=rowcol.device)
    cell = torch.floor((rowcol - origin) / step).long()
    top = torch.tensor([mp[0] - 1, mp[1] - 1], device=cell.device)
    return torch.minimum(cell.clamp_min(0), top)


def box_to_cell(xy: Tensor, *, low_shape, map_shape, scale, patch_size,
                receptive_field=0) -> Tensor:
    """The attention cell a patch box was cut for (the cell under its centre).

    Inverts :func:`cell_to_xy` exactly whenever a cell spans more than one
    high-resolution pixel (``steps > 1`` on both axes): rounding moves the
    centre by at most half a pixel.

    Args:
        xy: long ``[..., 2]``, ``(x, y)`` top-left of each box.
        low_shape, map_shape, scale, patch_size, receptive_field: as in
            :func:`cell_to_xy`.

    Returns:
        long ``[..., 2]``: ``(row, col)`` on the attention map.
    """
    ph, pw = _pair(patch_size, "patch_size")
    half = torch.tensor([pw / 2, ph / 2], dtype=torch.float64, device=xy.device)
    return point_to_cell(xy.to(torch.float64) + half, low_shape=low_shape, map_shape=map_shape,
                         scale=scale, receptive_field=receptive_field)


# --------------------------------------------------------------------------
# Slides: the high frame is a pyramid level, boxes go to level 0.

def level_to_level0(xy: Tensor, downsample: float) -> Tensor:
    """``(x, y)`` in pixels of a level → level-0 pixels: ``round(xy · downsample)``.

    Args:
        xy: ``[..., 2]``, ``(x, y)`` in pixels of a level of that downsample.
        downsample: the level's downsample (level-0 pixels per level pixel).

    Returns:
        long ``[..., 2]``, ``(x, y)`` in level-0 pixels (round-half-up).
    """
    _positive(downsample, "downsample")
    return torch.floor(xy.to(torch.float64) * float(downsample) + 0.5).long()


def level0_to_level(xy0: Tensor, downsample: float) -> Tensor:
    """``(x, y)`` in level-0 pixels → float64 ``(x, y)`` in pixels of a level."""
    _positive(downsample, "downsample")
    return xy0.to(torch.float64) / float(downsample)


def cell_to_level0_box(cells: Tensor, *, low_shape, map_shape, low_downsample: float,
                       high_downsample: float, patch_size, receptive_field=0) -> Tensor:
    """Level-0 box of each attention cell, for a slide.

    The low image is the level of downsample ``low_downsample`` (its shape is
    ``low_shape``); patches are read at the level of downsample
    ``high_downsample``, so ``scale = low_downsample / high_downsample`` and
    the box is mapped to level 0 by :func:`level_to_level0`.

    Args:
        cells: long ``[..., 2]``, ``(row, col)`` on the attention map.
        low_shape: ``(rows, cols)`` of the low level's image.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        low_downsample, high_downsample: the two levels' downsamples.
        patch_size: ``(ph, pw)`` in pixels of the high level.
        receptive_field: ``int`` or ``(ry, rx)``, ``rf`` of the module notes.

    Returns:
        long ``[..., 4]``: ``(x0, y0, w0, h0)`` in level-0 pixels, where
        ``w0, h0 = round(pw · high_downsample), round(ph · high_downsample)``.
        ``openslide.read_region((x0, y0), high_level, (pw, ph))`` reads it.
    """
    _positive(low_downsample, "low_downsample")
    _positive(high_downsample, "high_downsample")
    scale = low_downsample / high_downsample
    xy = cell_to_xy(cells, low_shape=low_shape, map_shape=map_shape, scale=scale,
                    patch_size=patch_size, receptive_field=receptive_field)
    ph, pw = _pair(patch_size, "patch_size")
    xy0 = level_to_level0(xy, high_downsample)
    size0 = torch.tensor([math.floor(pw * high_downsample + 0.5),
                          math.floor(ph * high_downsample + 0.5)], device=xy0.device)
    return torch.cat([xy0, size0.expand_as(xy0)], dim=-1)


def level0_to_cell(xy0: Tensor, *, low_shape, map_shape, low_downsample: float,
                   receptive_field=0) -> Tensor:
    """The attention cell under a level-0 point of a slide.

    Args:
        xy0: ``[..., 2]``, ``(x, y)`` continuous level-0 coordinates.
        low_shape, map_shape, low_downsample, receptive_field: as in
            :func:`cell_to_level0_box`.

    Returns:
        long ``[..., 2]``: ``(row, col)``, clamped to the map.
    """
    # level 0 is itself a high frame, of scale low_downsample
    return point_to_cell(xy0, low_shape=low_shape, map_shape=map_shape,
                         scale=low_downsample, receptive_field=receptive_field)


# --------------------------------------------------------------------------

def _pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        pair = (float(value), float(value))
    else:
        pair = tuple(float(v) for v in value)
        if len(pair) != 2:
            raise SamplingError(f"{name} must be a number or a (rows, cols) pair, got {value!r}")
    return pair


def _positive(value, name: str) -> None:
    if not value > 0:
        raise SamplingError(f"{name} must be > 0, got {value!r}")


def _check(low_shape, map_shape, scale, receptive_field):
    low = _pair(tuple(low_shape)[-2:], "low_shape")
    mp = _pair(tuple(map_shape)[-2:], "map_shape")
    sc = _pair(scale, "scale")
    rf = _pair(receptive_field, "receptive_field")
    for i in range(2):
        _positive(mp[i], "map_shape")
        _positive(sc[i], "scale")
        if rf[i] < 0 or low[i] - rf[i] <= 0:
            raise SamplingError(f"receptive_field {receptive_field!r} must be >= 0 and smaller "
                                f"than the low image {tuple(low_shape)!r}")
    return low, mp, sc, rf
