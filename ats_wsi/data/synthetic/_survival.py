"""A synthetic survival cohort: the hazard grows with the lesion's size.

:func:`make_survival_cohort` writes a slide set (:func:`make_slide_set`: half of
the slides with a lesion, every slide with benign look-alike spots) and gives
each slide a follow-up time from a Weibull law with proportional hazards:
``S(t) = exp(-ln 2 * (t / median)^shape * exp(log_hazard_per_mm2 * lesion area in mm²))``
(a slide without a lesion lives ``median`` months at the median; ``shape`` 1
is the exponential law, a larger shape less noise), censored at a uniform time
in ``(0, follow_up)``.
Its manifest ``survival.csv`` has ``path,time,event,split,label,lesion_mm2``
(the split as the slide set's, stratified by label): a model that finds the
lesions and measures them ranks the slides by risk; one that does not stays
at a C-index of 0.5.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ._slide_set import make_slide_set
from ._truth import load_synthetic_slide

__all__ = ["make_survival_cohort"]


def make_survival_cohort(out_dir: str | os.PathLike, n_slides: int = 24, *, seed: int = 0, median: float = 60.0,
                         shape: float = 3.0, log_hazard_per_mm2: float = 8.0, follow_up: float = 120.0,
                         **kw) -> Path:
    """Write the slides and ``out_dir/survival.csv``; return the manifest's path.

    Args:
        out_dir: folder to write into (the slides go to ``out_dir/slides``).
        n_slides: slides in the cohort.
        seed: seed of the slides and of the times.
        median: median survival (months) of a slide without a lesion.
        shape: the Weibull shape (1: exponential times).
        log_hazard_per_mm2: log hazard ratio per mm² of lesion.
        follow_up: the longest follow-up (months); censoring times are uniform below it.
        **kw: passed on to :func:`make_slide_set` (``size``, ``lesion_size_um``, ...).
    """
    out = Path(out_dir)
    slides = make_slide_set(out / "slides", n_slides=n_slides, seed=seed, **kw)
    rng = np.random.default_rng([seed, 28])
    with open(slides, newline="") as fh:
        rows = list(csv.DictReader(fh))
    manifest = out / "survival.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "time", "event", "split", "label", "lesion_mm2"])
        for row in rows:
            truth = load_synthetic_slide(row["path"])
            um = truth.mpp or 0.5
            mm2 = sum(w * h for _, _, w, h in truth.lesions) * (um / 1000.0) ** 2 * np.pi / 4  # ellipses in boxes
            hazard = np.log(2) / median ** shape * np.exp(log_hazard_per_mm2 * mm2)
            time = (rng.exponential() / hazard) ** (1.0 / shape)
            censor = rng.uniform(0.0, follow_up)
            writer.writerow([row["path"], f"{min(time, censor):.3f}", int(time <= censor), row["split"],
                             row["label"], f"{mm2:.4f}"])
    return manifest
