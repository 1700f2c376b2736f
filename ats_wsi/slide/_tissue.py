"""Tissue detection: HSV saturation and Otsu's threshold, in numpy.

:func:`tissue_mask` is the one tissue mask of the package: ``Slide.tissue_mask``
and the low view (:func:`ats_wsi.slide.lowview.read_low_view`) both call it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["otsu_threshold", "saturation", "tissue_mask"]

SATURATION_ROWS = 256
"""Rows of an image :func:`tissue_mask` converts to saturation at once, so
that the uint16 temporaries of a big image stay small."""


def tissue_mask(rgb: np.ndarray, *, never_empty: bool = False) -> np.ndarray:
    """Tissue (True) vs. background: HSV saturation above its Otsu threshold.

    Args:
        rgb: uint8 (rows, cols, 3). Black fill and white glass have
            saturation 0, so both count as background.
        never_empty: when the threshold finds nothing (a blank or uniform
            image), return "everything is tissue" instead of an empty mask.
            The low view asks for this, since nothing could be sampled from an
            empty mask; ``Slide.tissue_mask`` does not (blank glass is empty).

    Returns:
        bool (rows, cols).
    """
    sat = np.empty(rgb.shape[:2], dtype=np.uint8)
    for r0 in range(0, rgb.shape[0], SATURATION_ROWS):
        sat[r0:r0 + SATURATION_ROWS] = saturation(rgb[r0:r0 + SATURATION_ROWS])
    mask = sat > otsu_threshold(sat)
    if never_empty and not mask.any():
        mask = np.ones(sat.shape, dtype=bool)
    return mask


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 (..., 3) RGB as uint8 (...) in 0..255.

    ``(max - min) / max`` scaled to 255; 0 where ``max == 0`` (black fill).
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # elementwise: far faster than a reduce over a last axis of 3
    hi = np.maximum(np.maximum(r, g), b).astype(np.uint16)
    lo = np.minimum(np.minimum(r, g), b).astype(np.uint16)
    sat = np.zeros(hi.shape, np.uint16)
    np.floor_divide((hi - lo) * 255, hi, out=sat, where=hi > 0)
    return sat.astype(np.uint8)


def histogram(values: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """Counts of each uint8 value, float64 [256], in blocks (bincount widens
    its input to int64: one block at a time keeps that copy small)."""
    flat = values.reshape(-1)
    hist = np.zeros(256, dtype=np.float64)
    for start in range(0, flat.size, block):
        hist += np.bincount(flat[start:start + block], minlength=256)
    return hist


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t maximising the between-class
    variance of ``values <= t`` and ``values > t``."""
    return otsu_threshold_of_histogram(histogram(values))


def otsu_threshold_of_histogram(hist: np.ndarray) -> int:
    """:func:`otsu_threshold` of the values whose counts are ``hist`` [256]
    (so that an image read region by region needs only its histogram)."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # count at or below t
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    m1 = m0[-1] - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - m1 / w1) ** 2
    between[~np.isfinite(between)] = -1.0
    if between.max() < 0:  # one value only: nothing stands out
        return int(np.flatnonzero(hist).max())
    return int(np.argmax(between))
