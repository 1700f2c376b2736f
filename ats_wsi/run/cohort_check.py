"""What is checked about a cohort before training, and the summary a run writes of it.

- :func:`duplicate_problems`: the same slide on two rows, found by path, by
  file identity (a hard link, a symlink: device and inode) or by content (files
  of equal size whose first, middle and last MiB are equal), in one split, in
  two splits or with two labels.
- :func:`class_problems`: fewer than two classes in the training split, or a
  class without training slides.
- :func:`mpp_problem`: a level-0 µm/px outside what scanners produce
  (:data:`MPP_RANGE`); a TIFF without resolution tags gets 1000 µm/px from
  libvips' default, 352.8 from 72 dpi.
- :class:`CohortSummary`: classes and slides per class per split, the scanner
  groups (format, µm/px, magnification, the levels read), skipped slides and
  warnings (a cohort of several resolutions trained in pixels); written as
  ``cohort.json`` and ``cohort.txt`` into the run folder.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_json_atomic, write_text_atomic
from ..data.manifest import ManifestRow, bad_rows
from ..errors import ManifestError

__all__ = ["MPP_RANGE", "CohortError", "duplicate_problems", "class_problems", "check_cohort", "mpp_problem",
           "ScannerGroup", "CohortSummary", "summarise", "write_summary"]

MPP_RANGE = (0.1, 20.0)
"""Level-0 µm/px a slide scanner produces (100x oil is ~0.1; a 1.25x overview ~8)."""
_SAMPLE = 1 << 20  # bytes read at the start, middle and end of files of equal size
_SPLITS = ("train", "val", "test")


class CohortError(ManifestError):
    """A cohort that cannot be trained as it is: duplicates, one class, a class without training slides."""


def mpp_problem(mpp: float | None) -> str | None:
    """Why a level-0 µm/px cannot be a scanner's (with the fix), or None when it can (or is unknown)."""
    lo, hi = MPP_RANGE
    if mpp is None or lo <= mpp <= hi:
        return None
    return (f"level-0 µm/px {mpp:g} is outside what scanners produce ({lo:g}-{hi:g}; a TIFF without resolution "
            f"tags reads as 1000 from libvips, 352.8 at 72 dpi): give the true µm/px in the manifest's mpp "
            f"column, or --mpp for every slide")


