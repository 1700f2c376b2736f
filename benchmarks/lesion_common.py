"""What the lesion benchmark's pieces share (issue 23): the cohort, the tissue grid, patch truth, patch reading.

- :func:`read_cohort_slides`: the manifest's rows (``path,label,split`` and, when
  present, ``mpp``, ``lesion_mm``, ``stratum``); labels ``normal``/``tumor`` or 0/1.
- :func:`tissue_grid`: the non-overlapping grid of patches (``patch_px`` pixels at
  ``mpp`` µm/px) with at least ``min_tissue`` of tissue under them, as level-0
  top-left corners. Tissue is the slide's own mask (``Slide.tissue_mask``: Otsu
  on HSV saturation at the level nearest 32x); a patch's tissue fraction is the
  fraction of mask cells whose centres fall inside it.
- :func:`patch_truth`: per patch, lesion / decoy / other tissue / ambiguous,
  from the synthetic slide's ground-truth boxes.
- :func:`read_patches`: patches at the encoder's µm/px through
  :class:`ats_wsi.patches.PatchReader`, in batches.

Coordinates are level-0 ``(x, y)`` of a patch's top-left corner, sizes ``(w, h)``,
like openslide; arrays indexed ``(row, col) = (y, x)``.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSES = ("normal", "tumor")
PATCH_CLASSES = ("other", "decoy", "lesion")
"""Patch truth classes (index = value of :func:`patch_truth`; -1 is ambiguous)."""
STRATUM_BINS_MM = ((0.5, "<0.5mm"), (2.0, "0.5-2mm"), (math.inf, ">=2mm"))
"""Strata derived from the ground truth when the manifest has no ``stratum`` column:
the largest lesion's longest side, in mm."""


@dataclass(frozen=True)
class CohortSlide:
    """One slide of the benchmark cohort.

    Attributes:
        path: the slide file.
        label: 0 (normal) or 1 (tumor).
        split: ``train``, ``val`` or ``test``.
        mpp: the manifest's µm/px (None: the slide's metadata).
        lesion_mm: the manifest's ``lesion_mm`` (None when absent or empty).
        stratum: the manifest's ``stratum`` (None when absent).
    """

    path: Path
    label: int
    split: str
    mpp: float | None = None
    lesion_mm: float | None = None
    stratum: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem


def read_cohort_slides(manifest: str | os.PathLike) -> list[CohortSlide]:
    """The slides of a manifest, every split, with the optional ``lesion_mm`` and ``stratum`` columns."""
    from ats_wsi.data.manifest import read_cohort

    manifest = Path(manifest)
    cohort = read_cohort(manifest, classes=CLASSES)
    extra: dict[int, dict[str, str]] = {}
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if manifest.suffix.lower() in (".tsv", ".tab") else ",")
        keys = {(k or "").strip().lower(): k for k in reader.fieldnames or ()}
        for rec in reader:
            extra[reader.line_num] = {name: (rec.get(keys[name]) or "").strip()
                                      for name in ("lesion_mm", "stratum") if name in keys}
    out = []
    for row in cohort.rows:
        more = extra.get(row.line, {})
        mm = more.get("lesion_mm") or ""
        out.append(CohortSlide(path=Path(row.path), label=int(row.label), split=row.split, mpp=row.mpp,
                               lesion_mm=float(mm) if mm else None, stratum=more.get("stratum") or None))
    return out


def open_cohort_slide(row: CohortSlide):
    """The slide, opened with the manifest's µm/px when it gives one."""
    from ats_wsi.slide import open_slide

    return open_slide(row.path, mpp=row.mpp)


def patch_step(slide_mpp: float, mpp: float, patch_px: int) -> float:
    """Level-0 pixels a patch of ``patch_px`` pixels at ``mpp`` µm/px covers (per side)."""
    return float(patch_px) * float(mpp) / float(slide_mpp)


