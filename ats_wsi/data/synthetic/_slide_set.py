"""A labelled set of synthetic slides and its manifest (``path,label,split``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...atomic import write_csv_atomic
from ._truth import truth_path
from ._write import WRITE_PARAMS, _check_args, write_synthetic_slide


def make_slide_set(
    out_dir: str | os.PathLike,
    n_slides: int = 48,
    positive_fraction: float = 0.5,
    size: tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = (8192, 6144),
    seed: int = 0,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
    *,
    n_lesions: tuple[int, int] = (1, 2),
    n_spots: tuple[int, int] = (2, 4),
    **kw,
) -> Path:
    """Write a labelled set of synthetic slides and its manifest; return the manifest.

    Slides are ``slide_000.svs``, ``slide_001.svs``, ... in ``out_dir``, each
    with its ``.lesions.json``. The manifest ``out_dir/manifest.csv`` has
    columns ``path,label,split`` (absolute paths; split in train/val/test,
    stratified by label). Everything follows from ``seed``; a slide whose file
    and ground truth already exist with the same parameters is not rewritten.

    Args:
        out_dir: folder to write into (created).
        n_slides: number of slides.
        positive_fraction: fraction of slides with lesions (rounded).
        size: ``(w, h)`` of every slide, or ``((w_min, h_min), (w_max, h_max))``
            to draw each slide's size uniformly (rounded to multiples of 16).
        seed: seed of the set.
        val_fraction, test_fraction: fraction of each label sent to val / test.
        n_lesions: (min, max) lesions of a positive slide.
        n_spots: (min, max) dark spots (lesions + decoys) per slide, the same
            law for both labels: a positive slide with ``L`` lesions out of
            ``K`` spots has ``K - L`` decoys, a negative one ``K`` decoys.
        **kw: passed on to ``write_synthetic_slide`` (tile_size, mpp,
            lesion_size_um, jpeg_quality, n_levels, downsample, thumbnail).

    Returns:
        the path of ``manifest.csv``.
    """
    out = Path(out_dir)
    _check_set_args(positive_fraction, val_fraction, test_fraction, n_lesions, n_spots, kw)
    out.mkdir(parents=True, exist_ok=True)

    set_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E7]))
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos))
    set_rng.shuffle(labels)
    splits = _stratified_splits(set_rng, labels, val_fraction, test_fraction)

    rows = []
    for i in range(n_slides):
        w, h, drawn = _slide_args(seed, i, size, n_spots, n_lesions, positive=bool(labels[i]))
        path = out / f"slide_{i:03d}.svs"
        args = dict(kw, **drawn)
        if not _is_current(path, w, h, args):
            write_synthetic_slide(path, w, h, **args)
        rows.append({"path": str(path.resolve()), "label": int(labels[i]), "split": splits[i]})
    return write_csv_atomic(out / "manifest.csv", rows, ["path", "label", "split"])


def _check_set_args(positive_fraction, val_fraction, test_fraction, n_lesions, n_spots, kw) -> None:
    """Raise ValueError for arguments of make_slide_set that cannot make a set."""
    if not 0 <= positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction > 1:
        raise ValueError(f"bad split fractions val={val_fraction}, test={test_fraction}")
    if not 1 <= n_lesions[0] <= n_lesions[1] or not 1 <= n_spots[0] <= n_spots[1]:
        raise ValueError(f"bad n_lesions={n_lesions} or n_spots={n_spots} (need 1 <= min <= max)")
    bad = set(kw) - {"tile_size", "mpp", "lesion_size_um", "jpeg_quality", "n_levels",
                     "downsample", "thumbnail"}
    if bad:
        raise ValueError(f"make_slide_set got unexpected arguments {sorted(bad)}")


def _slide_args(seed: int, i: int, size, n_spots, n_lesions, positive: bool) -> tuple[int, int, dict]:
    """Slide ``i`` of the set: (w, h, its n_lesions, n_decoys and seed), drawn from ``(seed, i)`` alone.

    The same numbers are drawn for either label (a negative slide's lesions
    become decoys), so the number of spots has one law for both.
    """
    slide_rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
    w, h = _draw_size(slide_rng, size)
    spots = int(slide_rng.integers(n_spots[0], n_spots[1] + 1))
    lesions = int(slide_rng.integers(n_lesions[0], max(n_lesions[0], min(n_lesions[1], spots)) + 1))
    lesions = lesions if positive else 0
    slide_seed = int(np.random.SeedSequence([int(seed), i, 1]).generate_state(1)[0])
    return w, h, dict(n_lesions=lesions, n_decoys=max(spots - lesions, 0), seed=slide_seed)


def _is_current(path: Path, width: int, height: int, kw: dict) -> bool:
    """True if `path` and its ground truth exist, written by write_synthetic_slide(path, width, height, **kw)."""
    truth = truth_path(path)
    if not (path.is_file() and truth.is_file()):
        return False
    try:
        stored = json.loads(truth.read_text())["params"]
        defaults = {k: p.default for k, p in WRITE_PARAMS.items() if p.kind == p.KEYWORD_ONLY}
        expected = _check_args(width, height, **dict(defaults, **kw))
    except (OSError, KeyError, TypeError, ValueError):  # JSONDecodeError is a ValueError
        return False
    return stored == expected


def _draw_size(rng: np.random.Generator, size) -> tuple[int, int]:
    """A slide size: fixed (w, h), or drawn from ((w_min, h_min), (w_max, h_max)), multiples of 16."""
    if np.ndim(size) == 1:
        return int(size[0]), int(size[1])
    (w0, h0), (w1, h1) = size
    w = int(rng.integers(int(w0), int(w1) + 1)) // 16 * 16
    h = int(rng.integers(int(h0), int(h1) + 1)) // 16 * 16
    return max(w, 64), max(h, 64)


def _stratified_splits(rng: np.random.Generator, labels: np.ndarray, val: float, test: float) -> list[str]:
    """train/val/test per slide, with the fractions applied within each label."""
    splits = ["train"] * len(labels)
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test))
        n_val = int(round(len(idx) * val))
        for j, i in enumerate(idx):
            splits[i] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    return splits
