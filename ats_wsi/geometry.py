"""Coordinates: the one place where (w, h) meets (rows, cols) and a level meets level 0.

Public sizes are ``(width, height)`` and points ``(x, y)``, as openslide's
are; arrays are ``(rows, cols) = (y, x)``. Every function here that swaps the
two orders, or maps between pixels of a pyramid level and level-0 pixels,
is the only one that does it.

Three frames take part in attention sampling:

- the **low** image of shape ``low_shape = (rows, cols)`` that the attention
  net sees;
- the **attention map** of shape ``map_shape = (map_rows, map_cols)``; its
  cells are addressed as ``(row, col)``;
- the **high** frame patches are read from; a patch is addressed by the
  top-left ``(x, y)`` of its box in high-resolution pixels.

``scale = (sy, sx)`` is high-resolution pixels per low pixel, per array
axis. ``rf = (rx, ry)`` is the attention net's receptive field in low pixels
when its convolutions are "valid" (the map then shrinks by about ``rf`` at
the borders), and ``0`` for "same" padding. Per axis, in high-resolution
pixels, as in the reference library::

    steps = (low − rf) · scale / map             # one cell's extent
    start = round((rf / 2) · scale + cell · steps + steps / 2 − patch / 2)

so each patch is centred on its cell's block, shifted by half the receptive
field. ``round`` is round-half-up (``floor(v + 0.5)``) in float64. Boxes are
**not** shifted inside the image: ``start`` may be negative, and patch
sources read the pixels outside the image as zeros (or the slide's fill).

Everything works on numpy arrays and torch tensors alike (same type, device
and leading shape out as in); torch is never imported here, so
:mod:`ats_wsi.slide` (numpy only) uses this module too.
"""
from __future__ import annotations

import numbers
import sys

import numpy as np

from .errors import SamplingError

__all__ = [
    "size_wh",
    "wh_to_rowcol",
    "rowcol_to_wh",
    "level0_to_level",
    "level_to_level0",
    "cell_steps",
    "cell_to_xy",
    "cell_grid_level0",
    "cell_transform",
    "snap_to_grid",
    "cell_centre_level0",
    "region_xy0",
    "zoom_cell_to_xy0",
]


# --------------------------------------------------------------------------
# Sizes: (w, h) <-> (rows, cols).

