"""Sampling restricted to a region of interest (``--roi``): the attention map's cells whose whole
patch box lies in the region, intersected with the tissue mask, and the attention renormalised there."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import RoiError
from ..geometry import cell_to_xy, rowcol_to_wh, snap_to_grid

__all__ = ["cell_boxes_level0", "roi_grid", "restrict_to_roi"]

BLOCK_CELLS = 1 << 16
"""Cells placed per block: their boxes never take more than a few MB at once."""


def cell_boxes_level0(sampler, source, low_shape, map_shape, cells: Tensor) -> Tensor:
    """int64 [k, 4]: the level-0 boxes (x, y, w, h) that drawing ``cells`` (long [k, 2], (row, col)) reads.

    The same placement as the sampler's draws (:func:`~ats_wsi.geometry.cell_to_xy`, snapped when
    the sampler is tile-aligned, then :meth:`~ats_wsi.patches.SlideSource.boxes_level0`)."""
    patch_wh = sampler.patch_size or rowcol_to_wh(low_shape)
    xy = cell_to_xy(cells[None], low_shape=tuple(low_shape), map_shape=tuple(map_shape),
                    scale=source.scale(tuple(low_shape)), patch_size=patch_wh,
                    receptive_field=sampler.receptive_field)
    if sampler.tile_aligned:
        xy = snap_to_grid(xy, patch_wh)
    return source.boxes_level0(xy, patch_wh)[0]


def roi_grid(sampler, source, low_shape, map_shape, roi, slide_wh) -> Tensor:
    """bool [rows, cols] of the map: True where the cell's whole patch box lies in ``roi``."""
    rows, cols = (int(v) for v in map_shape)
    inside = torch.zeros(rows * cols, dtype=torch.bool)
    for start in range(0, rows * cols, BLOCK_CELLS):
        index = torch.arange(start, min(start + BLOCK_CELLS, rows * cols))
        cells = torch.stack([index // cols, index % cols], dim=-1)
        boxes = cell_boxes_level0(sampler, source, low_shape, map_shape, cells).numpy()
        inside[index] = torch.from_numpy(roi.boxes_inside(boxes, slide_wh))
    return inside.reshape(rows, cols)


def restrict_to_roi(attention: Tensor, mask: Tensor | None, inside: Tensor, *, slide: str = "",
                    roi_path: str = "") -> tuple[Tensor, Tensor]:
    """``(attention, mask)`` restricted to the cells of ``inside``: the mask is ``mask ∧ inside``
    and the attention is zero outside it and renormalised to sum to 1 over it.

    Args:
        attention: float [1, rows, cols], the map.
        mask: bool [1, rows, cols] (tissue) or None.
        inside: bool [rows, cols], :func:`roi_grid`.

    Raises:
        RoiError: no cell of the region holds attention (the region misses the tissue, or is
            smaller than one patch).
    """
    keep = inside.to(attention.device)[None]
    if mask is not None:
        keep = keep & mask.to(torch.bool)
    kept = attention * keep
    total = kept.sum(dim=(1, 2), keepdim=True)
    if not bool((total > 0).all()):
        raise RoiError(roi_path, f"no patch of slide {slide} lies wholly inside the region of interest and on "
                                 "tissue; check that the ROI is in the slide's level-0 pixels and larger than a "
                                 "patch, and its --roi-include / --roi-exclude classes")
    return kept / total, keep
