"""CAMELYON16 with ats-wsi: a manifest from the challenge's own layout, then the train / predict protocol.

CAMELYON16 (https://camelyon16.grand-challenge.org) has 270 training slides
(160 normal, 110 tumor) and 130 test slides whose labels are in
``reference.csv``. This script finds them in either of the layouts the data
is shipped in::

    ROOT/training/normal/normal_001.tif     or  ROOT/training/normal_001.tif
    ROOT/training/tumor/tumor_001.tif           ROOT/training/tumor_001.tif
    ROOT/testing/images/test_001.tif        or  ROOT/testing/test_001.tif
    ROOT/testing/reference.csv              or  ROOT/reference.csv

(``reference.csv`` rows: ``Test_001,Tumor,Macro,Primary`` or
``test_001,Normal``; no header, or a header row the script skips), writes
``OUT/manifest.csv`` with columns ``path,label,split`` (absolute paths,
labels ``normal`` / ``tumor``; the official test set as ``test``; a seeded,
per-label 15 % of the training slides as ``val``, the rest ``train``) and
prints the protocol, or runs it with ``--run``::

    ats-wsi train OUT/manifest.csv --out OUT/run [TRAIN ARGS]
    ats-wsi predict OUT/run/best.pt OUT/manifest.csv --split test --out OUT/run/test

Usage::

    .venv/bin/python benchmarks/camelyon16.py ROOT --out DIR [--run] [--val-fraction 0.15] [--seed 0]
        [--device cuda] [-- TRAIN ARGS...]

A layout it cannot read (no slides, no ``reference.csv``, a test slide with
no reference row, a reference label other than normal / tumor) stops it
with a message naming the path (:class:`ats_wsi.errors.ManifestError`).
"""
from __future__ import annotations

import argparse
import csv
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ats_wsi.atomic import write_csv_atomic
from ats_wsi.errors import ManifestError

CLASSES = ("normal", "tumor")
SLIDE_SUFFIXES = (".tif", ".tiff")
_TRAIN_NAME = re.compile(r"^(normal|tumor)_\d+$", re.IGNORECASE)
_TEST_NAME = re.compile(r"^test_\d+$", re.IGNORECASE)


def _slides(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Slide files directly in `folder` whose stem matches `pattern`, sorted by name (none if no folder)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
                   and pattern.match(p.stem)), key=lambda p: p.name.lower())


def find_training(root: Path) -> list[tuple[Path, str]]:
    """(slide, label) of every training slide, nested (training/normal/, training/tumor/) or flat (training/).

    Raises:
        ManifestError: no training slide, or one slide name found twice.
    """
    train = root / "training"
    found = _slides(train, _TRAIN_NAME) + _slides(train / "normal", _TRAIN_NAME) + _slides(train / "tumor", _TRAIN_NAME)
    if not found:
        raise ManifestError(f"{train}: no training slides (normal_*.tif, tumor_*.tif) here or in its "
                            "normal/ and tumor/ folders")
    _no_twins(found)
    return [(p, p.stem.split("_")[0].lower()) for p in found]


def find_testing(root: Path) -> list[Path]:
    """Every test slide, in testing/images/ or testing/.

    Raises:
        ManifestError: no test slide, or one slide name found twice.
    """
    test = root / "testing"
    found = _slides(test, _TEST_NAME) + _slides(test / "images", _TEST_NAME)
    if not found:
        raise ManifestError(f"{test}: no test slides (test_*.tif) here or in {test / 'images'}")
    _no_twins(found)
    return found


def _no_twins(paths: list[Path]) -> None:
    """Raise ManifestError if two paths share a slide name (both layouts present at once)."""
    seen: dict[str, Path] = {}
    for p in paths:
        key = p.stem.lower()
        if key in seen:
            raise ManifestError(f"{p}: the slide {p.stem} is also at {seen[key]}; keep one layout")
        seen[key] = p


