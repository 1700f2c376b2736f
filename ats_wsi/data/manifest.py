"""Slide manifests: the CSV or TSV files that list a cohort's slides, labels and splits.

A manifest has a header row; column names are matched without regard to case,
spaces or dashes, under the names people use:

=============  ===========================================================
role           accepted headers (the first present wins)
=============  ===========================================================
path           ``path``, ``slide_path``, ``file_path``, ``filename``, ``file``, ``slide``, ...
label          ``label``, ``target``, ``class``, ``diagnosis`` (optional for prediction)
split          ``split``, ``fold``, ``set``, ``subset`` (optional: every row is ``train``)
slide_id       ``slide_id`` (optional)
mpp            ``mpp``, ``mpp_x``, ``um_per_px`` (optional: the slide's µm/px, overriding its metadata)
roi            ``roi``, ``roi_path``, ``annotation``, ``geojson`` (optional: the slide's region of interest,
               a GeoJSON or mask file, relative to the manifest; overrides ``--roi``)
=============  ===========================================================

Labels are class indices (``0``, ``1``, also written ``1.0``) or class names
(``tumor``); names are numbered in the order given (``classes=``, e.g. from
``--classes a,b,c`` or a checkpoint) or else sorted. Names are matched
without regard to case and spacing (``Normal``, ``normal ``: one class), and
names one small edit apart (``Tumour``, ``tumor``) are refused as suspected
typos unless ``classes=`` names both (:mod:`ats_wsi.data.labels`). Splits are ``train``,
``val`` (also ``validation``, ``valid``, ``dev``) and ``test``, any case; an
empty cell is ``train``. Any other value is an error naming the row: every
bad row of a file is reported in one :class:`~ats_wsi.errors.ManifestError`.
A split column of integers (``fold``: ``0``, ``1``, ...) gives fold numbers
(``ManifestRow.fold``; :mod:`ats_wsi.data.folds` turns one into splits).
Survival and regression manifests (``task=``) have outcome columns instead of
labels (:mod:`ats_wsi.data.outcomes`). Relative slide paths are taken relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ManifestError
from .labels import label_key, spelling_of, suspected_typos
from .outcomes import _number, fold_number, outcome_columns, read_outcome

__all__ = ["Manifest", "ManifestRow", "read_manifest", "read_cohort", "is_manifest", "normalise_split",
           "bad_rows", "SPLITS", "COLUMNS", "MANIFEST_SUFFIXES", "MAX_LISTED"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "slide_path", "file_path", "filename", "file_name", "file", "slide"),
    "label": ("label", "target", "class", "diagnosis"),
    "split": ("split", "fold", "set", "subset"),
    "slide_id": ("slide_id",),
    "mpp": ("mpp", "mpp_x", "um_per_px"),
    "roi": ("roi", "roi_path", "annotation", "geojson"),
}
SPLITS: dict[str, str] = {"train": "train", "training": "train", "val": "val", "validation": "val",
                          "valid": "val", "dev": "val", "test": "test", "testing": "test"}
MANIFEST_SUFFIXES = (".csv", ".tsv", ".tab")
MAX_LISTED = 20  # bad rows named in one error message
MAX_MANIFEST_BYTES = 256 * 2**20  # ~10^6 rows of long paths; a bigger file is not a manifest
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest.

    Attributes:
        path: the slide (absolute).
        label: class index ``0 .. K-1`` (None where a prediction manifest has no label).
        split: ``"train"``, ``"val"`` or ``"test"``.
        slide_id: the ``slide_id`` column, if any.
        mpp: the row's µm/px (``mpp`` column), None when not given.
        class_name: the row's class name, when labels are class names (the class's
            spelling: ``Normal`` in a class named ``normal`` gives ``normal``).
        line: the row's line in the file (for messages; not compared).
        roi: the row's region of interest (``roi`` column: a GeoJSON or mask
            file, absolute), None when not given.
    """

    path: Path
    label: int | None
    split: str = "train"
    slide_id: str | None = None
    mpp: float | None = None
    class_name: str | None = None
    line: int = field(default=0, compare=False)
    roi: Path | None = None
    time: float | None = None
    """Survival: follow-up time (the manifest's unit); None for other tasks."""
    event: int | None = None
    """Survival: 1 the event was observed, 0 censored."""
    target: float | None = None
    """Regression: the slide's value."""
    fold: int | None = None
    """The fold number of a split column of integers (``split`` is then ``"train"`` until a fold is chosen)."""


