"""The check before training: every slide of a run opened, read and checked once, in threads.

- :func:`check_slides` opens every slide of a manifest (and reads its low
  view and tissue mask; with :class:`SlideChecks`, checks its µm/px and
  decodes a sample of its tiles) in parallel before the first epoch; the
  slides stay open for training. Reader warnings are collected per slide
  (:mod:`._log_capture`), not printed.
- :func:`open_slides`: that check for a run's train and val rows; all
  unreadable rows are reported together (:class:`~.unreadable.UnreadableSlides`),
  or skipped and listed in ``skipped.csv``.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data.manifest import ManifestRow
from ..errors import ManifestError
from ._log_capture import capture_warnings
from ._progress import ProgressFactory, open_bar
from .unreadable import Unreadable, UnreadableSlides, reason_of, write_skipped

__all__ = ["SlideChecks", "check_slides", "open_slides"]

_log = logging.getLogger("ats_wsi.train")


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
    return reason_of(exc)


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

    with capture_warnings() as warnings:
        def open_one(path: str) -> None:
            warnings.on(path)
            try:
                problem = _check_one(inputs[path], checks)
                if problem:
                    failed[path] = problem
            except Exception as exc:  # any failure of a slide is reported with its row
                failed[path] = _failed_open(path, exc, inputs.mpp.get(path))
            finally:
                warnings.on(None)

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            for _ in pool.map(open_one, paths):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    bad = sorted((Unreadable(r, failed[str(r.path)]) for r in rows if str(r.path) in failed),
                 key=lambda u: u.row.line)  # in the manifest's order, whatever the split
    return bad, warnings.records


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
