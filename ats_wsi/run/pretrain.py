"""``ats-wsi pretrain``: a patch encoder from a cohort's own unlabelled tissue (SimCLR), ready to freeze.

:func:`pretrain` reads ``n_patches`` random tissue patches (``patch_px``
pixels at ``mpp`` µm/px; labels never read) from a manifest's training
slides, an equal share per slide, trains
:class:`~ats_wsi.encoders.simclr.SimCLRNet` on them
(:func:`~ats_wsi.encoders.simclr.train_simclr`), and writes into ``out_dir``:

- ``encoder.pt2`` and ``spec.json``: the encoder, for ``ats-wsi train
  --feature-net OUT/encoder.pt2 --feature-spec OUT/spec.json
  --freeze-features --feature-cache DIR``;
- ``pretrain.json``: the settings, the slides, the loss at the start and the
  end and the seconds each stage took.

Why (``docs/results/lesion-benchmark.md``): on a lesion among look-alikes,
features learnt from the slide labels alone arrive too slowly for the
attention to find the lesion, while a frozen self-supervised encoder gives
attention sampling something to rank from the first epoch.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..data.manifest import read_cohort
from ..encoders.simclr import SimCLRSettings, export_encoder, train_simclr
from ..errors import ConfigError
from ..patches import PatchReader
from ..slide import open_slide

__all__ = ["PretrainSettings", "colour_balanced_weights", "pretrain", "sample_tissue_patches"]

COLOUR_BINS = 4
"""Bins per optical-density channel of :func:`colour_balanced_weights`."""
COLOUR_FLOOR = 0.0005
"""Smallest share of a slide's tissue pixels a colour bin is counted as (:func:`colour_balanced_weights`)."""
MAX_PATCHES = 65536
"""Most patches one run holds in memory (65,536 of 128² px: 3.2 GB as uint8)."""


@dataclass(frozen=True)
class PretrainSettings:
    """What :func:`pretrain` reads and how it trains."""

    n_patches: int = 2048
    """Random tissue patches read from the training slides (the pool SimCLR draws batches from)."""
    mpp: float = 0.5
    """µm/px of the patches: use the ``--patch-mpp`` you will train with."""
    patch_px: int = 128
    """Side of a patch in pixels: use the ``--patch-size`` you will train with."""
    balance: float = 1.0
    """Share of each slide's patches drawn colour-balanced (:func:`colour_balanced_weights`) rather than
    uniformly over tissue: rare tissue such as a small lesion among look-alikes gets into the pool
    (docs/training.md, "The default encoder": what it changes, measured)."""
    split: str | None = "train"
    """The manifest split whose slides are read (None: every row)."""
    simclr: SimCLRSettings = field(default_factory=SimCLRSettings)
    workers: int = 2
    """Threads that read each slide's patches."""


def _check(settings: PretrainSettings) -> None:
    if not 2 <= settings.n_patches <= MAX_PATCHES:
        raise ConfigError(None, f"pretrain reads 2..{MAX_PATCHES} patches, got {settings.n_patches} "
                                "(--patches)")
    if not 0 <= settings.balance <= 1:
        raise ConfigError(None, f"pretrain's colour-balanced share must be in [0, 1], got {settings.balance} "
                                "(--balance)")
    if not 16 <= settings.patch_px <= 1024:
        raise ConfigError(None, f"pretrain patches are 16..1024 px, got {settings.patch_px} (--patch-size)")
    if not 0.05 <= settings.mpp <= 100:
        raise ConfigError(None, f"pretrain µm/px must be in 0.05..100, got {settings.mpp} (--mpp)")
    try:
        settings.simclr.check()
    except ValueError as exc:
        raise ConfigError(None, str(exc)) from None


def colour_balanced_weights(rgb: np.ndarray, bins: int = COLOUR_BINS, floor: float = COLOUR_FLOOR) -> np.ndarray:
    """Sampling weights of pixels ``[k, 3]`` (uint8) that draw every colour about equally often.

    A pixel's weight is one over the number of pixels in its colour bin (its
    optical density, ``bins`` bins per channel over the pixels' own 0.5th to 99.5th
    percentiles), that number held at least ``floor`` × ``k`` so that a handful
    of odd pixels (tissue edges, dust) cannot take the draws. Normalised to sum 1.
    """
    od = -np.log(np.clip(rgb.astype(np.float64), 1.0, 255.0) / 255.0)
    lo, hi = np.percentile(od, 0.5, axis=0), np.percentile(od, 99.5, axis=0)
    q = np.clip(((od - lo) / np.maximum(hi - lo, 1e-6) * bins).astype(np.int64), 0, bins - 1)
    key = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    counts = np.bincount(key, minlength=bins ** 3)[key].astype(np.float64)
    weights = 1.0 / np.maximum(counts, max(1.0, floor * len(rgb)))
    return weights / weights.sum()