@dataclass(frozen=True)
class Manifest:
    """A whole manifest: its rows (every split) and the class names, if known."""

    path: Path
    rows: list[ManifestRow]
    class_names: list[str] | None
    """Class names in label order: from the labels when they are names (or from
    ``classes=``); None for index labels read without ``classes=``."""
    columns: tuple[str, ...] = ()
    """The roles the file has a column for (``"path"``, ``"label"``, ``"split"``, ``"slide_id"``, ``"mpp"``)."""

    def split(self, name: str | None) -> list[ManifestRow]:
        """Rows of one split (``validation`` etc. accepted); all rows for None."""
        if name is None:
            return list(self.rows)
        want = normalise_split(name)
        return [r for r in self.rows if r.split == want]

    @property
    def has_labels(self) -> bool:
        return any(r.label is not None for r in self.rows)


def normalise_split(value: str) -> str:
    """``"Validation"`` -> ``"val"``; ValueError for a value that is no split."""
    key = value.strip().lower()
    if not key:
        return "train"
    if key not in SPLITS:
        raise ValueError(f"split {value!r} is not train, val (validation, valid, dev) or test")
    return SPLITS[key]


def _header_key(name: str) -> str:
    return (name or "").strip().lower().replace(" ", "_").replace("-", "_")


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a manifest file rather than a slide: a ``.csv``/``.tsv``/``.tab``
    file, or a ``.txt`` file whose header names a path column."""
    p = Path(path)
    if not p.is_file():
        return False
    suffix = p.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return True
    if suffix != ".txt":
        return False
    try:
        with open(p, encoding="utf-8-sig") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    cells = {_header_key(c) for c in header.replace("\t", ",").replace(";", ",").split(",")}
    return bool(cells & set(COLUMNS["path"]))


def _delimiter(path: Path, header: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    for sep in ("\t", ";"):
        if sep in header and "," not in header:
            return sep
    return ","


def _columns(path: Path, fieldnames: Sequence[str] | None, require_labels: bool) -> dict[str, str]:
    """role -> the file's header for it."""
    present = {}
    for name in fieldnames or []:
        present.setdefault(_header_key(name), name)
    found = {}
    for role, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in present:
                found[role] = present[alias]
                break
    needed = ["path", "label"] if require_labels else ["path"]
    missing = [role for role in needed if role not in found]
    if missing:
        hint = ", ".join(f"{role} ({'/'.join(COLUMNS[role])})" for role in missing)
        raise ManifestError(f"{path}: missing column(s) {missing}: a manifest needs a header with "
                            f"{hint}; found {list(fieldnames or [])}")
    return found



def _read_text(path: Path) -> str:
    """The manifest's text; ManifestError for a missing, huge, unreadable or non-UTF-8 file."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: {size} bytes, more than a manifest of slides can be "
                                f"({MAX_MANIFEST_BYTES >> 20} MiB); is it the right file?")
        return path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet CSVs start with a BOM
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            f"save the manifest as UTF-8 CSV") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None


def _records(path: Path, text: str, require_labels: bool):
    """``(columns, [(line, {header: cell})], headers)`` of the file; ManifestError for a broken CSV
    (a cell over the csv module's field limit, a quote left open)."""
    header = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(path, header))
    try:
        cols = _columns(path, reader.fieldnames, require_labels)
        return cols, [(reader.line_num, rec) for rec in reader], list(reader.fieldnames or [])
    except csv.Error as exc:
        raise ManifestError(f"{path}:{reader.line_num + 1}: not a readable CSV row ({exc}); a cell holds "
                            f"a path, a label or a number, never {csv.field_size_limit()} characters") from None


def _slide_path(manifest: Path, raw: str) -> Path:
    """The slide a path cell names, relative to the manifest's folder. Spaces around the
    cell are dropped unless only the cell as written names an existing file."""
    stripped = raw.strip()
    candidates = [stripped] + ([raw.strip("\r\n")] if raw.strip("\r\n") != stripped else [])
    resolved = []
    for text in candidates:
        slide = Path(os.path.expanduser(text))
        resolved.append(slide if slide.is_absolute() else (manifest.parent / slide).resolve())
    return next((p for p in resolved if p.exists()), resolved[0])


