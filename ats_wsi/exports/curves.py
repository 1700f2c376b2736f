"""ROC and PR curves of a labelled prediction run (CSV and PNG), AUPRC, and the operating point.

``curve_report`` writes, under ``RESULTS/curves/``:

- ``roc.csv``: ``class,threshold,fpr,tpr`` (one-vs-rest per class; the first
  point of each class at threshold ``inf``) and ``roc.png``;
- ``pr.csv``: ``class,threshold,precision,recall`` (the last point of each
  class, precision 1 at recall 0, has no threshold) and ``pr.png``;

and returns what goes into ``metrics.json``: ``auprc`` per class (average
precision, with percentile bootstrap intervals on the same resamples as the
other metrics) and, for two classes, ``operating_point``: sensitivity and
specificity of class 1 at a threshold on P(class 1) (the one chosen on the
validation slides during training, or ``--threshold``), with the counts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_path, write_csv_atomic
from ..curves import average_precision, class_curves, sensitivity_specificity
from ..metrics import bootstrap_ci

__all__ = ["curve_report", "draw_curves"]

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _num(v: float) -> Any:
    return "inf" if v == np.inf else float(v)


def curve_report(out: str | os.PathLike, labels: Sequence[int], probabilities: np.ndarray,
                 class_names: Sequence[str], *, threshold: float | None = None, threshold_source: str = "",
                 resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Write the curves of ``labels`` vs ``probabilities`` to ``out/curves`` and return their numbers.

    Args:
        out: the results folder.
        labels: int [n], each slide's true class.
        probabilities: float [n, K], the class probabilities as in ``predictions.csv``.
        class_names: K names.
        threshold: two classes: the threshold on P(class 1) of the operating point (None: none reported).
        threshold_source: where it came from, recorded beside it.
        resamples, seed: of the bootstrap intervals of AUPRC.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), -1)
    names = [str(n) for n in class_names]
    curves = class_curves(labels, probs)
    folder = Path(out) / "curves"
    roc_rows = [{"class": names[c["class"]], "threshold": _num(t), "fpr": f, "tpr": p}
                for c in curves for t, f, p in zip(c["roc"]["threshold"], c["roc"]["fpr"], c["roc"]["tpr"])]
    pr_rows = [{"class": names[c["class"]], "threshold": _num(t) if t is not None else "", "precision": p, "recall": r}
               for c in curves for t, p, r in zip([*c["pr"]["threshold"], None], c["pr"]["precision"],
                                                   c["pr"]["recall"])]
    write_csv_atomic(folder / "roc.csv", roc_rows, ["class", "threshold", "fpr", "tpr"])
    write_csv_atomic(folder / "pr.csv", pr_rows, ["class", "threshold", "precision", "recall"])
    draw_curves(folder / "roc.png", [(names[c["class"]], c["roc"]["fpr"], c["roc"]["tpr"]) for c in curves],
                "ROC (one vs rest)", "false positive rate", "true positive rate", diagonal=True)
    draw_curves(folder / "pr.png", [(names[c["class"]], c["pr"]["recall"], c["pr"]["precision"]) for c in curves],
                "precision-recall (one vs rest)", "recall", "precision")
    report: dict[str, Any] = {"auprc": {}, "curves": {"roc": "curves/roc.csv", "pr": "curves/pr.csv"}}
    for c in curves:
        k = c["class"]
        low, high, valid = bootstrap_ci(lambda i, k=k: average_precision(labels[i] == k, probs[i, k]), len(labels),
                                        resamples=resamples, seed=seed)
        report["auprc"][names[k]] = {"value": c["auprc"], "ci_low": low, "ci_high": high, "resamples_valid": valid}
    if threshold is not None and probs.shape[1] == 2:
        point = sensitivity_specificity(labels == 1, probs[:, 1], threshold)
        report["operating_point"] = {"positive_class": names[1], "source": threshold_source, **point}
    return report


def draw_curves(path: str | os.PathLike, series, title: str, x_label: str, y_label: str, *,
                diagonal: bool = False, size: int = 480) -> Path:
    """A PNG of curves on [0, 1]²: ``series`` is ``[(name, x [m], y [m])]``; NaN points are left out."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 52, 28, size - 12, size - 44
    px = lambda x, y: (left + x * (right - left), bottom - y * (bottom - top))  # noqa: E731
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = px(t, 0)
        _, y = px(0, t)
        draw.line([x, bottom, x, bottom + 4], fill=(0, 0, 0))
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((x - 10, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
        draw.text((left - 34, y - 7), f"{t:g}", fill=(0, 0, 0), font=font)
    if diagonal:
        draw.line([px(0, 0), px(1, 1)], fill=(180, 180, 180))
    for k, (name, xs, ys) in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [px(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((left + 8, top + 6 + 16 * k), str(name), fill=colour, font=font)
    draw.text(((left + right - draw.textlength(title, font=font)) / 2, 6), title, fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - 40, size - 20), x_label, fill=(0, 0, 0), font=font)
    draw.text((4, top - 18), y_label, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
