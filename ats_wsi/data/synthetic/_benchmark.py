"""A benchmark cohort shaped like lymph-node sections: one lesion per positive slide, follicles, a scanner mix.

:func:`make_lesion_benchmark` plans every slide from the seed first (label,
lesion diameter, follicles, split, scanner), then writes the slides with
:func:`~._write.write_synthetic_slide`, in this process or a pool of them,
skipping those already written with the same parameters, and last the
manifest ``path,label,split,mpp,lesion_mm,stratum``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...atomic import write_csv_atomic
from ._slide_set import _is_current
from ._write import write_synthetic_slide

MANIFEST_COLUMNS = ("path", "label", "split", "mpp", "lesion_mm", "stratum")
CLASSES = ("normal", "tumor")  # label names, class 0 and 1
SMALL, LARGE, NORMAL = "<0.5mm", "0.5-2mm", "normal"  # strata: lesion diameter below / from 0.5 mm, no lesion
_STRATUM_MM = 0.5
_TEXTURE_MPP = 0.5  # µm per texture px at texture_scale 1


@dataclasses.dataclass(frozen=True)
class _SlidePlan:
    """One slide of the benchmark: what it is and the write_synthetic_slide call that makes it."""

    index: int
    label: int
    lesion_mm: float | None
    stratum: str
    n_decoys: int
    seed: int
    split: str = "train"
    mpp: float = 0.5


def make_lesion_benchmark(
    out_dir: str | os.PathLike,
    n_slides: int = 120,
    seed: int = 0,
    *,
    size_mm: tuple[float, float] = (10.0, 7.5),
    mpps: tuple[float, ...] = (0.25, 0.5),
    lesion_mm: tuple[float, float] = (0.1, 2.0),
    decoy_mm: tuple[float, float] = (0.2, 0.8),
    n_decoys: tuple[int, int] = (3, 6),
    positive_fraction: float = 0.5,
    val_fraction: float = 2 / 15,
    test_fraction: float = 1 / 3,
    tile_size: int = 256,
    jpeg_quality: int = 85,
    workers: int = 1,
    on_slide: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a benchmark cohort like lymph-node sections (CAMELYON16-shaped) and its manifest; return the manifest.

    Every slide is ``size_mm`` of glass with tissue in a few fragments and
    ``n_decoys`` benign look-alikes ("follicles": dense lymphoid aggregates,
    diameter uniform in ``decoy_mm``) whatever its label. A *tumor* slide also
    holds exactly one lesion whose mean diameter is log-uniform in
    ``lesion_mm``; its stratum is ``<0.5mm`` or ``0.5-2mm`` (normal slides:
    ``normal``). With the defaults (10 x 7.5 mm, ~45 % tissue, lesions
    0.1–2 mm) a lesion covers ~1.5 % of the tissue on average, ~0.1 % at
    the median: most of the slide says nothing about its label.

    The scanners: each slide is scanned at one of ``mpps`` (µm/px), in equal
    shares within each label and, as far as counts allow, within each split
    and stratum, so the resolution says nothing about the label. The
    physical size is the same: a 0.25 µm/px slide has twice the pixels per
    side of a 0.5 µm/px one, and its textures are drawn at twice the pixel
    size (``texture_scale = 0.5 / mpp``): read at 0.5 µm/px it looks like a
    0.5 µm/px slide in colour and nucleus-scale texture (its header says
    ``MPP = 0.25``, ``AppMag = 40``). Stains vary between slides as usual.

    Splits are stratified by label and stratum: ``val_fraction`` and
    ``test_fraction`` of each label (rounded), spread evenly over its strata
    (the defaults give 64 / 16 / 40 of 120).

    Files: ``slide_000.svs``, ... and their ``.lesions.json`` (lesion and
    follicle boxes in level-0 px: :func:`load_lesions`) in ``out_dir``, and
    ``out_dir/manifest.csv`` with columns ``path,label,split,mpp,lesion_mm,stratum``:
    absolute path, ``normal`` / ``tumor``, ``train`` / ``val`` / ``test``,
    µm/px, the lesion's drawn mean diameter in mm (empty for normal slides)
    and the stratum. :func:`ats_wsi.data.manifest.read_cohort` reads it
    (classes sorted: normal = 0, tumor = 1). Everything follows from
    ``seed``; a slide already written with the same parameters is not
    rewritten, so an interrupted call can be repeated.

    Args:
        out_dir: folder to write into (created).
        n_slides: number of slides.
        seed: seed of the cohort.
        size_mm: (width, height) of every slide in mm.
        mpps: the scanners' µm per level-0 px, each ``0.5 / k`` for a whole
            ``k`` (0.5, 0.25, 0.125, ...).
        lesion_mm: (min, max) lesion diameter in mm (log-uniform).
        decoy_mm: (min, max) follicle diameter in mm (uniform).
        n_decoys: (min, max) follicles per slide (uniform, both labels).
        positive_fraction: fraction of tumor slides (rounded).
        val_fraction, test_fraction: fraction of each label sent to val / test.
        tile_size, jpeg_quality: passed to ``write_synthetic_slide``.
        workers: processes writing slides (1: this one). Each holds its own
            texture banks (~0.9 GB peak while building the 0.25 µm/px one).
            The defaults take ~11 CPU-minutes and 9 GB of disk.
        on_slide: called as ``on_slide(i, n)`` each time a slide is ready
            (written or found up to date), ``i`` = slides ready so far (1..n).

    Returns:
        the path of ``manifest.csv``.

    Raises:
        ValueError: a bad argument, or a slide too small for its lesion and
            follicles (choose a larger ``size_mm`` or smaller ``lesion_mm``).
        OSError: a file could not be written (finished slides are kept).
    """
    _check(n_slides, size_mm, mpps, lesion_mm, decoy_mm, n_decoys, positive_fraction,
           val_fraction, test_fraction, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_benchmark(n_slides, seed, mpps=mpps, lesion_mm=lesion_mm, n_decoys=n_decoys,
                           positive_fraction=positive_fraction, val_fraction=val_fraction,
                           test_fraction=test_fraction)
    common = dict(size_mm=tuple(size_mm), decoy_mm=tuple(decoy_mm), tile_size=tile_size, jpeg_quality=jpeg_quality)
    jobs = [(out / f"slide_{p.index:03d}.svs", *_write_args(p, **common)) for p in plans]
    _write_all(jobs, workers, on_slide)
    rows = [{"path": str(path.resolve()), "label": CLASSES[p.label], "split": p.split, "mpp": f"{p.mpp:g}",
             "lesion_mm": "" if p.lesion_mm is None else f"{p.lesion_mm:.4f}", "stratum": p.stratum}
            for p, (path, *_) in zip(plans, jobs)]
    return write_csv_atomic(out / "manifest.csv", rows, MANIFEST_COLUMNS)


def plan_benchmark(n_slides: int, seed: int = 0, *, mpps=(0.25, 0.5), lesion_mm=(0.1, 2.0), n_decoys=(3, 6),
                   positive_fraction: float = 0.5, val_fraction: float = 2 / 15,
                   test_fraction: float = 1 / 3) -> list[_SlidePlan]:
    """Every slide of :func:`make_lesion_benchmark` (label, lesion, follicles, split, scanner), from the seed alone.

    Slide ``i``'s lesion diameter, follicle count and seed are drawn from
    ``(seed, i)`` for either label, so the label changes nothing else.
    """
    set_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB3C4]))
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos))
    set_rng.shuffle(labels)
    plans = []
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 0xB3C4]))
        diameter = round(math.exp(rng.uniform(math.log(lesion_mm[0]), math.log(lesion_mm[1]))), 4)
        follicles = int(rng.integers(n_decoys[0], n_decoys[1] + 1))
        slide_seed = int(np.random.SeedSequence([int(seed), i, 1]).generate_state(1)[0])
        stratum = NORMAL if not label else SMALL if diameter < _STRATUM_MM else LARGE
        plans.append(_SlidePlan(i, label, diameter if label else None, stratum, follicles, slide_seed))
    rank = {"train": 0, "val": 1, "test": 2}
    for label in (0, 1):
        # splits: the label's slides in random order within strata, split names spread evenly along it
        mine = [p for p in plans if p.label == label]
        for p, split in zip(_shuffled(set_rng, mine, lambda p: p.stratum), _spread(len(mine), val_fraction,
                                                                                  test_fraction)):
            plans[p.index] = dataclasses.replace(p, split=split)
        # scanners: the same within splits and strata, the mpps dealt in turn along it
        mine = [plans[p.index] for p in mine]
        phase = int(set_rng.integers(len(mpps)))
        for j, p in enumerate(_shuffled(set_rng, mine, lambda p: (rank[p.split], p.stratum))):
            plans[p.index] = dataclasses.replace(p, mpp=float(mpps[(j + phase) % len(mpps)]))
    return plans