def _path_problem(cell: str) -> str | None:
    if not cell:
        return "empty path"
    if "\0" in cell:
        return "the path holds a NUL byte (no file name can); is the manifest binary or corrupted?"
    if len(cell) > MAX_PATH_CHARS:
        return f"a path of {len(cell)} characters, longer than any file system allows ({MAX_PATH_CHARS})"
    return None


def read_cohort(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                require_labels: bool = True, task: str = "classification", time_column: str | None = None,
                event_column: str | None = None, target_column: str | None = None) -> Manifest:
    """Read a manifest (CSV or TSV) with all its rows.

    Labels written as names are matched without regard to case, spaces,
    ``_`` or ``-`` (:func:`~ats_wsi.data.labels.label_key`): ``Normal`` and
    ``normal`` are one class, named by its most frequent spelling. Without
    ``classes``, names that differ from another only by a small edit
    (``Tumour``/``tumor``) are refused as suspected typos, listing their rows:
    correct them, or name every class in ``classes`` (``--classes``).

    Args:
        path: the manifest file.
        classes: class names in label order (``--classes a,b,c``, a
            checkpoint's names). Name labels must be among them; index labels
            must be below their number.
        require_labels: False for prediction: the label column and its cells
            may then be empty (``label`` None); so may outcome cells.
        task: ``"classification"`` (labels), ``"survival"`` (time and event
            columns) or ``"regression"`` (a target column); for the last two
            labels are not read (:mod:`ats_wsi.data.outcomes`).
        time_column, event_column, target_column: the outcome columns' headers
            (default: found by their usual names).

    Raises:
        ManifestError: a missing, huge or broken file, a missing column, or
            bad rows: all of them counted, the first ``MAX_LISTED`` listed,
            each as ``FILE:LINE: what is wrong``.
    """
    path = Path(path)
    classify = task == "classification"
    cols, records, headers = _records(path, _read_text(path), require_labels and classify)
    outcome = outcome_columns(path, headers, task, time_column=time_column, event_column=event_column,
                              target_column=target_column, label_header=cols.get("label"), required=require_labels)
    problems: list[str] = []
    raw = []  # (line, path, label text, split, slide_id, mpp, roi, (time, event, target, fold))
    for line, rec in records:
        if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
            continue  # a row of empty cells (",,"): a spreadsheet's trailing line
        cells = {role: (rec.get(name) or "").strip() for role, name in cols.items()}
        bad = []
        path_problem = _path_problem(cells["path"])
        if path_problem:
            bad.append(path_problem)
        bad += [f"the {role} cell holds a NUL byte" for role in ("label", "split", "slide_id", "mpp", "roi")
                if "\0" in cells.get(role, "")]
        fold = fold_number(cells.get("split", ""))
        try:
            split = "train" if fold is not None else normalise_split(cells.get("split", ""))
        except ValueError as exc:
            bad.append(str(exc)[:200] + "; fold numbers are integers (0, 1, ...)")
            split = "train"
        mpp = None
        if cells.get("mpp"):
            mpp = _number(cells["mpp"])
            if mpp is None or mpp <= 0:
                bad.append(f"mpp {cells['mpp'][:50]!r} is not a positive number of µm per pixel")
                mpp = None
        label = cells.get("label", "") if classify else ""
        if not label and require_labels and classify:
            bad.append("empty label")
        problems += [f"{path}:{line}: {b}" for b in bad]
        time, event, target, bad_outcome = read_outcome(outcome, rec, f"{path}:{line}", require_labels)
        problems += bad_outcome
        slide = Path() if path_problem else _slide_path(path, rec.get(cols["path"]) or "")
        roi = _slide_path(path, cells["roi"]) if cells.get("roi") and "\0" not in cells["roi"] else None
        raw.append((line, slide, label, split, cells.get("slide_id") or None, mpp, roi, (time, event, target, fold)))
    labels, names = _labels(path, [(line, text) for line, _, text, *_ in raw], classes, problems)
    if problems:
        raise ManifestError(bad_rows(path, problems))
    rows = [ManifestRow(slide, label, split, slide_id, mpp, name, line, roi, *more)
            for (line, slide, _, split, slide_id, mpp, roi, more), (label, name) in zip(raw, labels)]
    return Manifest(path, rows, names, tuple(cols))


