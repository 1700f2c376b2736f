"""What a cohort run needs around the loops: the slide check before training, class
weights, the choice of ``best.pt``, and metrics of predictions against labels.

- :func:`check_slides` opens every slide of a manifest (and reads its low
  view) in parallel before the first epoch; the slides stay open for training.
  All unreadable rows are reported together (:class:`UnreadableSlides`), or
  skipped and listed in ``skipped.csv``.
- :func:`class_weights`: ``"balanced"`` weights ``n / (K * n_k)``.
- :func:`best_epoch`: the epoch ``best.pt`` is, by validation AUC, accuracy
  or loss.
- :func:`prediction_metrics`: accuracy, balanced accuracy, ROC AUC and the
  confusion matrix of ``predict_slides``' rows, with bootstrap intervals
  (:mod:`ats_wsi.metrics`).
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_csv_atomic
from ..data.manifest import MAX_LISTED, ManifestRow
from ..errors import ManifestError
from ..metrics import evaluate
from ._progress import ProgressFactory, open_bar

__all__ = ["Unreadable", "UnreadableSlides", "SlideChecks", "MidRunFailures", "check_slides", "open_slides", "write_skipped", "class_weights", "best_epoch",
           "SELECT", "prediction_metrics", "write_prediction_metrics", "write_split_metrics", "SKIPPED_FIELDS"]

SELECT = ("accuracy", "auc", "loss")
_log = logging.getLogger("ats_wsi.train")
SKIPPED_FIELDS = ["line", "path", "split", "label", "reason"]


@dataclass(frozen=True)
class Unreadable:
    """A manifest row whose slide could not be opened, and why."""

    row: ManifestRow
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.row.line, "path": str(self.row.path), "split": self.row.split,
                "label": self.row.class_name or self.row.label, "reason": self.reason}


class UnreadableSlides(ManifestError):
    """Slides of a manifest that cannot be read: all of them, each with its line and reason."""

    def __init__(self, manifest, bad: Sequence[Unreadable], total: int):
        self.manifest, self.bad, self.total = manifest, list(bad), total
        lines = [f"  line {u.row.line}: {u.row.path}: {u.reason}" for u in self.bad[:MAX_LISTED]]
        if len(self.bad) > MAX_LISTED:
            lines.append(f"  ... and {len(self.bad) - MAX_LISTED} more")
        what = "read" if not any("µm/px" in u.reason for u in self.bad) else "read or used"
        super().__init__(f"{manifest}: {len(self.bad)} of {total} slide(s) cannot be {what} "
                         f"(--skip-unreadable trains on the others):\n" + "\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.manifest, self.bad, self.total))


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"


class _PerThread(logging.Handler):
    """Collects library log records (tifffile's warnings) per thread while slides are checked."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.slide: dict[int, str] = {}
        self.records: dict[str, list[str]] = {}

    def emit(self, record):
        key = self.slide.get(threading.get_ident())
        if key is not None:
            self.records.setdefault(key, []).append(record.getMessage())


@contextmanager
def _capture(logger_names=("tifffile",)):
    handler = _PerThread()
    loggers = [logging.getLogger(n) for n in logger_names]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False  # not to the terminal, inside a progress bar
    try:
        yield handler
    finally:
        for lg, (propagate, _) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate


@dataclass(frozen=True)
class SlideChecks:
    """What :func:`check_slides` does to each slide beyond opening it and reading its low view."""

    tiles: int = 16
    """Tiles decoded per slide at the level patches are read from, under tissue (0: none)."""
    seconds: float = 5.0
    """Time per slide after which no further tile is decoded."""
    physical: bool = True
    """Whether the model reads in µm/px: a level-0 µm/px no scanner produces is then an error."""


def _check_one(item, checks: SlideChecks) -> str | None:
    """Why an opened slide cannot be trained on (its µm/px, a broken tile), or None."""
    from ..slide.tilecheck import check_tiles
    from .cohort_check import mpp_problem

    problem = mpp_problem(item.slide.mpp)
    if problem and checks.physical:
        return problem
    if checks.tiles > 0:
        done = check_tiles(item.slide, item.reader.level, n=checks.tiles, seconds=checks.seconds,
                           mask=item.view.mask)
        if done.error:
            return f"CorruptSlideError: {done.error}"
    return None


def _failed_open(path: str, exc: BaseException, mpp: float | None) -> str:
    """The reason for a slide that did not open: its µm/px when that is the cause, with the fix."""
    from ..errors import ResolutionError
    from ..slide import open_slide
    from .cohort_check import mpp_problem

    if isinstance(exc, ResolutionError):
        try:
            with open_slide(path, mpp=mpp) as slide:
                rejected = getattr(slide, "mpp_rejected", None)  # (value, tag) the metadata gave out of range
                problem = mpp_problem(slide.mpp if rejected is None else rejected[0]) or (
                    None if slide.mpp is not None else (
                        "ResolutionError: the slide has no µm/px in its metadata and the model reads in µm/px: give "
                        "the true µm/px in the manifest's mpp column, or --mpp for every slide"))
        except Exception:  # the reason of the first failure stands
            problem = None
        if problem:
            return problem
    return _reason(exc)


def check_slides(rows: Sequence[ManifestRow], inputs, *, threads: int = 4, progress: ProgressFactory | None = None,
                 checks: SlideChecks | None = None) -> tuple[list[Unreadable], dict[str, list[str]]]:
    """Open every slide of ``rows`` through ``inputs`` (a :class:`~ats_wsi.classifier.SlideInputs`).

    Each slide is opened, its low view and tissue mask read and (``checks``)
    its level-0 µm/px checked and a sample of its tiles decoded
    (:func:`ats_wsi.slide.tilecheck.check_tiles`), in ``threads`` threads;
    what opened stays open in ``inputs`` for training.

    Returns:
        ``(unreadable rows, {slide path: [library warnings]})``; the warnings
        (tifffile's) are collected per slide instead of being printed.
    """
    checks = checks or SlideChecks(tiles=0, physical=False)
    paths = list(dict.fromkeys(str(r.path) for r in rows))  # one open per distinct slide
    failed: dict[str, str] = {}
    bar = open_bar(progress, len(paths), "checking slides", "slide")

    with _capture() as handler:
        def open_one(path: str) -> None:
            handler.slide[threading.get_ident()] = path
            try:
                problem = _check_one(inputs[path], checks)
                if problem:
                    failed[path] = problem
            except Exception as exc:  # any failure of a slide is reported with its row
                failed[path] = _failed_open(path, exc, inputs.mpp.get(path))
            finally:
                handler.slide.pop(threading.get_ident(), None)

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            for _ in pool.map(open_one, paths):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    bad = sorted((Unreadable(r, failed[str(r.path)]) for r in rows if str(r.path) in failed),
                 key=lambda u: u.row.line)  # in the manifest's order, whatever the split
    return bad, handler.records


def write_skipped(out: Path, bad: Sequence[Unreadable]) -> Path:
    """``out/skipped.csv``: line, path, split, label and reason of each skipped row."""
    return write_csv_atomic(Path(out) / "skipped.csv", [u.as_dict() for u in bad], SKIPPED_FIELDS)


def open_slides(manifest, out: Path, train_rows: list[ManifestRow], val_rows: list[ManifestRow], inputs,
                settings, *, rank: int = 0, progress: ProgressFactory | None = None,
                checks: SlideChecks | None = None) -> tuple[list, list, list[Unreadable]]:
    """Open and check every slide of training (:func:`check_slides`) before the first epoch.

    Unreadable rows raise :class:`UnreadableSlides` naming them, or with
    ``settings.skip_unreadable`` are dropped and listed in ``out/skipped.csv``.
    Creates the run folder (rank 0). Returns the readable train and val rows
    and the unreadable ones.
    """
    rows = list(train_rows) + list(val_rows)
    bad, warned = check_slides(rows, inputs, threads=settings.open_threads, progress=progress if rank == 0 else None,
                               checks=checks)
    for path, messages in warned.items():
        _log.warning("%s: %d reader warning(s) while opening, first: %s", path, len(messages), messages[0])
    if bad and not settings.skip_unreadable:
        raise UnreadableSlides(manifest, bad, len(rows))
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        if bad or (Path(out) / "skipped.csv").exists():
            write_skipped(out, bad)
    unreadable = {str(u.row.path) for u in bad}
    train_rows = [r for r in train_rows if str(r.path) not in unreadable]
    val_rows = [r for r in val_rows if str(r.path) not in unreadable]
    if not train_rows:
        raise ManifestError(f"{manifest}: none of the slides in split {settings.train_split!r} can be read")
    for u in bad:
        _log.warning("skipped line %d: %s: %s", u.row.line, u.row.path, u.reason)
    return train_rows, val_rows, bad


class MidRunFailures:
    """Slides that fail while training (a broken tile the check before training did not decode).

    :meth:`record` stops the run naming the slide (:class:`UnreadableSlides`), or
    with ``skip_unreadable`` (one process only: under DDP every process must
    run the same slides) adds it to ``skipped.csv`` and leaves it out of later
    steps and epochs.
    """

    def __init__(self, manifest, out: Path, skipped: Sequence[Unreadable], total: int, *, skip: bool,
                 write: bool = True):
        self.manifest, self.out, self.total, self.skip, self.write = manifest, Path(out), total, skip, write
        self.skipped = list(skipped)
        self.failed: set[str] = set()

    def __contains__(self, row: ManifestRow) -> bool:
        return str(row.path) in self.failed

    def record(self, row: ManifestRow, exc: BaseException, epoch: int) -> None:
        """Skip ``row`` from now on, or raise :class:`UnreadableSlides` naming it."""
        bad = Unreadable(row, f"in epoch {epoch + 1}: {_reason(exc)}")
        if not self.skip:
            raise UnreadableSlides(self.manifest, [bad], self.total) from None
        self.failed.add(str(row.path))
        self.skipped.append(bad)
        if self.write:
            write_skipped(self.out, self.skipped)
        _log.warning("skipped line %d: %s: %s", row.line, row.path, bad.reason)


def class_weights(rows: Sequence[ManifestRow], n_classes: int, mode: str | None) -> list[float] | None:
    """Loss weight per class: None (all 1), or ``"balanced"``: ``n / (K * n_k)``
    over the training rows (as scikit-learn's ``class_weight="balanced"``; a
    class without training slides gets 1)."""
    if mode is None or mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weights must be None or 'balanced', got {mode!r}")
    counts = np.bincount([r.label for r in rows], minlength=n_classes).astype(np.float64)
    present = counts > 0
    k = int(present.sum())
    return [float(len(rows) / (k * c)) if c else 1.0 for c in counts]


def best_epoch(history: Sequence, select: str = "accuracy"):
    """The epoch (of ``history``, EpochMetrics) that ``best.pt`` copies.

    ``accuracy``: highest validation accuracy, then lowest loss; ``auc``:
    highest validation AUC, then lowest loss; ``loss``: lowest validation
    loss. Later epochs win ties; without validation numbers (NaN) the last
    epoch is best.
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")

    def key(m):
        neg_loss = -m.val_loss if not math.isnan(m.val_loss) else 0.0
        if select == "loss":
            return neg_loss, m.epoch
        score = m.val_acc if select == "accuracy" else getattr(m, "val_auc", float("nan"))
        return (-1.0 if math.isnan(score) else score), neg_loss, m.epoch

    return max(history, key=key)


def prediction_metrics(rows: Sequence[dict], n_classes: int, class_names: Sequence[str] | None = None, *,
                       resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``predict_slides`` rows that have a ``label``.

    The probabilities are the ``p0 .. p{K-1}`` cells as written to
    ``predictions.csv`` (so anyone recomputing them from the file gets the same
    numbers); the predicted class is the ``predicted`` cell.
    """
    labelled = [r for r in rows if r.get("label") not in (None, "")]
    labels = [int(r["label"]) for r in labelled]
    probs = np.array([[float(r[f"p{k}"]) for k in range(n_classes)] for r in labelled],
                     dtype=np.float64).reshape(len(labelled), n_classes)
    predicted = [int(r["predicted"]) for r in labelled]
    out = evaluate(labels, probs, predicted=predicted, class_names=class_names, resamples=resamples, seed=seed)
    out["n_unlabelled"] = len(rows) - len(labelled)
    return out


def write_prediction_metrics(out: Path, rows: Sequence[dict], n_classes: int,
                             class_names: Sequence[str] | None = None, *, resamples: int = 1000,
                             seed: int = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`prediction_metrics` of ``rows``, also written to ``out/metrics.json``."""
    from ..atomic import json_safe, write_json_atomic

    result = {**prediction_metrics(rows, n_classes, class_names, resamples=resamples, seed=seed),
              **(extra or {})}
    write_json_atomic(Path(out) / "metrics.json", json_safe(result))
    return result


def write_split_metrics(out: Path, rows: Sequence[dict], n_classes: int, class_names: Sequence[str] | None = None,
                        *, resamples: int = 1000, seed: int = 0,
                        extra: dict[str, Any] | None = None,
                        per_split: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`prediction_metrics` of each split of ``rows`` (their ``split`` cell), in
    ``out/metrics.json`` as ``{"splits": {split: metrics}, "split": null, ...extra}``: training slides
    are never pooled with held-out ones. ``per_split[split]`` is added to that split's metrics.
    Returns ``{split: metrics}`` (train, val, test first)."""
    from ..atomic import json_safe, write_json_atomic

    names = sorted({r.get("split") or "" for r in rows if r.get("label") not in (None, "")},
                   key=lambda s: (("train", "val", "test").index(s) if s in ("train", "val", "test") else 3, s))
    per = {s: prediction_metrics([r for r in rows if (r.get("split") or "") == s], n_classes, class_names,
                                 resamples=resamples, seed=seed) | (per_split or {}).get(s, {}) for s in names}
    write_json_atomic(Path(out) / "metrics.json", json_safe({"splits": per, **(extra or {}), "split": None}))
    return per