def _fingerprint(path: Path, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for start in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            fh.seek(start)
            h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def _identities(rows: Sequence[ManifestRow]) -> list[list[tuple[str, str]]]:
    """Per row, its keys: ``("path", p)``, ``("file", dev:ino)``, ``("content", hash)`` (files only)."""
    keys: list[list[tuple[str, str]]] = []
    sizes: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        mine = [("path", os.path.normcase(os.path.abspath(row.path)))]
        try:
            st = os.stat(row.path)
        except (OSError, ValueError):
            keys.append(mine)
            continue
        mine.append(("file", f"{st.st_dev}:{st.st_ino}"))
        if Path(row.path).is_file():
            sizes.setdefault(st.st_size, []).append(i)
        keys.append(mine)
    for size, members in sizes.items():
        if len({keys[i][1] for i in members}) < 2:  # one file (or none) of this size
            continue
        for i in members:
            try:
                keys[i].append(("content", _fingerprint(Path(rows[i].path), size)))
            except OSError:
                pass
    return keys


_HOW = {"path": "the same path", "file": "the same file (a hard link or a symlink)",
        "content": "files with the same content"}


def duplicate_problems(manifest, rows: Sequence[ManifestRow]) -> list[str]:
    """One line per group of rows that are the same slide (see the module's doc), naming their lines."""
    keys = _identities(rows)
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    how: dict[int, set[str]] = {}
    for i, mine in enumerate(keys):
        for key in mine:
            if key in first:
                a, b = find(first[key]), find(i)
                if a != b:
                    parent[b] = a
                how.setdefault(i, set()).add(key[0])
            else:
                first[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        group = [rows[i] for i in members]
        kinds = set().union(*(how.get(i, set()) for i in members))
        kind = next(k for k in ("path", "file", "content") if k in kinds)
        splits = sorted({r.split for r in group}, key=_SPLITS.index)
        labels = sorted({str(r.class_name or r.label) for r in group})
        where = (f"in {' and '.join(splits)}" if len(splits) > 1 else f"{len(group)} times in {splits[0]}")
        if len(labels) > 1:
            where += f", with labels {' and '.join(repr(v) for v in labels)}"
        out.append(f"{manifest}: lines {', '.join(str(r.line) for r in group)}: {_HOW[kind]} {where}: "
                   f"{group[0].path}")
    return out


def _name(k: int, names: Sequence[str] | None) -> str:
    return repr(names[k]) if names is not None and k < len(names) else str(k)


def class_problems(manifest, rows: Sequence[ManifestRow], n_classes: int, names: Sequence[str] | None,
                   train_split: str = "train") -> list[str]:
    """Fewer than two classes in ``train_split``, or a class (of the model's ``n_classes``) without
    training slides: one line each."""
    train = [r for r in rows if r.split == train_split]
    present = sorted({r.label for r in train if r.label is not None})
    if len(present) < 2:
        only = f"only class {_name(present[0], names)}" if present else "no labelled slide"
        return [f"{manifest}: split {train_split!r} has {only}; a classifier needs training slides of at least "
                f"two classes"]
    out = []
    for k in range(n_classes):
        if k not in present:
            elsewhere = sum(1 for r in rows if r.label == k)
            out.append(f"{manifest}: class {_name(k, names)} has no slide in split {train_split!r} ({elsewhere} in "
                       f"other splits): the model cannot learn it; move some of its slides to {train_split}, or "
                       f"leave the class out of --classes")
    return out


def check_cohort(manifest, rows: Sequence[ManifestRow], n_classes: int, names: Sequence[str] | None, *,
                 train_split: str = "train", allow_duplicates: bool = False, classes: bool = True) -> list[str]:
    """Raise :class:`CohortError` listing every problem of :func:`duplicate_problems` (unless
    ``allow_duplicates``) and (``classes``: a classifier's cohort) :func:`class_problems`; returns
    the duplicates allowed (as warnings)."""
    duplicates = duplicate_problems(manifest, rows)
    problems = class_problems(manifest, rows, n_classes, names, train_split) if classes else []
    if not allow_duplicates:
        problems = duplicates + problems
    if problems:
        hint = ("\n(the same slide in two splits leaks into validation; twice in one split it weighs double: remove "
                "the copies, or pass --allow-duplicates if that is what you want)"
                if duplicates and not allow_duplicates else "")
        raise CohortError(bad_rows(manifest, problems, "problem(s) of the cohort") + hint)
    return duplicates


@dataclass
class ScannerGroup:
    """Slides of one format and level-0 µm/px, and the levels they are read from."""

    scanner: str
    slides: int
    mpp: float | None
    magnification: str
    patch_levels: list[int]
    patch_downsamples: list[float]
    low_levels: list[int]


@dataclass
class CohortSummary:
    """What a run trains on; ``cohort.json`` of the run folder (:func:`write_summary`)."""

    manifest: str
    classes: list[str]
    slides: dict[str, dict[str, int]]
    """Split -> class name -> slides (every split of the manifest; skipped slides left out)."""
    groups: list[ScannerGroup]
    patch_mpp: float | None
    low_mpp: float | None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """The summary as a few aligned lines (``cohort.txt``; what ``ats-wsi train`` prints)."""
        splits = [s for s in _SPLITS if s in self.slides] + [s for s in self.slides if s not in _SPLITS]
        width = max([len(c) for c in self.classes] + [5])
        lines = [f"cohort of {self.manifest}: {len(self.classes)} classes",
                 f"  {'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
        for c in self.classes:
            lines.append(f"  {c:<{width}}  " + "  ".join(f"{self.slides[s].get(c, 0):>6}" for s in splits))
        reading = (f"patches at {self.patch_mpp:g} µm/px" if self.patch_mpp else "patches in pixels of a level") + \
                  (f", low view at {self.low_mpp:g} µm/px" if self.low_mpp else ", low view as a downsample")
        lines.append(f"scanner groups ({reading}):")
        for g in self.groups:
            mpp = "unknown µm/px" if g.mpp is None else f"{g.mpp:.3g} µm/px"
            lines.append(f"  {g.scanner} @ {mpp} ({g.magnification}): {g.slides} slide(s); patches from level "
                         f"{','.join(map(str, g.patch_levels))} (downsample "
                         f"{','.join(f'{d:g}' for d in g.patch_downsamples)}), low view from level "
                         f"{','.join(map(str, g.low_levels))}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} slide(s) (skipped.csv):")
            lines += [f"  line {s['line']}: {s['path']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _groups(rows: Sequence[ManifestRow], inputs) -> list[ScannerGroup]:
    from ..slide.resolution import format_magnification, objective_power

    found: dict[tuple, dict] = {}
    for path in dict.fromkeys(str(r.path) for r in rows):
        item = inputs[path]
        slide = item.slide
        mpp = None if slide.mpp is None else float(f"{slide.mpp:.3g}")
        g = found.setdefault((slide.format, mpp), {"mag": format_magnification(*objective_power(slide)), "n": 0,
                                                   "pl": set(), "pd": set(), "ll": set()})
        g["n"] += 1
        g["pl"].add(int(item.reader.level))
        g["pd"].add(round(float(item.reader.downsample), 4))
        g["ll"].add(int(item.low.level))
    return [ScannerGroup(fmt, g["n"], mpp, g["mag"], sorted(g["pl"]), sorted(g["pd"]), sorted(g["ll"]))
            for (fmt, mpp), g in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))]


def _pixel_warnings(groups: Sequence[ScannerGroup], config) -> list[str]:
    """A cohort of several resolutions read in pixels: a patch covers a different area per group."""
    mpps = sorted({g.mpp for g in groups if g.mpp is not None})
    if len(mpps) < 2 or mpps[-1] / mpps[0] < 1.1:
        return []
    names = "; ".join(f"{g.scanner} @ {g.mpp:g} µm/px: {g.slides} slide(s)" for g in groups if g.mpp is not None)
    out = []
    if config.patch_mpp is None:
        sides = sorted({round(config.patch_size * g.mpp * g.patch_downsamples[0], 1)
                        for g in groups if g.mpp is not None})
        out.append(f"patches are read in pixels of level {config.patch_level} and the slides come in "
                   f"{len(mpps)} resolutions ({names}): a patch covers {sides[0]:g} µm on one and {sides[-1]:g} µm "
                   f"on another, a shortcut when a class comes mostly from one scanner; use --patch-mpp")
    if config.low_mpp is None:
        out.append(f"the low view is a downsample of level 0 and the slides come in {len(mpps)} resolutions "
                   f"({names}); use --low-mpp")
    return out


def summarise(manifest, cohort_rows: Sequence[ManifestRow], used: Sequence[ManifestRow], inputs, config,
              skipped: Sequence[dict] = (), warnings: Sequence[str] = ()) -> CohortSummary:
    """The :class:`CohortSummary` of a run: ``cohort_rows`` every row of the manifest, ``used`` the
    opened training and validation rows (their slides open in ``inputs``), ``skipped`` the rows left out."""
    names = list(config.class_names or [str(k) for k in range(config.n_classes)])
    left_out = {(s["line"]) for s in skipped}
    counts: dict[str, dict[str, int]] = {}
    for r in cohort_rows:
        if r.line in left_out or r.label is None:
            continue
        per = counts.setdefault(r.split, {})
        name = names[r.label] if r.label < len(names) else str(r.label)
        per[name] = per.get(name, 0) + 1
    groups = _groups(used, inputs)
    odd = [f"line {r.line}: {inputs[r.path].slide.mpp:g}" for r in used if mpp_problem(inputs[r.path].slide.mpp)]
    if odd:
        warnings = [*warnings, f"{len(odd)} slide(s) have a level-0 µm/px outside what scanners produce "
                               f"({', '.join(odd[:10])}{' ...' if len(odd) > 10 else ''}); read in pixels they "
                               f"train, but give the true µm/px (an mpp column, --mpp) before reading in µm/px"]
    return CohortSummary(str(manifest), names, counts, groups, config.patch_mpp, config.low_mpp, list(skipped),
                         list(warnings) + _pixel_warnings(groups, config))


def write_summary(out, summary: CohortSummary) -> Path:
    """``out/cohort.json`` and ``out/cohort.txt``; returns the JSON's path."""
    write_text_atomic(Path(out) / "cohort.txt", summary.text() + "\n")
    return write_json_atomic(Path(out) / "cohort.json", summary.to_dict())