def read_reference(root: Path) -> tuple[Path, dict[str, str]]:
    """The test labels: (reference.csv's path, {slide stem in lower case: 'normal' | 'tumor'}).

    Raises:
        ManifestError: no reference.csv (testing/ or ROOT), or a row whose
            label is not Normal / Tumor (every bad row is named).
    """
    candidates = [root / "testing" / "reference.csv", root / "reference.csv"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ManifestError(f"{candidates[0]}: no reference.csv (the test labels) here or at {candidates[1]}")
    labels: dict[str, str] = {}
    bad = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not cells or not cells[0]:
                continue
            name, label = cells[0], (cells[1].lower() if len(cells) > 1 else "")
            if line == 1 and not _TEST_NAME.match(name):
                continue  # a header row
            if label not in CLASSES or not _TEST_NAME.match(name):
                bad.append(f"line {line}: {','.join(cells[:2])!r}")
                continue
            labels[name.lower()] = label
    if bad:
        raise ManifestError(f"{path}: rows that are not 'test_NNN,Normal|Tumor': {'; '.join(bad[:20])}")
    return path, labels


def build_manifest(root: str | Path, out: str | Path, *, val_fraction: float = 0.15, seed: int = 0) -> Path:
    """Write ``out/manifest.csv`` (``path,label,split``) for a CAMELYON16 folder; return its path.

    Training slides are ``train``, except a seeded ``val_fraction`` of each
    label (rounded) that is ``val``; test slides are ``test`` with the label
    of their reference row. Rows: training slides by name, then test slides.

    Raises:
        ManifestError: no slides, no reference.csv, a test slide without a
            reference row, or a bad ``val_fraction``.
    """
    root, out = Path(root), Path(out)
    if not 0 <= val_fraction < 1:
        raise ManifestError(f"val fraction must be in [0, 1), got {val_fraction}")
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    training = find_training(root)
    testing = find_testing(root)
    ref_path, reference = read_reference(root)
    missing = [p.name for p in testing if p.stem.lower() not in reference]
    if missing:
        raise ManifestError(f"{ref_path}: no reference row for {len(missing)} test slide(s): "
                            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    rng = np.random.default_rng(seed)
    val: set[Path] = set()
    for label in CLASSES:
        mine = [p for p, lab in training if lab == label]
        val.update(mine[i] for i in rng.permutation(len(mine))[:int(round(len(mine) * val_fraction))])
    rows = [{"path": str(p.resolve()), "label": lab, "split": "val" if p in val else "train"} for p, lab in training]
    rows += [{"path": str(p.resolve()), "label": reference[p.stem.lower()], "split": "test"} for p in testing]
    out.mkdir(parents=True, exist_ok=True)
    return write_csv_atomic(out / "manifest.csv", rows, ["path", "label", "split"])


def protocol(manifest: Path, run: Path, *, device: str | None = None, train_args=()) -> list[list[str]]:
    """The two commands of the protocol (argv lists, program ``ats-wsi``): train, then predict the test split."""
    dev = [] if device is None else ["--device", device]
    return [
        ["ats-wsi", "train", str(manifest), "--out", str(run), *dev, *train_args],
        ["ats-wsi", "predict", str(run / "best.pt"), str(manifest), "--split", "test",
         "--out", str(run / "test"), *dev],
    ]


def _program() -> list[str]:
    """How to start ``ats-wsi`` here: the installed command, else this Python's ``-m ats_wsi.cli``."""
    exe = shutil.which("ats-wsi") or str(Path(sys.executable).with_name("ats-wsi"))
    return [exe] if Path(exe).is_file() else [sys.executable, "-m", "ats_wsi.cli"]


def main(argv: list[str] | None = None) -> int:
    """Command line: build the manifest, print the protocol, run it with --run; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="arguments after -- are passed to `ats-wsi train`")
    parser.add_argument("root", type=Path, help="the CAMELYON16 folder (training/, testing/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for manifest.csv and the run (OUT/run)")
    parser.add_argument("--run", action="store_true", help="run the protocol (else print it)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of each training label for val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split")
    parser.add_argument("--device", help="torch device passed to train and predict (cpu, cuda, ...)")
    args = parser.parse_args(argv)
    try:
        manifest = build_manifest(args.root, args.out, val_fraction=args.val_fraction, seed=args.seed)
    except ManifestError as err:
        raise SystemExit(f"camelyon16: {err}") from None
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = {(r["split"], r["label"]): 0 for r in rows}
    for r in rows:
        counts[r["split"], r["label"]] += 1
    print(f"manifest: {manifest} ({len(rows)} slides: "
          + ", ".join(f"{s} {lab} {n}" for (s, lab), n in sorted(counts.items())) + ")")
    commands = protocol(manifest.resolve(), (args.out / "run").resolve(), device=args.device, train_args=train_args)
    for command in commands:
        print(shlex.join(command))
        if args.run:
            status = subprocess.run(_program() + command[1:]).returncode
            if status:
                print(f"camelyon16: `{shlex.join(command[:2])}` failed with status {status}", file=sys.stderr)
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
