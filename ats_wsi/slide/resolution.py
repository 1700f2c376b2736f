"""Physical resolution: which stored level serves a read in µm/px, and a slide's magnification.

A patch asked for at ``mpp`` µm/px is served by :func:`resolution_plan`:

- the *effective downsample* is ``E = mpp / slide.mpp`` (level-0 pixels per
  output pixel);
- the level decoded is the coarsest *stored* level at least as fine as the
  target, within a relative ``tolerance`` (level ``k`` qualifies when
  ``slide.mpp * downsample_k <= mpp * (1 + tolerance)``); computed levels
  (slides stored without a pyramid) are never chosen: they are themselves
  means of level 0, and reducing level 0 once is exact;
- the *factor* ``f = E / downsample_k`` (pixels of that level per output
  pixel) snaps to the nearest integer ``n >= 1`` when ``|f / n - 1| <=
  tolerance``: 0.2527 µm/px is read as 0.25 (``f = 1``: the level as it is),
  and 0.5 µm/px from a 0.2527 µm/px level 0 is the exact 2 x 2 mean
  (``f = 2``). Any other factor is resampled with an area (box) filter of
  fractional weights (:mod:`ats_wsi.patches._resample`).
- A target finer than level 0 (``E < 1 / (1 + tolerance)``) raises
  :class:`~ats_wsi.errors.ResolutionError` unless ``upsample=True``.

Magnification follows TRIDENT's rule, ``magnification = 10 / mpp``, where
the file stores no objective power (:func:`objective_power`).

This module never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ResolutionError
from ..units import MAX_MPP, MIN_MPP

__all__ = [
    "DEFAULT_MPP_TOLERANCE", "MAX_MPP", "MIN_MPP", "ResolutionPlan", "plausible_mpp", "format_magnification", "magnification_to_mpp",
    "mpp_to_magnification", "objective_power", "resolution_plan", "stored_levels", "mpp_to_downsample",
    "downsample_to_mpp",
]

DEFAULT_MPP_TOLERANCE = 0.05
"""Relative tolerance of µm/px matching (5 %): 0.2527 µm/px counts as 0.25."""

MIN_MAGNIFICATION, MAX_MAGNIFICATION = 0.1, 1000.0
"""Objective powers believed (``AppMag``); others are ignored as unknown."""


def plausible_mpp(value) -> bool:
    """True for a level-0 µm/px in ``[MIN_MPP, MAX_MPP]`` (a finite number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return MIN_MPP <= v <= MAX_MPP


def believed_mpp(mpp_xy, source: str) -> tuple[tuple[float, float] | None, tuple[float, str] | None]:
    """``(mpp_xy, None)`` for a plausible metadata µm/px (or none), else ``(None, (value, source))``."""
    if mpp_xy is None:
        return None, None
    xy = (float(mpp_xy[0]), float(mpp_xy[1]))
    bad = [v for v in xy if not plausible_mpp(v)]
    return (None, (bad[0], source)) if bad else (xy, None)


def given_mpp(value, path) -> float:
    """A µm/px a user gives (``open_slide(mpp=)``, ``slide.mpp = ``), checked; else ResolutionError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and v < float("inf")):
        raise ResolutionError(path, f"mpp must be a number > 0, got {value!r}")
    if not plausible_mpp(v):
        raise ResolutionError(path, f"mpp {value!r} µm/px is outside the plausible {MIN_MPP:g}–{MAX_MPP:g} µm/px "
                                    f"of a slide scan (a level-0 pixel's side in µm)")
    return v


def implausible_mpp_reason(value, source: str) -> str:
    """The sentence saying a µm/px is out of range, where it came from, and the fix."""
    return (f"{source} says {value!r} µm/px, outside the plausible {MIN_MPP:g}–{MAX_MPP:g} µm/px of a slide "
            f"scan; give the slide's real µm/px: open_slide(path, mpp=...) or slide.mpp = ..., an `mpp` "
            f"column in the manifest, or --mpp on the command line")


@dataclass(frozen=True)
class ResolutionPlan:
    """How patches at ``mpp`` µm/px are read from one slide.

    Attributes:
        mpp: the target µm/px.
        slide_mpp: the slide's level-0 µm/px the plan was made with.
        level: the stored level decoded.
        factor: pixels of ``level`` per output pixel (1: the level as it is;
            an integer: exact area mean of ``factor x factor`` blocks; else
            an area filter with fractional weights; below 1 only when
            upsampling was asked for).
        downsample: level-0 pixels per output pixel, ``level downsample x
            factor``: a patch of ``p`` output pixels covers ``p x downsample``
            level-0 pixels.
    """

    mpp: float
    slide_mpp: float
    level: int
    factor: float
    downsample: float

    @property
    def integer(self) -> bool:
        """True when ``factor`` is a whole number (an exact block mean, or none)."""
        return float(self.factor).is_integer()

    @property
    def read_mpp(self) -> float:
        """The µm/px actually delivered: ``slide_mpp x downsample`` (within tolerance of ``mpp``)."""
        return downsample_to_mpp(self.downsample, self.slide_mpp)


def mpp_to_downsample(mpp: float, slide_mpp: float) -> float:
    """Level-0 pixels per pixel read at ``mpp`` µm/px from a slide of level-0 ``slide_mpp`` µm/px.

    The one place µm/px becomes a downsample (``mpp / slide_mpp``): low views,
    patch reads and ``Slide.level_for`` all go through it.
    """
    return float(mpp) / float(slide_mpp)


def downsample_to_mpp(downsample: float, slide_mpp: float) -> float:
    """µm/px of pixels ``downsample`` level-0 pixels wide, on a slide of level-0 ``slide_mpp`` µm/px."""
    return float(slide_mpp) * float(downsample)


def _positive(value, what: str, path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ResolutionError(path, f"{what} must be a number > 0, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ResolutionError(path, f"{what} must be a number > 0, got {value!r}")
    return v


def stored_levels(slide) -> list[int]:
    """Indices of the levels stored in the file (computed levels excluded), finest first:
    ``range(slide.level_count)``, openslide's levels (computed ones are only in ``slide.pyramid``)."""
    return list(range(slide.level_count))


def missing_mpp_reason(what: str, slide=None) -> str:
    """The sentence every read in µm/px says when the slide has no resolution
    (or only one its metadata gives out of range: ``slide.mpp_rejected``)."""
    rejected = getattr(slide, "mpp_rejected", None)
    if rejected is not None:
        return f"{what}, but its metadata's µm/px is not believed: " + implausible_mpp_reason(*rejected)
    return (f"{what}, but the slide has no µm/px in its metadata; give it: open_slide(path, mpp=...) "
            f"or slide.mpp = ..., an `mpp` column in the manifest, or --mpp on the command line")


def resolution_plan(slide, mpp: float, *, tolerance: float = DEFAULT_MPP_TOLERANCE,
                    upsample: bool = False) -> ResolutionPlan:
    """The stored level and resampling factor that serve reads at ``mpp`` µm/px.

    Args:
        slide: an open :class:`~ats_wsi.slide.Slide` whose ``mpp`` is known
            (from its metadata, ``open_slide(mpp=...)`` or ``slide.mpp = ...``).
        mpp: target µm per output pixel (> 0).
        tolerance: relative tolerance (>= 0, < 1) of level choice and factor snapping.
        upsample: allow a target finer than level 0 (then level 0 is
            enlarged with the area filter, pixels repeated for integer ratios).

    Returns:
        :class:`ResolutionPlan`.

    Raises:
        ResolutionError: ``mpp`` or ``tolerance`` out of range, the slide's
            resolution unknown, or a target finer than level 0 without
            ``upsample``; the message names the slide and both resolutions.
    """
    path = slide.path
    target = _positive(mpp, "the patch resolution (mpp)", path)
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        tol = float("nan")
    if not 0 <= tol < 1:
        raise ResolutionError(path, f"mpp tolerance must be in [0, 1), got {tolerance!r}")
    if slide.mpp is None:
        raise ResolutionError(path, missing_mpp_reason(f"patches at {target:g} µm/px were asked for", slide))
    slide_mpp = float(slide.mpp)
    effective = mpp_to_downsample(target, slide_mpp)
    downsamples = slide.level_downsamples
    fine_enough = [k for k in stored_levels(slide)
                   if downsample_to_mpp(downsamples[k], slide_mpp) <= target * (1 + tol)]
    if not fine_enough:
        if not upsample:
            raise ResolutionError(path, f"patches at {target:g} µm/px are finer than the slide's level 0 "
                                        f"({slide_mpp:g} µm/px, tolerance {tol:.0%}): read coarser patches, or, "
                                        f"if the slide's µm/px is wrong, give the true one (an mpp column of the "
                                        f"manifest, --mpp)")
        level = 0
    else:
        level = max(fine_enough, key=lambda k: downsamples[k])
    level_ds = float(downsamples[level])
    factor = effective / level_ds
    whole = max(1, round(factor))
    if abs(factor / whole - 1.0) <= tol:
        factor = float(whole)
    return ResolutionPlan(mpp=target, slide_mpp=slide_mpp, level=level, factor=factor,
                          downsample=level_ds * factor)


def magnification_to_mpp(magnification: float) -> float:
    """µm/px of an objective magnification by TRIDENT's rule: ``10 / magnification`` (20x -> 0.5)."""
    m = float(magnification)
    if not (m > 0 and math.isfinite(m)):
        raise ValueError(f"magnification must be a number > 0, got {magnification!r}")
    return 10.0 / m


def mpp_to_magnification(mpp: float) -> float:
    """Objective magnification of a µm/px by TRIDENT's rule: ``10 / mpp`` (0.25 -> 40)."""
    return magnification_to_mpp(mpp)


def objective_power(slide) -> tuple[float | None, bool]:
    """The slide's objective magnification and whether it is estimated.

    Returns:
        ``(magnification, estimated)``: the stored objective power
        (``openslide.objective-power``, or Aperio ``aperio.AppMag``) with
        ``estimated=False``; else ``10 / slide.mpp`` with ``estimated=True``;
        ``(None, True)`` when neither is known.
    """
    props = slide.properties
    for key in ("openslide.objective-power", "aperio.AppMag"):
        try:
            value = float(props[key])
        except (KeyError, TypeError, ValueError):
            continue
        if MIN_MAGNIFICATION <= value <= MAX_MAGNIFICATION:
            return value, False
    if slide.mpp is None:
        return None, True
    return mpp_to_magnification(slide.mpp), True


def format_magnification(magnification: float | None, estimated: bool = False) -> str:
    """``40x``, ``2.5x``, ``20x (est.)``; ``-`` when unknown. Estimates are rounded to 0.1."""
    if magnification is None:
        return "-"
    value = round(float(magnification), 1) if estimated else float(magnification)
    text = f"{value:g}x"
    return f"{text} (est.)" if estimated else text