def size_wh(value, name: str = "size", *, minimum: int = 1) -> tuple[int, int]:
    """A size given as one int (a square) or a ``(w, h)`` pair, checked.

    Args:
        value: ``int`` or a pair ``(w, h)`` of ints (integral floats pass).
        name: the argument's name, for the error message.
        minimum: the smallest value allowed (1: sizes; 0: margins, halos).

    Returns:
        ``(w, h)`` as Python ints.

    Raises:
        SamplingError: not an int or a pair of ints, or below ``minimum``.
    """
    pair = (value, value) if _is_number(value) else _two(value, name)
    if not all(_is_number(v) and float(v) == int(v) and int(v) >= minimum for v in pair):
        raise SamplingError(f"{name} must be an int >= {minimum} or a (w, h) pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def wh_to_rowcol(size, name: str = "size", *, minimum: int = 1) -> tuple[int, int]:
    """``(w, h)`` (or one int) → ``(rows, cols) = (h, w)``, checked by :func:`size_wh`."""
    w, h = size_wh(size, name, minimum=minimum)
    return h, w


def rowcol_to_wh(shape) -> tuple[int, int]:
    """An array shape ``(..., rows, cols)`` → ``(w, h) = (cols, rows)``."""
    rows, cols = (int(n) for n in tuple(shape)[-2:])
    return cols, rows


# --------------------------------------------------------------------------
# A pyramid level <-> level 0.

def level0_to_level(xy0, downsample: float):
    """Level-0 ``(x, y)`` → the nearest pixel of a level: ``floor(xy0 / ds + 0.5)``.

    So ``level_to_level0`` of the result maps back to ``xy0`` exactly
    whenever ``xy0`` is the level-0 corner of a level pixel.

    Args:
        xy0: ``[..., 2]`` (array, tensor, list), ``(x, y)`` in level-0 pixels
            (negative values allowed).
        downsample: the level's downsample (level-0 pixels per level pixel).

    Returns:
        int64 ``[..., 2]``, ``(x, y)`` in pixels of the level (a tensor for a
        tensor, else a numpy array).
    """
    _positive(downsample, "downsample")
    return _to_int64(_floor(_float64(xy0) / float(downsample) + 0.5))


def level_to_level0(xy, downsample: float):
    """``(x, y)`` in pixels of a level → level-0 pixels: ``floor(xy · ds + 0.5)``.

    Args:
        xy: ``[..., 2]``, ``(x, y)`` in pixels of a level of that downsample.
        downsample: the level's downsample (level-0 pixels per level pixel).

    Returns:
        int64 ``[..., 2]``, ``(x, y)`` in level-0 pixels (round-half-up).
    """
    _positive(downsample, "downsample")
    return _to_int64(_floor(_float64(xy) * float(downsample) + 0.5))


# --------------------------------------------------------------------------
# Attention cells -> boxes.

def cell_steps(low_shape, map_shape, scale, receptive_field=0) -> tuple[float, float]:
    """One cell's extent in high-resolution pixels per array axis, ``(step_rows, step_cols)``.

    Args:
        low_shape: ``(rows, cols)`` of the low image.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        scale: ``(sy, sx)`` high-resolution pixels per low pixel (or one number).
        receptive_field: ``rf`` of the module notes, ``int`` or ``(rx, ry)``.

    Returns:
        ``((rows − ry) · sy / map_rows, (cols − rx) · sx / map_cols)``; the
        cell's ``(w, h)`` is the reverse (see :func:`cell_grid_level0`).
    """
    low, mp, sc, rf = _check(low_shape, map_shape, scale, receptive_field)
    return tuple((low[i] - rf[i]) * sc[i] / mp[i] for i in range(2))


def cell_to_xy(cells, *, low_shape, map_shape, scale, patch_size, receptive_field=0):
    """Top-left corner of the patch box of each attention cell.

    Args:
        cells: int ``[..., 2]``, ``(row, col)`` on the attention map.
        low_shape: ``(rows, cols)`` of the low image.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        scale: ``(sy, sx)`` high-resolution pixels per low pixel (or one number).
        patch_size: ``(w, h)`` in high-resolution pixels, or one int.
        receptive_field: ``int`` or ``(rx, ry)`` in low pixels.

    Returns:
        int64 ``[..., 2]``: ``(x, y)`` top-left of each box in high-resolution
        pixels, of ``cells``' type and device. May be negative, or run past
        the image at the far border (sources pad).
    """
    low, mp, sc, rf = _check(low_shape, map_shape, scale, receptive_field)
    pw, ph = size_wh(patch_size, "patch_size")
    patch = (ph, pw)  # per array axis
    steps = [(low[i] - rf[i]) * sc[i] / mp[i] for i in range(2)]
    # start = (rf/2)·scale + (cell + 1/2)·steps − patch/2, per (row, col) axis
    offset = [rf[i] / 2 * sc[i] + steps[i] / 2 - patch[i] / 2 for i in range(2)]
    rowcol = _float64(cells)
    y, x = (_to_int64(_floor(rowcol[..., i] * steps[i] + offset[i] + 0.5)) for i in range(2))
    return _stack_last([x, y])


def cell_grid_level0(*, low_shape, map_shape, low_downsample: float, receptive_field=0):
    """Where the attention map's cells lie on a slide: cell size and origin in level-0 pixels.

    Cell ``(row, col)`` covers level-0 ``x`` from ``ox + col · cw`` to
    ``ox + (col + 1) · cw`` (and so for ``y``): the block each patch is
    centred on, as placed by :func:`cell_to_xy`.

    Args:
        low_shape: ``(rows, cols)`` of the low image the attention net saw.
        map_shape: ``(map_rows, map_cols)`` of the attention map.
        low_downsample: level-0 pixels per low pixel.
        receptive_field: ``int`` or ``(rx, ry)``, as given to the sampler.

    Returns:
        ``((cw, ch), (ox, oy))``: float cell ``(w, h)`` and the level-0
        ``(x, y)`` of cell (0, 0)'s corner.
    """
    low, mp, sc, rf = _check(low_shape, map_shape, low_downsample, receptive_field)
    step_rows, step_cols = ((low[i] - rf[i]) * sc[i] / mp[i] for i in range(2))
    origin_y, origin_x = (rf[i] / 2 * sc[i] for i in range(2))
    return (step_cols, step_rows), (origin_x, origin_y)


def snap_to_grid(xy, patch_size):
    """Move boxes onto the grid of multiples of the patch size.

    Args:
        xy: int ``[..., 2]``, top-left ``(x, y)`` of boxes of ``patch_size``.
        patch_size: ``(w, h)`` or one int.

    Returns:
        int ``[..., 2]`` of ``xy``'s type: the top-left of the grid box that
        holds each box's centre, ``floor((xy + size // 2) / size) · size``
        per axis.
    """
    pw, ph = size_wh(patch_size, "patch_size")
    x = (xy[..., 0] + pw // 2) // pw * pw
    y = (xy[..., 1] + ph // 2) // ph * ph
    return _stack_last([x, y])


# --------------------------------------------------------------------------
# Zoom: a stage-1 cell -> a region read at a finer µm/px -> stage-2 cells -> patch boxes.

def cell_centre_level0(cells, *, low_shape, map_shape, low_downsample: float, receptive_field=0):
    """Level-0 ``(x, y)`` of the centre of each attention cell's block.

    Args:
        cells: int ``[..., 2]``, ``(row, col)`` on the attention map.
        low_shape, map_shape, low_downsample, receptive_field: as in
            :func:`cell_grid_level0`.

    Returns:
        float64 ``[..., 2]``: ``(ox + (col + 1/2) · cw, oy + (row + 1/2) · ch)``,
        the centre :func:`cell_to_xy` centres a patch on, in level-0 pixels.
    """
    (cw, ch), (ox, oy) = cell_grid_level0(low_shape=low_shape, map_shape=map_shape,
                                          low_downsample=low_downsample, receptive_field=receptive_field)
    rowcol = _float64(cells)
    return _stack_last([ox + (rowcol[..., 1] + 0.5) * cw, oy + (rowcol[..., 0] + 0.5) * ch])


def region_xy0(centres_xy0, side0: float, slide_wh):
    """Top-left level-0 corner of a square region of side ``side0`` around each centre, kept on the slide.

    The square is centred on its point (``floor(c − side0/2 + 0.5)``) and then
    shifted, not cut, to lie inside the slide: every region keeps one size
    (all regions of a slide are one read plan and one batch for the stage-2
    net) and still holds its centre. On an axis where the slide is smaller
    than the region, the region starts at 0 and its far part is outside
    (read as fill; the stage-2 cells there are masked).

    Args:
        centres_xy0: float ``[..., 2]``, ``(x, y)`` in level-0 pixels.
        side0: the region's side in level-0 pixels (> 0).
        slide_wh: the slide's level-0 ``(w, h)``.

    Returns:
        int64 ``[..., 2]``, ``(x, y)`` top-left in level-0 pixels.
    """
    _positive(side0, "side0")
    w, h = size_wh(slide_wh, "slide_wh")
    start = _to_int64(_floor(_float64(centres_xy0) - float(side0) / 2 + 0.5))
    side = int(_floor(np.float64(side0) + 0.5))
    x = _clip(start[..., 0], 0, max(w - side, 0))
    y = _clip(start[..., 1], 0, max(h - side, 0))
    return _stack_last([x, y])


def zoom_cell_to_xy0(cells, *, region_xy0, region_shape, map_shape, zoom_downsample: float,
                     patch_downsample: float, patch_size, receptive_field=0):
    """Level-0 top-left corner of the patch box of each stage-2 cell of a zoomed region.

    The region (``region_shape`` pixels at ``zoom_downsample``, top-left
    ``region_xy0`` in level 0) is the "low image" of the stage-2 attention
    map and the patches are read at ``patch_downsample``: :func:`cell_to_xy`
    places each box in patch pixels relative to the region, with ``scale =
    zoom_downsample / patch_downsample``, and :func:`level_to_level0` takes
    it to level 0, offset by the region's corner.

    Args:
        cells: int ``[..., 2]``, ``(row, col)`` on the stage-2 map.
        region_xy0: int ``[..., 2]`` broadcastable against ``cells``: the
            region's top-left ``(x, y)`` in level-0 pixels.
        region_shape: ``(rows, cols)`` of the region as read (zoom pixels).
        map_shape: ``(map_rows, map_cols)`` of the stage-2 map.
        zoom_downsample: level-0 pixels per region pixel.
        patch_downsample: level-0 pixels per patch pixel.
        patch_size: ``(w, h)`` in patch pixels, or one int.
        receptive_field: the stage-2 net's ``rf`` in region pixels.

    Returns:
        int64 ``[..., 2]``: ``(x, y)`` in level-0 pixels (may lie outside the
        slide, as :func:`cell_to_xy`'s boxes may).
    """
    _positive(zoom_downsample, "zoom_downsample")
    _positive(patch_downsample, "patch_downsample")
    relative = cell_to_xy(cells, low_shape=region_shape, map_shape=map_shape,
                          scale=float(zoom_downsample) / float(patch_downsample),
                          patch_size=patch_size, receptive_field=receptive_field)
    return level_to_level0(relative, patch_downsample) + region_xy0


# --------------------------------------------------------------------------
# Attention-map cells -> a viewer's (µm or pixel) space.

def cell_transform(cell_size_wh, origin_xy, scale_yx=(1.0, 1.0), translate_yx=(0.0, 0.0)):
    """Scale and translation ``(y, x)`` that place a map of cells over a slide.

    Level-0 pixel ``x`` covers ``[x, x + 1)``; its centre ``x + 0.5`` is where
    napari (and NGFF) put data coordinate ``x``. A cell starting at level-0
    ``ox`` and ``cw`` pixels wide has its centre at ``ox + cw / 2``, i.e. at
    level-0 data coordinate ``ox + cw / 2 − 0.5``; the slide's own transform
    (``scale_yx``, ``translate_yx``: µm per level-0 pixel for an NGFF map, a
    slide layer's transform in napari) then takes it to world space.

    Args:
        cell_size_wh: ``(cw, ch)``, one cell in level-0 pixels.
        origin_xy: ``(ox, oy)``, level-0 corner of cell (0, 0).
        scale_yx: the slide's scale ``(sy, sx)`` per level-0 pixel.
        translate_yx: the slide's translation ``(ty, tx)``.

    Returns:
        ``((ch · sy, cw · sx), (ty + (oy + ch/2 − 0.5) · sy, tx + (ox + cw/2 − 0.5) · sx))``.
    """
    cw, ch = (float(v) for v in cell_size_wh)
    ox, oy = (float(v) for v in origin_xy)
    sy, sx = (float(v) for v in scale_yx)
    ty, tx = (float(v) for v in translate_yx)
    scale = (ch * sy, cw * sx)
    translate = (ty + (oy + ch / 2 - 0.5) * sy, tx + (ox + cw / 2 - 0.5) * sx)
    return scale, translate


# --------------------------------------------------------------------------
# Tensors and arrays alike, without importing torch.

def _torch_tensor(a) -> bool:
    torch = sys.modules.get("torch")  # if torch is not loaded, ``a`` cannot be a tensor
    return torch is not None and isinstance(a, torch.Tensor)


def _float64(a):
    if _torch_tensor(a):
        return a.double()
    return np.asarray(a, dtype=np.float64)


def _floor(a):
    return a.floor() if _torch_tensor(a) else np.floor(a)


def _to_int64(a):
    return a.long() if _torch_tensor(a) else np.asarray(a).astype(np.int64)


def _clip(a, low: int, high: int):
    return a.clamp(low, high) if _torch_tensor(a) else np.clip(a, low, high)


def _stack_last(parts):
    if _torch_tensor(parts[0]):
        return sys.modules["torch"].stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _two(value, name: str) -> tuple:
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise SamplingError(f"{name} must be a number or a pair, got {value!r}")
    return pair


def _float_pair(value, name: str) -> tuple[float, float]:
    pair = (value, value) if _is_number(value) else _two(value, name)
    return float(pair[0]), float(pair[1])


def _positive(value, name: str) -> None:
    if not value > 0:
        raise SamplingError(f"{name} must be > 0, got {value!r}")


def _check(low_shape, map_shape, scale, receptive_field):
    """Per array axis ``(rows, cols)``: low, map, scale and receptive field, checked."""
    low = _float_pair(tuple(low_shape)[-2:], "low_shape")
    mp = _float_pair(tuple(map_shape)[-2:], "map_shape")
    sc = _float_pair(scale, "scale")
    rx, ry = _float_pair(receptive_field, "receptive_field")
    rf = (ry, rx)
    for i in range(2):
        _positive(mp[i], "map_shape")
        _positive(sc[i], "scale")
        if rf[i] < 0 or low[i] - rf[i] <= 0:
            raise SamplingError(f"receptive_field {receptive_field!r} (w, h) must be >= 0 and "
                                f"smaller than the low image of shape {tuple(low_shape)!r}")
    return low, mp, sc, rf