def _shuffled(rng: np.random.Generator, plans: list[_SlidePlan], group) -> list[_SlidePlan]:
    """`plans` sorted by group(plan), in random order within a group."""
    ties = rng.random(len(plans))
    return [plans[k] for k in sorted(range(len(plans)), key=lambda k: (group(plans[k]), ties[k]))]


def _spread(n: int, val: float, test: float) -> list[str]:
    """n split names with round(n * val) val and round(n * test) test, spread evenly along the sequence."""
    counts = {"test": int(round(n * test)), "val": int(round(n * val))}
    counts["train"] = n - counts["test"] - counts["val"]
    slots = sorted(((k + 0.5) / c, name) for name, c in counts.items() for k in range(c))
    return [name for _, name in slots]


def _write_args(plan: _SlidePlan, *, size_mm, decoy_mm, tile_size, jpeg_quality) -> tuple[int, int, dict]:
    """(width, height, keyword arguments) of write_synthetic_slide for one planned slide."""
    width, height = (int(round(side * 1000 / plan.mpp)) for side in size_mm)
    kw = dict(mpp=plan.mpp, n_lesions=int(plan.label), n_decoys=plan.n_decoys, seed=plan.seed,
              decoy_size_um=(decoy_mm[0] * 1000, decoy_mm[1] * 1000), texture_scale=_texture_scale(plan.mpp),
              tile_size=tile_size, jpeg_quality=jpeg_quality)
    if plan.lesion_mm is not None:
        kw["lesion_size_um"] = (plan.lesion_mm * 1000, plan.lesion_mm * 1000)
    return width, height, kw


