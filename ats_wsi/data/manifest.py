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
=============  ===========================================================

Labels are class indices (``0``, ``1``, also written ``1.0``) or class names
(``tumor``); names are numbered in the order given (``classes=``, e.g. from
``--classes a,b,c`` or a checkpoint) or else sorted. Splits are ``train``,
``val`` (also ``validation``, ``valid``, ``dev``) and ``test``, any case; an
empty cell is ``train``. Any other value is an error naming the row: every
bad row of a file is reported in one :class:`~ats_wsi.errors.ManifestError`.
Relative slide paths are taken relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ManifestError

__all__ = ["Manifest", "ManifestRow", "read_manifest", "read_cohort", "is_manifest", "normalise_split",
           "SPLITS", "COLUMNS", "MANIFEST_SUFFIXES"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "slide_path", "file_path", "filename", "file_name", "file", "slide"),
    "label": ("label", "target", "class", "diagnosis"),
    "split": ("split", "fold", "set", "subset"),
    "slide_id": ("slide_id",),
    "mpp": ("mpp", "mpp_x", "um_per_px"),
}
SPLITS: dict[str, str] = {"train": "train", "training": "train", "val": "val", "validation": "val",
                          "valid": "val", "dev": "val", "test": "test", "testing": "test"}
MANIFEST_SUFFIXES = (".csv", ".tsv", ".tab")
MAX_LISTED = 20  # bad rows named in one error message


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest.

    Attributes:
        path: the slide (absolute).
        label: class index ``0 .. K-1`` (None where a prediction manifest has no label).
        split: ``"train"``, ``"val"`` or ``"test"``.
        slide_id: the ``slide_id`` column, if any.
        mpp: the row's µm/px (``mpp`` column), None when not given.
        class_name: the label as written, when labels are class names.
        line: the row's line in the file (for messages; not compared).
    """

    path: Path
    label: int | None
    split: str = "train"
    slide_id: str | None = None
    mpp: float | None = None
    class_name: str | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Manifest:
    """A whole manifest: its rows (every split) and the class names, if known."""

    path: Path
    rows: list[ManifestRow]
    class_names: list[str] | None
    """Class names in label order: from the labels when they are names (or from
    ``classes=``); None for index labels read without ``classes=``."""

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


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_cohort(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                require_labels: bool = True) -> Manifest:
    """Read a manifest (CSV or TSV) with all its rows.

    Args:
        path: the manifest file.
        classes: class names in label order (``--classes a,b,c``, a
            checkpoint's names). Name labels must be among them; index labels
            must be below their number.
        require_labels: False for prediction: the label column and its cells
            may then be empty (``label`` None).

    Raises:
        ManifestError: a missing file or column, or bad rows: all of them
            listed, each as ``FILE:LINE: what is wrong``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet CSVs start with a BOM
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            f"save the manifest as UTF-8 CSV") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    header = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(path, header))
    cols = _columns(path, reader.fieldnames, require_labels)
    problems: list[str] = []
    raw = []  # (line, path, label text, split, slide_id, mpp)
    for rec in reader:
        line = reader.line_num
        cells = {role: (rec.get(name) or "").strip() for role, name in cols.items()}
        if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
            continue  # a row of empty cells (",,"): a spreadsheet's trailing line
        bad = []
        if not cells["path"]:
            bad.append("empty path")
        try:
            split = normalise_split(cells.get("split", ""))
        except ValueError as exc:
            bad.append(str(exc))
            split = "train"
        mpp = None
        if cells.get("mpp"):
            mpp = _number(cells["mpp"])
            if mpp is None or mpp <= 0:
                bad.append(f"mpp {cells['mpp']!r} is not a positive number of µm per pixel")
                mpp = None
        label = cells.get("label", "")
        if not label and require_labels:
            bad.append("empty label")
        problems += [f"{path}:{line}: {b}" for b in bad]
        slide = Path(os.path.expanduser(cells["path"]))
        if not slide.is_absolute():
            slide = (path.parent / slide).resolve()
        raw.append((line, slide, label, split, cells.get("slide_id") or None, mpp))
    labels, names = _labels(path, [(line, text) for line, _, text, *_ in raw], classes, problems)
    if problems:
        shown = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"]
                                         if len(problems) > MAX_LISTED else [])
        head = f"{path}: {len(problems)} bad row(s):\n  " if len(problems) > 1 else ""
        raise ManifestError(head + "\n  ".join(shown))
    rows = [ManifestRow(slide, label, split, slide_id, mpp, name, line)
            for (line, slide, _, split, slide_id, mpp), (label, name) in zip(raw, labels)]
    return Manifest(path, rows, names)


def _labels(path: Path, texts: list[tuple[int, str]], classes: Sequence[str] | None,
            problems: list[str]) -> tuple[list[tuple[int | None, str | None]], list[str] | None]:
    """``[(label index, class name)]`` per row, and the class names (None: index labels, no names)."""
    given = [t for _, t in texts if t]
    classes = None if classes is None else [str(c) for c in classes]
    numeric = all(_number(t) is not None for t in given)
    by_name = bool(given) and (not numeric or (classes is not None and all(t in classes for t in given)))
    out: list[tuple[int | None, str | None]] = []
    if by_name:
        names = classes if classes is not None else sorted(set(given))
        index = {n: i for i, n in enumerate(names)}
        for line, t in texts:
            if t and t not in index:
                problems.append(f"{path}:{line}: label {t!r} is not one of the classes {names}")
            out.append((index.get(t), t or None) if t else (None, None))
        return out, list(names)
    for line, t in texts:
        if not t:
            out.append((None, None))
            continue
        value = _number(t)
        if value is None or value < 0 or value != int(value):
            problems.append(f"{path}:{line}: label {t!r} is not a class index (0, 1, ...) or a class name")
            out.append((None, None))
            continue
        if classes is not None and value >= len(classes):
            problems.append(f"{path}:{line}: label {t!r} is not a class index of the {len(classes)} "
                            f"classes {classes}")
        out.append((int(value), None))
    return out, None if classes is None else list(classes)


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