def sample_tissue_patches(path: str | os.PathLike, n: int, *, mpp: float, patch_px: int, rng: np.random.Generator,
                          slide_mpp: float | None = None, workers: int = 2, balance: float = 0.0) -> torch.Tensor:
    """``n`` uint8 patches ``[n, 3, patch_px, patch_px]`` at ``mpp`` µm/px centred on random tissue.

    A centre is a random tissue pixel of the slide's tissue mask (Otsu on
    saturation, :meth:`~ats_wsi.slide.Slide.tissue_mask`, at about 1/32)
    moved uniformly within it; a slide whose mask is empty gives patches from
    anywhere. A share ``balance`` of the centres is drawn with
    :func:`colour_balanced_weights` over the tissue pixels instead of
    uniformly, so that rare tissue (a small lesion, a follicle) is in the pool.
    """
    from ..slide import TISSUE_DOWNSAMPLE, tissue_mask

    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance is a share in [0, 1], got {balance}")
    with open_slide(path, mpp=slide_mpp) as slide:
        rgb = slide.read_level(slide.level_for(downsample=TISSUE_DOWNSAMPLE))  # read once: mask and colours
        mask = np.asarray(tissue_mask(rgb), bool)
        width, height = slide.dimensions
        rows, cols = np.nonzero(mask)
        if not len(rows):
            rows, cols = np.nonzero(np.ones_like(mask))
        n_balanced = int(round(balance * n))
        pick = rng.integers(0, len(rows), size=n - n_balanced)
        if n_balanced:
            weights = colour_balanced_weights(rgb[rows, cols, :3])
            pick = np.concatenate([pick, rng.choice(len(rows), size=n_balanced, p=weights)])
        sx, sy = width / mask.shape[1], height / mask.shape[0]
        cx = (cols[pick] + rng.random(n)) * sx
        cy = (rows[pick] + rng.random(n)) * sy
        with PatchReader(slide, mpp=mpp, patch_size=patch_px, workers=workers) as reader:
            side = patch_px * reader.resolution.downsample  # level-0 px of a patch
            xy = np.stack([cx - side / 2, cy - side / 2], 1).round().astype(np.int64)
            xy = np.clip(xy, 0, [max(0, width - side), max(0, height - side)])
            return torch.cat([reader.read(xy[i:i + 256]) for i in range(0, n, 256)]).contiguous()


def pretrain(manifest: str | os.PathLike, out_dir: str | os.PathLike, settings: PretrainSettings = PretrainSettings(),
             *, on_slide: Callable[[int, int], None] | None = None,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    """Read tissue patches of the manifest's slides, train a SimCLR encoder, export it; return the record.

    Args:
        manifest: CSV/TSV with ``path`` (labels optional, never read;
            ``mpp`` column honoured).
        out_dir: gets ``encoder.pt2``, ``spec.json`` and ``pretrain.json``.
        settings: :class:`PretrainSettings`.
        on_slide: called as ``on_slide(done, total)`` after each slide is read.
        on_step: called as ``on_step(step, loss)`` after each training step.

    Raises:
        ConfigError: settings out of range, or no slide in the split.
        ManifestError, SlideError: from reading the manifest and the slides.
    """
    _check(settings)
    cohort = read_cohort(manifest, require_labels=False)
    rows = cohort.split(settings.split)
    if not rows:
        raise ConfigError(None, f"{manifest}: no slide in split {settings.split!r} to pretrain on "
                                "(--split all reads every row)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.simclr.seed)
    share = np.full(len(rows), settings.n_patches // len(rows))
    share[: settings.n_patches - int(share.sum())] += 1
    t0 = time.perf_counter()
    pool = []
    for i, (row, k) in enumerate(zip(rows, share)):
        if k:
            pool.append(sample_tissue_patches(row.path, int(k), mpp=settings.mpp, patch_px=settings.patch_px,
                                              rng=rng, slide_mpp=row.mpp, workers=settings.workers,
                                              balance=settings.balance))
        if on_slide is not None:
            on_slide(i + 1, len(rows))
    patches = torch.cat(pool)
    read_s = time.perf_counter() - t0
    net, record = train_simclr(patches, settings.simclr, on_step=on_step)
    pt2, spec = export_encoder(net, out, mean=record["mean"], std=record["std"], mpp=settings.mpp,
                               patch_px=settings.patch_px)
    result = {"manifest": str(Path(manifest).resolve()), "slides": [str(r.path) for r in rows],
              "settings": {**asdict(settings), "simclr": asdict(settings.simclr)}, "read_seconds": read_s,
              "training": record, "encoder": str(pt2), "spec": str(spec)}
    write_json_atomic(out / "pretrain.json", result)
    return result
