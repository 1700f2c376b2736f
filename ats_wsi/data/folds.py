"""k-fold cross-validation over a manifest's rows.

Two ways in:

- a manifest whose split column holds fold numbers (``fold``: ``0`` .. ``k-1``,
  CLAM-style): :func:`assign_fold` with ``K`` puts fold ``K`` in ``test``, the
  next fold (cyclically) in ``val`` and the others in ``train``; with two folds
  there is no ``val``;
- :func:`make_folds` deals the rows into ``k`` folds stratified by a key (the
  class for classification, the event for survival, a quantile bin of the target
  for regression), seeded, and :func:`write_folds` keeps them in the run folder
  as ``folds.csv`` (readable back as a manifest).

Stratification is a seeded shuffle within each stratum dealt round-robin, so
every fold gets ``floor`` or ``ceil`` of each stratum's share (written here:
scikit-learn, which has ``StratifiedKFold``, is not a dependency of ats-wsi).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import write_csv_atomic
from ..errors import ManifestError
from .manifest import ManifestRow

__all__ = ["MAX_FOLDS", "assign_fold", "make_folds", "strata_of", "write_folds", "FOLD_FIELDS"]

MAX_FOLDS = 100
FOLD_FIELDS = ["path", "slide_id", "fold", "label", "time", "event", "target", "mpp", "roi"]


def assign_fold(manifest, rows: Sequence[ManifestRow], k: int) -> list[ManifestRow]:
    """``rows`` with their split set from their fold numbers: fold ``k`` test, the next val, the rest train.

    Raises:
        ManifestError: no row has a fold number, some rows have none, or ``k`` is not one of the folds.
    """
    missing = [r for r in rows if r.fold is None]
    if len(missing) == len(rows):
        raise ManifestError(f"{manifest}: --fold {k}, but its split column holds no fold numbers (0, 1, ...)")
    if missing:
        lines = ", ".join(str(r.line) for r in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ManifestError(f"{manifest}: {len(missing)} row(s) have no fold number (line(s) {lines}); every row of "
                            f"a fold column needs one")
    folds = sorted({int(r.fold) for r in rows})
    if k not in folds:
        raise ManifestError(f"{manifest}: --fold {k} is not one of the manifest's folds {folds}")
    val = folds[(folds.index(k) + 1) % len(folds)] if len(folds) > 2 else None
    return [dataclasses.replace(r, split="test" if r.fold == k else "val" if r.fold == val else "train")
            for r in rows]


def strata_of(rows: Sequence[ManifestRow], task: str) -> list[int]:
    """The stratum of each row: its class, its event (survival), or its target's quartile (regression)."""
    if task == "survival":
        return [int(r.event or 0) for r in rows]
    if task == "regression":
        values = np.array([r.target for r in rows], dtype=np.float64)
        cuts = np.quantile(values, [0.25, 0.5, 0.75]) if values.size else []
        return [int(v) for v in np.searchsorted(cuts, values, side="right")]
    return [int(r.label) if r.label is not None else -1 for r in rows]


def make_folds(strata: Sequence[int], k: int, seed: int = 0) -> list[int]:
    """A fold number ``0 .. k-1`` per row, stratified by ``strata``: each stratum shuffled (seeded) and dealt
    round-robin, the dealing carried on from stratum to stratum so that fold sizes differ by at most one."""
    if not 2 <= int(k) <= MAX_FOLDS:
        raise ValueError(f"folds must be in 2..{MAX_FOLDS}, got {k!r}")
    if len(strata) < k:
        raise ValueError(f"{len(strata)} slides cannot make {k} folds")
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    out = np.empty(len(strata), dtype=np.int64)
    offset = 0
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        out[members] = (offset + np.arange(members.size)) % k
        offset = (offset + members.size) % k
    return [int(f) for f in out]


def write_folds(out: Path, rows: Sequence[ManifestRow], folds: Sequence[int]) -> Path:
    """``out/folds.csv``: each row's path, slide ID, fold and outcome (a manifest :func:`read_cohort` reads)."""
    records = [{"path": str(r.path), "slide_id": r.slide_id or "", "fold": f,
                "label": "" if r.label is None else (r.class_name or r.label),
                "time": "" if r.time is None else r.time, "event": "" if r.event is None else r.event,
                "target": "" if r.target is None else r.target, "mpp": "" if r.mpp is None else r.mpp,
                "roi": "" if r.roi is None else str(r.roi)} for r, f in zip(rows, folds)]
    return write_csv_atomic(Path(out) / "folds.csv", records, FOLD_FIELDS)
