"""The low-resolution view of a slide that the attention network sees.

Pathology models depend on the µm/px of their input, so the low view is
defined by a downsample (or a µm/px), not by a size: a bigger slide gives a
bigger low view at the same resolution. The view is read from the level
nearest the wanted downsample and resampled (area) when that level is off by
more than 1 %. Its tissue mask is :func:`ats_wsi.slide.tissue_mask` with
``never_empty=True`` (an empty mask would leave nothing to sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import RegionError, ResolutionError, SlideError
from .resolution import missing_mpp_reason, mpp_to_downsample
from ._tissue import histogram, otsu_threshold_of_histogram, saturation, tissue_mask

__all__ = ["MAX_LOW_VIEW_PIXELS", "LowView", "LowViewReader", "TissueThreshold", "read_low_view"]

MAX_LOW_VIEW_PIXELS = 2 ** 28
"""Most pixels a low view may have (16384², 768 MiB as RGB): the attention net, its
map and the tissue mask all scale with it, so it is checked before anything is
read or allocated (a downsample of 1e-9 once asked for 10^24 pixels)."""

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
        :class:`LowView`; its image is ``round(w / downsample) x round(h / downsample)``,
        the same pixels as :meth:`LowViewReader.read` gives region by region.
    """
    reader = LowViewReader(slide, downsample=downsample, mpp=mpp)
    if reader.resampled:
        rows, cols = reader.shape
        image = np.empty((rows, cols, 3), dtype=np.uint8)
        for r0 in range(0, rows, RESAMPLE_BLOCK):
            for c0 in range(0, cols, RESAMPLE_BLOCK):
                r1, c1 = min(rows, r0 + RESAMPLE_BLOCK), min(cols, c0 + RESAMPLE_BLOCK)
                image[r0:r1, c0:c1] = reader.read(r0, c0, r1 - r0, c1 - c0)
    else:
        image = slide.read_level(reader.level)
    return LowView(image=image, downsample=reader.downsample, level=reader.level,
                   mask=tissue_mask(image, never_empty=True))


RESAMPLE_BLOCK = 512
"""Side of the output blocks :func:`read_low_view` resamples one at a time, so
that the finer level it reads from is never held whole."""


