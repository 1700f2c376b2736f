"""Write one synthetic slide: check the arguments, lay it out, render it as an Aperio file, keep its truth.

Both the slide and its ``<stem>.lesions.json`` are written under a temporary
name in the same folder and renamed when complete (:mod:`ats_wsi.atomic`).
"""
from __future__ import annotations

import inspect
import math
import os
from pathlib import Path

import numpy as np

from ...atomic import atomic_path
from ._aperio import write_aperio_tiff
from ._layout import _Layout
from ._render import _Renderer
from ._truth import SyntheticSlide, write_ground_truth

#: Changes whenever the same parameters would give different pixels.
SYNTHETIC_VERSION = 1
_MAX_LEVEL_PX = 1024  # default pyramid: down to a level whose long side is <= this


def write_synthetic_slide(
    path: str | os.PathLike,
    width: int,
    height: int,
    *,
    tile_size: int = 256,
    mpp: float = 0.5,
    n_lesions: int = 0,
    lesion_size_um: tuple[float, float] = (200.0, 500.0),
    seed: int = 0,
    jpeg_quality: int = 85,
    n_levels: int | None = None,
    downsample: int = 4,
    n_decoys: int | None = None,
    thumbnail: bool = True,
    decoy_size_um: tuple[float, float] | None = None,
    texture_scale: int = 1,
    stain_seed: int | None = None,
) -> SyntheticSlide:
    """Write one synthetic slide (Aperio-style tiled JPEG TIFF) and its ground truth.

    Args:
        path: the slide file to write (any suffix; ``.svs`` is conventional).
            ``<stem>.lesions.json`` is written beside it.
        width, height: level-0 size in pixels.
        tile_size: tile width = height in pixels, a multiple of 16.
        mpp: µm per level-0 pixel (sets the physical size of spots and tissue
            regions, and the ``MPP`` / ``AppMag = 10 / mpp`` properties;
            nuclei and fibres are sized in pixels by ``texture_scale``).
        n_lesions: number of lesions; 0 makes a negative slide (label 0).
        lesion_size_um: (min, max) mean diameter of lesions (and of decoys,
            unless ``decoy_size_um``) in µm, drawn uniformly (outlines are
            irregular: a box side may be ~20 % more or less).
        seed: everything about the slide (layout, stain, spots) follows from it.
        jpeg_quality: JPEG quality of the tiles (1–100).
        n_levels: pyramid levels including level 0; ``None``: down to the
            first level whose longer side is at most 1024 px.
        downsample: size ratio between consecutive levels (Aperio: 4).
        n_decoys: benign dark spots; ``None``: 1–3 (drawn from ``seed``).
        thumbnail: also write the small stripped thumbnail page Aperio files have.
        decoy_size_um: (min, max) mean diameter of decoys in µm; ``None``:
            ``lesion_size_um`` (decoys and lesions share one size law).
        texture_scale: level-0 pixels per 0.5 µm of texture: 1 draws nuclei,
            fibres and borders at their 0.5 µm/px pixel sizes whatever
            ``mpp`` is (nuclei 16–36 px wide in lesions); 2 draws them twice
            as wide, as a 0.25 µm/px (40x) scanner sees the same tissue. So
            ``texture_scale = 0.5 / mpp`` makes the texture physical. A
            positive integer.
        stain_seed: seed of the slide's stain colours and texture poses;
            ``None``: drawn from ``seed`` after the layout (as always). Two
            slides with one ``stain_seed`` share their colours.

    Returns:
        the written slide's description and ground truth.

    Raises:
        ValueError: a bad argument, or lesions that do not fit in the tissue.
        OSError: the file could not be written (what was under ``path`` is left as it was).
    """
    path = Path(path)
    params = _check_args(width, height, tile_size=tile_size, mpp=mpp, n_lesions=n_lesions,
                         lesion_size_um=lesion_size_um, seed=seed, jpeg_quality=jpeg_quality,
                         n_levels=n_levels, downsample=downsample, n_decoys=n_decoys, thumbnail=thumbnail,
                         decoy_size_um=decoy_size_um, texture_scale=texture_scale, stain_seed=stain_seed)
    level_dims = _level_dimensions(width, height, downsample, n_levels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51DE]))
    if n_decoys is None:
        n_decoys = params["n_decoys"] = int(rng.integers(1, 4))
    layout = _Layout.make(rng, width, height, mpp, n_lesions, n_decoys, lesion_size_um,
                          decoy_size_um=decoy_size_um, scale=int(texture_scale))
    thumb_level = _thumbnail_level(width, height, downsample)
    tex_levels = max(len(level_dims), thumb_level + 1)
    if stain_seed is not None:
        rng = np.random.default_rng(np.random.SeedSequence([int(stain_seed), 0x57A1]))
    renderer = _Renderer(rng, layout, tile_size, downsample, tex_levels, jpeg_quality)
    with atomic_path(path) as tmp:
        write_aperio_tiff(tmp, renderer, level_dims, mpp, thumb_level if thumbnail else None)
    slide = _record(path, layout, mpp, level_dims, seed)
    write_ground_truth(slide, params)
    return slide