def bad_rows(path, problems: Sequence[str], what: str = "bad row(s)", limit: int = MAX_LISTED) -> str:
    """One message of many problems: their number, the first ``limit``, ``... and K more``."""
    shown = list(problems[:limit]) + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    head = f"{path}: {len(problems)} {what}:\n  " if len(problems) > 1 else ""
    return head + "\n  ".join(shown)


def _labels(path: Path, texts: list[tuple[int, str]], classes: Sequence[str] | None,
            problems: list[str]) -> tuple[list[tuple[int | None, str | None]], list[str] | None]:
    """``[(label index, class name)]`` per row, and the class names (None: index labels, no names)."""
    given = [t for _, t in texts if t]
    classes = None if classes is None else [str(c) for c in classes]
    numeric = all(_number(t) is not None for t in given)
    keys = None if classes is None else {label_key(c) for c in classes}
    by_name = bool(given) and (not numeric or (keys is not None and all(label_key(t) in keys for t in given)))
    if by_name:
        return _name_labels(path, texts, classes, problems)
    out: list[tuple[int | None, str | None]] = []
    for line, t in texts:
        if not t:
            out.append((None, None))
            continue
        value = _number(t)
        if value is None or value < 0 or value != int(value):
            problems.append(f"{path}:{line}: label {t[:50]!r} is not a class index (0, 1, ...) or a class name")
            out.append((None, None))
            continue
        if classes is not None and value >= len(classes):
            problems.append(f"{path}:{line}: label {t!r} is not a class index of the {len(classes)} "
                            f"classes {classes}")
        out.append((int(value), None))
    return out, None if classes is None else list(classes)


def _name_labels(path: Path, texts: list[tuple[int, str]], classes: list[str] | None,
                 problems: list[str]) -> tuple[list[tuple[int | None, str | None]], list[str]]:
    """Labels written as class names, matched by :func:`label_key`."""
    if classes is None:
        spellings: dict[str, list[str]] = {}
        for _, t in texts:
            if t:
                spellings.setdefault(label_key(t), []).append(t)
        names = sorted((spelling_of(v) for v in spellings.values()), key=label_key)
        _typos(path, texts, names, problems)
    else:
        names = list(classes)
    index = {label_key(n): i for i, n in enumerate(names)}
    out: list[tuple[int | None, str | None]] = []
    for line, t in texts:
        k = index.get(label_key(t)) if t else None
        if t and k is None:
            near = [n for n in names if suspected_typos({n: 2, t: 1})]
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(f"{path}:{line}: label {t[:50]!r} is not one of the classes {names}{hint}")
        out.append((k, names[k] if k is not None else None))
    return out, names


def _typos(path: Path, texts: list[tuple[int, str]], names: list[str], problems: list[str]) -> None:
    """A problem per label that is probably a misspelt other class (see :mod:`.labels`)."""
    keyed = {label_key(n): n for n in names}
    lines: dict[str, list[int]] = {}
    for line, t in texts:
        if t:
            lines.setdefault(keyed[label_key(t)], []).append(line)
    for rare, common in suspected_typos({n: len(v) for n, v in lines.items()}):
        shown = ", ".join(map(str, lines[rare][:10])) + (" ..." if len(lines[rare]) > 10 else "")
        problems.append(f"{path}: label {rare!r} ({len(lines[rare])} row(s), line(s) {shown}) looks like a "
                        f"typo of {common!r} ({len(lines[common])} row(s)); correct it, or name every class "
                        f"with --classes if both are real classes")


def read_manifest(path: str | os.PathLike, split: str | None = None, *, classes: Sequence[str] | None = None,
                  require_labels: bool = True) -> list[ManifestRow]:
    """The rows of a manifest, optionally of one split (see :func:`read_cohort`).

    Args:
        path: the manifest (CSV or TSV).
        split: keep only rows of this split (``validation`` etc. accepted);
            rows without a split count as ``train``.
        classes, require_labels: as in :func:`read_cohort`.

    Raises:
        ManifestError: see :func:`read_cohort`.
    """
    return read_cohort(path, classes=classes, require_labels=require_labels).split(split)