def _texture_scale(mpp: float) -> int:
    """Level-0 px per texture px at `mpp` (0.5 / mpp, a whole number)."""
    return int(round(_TEXTURE_MPP / mpp))


def _write_one(path: Path, width: int, height: int, kw: dict) -> None:
    """Write one slide unless it is already there with these parameters (a pool job)."""
    if not _is_current(path, width, height, kw):
        write_synthetic_slide(path, width, height, **kw)


def _write_all(jobs, workers: int, on_slide) -> None:
    """Run every (path, width, height, kw) job, in this process or a pool; report each finished slide."""
    n = len(jobs)
    if workers <= 1 or n <= 1:
        for done, job in enumerate(jobs, start=1):
            _write_one(*job)
            if on_slide is not None:
                on_slide(done, n)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: the parent may hold threads (torch, readers) that a fork would copy mid-lock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, n), mp_context=context) as pool:
        futures = [pool.submit(_write_one, *job) for job in jobs]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                if on_slide is not None:
                    on_slide(done, n)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _check(n_slides, size_mm, mpps, lesion_mm, decoy_mm, n_decoys, positive_fraction, val_fraction,
           test_fraction, workers) -> None:
    """Raise ValueError for arguments of make_lesion_benchmark that cannot make a cohort."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"make_lesion_benchmark: {what}")

    need(int(n_slides) == n_slides and n_slides >= 1, f"n_slides must be a positive integer, got {n_slides}")
    need(len(size_mm) == 2 and min(size_mm) > 0, f"size_mm must be (width, height) > 0, got {size_mm}")
    need(len(mpps) >= 1 and all(m > 0 and abs(_TEXTURE_MPP / m - _texture_scale(m)) < 1e-9 for m in mpps),
         f"every mpp must be 0.5 / k for a whole k (0.5, 0.25, ...), got {tuple(mpps)}")
    need(0 < lesion_mm[0] <= lesion_mm[1], f"lesion_mm must be (min, max) with 0 < min <= max, got {lesion_mm}")
    need(0 < decoy_mm[0] <= decoy_mm[1], f"decoy_mm must be (min, max) with 0 < min <= max, got {decoy_mm}")
    need(0 <= n_decoys[0] <= n_decoys[1], f"n_decoys must be (min, max) with 0 <= min <= max, got {n_decoys}")
    need(0 <= positive_fraction <= 1, f"positive_fraction must be in [0, 1], got {positive_fraction}")
    need(val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction <= 1,
         f"bad split fractions val={val_fraction}, test={test_fraction}")
    need(int(workers) == workers and workers >= 1, f"workers must be a positive integer, got {workers}")