def _record(path: Path, layout: _Layout, mpp: float, level_dims, seed: int) -> SyntheticSlide:
    """The description of a slide written from ``layout``."""
    lesions = [s.box for s in layout.spots if s.kind == "lesion"]
    return SyntheticSlide(
        path=path, width=layout.width, height=layout.height, mpp=float(mpp), label=int(len(lesions) > 0),
        lesions=lesions, tissue_fraction=round(layout.tissue_fraction, 6),
        decoys=[s.box for s in layout.spots if s.kind == "decoy"],
        level_dimensions=level_dims, seed=int(seed),
    )


def _check_args(width, height, *, tile_size, mpp, n_lesions, lesion_size_um, seed, jpeg_quality,
                n_levels, downsample, n_decoys, thumbnail, decoy_size_um=None, texture_scale=1,
                stain_seed=None) -> dict:
    """Validate the arguments of write_synthetic_slide; return them as the JSON-able record kept beside the slide.

    The record names decoy_size_um, texture_scale and stain_seed only where
    they are not their defaults, so older records still match.
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"write_synthetic_slide: {what}")

    need(int(width) == width and int(height) == height and width >= 64 and height >= 64,
         f"width and height must be integers >= 64, got {width} x {height}")
    need(int(tile_size) == tile_size and tile_size >= 16 and tile_size % 16 == 0,
         f"tile_size must be a positive multiple of 16 (JPEG 4:2:0), got {tile_size}")
    need(mpp > 0 and math.isfinite(mpp), f"mpp must be > 0, got {mpp}")
    need(int(n_lesions) == n_lesions and n_lesions >= 0, f"n_lesions must be >= 0, got {n_lesions}")
    need(n_decoys is None or (int(n_decoys) == n_decoys and n_decoys >= 0),
         f"n_decoys must be >= 0 or None, got {n_decoys}")
    lo, hi = lesion_size_um
    need(0 < lo <= hi, f"lesion_size_um must be (min, max) with 0 < min <= max, got {lesion_size_um}")
    if decoy_size_um is not None:
        need(len(decoy_size_um) == 2 and 0 < decoy_size_um[0] <= decoy_size_um[1],
             f"decoy_size_um must be None or (min, max) with 0 < min <= max, got {decoy_size_um}")
    need(not isinstance(texture_scale, bool) and int(texture_scale) == texture_scale and texture_scale >= 1,
         f"texture_scale must be a positive integer, got {texture_scale}")
    need(stain_seed is None or int(stain_seed) == stain_seed, f"stain_seed must be an int or None, got {stain_seed}")
    need(int(jpeg_quality) == jpeg_quality and 1 <= jpeg_quality <= 100,
         f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    need(int(downsample) == downsample and downsample >= 2, f"downsample must be an integer >= 2, got {downsample}")
    need(n_levels is None or (int(n_levels) == n_levels and n_levels >= 1),
         f"n_levels must be >= 1 or None, got {n_levels}")
    if n_levels is not None:
        need(min(width, height) // downsample ** (n_levels - 1) >= 1,
             f"{n_levels} levels with downsample {downsample} leave an empty level for {width} x {height}")
    record = dict(version=SYNTHETIC_VERSION, width=int(width), height=int(height),
                  tile_size=int(tile_size), mpp=float(mpp), n_lesions=int(n_lesions),
                  lesion_size_um=[float(lo), float(hi)], seed=int(seed), jpeg_quality=int(jpeg_quality),
                  n_levels=None if n_levels is None else int(n_levels), downsample=int(downsample),
                  n_decoys=None if n_decoys is None else int(n_decoys), thumbnail=bool(thumbnail))
    if decoy_size_um is not None:
        record["decoy_size_um"] = [float(v) for v in decoy_size_um]
    if texture_scale != 1:
        record["texture_scale"] = int(texture_scale)
    if stain_seed is not None:
        record["stain_seed"] = int(stain_seed)
    return record


def _level_dimensions(width: int, height: int, downsample: int, n_levels: int | None) -> list[tuple[int, int]]:
    """(w, h) per level; each level floors the previous one divided by `downsample`."""
    dims = [(width, height)]
    while (len(dims) < n_levels) if n_levels else max(dims[-1]) > _MAX_LEVEL_PX:
        w, h = dims[-1][0] // downsample, dims[-1][1] // downsample
        if min(w, h) < 1:
            break
        dims.append((w, h))
    return dims


def _thumbnail_level(width: int, height: int, downsample: int) -> int:
    """The first level factor at which the whole slide is at most 1024 px (rendered for the thumbnail)."""
    k = 0
    while max(width, height) / downsample**k > _MAX_LEVEL_PX:
        k += 1
    return k


WRITE_PARAMS = inspect.signature(write_synthetic_slide).parameters