def grid_tissue_fraction(mask: np.ndarray, slide_wh: tuple[int, int], step: float) -> np.ndarray:
    """Tissue fraction of every cell of the patch grid: float64 ``(rows, cols)``.

    Args:
        mask: bool ``(mask_rows, mask_cols)``, the whole slide.
        slide_wh: level-0 ``(w, h)``.
        step: level-0 pixels per patch side.

    The grid has ``floor(w / step)`` columns and ``floor(h / step)`` rows (whole
    patches only). A cell's fraction is the mean of the mask cells whose centres
    (in level-0 pixels) fall inside it; a cell holding no mask centre (a mask
    coarser than the patches) takes the mask value under its own centre.
    """
    w, h = slide_wh
    cols, rows = int(w // step), int(h // step)
    mrows, mcols = mask.shape
    sx, sy = w / mcols, h / mrows  # level-0 pixels per mask cell
    col_of = np.floor((np.arange(mcols) + 0.5) * sx / step).astype(np.int64)
    row_of = np.floor((np.arange(mrows) + 0.5) * sy / step).astype(np.int64)
    keep_c, keep_r = col_of < cols, row_of < rows
    sub = mask[np.ix_(keep_r, keep_c)].astype(np.float64)
    rc, cc = row_of[keep_r], col_of[keep_c]
    tissue = np.zeros((rows, cols))
    count = np.outer(np.bincount(rc, minlength=rows), np.bincount(cc, minlength=cols)).astype(np.float64)
    # Sum over mask columns into grid columns, then over rows into grid rows (separable).
    by_col = np.zeros((sub.shape[0], cols))
    np.add.at(by_col.T, cc, sub.T)
    np.add.at(tissue, rc, by_col)
    out = np.divide(tissue, count, out=np.zeros_like(tissue), where=count > 0)
    empty = count == 0
    if empty.any():
        r, c = np.nonzero(empty)
        mr = np.minimum(((r + 0.5) * step / sy).astype(np.int64), mrows - 1)
        mc = np.minimum(((c + 0.5) * step / sx).astype(np.int64), mcols - 1)
        out[r, c] = mask[mr, mc]
    return out


def tissue_grid(slide, *, mpp: float = 0.5, patch_px: int = 128, min_tissue: float = 0.25,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """The grid patches with tissue: ``(coords int64 [n, 2], fraction float32 [n], step)``.

    Args:
        slide: an open :class:`ats_wsi.slide.Slide` with a known µm/px.
        mpp, patch_px: the patch (``patch_px`` pixels at ``mpp`` µm/px).
        min_tissue: keep patches with at least this tissue fraction.
        mask: the tissue mask (default ``slide.tissue_mask()``).

    ``coords`` are level-0 top-left ``(x, y)`` = ``round(col * step), round(row * step)``,
    in row-major order; ``step`` is the level-0 side of a patch.
    """
    if not slide.mpp:
        raise ValueError(f"{slide.path}: the slide has no µm/px; give it in the manifest's mpp column")
    step = patch_step(slide.mpp, mpp, patch_px)
    if mask is None:
        mask = slide.tissue_mask()
    frac = grid_tissue_fraction(np.asarray(mask, bool), slide.dimensions, step)
    r, c = np.nonzero(frac >= min_tissue)
    coords = np.stack([np.round(c * step), np.round(r * step)], 1).astype(np.int64).reshape(-1, 2)
    return coords, frac[r, c].astype(np.float32), step


def truth_boxes(path: str | os.PathLike) -> dict[str, list[tuple[int, int, int, int]]]:
    """Lesion and decoy boxes ``(x, y, w, h)`` (level 0) of a synthetic slide; empty lists without truth."""
    from ats_wsi.data.synthetic import load_synthetic_slide

    try:
        truth = load_synthetic_slide(path)
    except FileNotFoundError:
        return {"lesions": [], "decoys": []}
    return {"lesions": [tuple(b) for b in truth.lesions], "decoys": [tuple(b) for b in truth.decoys]}


def _inside_core(cx: np.ndarray, cy: np.ndarray, boxes, shrink: float) -> np.ndarray:
    """Centres inside the ellipse inscribed in any box, its half-axes scaled by ``shrink``."""
    hit = np.zeros(len(cx), bool)
    for x, y, w, h in boxes:
        ax, ay = max(w * shrink / 2, 1e-9), max(h * shrink / 2, 1e-9)
        hit |= ((cx - (x + w / 2)) / ax) ** 2 + ((cy - (y + h / 2)) / ay) ** 2 <= 1.0
    return hit


def _touches(coords: np.ndarray, step: float, boxes) -> np.ndarray:
    hit = np.zeros(len(coords), bool)
    x0, y0 = coords[:, 0], coords[:, 1]
    for x, y, w, h in boxes:
        hit |= (x0 < x + w) & (x0 + step > x) & (y0 < y + h) & (y0 + step > y)
    return hit


def patch_truth(coords: np.ndarray, step: float, boxes: dict, *, shrink: float = 0.7) -> np.ndarray:
    """Per patch: 2 lesion, 1 decoy, 0 other tissue, -1 ambiguous (int64 [n]).

    A patch is a lesion (decoy) patch when its centre lies inside the ellipse
    inscribed in a lesion (decoy) box with its half-axes scaled by ``shrink``
    (spots are round-ish blobs: a box's corners are not spot); "other" when it
    touches no box at all; anything else (a spot's rim) is ambiguous.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    cx, cy = coords[:, 0] + step / 2, coords[:, 1] + step / 2
    out = np.full(len(coords), -1, np.int64)
    out[~_touches(coords, step, boxes["lesions"] + boxes["decoys"])] = 0
    out[_inside_core(cx, cy, boxes["decoys"], shrink)] = 1
    out[_inside_core(cx, cy, boxes["lesions"], shrink)] = 2
    return out


def derived_stratum(row: CohortSlide, boxes: dict, mpp: float) -> str:
    """``normal`` for a negative slide, else the bin of its largest lesion's longest side (mm)."""
    if row.label == 0:
        return "normal"
    sides = [max(w, h) * mpp / 1000.0 for _, _, w, h in boxes["lesions"]]
    size = max(sides) if sides else 0.0
    return next(name for top, name in STRATUM_BINS_MM if size < top)


def read_patches(reader, coords: np.ndarray, batch: int = 64):
    """Yield ``(start, uint8 [b, 3, h, w])`` batches of the patches at level-0 ``coords``."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    for start in range(0, len(coords), batch):
        yield start, reader.read(coords[start:start + batch])


def make_reader(slide, mpp: float, patch_px: int, workers: int = 1):
    """A :class:`ats_wsi.patches.PatchReader` of ``patch_px`` pixels at ``mpp`` µm/px."""
    from ats_wsi.patches import PatchReader

    return PatchReader(slide, mpp=mpp, patch_size=patch_px, workers=workers)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))