class LowViewReader:
    """The low view of :func:`read_low_view`, read region by region (never whole).

    Args: as :func:`read_low_view`.

    Attributes:
        shape: ``(rows, cols)`` of the whole low view.
        downsample: level-0 pixels per low pixel.
        level: the pyramid level read.
        resampled: whether that level is area-resampled (no level within
            1 % of the wanted downsample).

    :meth:`read` of any region equals the same region of
    ``read_low_view(...).image``: a stored level is read as is; a resampled
    one is an area mean whose weights depend on the output pixel only (for an
    integer level-to-view ratio, PIL's box filter on the aligned source box;
    otherwise the exact fractional-coverage mean), so regions need no
    context and tiles stitch exactly.
    """

    def __init__(self, slide, *, downsample: float | None = None, mpp: float | None = None):
        if (downsample is None) == (mpp is None):
            raise TypeError("read_low_view takes exactly one of downsample= or mpp=")
        downsample = _view_downsample(slide, downsample, mpp)
        _check_view_size(slide, downsample, mpp)
        self.slide = slide
        pyramid = slide.pyramid  # computed levels included: a single-level slide is never read whole
        level = slide.level_for(downsample=downsample)
        level_ds = float(pyramid[level].downsample)
        self.resampled = abs(level_ds / downsample - 1.0) > RESAMPLE_TOLERANCE
        if not self.resampled:
            self.level, self.downsample = level, level_ds
            self.shape = (int(pyramid[level].height), int(pyramid[level].width))
            return
        # read a level at least as fine as wanted, then area-resample
        finer = [i for i, lv in enumerate(pyramid) if lv.downsample <= downsample * (1 + RESAMPLE_TOLERANCE)]
        self.level = max(finer) if finer else 0
        self.downsample = downsample
        w0, h0 = slide.dimensions
        self.shape = (max(1, int(round(h0 / downsample))), max(1, int(round(w0 / downsample))))
        self._level_wh = (int(pyramid[self.level].width), int(pyramid[self.level].height))

    def read(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        """uint8 ``(rows, cols, 3)`` of the low view at ``(row0, col0)``, inside :attr:`shape`."""
        if not (0 <= row0 and 0 <= col0 and row0 + rows <= self.shape[0] and col0 + cols <= self.shape[1]):
            raise SlideError(self.slide.path, f"low-view region rows [{row0}, {row0 + rows}), cols "
                                              f"[{col0}, {col0 + cols}) is outside the view of {self.shape}")
        ds = float(self.slide.pyramid[self.level].downsample)
        if not self.resampled:
            return self._read_level(row0, col0, rows, cols, ds)
        (lw, lh), (out_rows, out_cols) = self._level_wh, self.shape
        ry, rx = lh / out_rows, lw / out_cols
        if ry == int(ry) and rx == int(rx):  # integer ratio: PIL's box filter on the aligned box
            from PIL import Image

            ry, rx = int(ry), int(rx)
            block = self._read_level(row0 * ry, col0 * rx, rows * ry, cols * rx, ds)
            return np.asarray(Image.fromarray(block).resize((cols, rows), Image.Resampling.BOX))
        y0, y1, iy, wy = _area_taps(row0, rows, ry, lh)
        x0, x1, ix, wx = _area_taps(col0, cols, rx, lw)
        block = self._read_level(y0, x0, y1 - y0, x1 - x0, ds)
        tall = _weighted_sum(block, iy, wy[:, :, None, None], axis=0)  # rows first, then columns
        out = _weighted_sum(tall, ix, wx[None, :, :, None], axis=1)
        return np.clip(np.floor(out + 0.5, out=out), 0, 255, out=out).astype(np.uint8)

    def _read_level(self, y: int, x: int, h: int, w: int, ds: float) -> np.ndarray:
        """Pixels of :attr:`level` at level pixels ``(x, y)``: ``round(x · ds)`` maps back exactly."""
        return self.slide.read_region((int(round(x * ds)), int(round(y * ds))), self.level, (int(w), int(h)))


def _view_downsample(slide, downsample, mpp) -> float:
    """Level-0 pixels per low pixel of the view asked for, a finite number >= 1, or a typed error."""
    if mpp is not None:
        try:
            wanted = float(mpp)
        except (TypeError, ValueError):
            wanted = float("nan")
        if not 0 < wanted < float("inf"):
            raise ResolutionError(slide.path, f"the low view's µm/px must be a finite number > 0, got {mpp!r} "
                                              f"(--low-mpp, or the checkpoint's low_mpp)")
        if slide.mpp is None:
            raise ResolutionError(slide.path, missing_mpp_reason(f"the low view at {wanted:g} µm/px was asked for",
                                                                 slide))
        ds = mpp_to_downsample(wanted, slide.mpp)
        if not ds >= 1.0 / (1.0 + RESAMPLE_TOLERANCE):
            raise ResolutionError(slide.path, f"the low view at {wanted:g} µm/px is finer than the slide's level 0 "
                                              f"({float(slide.mpp):g} µm/px); the attention net needs a coarse "
                                              f"view: a --low-mpp of several µm/px (8 is the default)")
        return ds
    try:
        ds = float(downsample)
    except (TypeError, ValueError):
        ds = float("nan")
    if not 1.0 / (1.0 + RESAMPLE_TOLERANCE) <= ds < float("inf"):
        raise RegionError(slide.path, f"the low view's downsample must be a finite number >= 1 (level-0 pixels "
                                      f"per low pixel), got {downsample!r} (--low-downsample, or the "
                                      f"checkpoint's low_downsample); 16 to 64 are usual")
    return ds


def _check_view_size(slide, downsample: float, mpp) -> None:
    """Refuse a view of more than :data:`MAX_LOW_VIEW_PIXELS` before anything is read."""
    w0, h0 = slide.dimensions
    rows, cols = max(1, round(h0 / downsample)), max(1, round(w0 / downsample))
    if rows * cols > MAX_LOW_VIEW_PIXELS:
        asked = f"{float(mpp):g} µm/px" if mpp is not None else f"downsample {downsample:g}"
        least = math.sqrt(w0 * h0 / MAX_LOW_VIEW_PIXELS)
        fix = (f"a --low-mpp of at least {least * float(slide.mpp):.3g}" if mpp is not None
               else f"a --low-downsample of at least {least:.3g}")
        raise RegionError(slide.path, f"the low view at {asked} would be {cols} x {rows} pixels, over the "
                                      f"{MAX_LOW_VIEW_PIXELS:,} a low view may have; use {fix}")


def _area_taps(start: int, count: int, ratio: float, src_len: int):
    """Output pixels ``start .. start + count - 1`` of an area resample along one axis.

    Output ``j`` is the mean of source ``[j · ratio, (j + 1) · ratio)``
    (clipped to the level), each source pixel weighted by how much of it lies
    inside. Returns the source span ``[s0, s1)`` and, per output pixel, its
    taps: indices into the span ``int [count, K]`` and weights
    ``float32 [count, K]`` (K = ceil(ratio) + 1; unused taps weigh 0).
    """
    lo = np.arange(start, start + count, dtype=np.float64) * ratio
    hi = np.minimum(lo + ratio, src_len)
    s0, s1 = int(np.floor(lo[0])), min(src_len, int(np.ceil(hi[-1])))
    taps = np.floor(lo)[:, None] + np.arange(int(np.ceil(ratio)) + 1)[None]  # source pixel of each tap
    cover = np.clip(np.minimum(hi[:, None], taps + 1) - np.maximum(lo[:, None], taps), 0, None)
    weights = (cover / cover.sum(axis=1, keepdims=True)).astype(np.float32)
    index = np.clip(taps - s0, 0, s1 - s0 - 1).astype(np.intp)
    return s0, s1, index, weights


def _weighted_sum(src: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``sum_k weights[..k..] * src.take(index[:, k], axis)`` in float32, accumulated in place."""
    taps = index.shape[1]
    w = np.moveaxis(weights, 2 if axis == 1 else 1, -1)  # the tap axis last
    out = np.multiply(src.take(index[:, 0], axis=axis), w[..., 0], dtype=np.float32)
    for k in range(1, taps):
        out += src.take(index[:, k], axis=axis) * w[..., k]
    return out


class TissueThreshold:
    """The low view's tissue mask (:func:`~ats_wsi.slide.tissue_mask`,
    ``never_empty=True``) for a view read region by region.

    :meth:`add` each pixel once (regions that tile the view), then
    :meth:`mask` of any region equals that region of the whole view's mask:
    Otsu's threshold needs only the histogram of the saturation.
    """

    def __init__(self):
        self.hist = np.zeros(256, dtype=np.float64)
        self._threshold: int | None = None

    def add(self, rgb: np.ndarray) -> None:
        """Count the saturation of uint8 ``(rows, cols, 3)`` pixels."""
        self.hist += histogram(saturation(rgb))
        self._threshold = None

    @property
    def threshold(self) -> int:
        """Otsu's threshold of the saturation of the pixels added so far."""
        if self._threshold is None:
            self._threshold = otsu_threshold_of_histogram(self.hist)
        return self._threshold

    @property
    def everywhere(self) -> bool:
        """True when no pixel stands out, so the mask is all tissue (``never_empty``)."""
        return not self.hist[self.threshold + 1:].any()

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """bool ``(rows, cols)``: tissue in uint8 ``(rows, cols, 3)`` pixels."""
        if self.everywhere:
            return np.ones(rgb.shape[:2], dtype=bool)
        return saturation(rgb) > self.threshold
