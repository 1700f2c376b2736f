"""The low-resolution view of a slide that the attention network sees.

Pathology models depend on the µm/px of their input, so the low view is
defined by a downsample (or a µm/px), not by a size: a bigger slide gives a
bigger low view at the same resolution. The view is read from the level
nearest the wanted downsample and resampled (area) when that level is off by
more than 1 %. Its tissue mask is :func:`ats_wsi.slide.tissue_mask` with
``never_empty=True`` (an empty mask would leave nothing to sample).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SlideError
from ._tissue import tissue_mask
from .slide import FILL_VALUE

__all__ = ["LowView", "read_low_view"]

RESAMPLE_TOLERANCE = 0.01
"""Relative difference between the nearest level's downsample and the wanted
one above which the level is resampled to the exact downsample."""


@dataclass(frozen=True)
class LowView:
    """A slide seen at low resolution.

    Attributes:
        image: uint8 (rows, cols, 3).
        downsample: level-0 pixels per low pixel (x and y alike).
        level: the pyramid level it was read from.
        mask: bool (rows, cols), tissue (True) vs. background; all True when
            no tissue stands out.
    """

    image: np.ndarray
    downsample: float
    level: int
    mask: np.ndarray


def read_low_view(slide, *, downsample: float | None = None, mpp: float | None = None) -> LowView:
    """Read the whole slide at a given downsample or µm/px.

    Args:
        slide: an open :class:`ats_wsi.slide.Slide`.
        downsample: wanted level-0 pixels per low pixel, or
        mpp: wanted µm per low pixel (needs the slide's mpp).

    Returns:
        :class:`LowView`; its image is ``round(w / downsample) x round(h / downsample)``.
    """
    if (downsample is None) == (mpp is None):
        raise TypeError("read_low_view takes exactly one of downsample= or mpp=")
    if mpp is not None:
        if slide.mpp is None:
            raise SlideError(slide.path, f"the slide has no known µm/px, so it cannot be read at {mpp} µm/px")
        downsample = float(mpp) / slide.mpp
    downsample = float(downsample)
    level = slide.level_for(downsample=downsample)
    w0, h0 = slide.dimensions
    level_ds = float(slide.level_downsamples[level])
    if abs(level_ds / downsample - 1.0) <= RESAMPLE_TOLERANCE:
        image = slide.read_level(level)
        ds = level_ds
    else:
        # Read a level at least as fine as wanted, then area-resample.
        finer = [i for i, d in enumerate(slide.level_downsamples) if d <= downsample * (1 + RESAMPLE_TOLERANCE)]
        level = max(finer) if finer else 0
        out_w = max(1, int(round(w0 / downsample)))
        out_h = max(1, int(round(h0 / downsample)))
        image = _resample_level(slide, level, (out_w, out_h))
        ds = downsample
    return LowView(image=image, downsample=ds, level=level, mask=tissue_mask(image, never_empty=True))


RESAMPLE_BLOCK = 512
"""Side of the output blocks :func:`read_low_view` resamples one at a time, so
that the finer level it reads from is never held whole."""


def _resample_level(slide, level: int, out_wh: tuple[int, int]) -> np.ndarray:
    """Area-resample ``level`` to ``out_wh`` block by block (bounded memory).

    Output block [x0, x1) reads the level's pixels [x0 * r, x1 * r) with
    r = level width / out width, so blocks tile the level without gaps; with
    an integer ratio (the usual 2x or 4x pyramid step) the result equals one
    whole-level box resample exactly.
    """
    from PIL import Image

    out_w, out_h = out_wh
    lw, lh = slide.level_dimensions[level]
    ds = float(slide.level_downsamples[level])
    rx, ry = lw / out_w, lh / out_h
    out = np.full((out_h, out_w, 3), FILL_VALUE, dtype=np.uint8)
    for y0 in range(0, out_h, RESAMPLE_BLOCK):
        y1 = min(out_h, y0 + RESAMPLE_BLOCK)
        sy0, sy1 = int(round(y0 * ry)), min(lh, int(round(y1 * ry)))
        for x0 in range(0, out_w, RESAMPLE_BLOCK):
            x1 = min(out_w, x0 + RESAMPLE_BLOCK)
            sx0, sx1 = int(round(x0 * rx)), min(lw, int(round(x1 * rx)))
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            block = slide.read_region((int(round(sx0 * ds)), int(round(sy0 * ds))), level, (sx1 - sx0, sy1 - sy0))
            out[y0:y1, x0:x1] = np.asarray(Image.fromarray(block).resize((x1 - x0, y1 - y0), Image.Resampling.BOX))
    return out
