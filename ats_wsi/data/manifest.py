"""Slide manifests: CSV files of ``path,label[,split]``."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError

__all__ = ["ManifestRow", "read_manifest"]


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest: its path (absolute), integer label and split."""

    path: Path
    label: int
    split: str = "train"


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[ManifestRow]:
    """Read a manifest CSV.

    Args:
        path: the CSV, with a header holding ``path`` and ``label`` (and
            optionally ``split``). Relative slide paths are taken relative to
            the CSV's folder.
        split: keep only rows of this split (rows without a split column
            count as "train").

    Raises:
        ManifestError: missing file or columns, an empty path, a label that is
            not a non-negative integer.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    rows: list[ManifestRow] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheet CSVs start with a BOM
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {sorted(missing)}; a manifest needs path,label[,split]")
        for line, rec in enumerate(reader, start=2):
            raw_path = (rec.get("path") or "").strip()
            raw_label = (rec.get("label") or "").strip()
            if not raw_path:
                raise ManifestError(f"{path}:{line}: empty path")
            try:
                label = int(raw_label)
                if label < 0:
                    raise ValueError
            except ValueError:
                raise ManifestError(f"{path}:{line}: label {raw_label!r} is not a non-negative integer") from None
            slide = Path(raw_path)
            if not slide.is_absolute():
                slide = (path.parent / slide).resolve()
            row = ManifestRow(slide, label, (rec.get("split") or "train").strip() or "train")
            if split is None or row.split == split:
                rows.append(row)
    return rows
