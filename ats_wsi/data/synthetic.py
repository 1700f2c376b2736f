"""Synthetic whole-slide images written as real Aperio-style pyramidal TIFFs.

The demo, the tests and the benchmarks need slides whose answer is known:
``write_synthetic_slide`` writes one, ``make_slide_set`` writes a labelled set
with a manifest, ``load_lesions`` reads back the ground truth.

What a slide looks like
-----------------------
A light background (off-white, like glass) with a few irregular tissue pieces
covering 35–55 % of the slide (up to 75 % on small slides that need the room
for their spots). Tissue is a patchwork of three benign H&E-like
types: pink fibrous *stroma* (wavy fibre bundles, sparse spindle nuclei),
*cellular* tissue (pink-purple cytoplasm, nests of round purple nuclei, small
lumina) and pale *adipose* tissue (empty cells with thin pink membranes).

Each slide also holds a few small dark "spots" of 200–500 µm (by default),
each entirely inside tissue:

- *lesions* (positive slides only): crowded, large (16–36 px = 8–18 µm at
  0.5 µm/px), pleomorphic nuclei with irregular outlines, coarse chromatin,
  a dark rim and nucleoli;
- *decoys* (benign, in negative and positive slides alike): a dense
  lymphoid-like aggregate of small (9–12 px), round, uniformly dark nuclei.

Lesions and decoys share the shape and size distribution, and the decoy
texture is shifted, per slide, to the lesion texture's mean colour. So at
1/16–1/32 both are equally "slightly darker, more purple" spots that an
attention network can find, while only the high-resolution texture (at level 0,
still partly at 1/4) tells a lesion from a decoy. ``make_slide_set`` also gives
positive and negative slides the same distribution of the number of spots, so
neither counting spots nor their tone at low resolution reveals the label.

How it is made (bounded memory, about constant time per tile)
-------------------------------------------------------------
Nothing slide-sized is ever held in memory; the file is written tile by tile
through ``tifffile`` from an iterator of JPEG-encoded tiles.

- Textures: each tissue type is a *periodic* texture (2048 px for the benign
  types, 1024 px for lesion and decoy, at ``downsample=4``) rendered once per
  process in numpy (nuclei pasted from stamps, fibres and noise from
  FFT-filtered white noise) as haematoxylin and eosin optical densities.
  Each slide recolours them with its own stain vectors and brightness (stain
  variation between slides), flips/rotates them and shifts them by its own
  offsets (multiples of the coarsest downsample, so levels stay aligned).
  So texture is a function of level-0 coordinates, ``texture(x mod P, y mod P)``.
- Lower levels: the level-``k`` texture is the exact box-average of the
  level-0 texture over ``downsample**k`` pixels (the period is a multiple of
  the downsample), so fine texture looks as it would in a real downsampled
  slide. The low-frequency fields below are evaluated at the centres of
  level-``k`` pixels. A lower level is therefore rendered directly, in the
  same time per tile as level 0, and is consistent with level 0, but is not
  bit-exactly its downsample (tissue and spot edges are evaluated, not
  averaged; edge widths are at least one level pixel). Before JPEG, level 1
  and level 0 box-averaged by 4 differ by ~0.3 grey levels on average.
- Layout: a signed distance to the tissue border, and three logits choosing
  the benign type, live on a coarse grid (one node every 64 level-0 px) built
  from random elliptical blobs with harmonic outlines plus smooth noise; they
  are bilinearly interpolated to each tile's pixels (separable gathers). Fine
  periodic noise makes tissue and spot borders ragged. Spots are analytic
  shapes (radius with a few harmonics).
- Speed: every tile is first classified from the grid: pure background
  (one pre-encoded constant tile, reused), pure interior of one benign type
  (a slice of the periodic texture, encoded once and reused: at most
  ``(P/tile_size)**2`` distinct tiles per type and level), or mixed (tissue or
  type border, spot), which is rendered with vectorised numpy and encoded.

Measured (one core, CPU time; numpy 2.4, libjpeg-turbo through imagecodecs):
10k x 10k in 2.5 s (1.3 s of it the once-per-process texture bank), 80k x 80k
(BigTIFF, 0.9 GB) in 30 s, ~210 level-0 MPix/s; peak RSS 240 MB and 290 MB.

Files
-----
``<name>``: a BigTIFF when large, pages in Aperio order: level 0 (tiled JPEG,
ImageDescription ``Aperio Image Library ... |AppMag = 20|MPP = 0.5|...``), a
small stripped JPEG thumbnail (openslide's ``associated_images['thumbnail']``),
then levels 1.. (tiled JPEG, each ``downsample`` times smaller, sizes floored
as Aperio does). openslide reads it as vendor ``aperio`` with
``openslide.mpp-x``. ``<stem>.lesions.json`` beside it holds the ground truth:
lesion and decoy boxes ``[x, y, w, h]`` in level-0 pixels, label, mpp, seed and
the parameters that made it. Both are written under a temporary name in the
same folder and renamed when complete.

Coordinates: ``(x, y)`` in level-0 pixels, sizes ``(w, h)``, like openslide.
Arrays are ``(rows, cols) = (y, x)``.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "SyntheticSlide",
    "load_lesions",
    "load_synthetic_slide",
    "make_slide_set",
    "write_synthetic_slide",
]

#: Changes whenever the same parameters would give different pixels.
SYNTHETIC_VERSION = 1

_BANK_SEED = 0x5EED_A75  # textures are the same for every slide; slides recolour/shift them
_OD_MAX = 2.5  # optical density of code 255 in the stored H and E textures
_GRID = 64  # level-0 px between nodes of the layout grid
_TISSUE_RAGGED = 24.0  # level-0 px: how far fine noise moves the tissue border
_SPOT_RAGGED = 6.0  # level-0 px: same for lesion / decoy borders
_EDGE = 4.0  # level-0 px: width of a border at level 0 (at least one pixel at any level)
_TYPE_RAMP = 0.015  # logit difference over which two benign types blend
_TYPE_NOISE = (0.02, -0.02, 0.0)  # fine noise added to each type's logit: ragged type borders
_BENIGN = ("stroma", "cellular", "adipose")
_TYPE_BIAS = (0.25, 0.0, -0.6)  # adipose rarer
_CACHE_TILES = 1024  # encoded interior tiles kept per slide
_MAX_LEVEL_PX = 1024  # default pyramid: down to a level whose long side is <= this
_THUMB_PX = 768


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    Attributes:
        path: the slide file.
        width, height: level-0 size in pixels.
        mpp: µm per level-0 pixel.
        label: 1 if the slide has lesions, else 0.
        lesions: lesion boxes ``(x, y, w, h)`` in level-0 pixels.
        tissue_fraction: fraction of the slide covered by tissue (from the layout grid).
        decoys: benign dark spots ``(x, y, w, h)`` in level-0 pixels.
        level_dimensions: ``(w, h)`` of each pyramid level.
        seed: the seed that made it.
    """

    path: Path
    width: int
    height: int
    mpp: float
    label: int
    lesions: list[tuple[int, int, int, int]]
    tissue_fraction: float
    decoys: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)
    level_dimensions: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    seed: int = 0


# --------------------------------------------------------------------------- public API


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
) -> SyntheticSlide:
    """Write one synthetic slide (Aperio-style tiled JPEG TIFF) and its ground truth.

    Args:
        path: the slide file to write (any suffix; ``.svs`` is conventional).
            ``<stem>.lesions.json`` is written beside it.
        width, height: level-0 size in pixels.
        tile_size: tile width = height in pixels, a multiple of 16.
        mpp: µm per level-0 pixel (sets the physical size of nuclei and spots,
            and the ``MPP`` / ``AppMag = 10 / mpp`` properties).
        n_lesions: number of lesions; 0 makes a negative slide (label 0).
        lesion_size_um: (min, max) mean diameter of lesions and decoys in µm
            (outlines are irregular: a box side may be ~20 % more or less).
        seed: everything about the slide (layout, stain, spots) follows from it.
        jpeg_quality: JPEG quality of the tiles (1–100).
        n_levels: pyramid levels including level 0; ``None``: down to the
            first level whose longer side is at most 1024 px.
        downsample: size ratio between consecutive levels (Aperio: 4).
        n_decoys: benign dark spots; ``None``: 1–3 (drawn from ``seed``).
        thumbnail: also write the small stripped thumbnail page Aperio files have.

    Returns:
        the written slide's description and ground truth.

    Raises:
        ValueError: a bad argument, or lesions that do not fit in the tissue.
        OSError: the file could not be written (nothing is left under ``path``).
    """
    path = Path(path)
    params = _check_args(width, height, tile_size=tile_size, mpp=mpp, n_lesions=n_lesions,
                         lesion_size_um=lesion_size_um, seed=seed, jpeg_quality=jpeg_quality,
                         n_levels=n_levels, downsample=downsample, n_decoys=n_decoys, thumbnail=thumbnail)
    level_dims = _level_dimensions(width, height, downsample, n_levels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51DE]))
    if n_decoys is None:
        n_decoys = params["n_decoys"] = int(rng.integers(1, 4))
    layout = _Layout.make(rng, width, height, mpp, n_lesions, n_decoys, lesion_size_um)
    thumb_level = _thumbnail_level(width, height, downsample)
    tex_levels = max(len(level_dims), thumb_level + 1)
    renderer = _Renderer(rng, layout, tile_size, downsample, tex_levels, jpeg_quality)

    description = _aperio_description(width, height, tile_size, jpeg_quality, mpp)
    _write_atomically(path, lambda tmp: _write_tiff(tmp, renderer, level_dims, description,
                                                    thumb_level if thumbnail else None))
    slide = SyntheticSlide(
        path=path, width=width, height=height, mpp=float(mpp), label=int(n_lesions > 0),
        lesions=[s.box for s in layout.spots if s.kind == "lesion"],
        tissue_fraction=round(layout.tissue_fraction, 6),
        decoys=[s.box for s in layout.spots if s.kind == "decoy"],
        level_dimensions=level_dims, seed=int(seed),
    )
    _write_ground_truth(slide, params)
    return slide


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
    out.mkdir(parents=True, exist_ok=True)

    set_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E7]))
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos))
    set_rng.shuffle(labels)
    splits = _stratified_splits(set_rng, labels, val_fraction, test_fraction)

    rows = []
    for i in range(n_slides):
        slide_rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        w, h = _draw_size(slide_rng, size)
        spots = int(slide_rng.integers(n_spots[0], n_spots[1] + 1))
        lesions = int(slide_rng.integers(n_lesions[0], max(n_lesions[0], min(n_lesions[1], spots)) + 1))
        lesions = lesions if labels[i] else 0
        decoys = max(spots - lesions, 0)
        slide_seed = int(np.random.SeedSequence([int(seed), i, 1]).generate_state(1)[0])
        path = out / f"slide_{i:03d}.svs"
        args = dict(kw, n_lesions=lesions, n_decoys=decoys, seed=slide_seed)
        if not _is_current(path, w, h, args):
            write_synthetic_slide(path, w, h, **args)
        rows.append((str(path.resolve()), int(labels[i]), splits[i]))

    manifest = out / "manifest.csv"

    def write_manifest(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "split"])
            writer.writerows(rows)

    _write_atomically(manifest, write_manifest)
    return manifest


def load_lesions(path: str | os.PathLike) -> list[tuple[int, int, int, int]]:
    """Lesion boxes ``(x, y, w, h)`` in level-0 pixels of a synthetic slide.

    Args:
        path: the slide, or its ``<stem>.lesions.json``.
    """
    return load_synthetic_slide(path).lesions


def load_synthetic_slide(path: str | os.PathLike) -> SyntheticSlide:
    """The ground truth of a synthetic slide, read from ``<stem>.lesions.json``.

    Args:
        path: the slide, or its ``<stem>.lesions.json``.

    Raises:
        FileNotFoundError: there is no ground truth beside the slide.
        ValueError: the ground-truth file is not one this module wrote.
    """
    path = Path(path)
    truth = path if path.name.endswith(".lesions.json") else _truth_path(path)
    try:
        data = json.loads(truth.read_text())
        return SyntheticSlide(
            path=truth.with_name(data["file"]),
            width=int(data["width"]), height=int(data["height"]), mpp=float(data["mpp"]),
            label=int(data["label"]), lesions=[tuple(map(int, b)) for b in data["lesions"]],
            tissue_fraction=float(data["tissue_fraction"]),
            decoys=[tuple(map(int, b)) for b in data["decoys"]],
            level_dimensions=[tuple(map(int, d)) for d in data["level_dimensions"]],
            seed=int(data["seed"]),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{truth}: not a synthetic-slide ground truth ({err!r})") from err


# --------------------------------------------------------------------------- arguments, files


def _check_args(width, height, *, tile_size, mpp, n_lesions, lesion_size_um, seed, jpeg_quality,
                n_levels, downsample, n_decoys, thumbnail) -> dict:
    """Validate the arguments of write_synthetic_slide; return them as the JSON-able record kept beside the slide."""
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
    need(int(jpeg_quality) == jpeg_quality and 1 <= jpeg_quality <= 100,
         f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    need(int(downsample) == downsample and downsample >= 2, f"downsample must be an integer >= 2, got {downsample}")
    need(n_levels is None or (int(n_levels) == n_levels and n_levels >= 1),
         f"n_levels must be >= 1 or None, got {n_levels}")
    if n_levels is not None:
        need(min(width, height) // downsample ** (n_levels - 1) >= 1,
             f"{n_levels} levels with downsample {downsample} leave an empty level for {width} x {height}")
    return dict(version=SYNTHETIC_VERSION, width=int(width), height=int(height),
                tile_size=int(tile_size), mpp=float(mpp), n_lesions=int(n_lesions),
                lesion_size_um=[float(lo), float(hi)], seed=int(seed), jpeg_quality=int(jpeg_quality),
                n_levels=None if n_levels is None else int(n_levels), downsample=int(downsample),
                n_decoys=None if n_decoys is None else int(n_decoys), thumbnail=bool(thumbnail))


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


def _aperio_description(width: int, height: int, tile: int, quality: int, mpp: float) -> str:
    """ImageDescription of level 0 as an Aperio scanner writes it (openslide parses the `|key = value` pairs)."""
    fields = [
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q={quality}",
        f"AppMag = {10.0 / mpp:g}",
        f"StripeWidth = {tile}",
        "ScanScope ID = ATS-WSI-SYNTHETIC",
        "Filename = synthetic",
        "Date = 01/01/26",
        "Time = 00:00:00",
        f"MPP = {mpp:g}",
        "Left = 0.000000",
        "Top = 0.000000",
        f"OriginalWidth = {width}",
        f"OriginalHeight = {height}",
    ]
    return "|".join(fields)


def _write_tiff(tmp: Path, renderer: "_Renderer", level_dims, description: str, thumb_level) -> None:
    """Write the pages in Aperio order: level 0, thumbnail (strips), levels 1.."""
    import tifffile

    width, height = level_dims[0]
    tile = renderer.tile_size
    bigtiff = width * height > 1_500_000_000  # JPEG files of this size may pass 4 GB
    page = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="jpeg",
                subsampling=(2, 2), metadata=None, software=False)
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for level, (w, h) in enumerate(level_dims):
            if level == 0:
                text = description
            else:
                text = (f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
                        f"({tile}x{tile}) -> {w}x{h} JPEG/RGB Q={renderer.quality}")
            tw.write(renderer.encoded_tiles(level, w, h), shape=(h, w, 3), description=text, **page)
            if level == 0 and thumb_level is not None:
                thumb = renderer.thumbnail(thumb_level, width, height, _THUMB_PX)
                tw.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": renderer.quality},
                         subsampling=(2, 2), rowsperstrip=16, metadata=None, software=False,
                         description=(f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> "
                                      f"{thumb.shape[1]}x{thumb.shape[0]} - "))


def _write_atomically(path: Path, write) -> None:
    """Call write(tmp) on a temporary name beside `path`, then rename; never leave a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _truth_path(slide_path: Path) -> Path:
    return slide_path.with_name(slide_path.stem + ".lesions.json")


def _write_ground_truth(slide: SyntheticSlide, params: dict) -> None:
    data = {
        "file": slide.path.name,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "label": slide.label,
        "seed": slide.seed,
        "lesions": [list(b) for b in slide.lesions],
        "decoys": [list(b) for b in slide.decoys],
        "tissue_fraction": round(slide.tissue_fraction, 6),
        "level_dimensions": [list(d) for d in slide.level_dimensions],
        "params": params,
    }
    text = json.dumps(data, indent=1)
    _write_atomically(_truth_path(slide.path), lambda tmp: tmp.write_text(text))


def _is_current(path: Path, width: int, height: int, kw: dict) -> bool:
    """True if `path` and its ground truth exist, written by write_synthetic_slide(path, width, height, **kw)."""
    truth = _truth_path(path)
    if not (path.is_file() and truth.is_file()):
        return False
    try:
        stored = json.loads(truth.read_text())["params"]
        defaults = {k: p.default for k, p in _WRITE_PARAMS.items() if p.kind == p.KEYWORD_ONLY}
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


# --------------------------------------------------------------------------- texture bank


def _periods(downsample: int) -> tuple[int, int]:
    """Texture periods (benign, spot) in level-0 px: about 2048 and 1024, multiples of a power of `downsample`."""
    def period(target: int) -> int:
        power = downsample ** int(math.floor(math.log(target, downsample) + 1e-9))
        return power * (target // power)

    return period(2048), period(1024)


def _grf(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Periodic Gaussian random field, float32 (rows, cols), zero mean, unit std, smooth over `sigma` px.

    Very smooth fields are drawn on a grid 2**j times coarser and upsampled
    linearly (periodic), which is much cheaper and looks the same.
    """
    rows, cols = shape
    j = 0
    while sigma / 2 ** (j + 1) >= 3 and rows % 2 ** (j + 1) == 0 and cols % 2 ** (j + 1) == 0:
        j += 1
    small = (rows >> j, cols >> j)
    white = rng.standard_normal(small, dtype=np.float32)
    ky = np.fft.fftfreq(small[0]).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(small[1]).astype(np.float32)[None, :]
    filt = np.exp(np.float32(-2 * np.pi**2 * (sigma / 2**j) ** 2) * (kx * kx + ky * ky))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=small).astype(np.float32)
    for _ in range(j):
        field = _upsample2(field)
    field -= field.mean()
    field /= field.std() + np.float32(1e-12)
    return field


def _fibres(rng: np.random.Generator, n: int, spacing: float, length: float) -> np.ndarray:
    """Periodic wavy fibre field (n, n) float32, unit std.

    Oriented band-pass noise whose orientation varies smoothly, then warped
    by a smooth displacement so that fibres bend. Built one orientation at a
    time to bound memory.
    """
    spectrum = np.fft.rfft2(rng.standard_normal((n, n), dtype=np.float32))
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    out = np.zeros((n, n), np.float32)
    total = np.zeros((n, n), np.float32)
    for a in np.linspace(0, np.pi, 4, endpoint=False) + rng.uniform(0, np.pi / 4):
        k_along = kx * np.float32(np.cos(a)) + ky * np.float32(np.sin(a))
        k_across = -kx * np.float32(np.sin(a)) + ky * np.float32(np.cos(a))
        filt = np.exp(-0.5 * (k_along * length) ** 2 - 0.5 * ((np.abs(k_across) - 1 / spacing) * spacing * 1.6) ** 2)
        del k_along, k_across
        band = np.fft.irfft2(spectrum * filt, s=(n, n)).astype(np.float32)
        del filt
        band /= band.std() + np.float32(1e-12)
        weight = np.exp(1.5 * _grf(rng, (n, n), 70.0))  # where this orientation dominates
        band *= weight
        out += band
        total += weight
    out /= total
    del total, band, weight
    rows = (np.arange(n, dtype=np.int32)[:, None] + np.rint(9 * _grf(rng, (n, n), 24.0)).astype(np.int32)) % n
    cols = (np.arange(n, dtype=np.int32)[None, :] + np.rint(9 * _grf(rng, (n, n), 24.0)).astype(np.int32)) % n
    rows *= n
    rows += cols
    del cols
    out = out.ravel()[rows]
    out /= out.std() + np.float32(1e-12)
    return out


def _tex_grf(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Periodic noise (n, n) for a texture. Fine noise (sigma < 8 px) is drawn with a period of at most
    1024 px and repeated (saves memory; such a repeat cannot be seen); coarser noise is not."""
    m = n
    while m > 1024 and m % 2 == 0 and sigma < 8:
        m //= 2
    return np.tile(_grf(rng, (m, m), sigma), (n // m, n // m))


def _blur3(a: np.ndarray) -> np.ndarray:
    """3 x 3 box blur with edge padding (small arrays)."""
    p = np.pad(a, 1, mode="edge")
    return sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9


def _nucleus_stamps(rng: np.random.Generator, count: int, radius, elongation, irregularity: float,
                    od, grain: float, rim: float, nucleolus: float) -> list[np.ndarray]:
    """Haematoxylin optical-density stamps (s, s) float32 of single nuclei, centred.

    radius: (min, max) semi-minor axis in px; elongation: (min, max) major/minor;
    irregularity: std of the outline harmonics; od: (min, max) mean density;
    grain: chromatin texture amplitude; rim: extra density at the membrane;
    nucleolus: probability of a dark nucleolus.
    """
    stamps = []
    for _ in range(count):
        b = rng.uniform(*radius)
        a = b * rng.uniform(*elongation)
        half = int(math.ceil(a * (1 + 3 * irregularity))) + 2
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        r = np.hypot(u / a, v / b)
        phi = np.arctan2(v / b, u / a)
        outline = np.ones_like(r)
        for j in (2, 3, 4, 5):
            outline += rng.normal(0, irregularity) / (j - 1) * np.cos(j * phi + rng.uniform(0, 2 * np.pi))
        depth = (outline - r) * b  # ~px inside the outline
        alpha = np.clip(depth + 0.5, 0, 1)
        texture = _blur3(rng.standard_normal(r.shape).astype(np.float32))
        texture /= texture.std() + 1e-6
        value = rng.uniform(*od) * (1 + grain * texture) + rim * np.exp(-0.5 * (depth / 1.2) ** 2)
        if rng.random() < nucleolus:
            ny, nx = rng.uniform(-0.4, 0.4, 2) * b
            rn = rng.uniform(1.3, 2.3)
            value += 0.8 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * rn * rn))
        stamps.append((alpha * np.clip(value, 0, None)).astype(np.float32))
    return stamps


def _jittered_points(rng: np.random.Generator, n: int, spacing: float, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """Points (ys, xs) on a jittered grid over a periodic n x n square, one per cell of ~`spacing` px.

    keep: optional (n, n) map of keep probabilities, looked up at each point.
    """
    cells = max(1, int(round(n / spacing)))
    size = n / cells
    gy, gx = np.mgrid[0:cells, 0:cells].astype(np.float32)
    ys = ((gy + rng.uniform(0.15, 0.85, gy.shape)) * size).ravel()
    xs = ((gx + rng.uniform(0.15, 0.85, gx.shape)) * size).ravel()
    if keep is not None:
        p = keep[ys.astype(int) % n, xs.astype(int) % n]
        chosen = rng.random(p.shape) < p
        ys, xs = ys[chosen], xs[chosen]
    return ys.astype(int) % n, xs.astype(int) % n


def _paste_periodic(n: int, stamps: list[np.ndarray], ys: np.ndarray, xs: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Max-composite randomly chosen stamps centred at (ys, xs) on a periodic n x n canvas."""
    pad = max(s.shape[0] for s in stamps) // 2 + 1
    big = np.zeros((n + 2 * pad, n + 2 * pad), np.float32)
    which = rng.integers(0, len(stamps), len(ys))
    for y, x, i in zip(ys.tolist(), xs.tolist(), which.tolist()):
        stamp = stamps[i]
        h = stamp.shape[0] // 2
        view = big[y + pad - h:y + pad + h + 1, x + pad - h:x + pad + h + 1]
        np.maximum(view, stamp, out=view)
    rows = big[pad:pad + n].copy()  # fold what fell off each edge back onto the other side
    np.maximum(rows[:pad], big[pad + n:], out=rows[:pad])
    np.maximum(rows[n - pad:], big[:pad], out=rows[n - pad:])
    out = rows[:, pad:pad + n].copy()
    np.maximum(out[:, :pad], rows[:, pad + n:], out=out[:, :pad])
    np.maximum(out[:, n - pad:], rows[:, :pad], out=out[:, n - pad:])
    return out


def _with_nuclei(h: np.ndarray, e: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei replace the cytoplasm under them: H takes the max, E fades."""
    cover = np.clip(nuclei / 0.3, 0, 1)
    return np.maximum(h, nuclei), e * (1 - 0.6 * cover)


def _stroma(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pink wavy collagen bundles with sparse spindle nuclei."""
    e = _fibres(rng, n, spacing=11.0, length=140.0)  # built in place below: memory, not speed
    e *= -2.2
    e += 0.2
    np.exp(e, out=e)
    e += 1
    np.reciprocal(e, out=e)  # strands in (0, 1)
    e *= np.clip(1.1 + 0.45 * _tex_grf(rng, n, 45.0), 0.15, 1.0)  # looser between bundles
    e *= 0.62
    e += 0.12
    e += 0.04 * _tex_grf(rng, n, 3.0)
    h = np.full((n, n), 0.05, np.float32)
    stamps = _nucleus_stamps(rng, 48, radius=(2.2, 3.2), elongation=(2.8, 4.5), irregularity=0.04,
                             od=(0.75, 1.05), grain=0.15, rim=0.0, nucleolus=0.0)
    count = n * n // 2600
    ys, xs = rng.integers(0, n, count), rng.integers(0, n, count)
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


def _cellular(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nests of round purple nuclei in pink-purple cytoplasm, with small empty lumina."""
    in_nest = _tex_grf(rng, n, 32.0)
    in_nest += 0.5
    in_nest *= -4
    np.exp(in_nest, out=in_nest)
    in_nest += 1
    np.reciprocal(in_nest, out=in_nest)
    e = _tex_grf(rng, n, 4.0)
    e *= 0.4
    e += 1
    e *= 0.25 * (1 - in_nest)
    e += 0.22 + 0.14 * in_nest
    h = 0.06 + 0.08 * in_nest
    stamps = _nucleus_stamps(rng, 64, radius=(4.6, 6.2), elongation=(1.0, 1.35), irregularity=0.05,
                             od=(0.55, 0.8), grain=0.25, rim=0.12, nucleolus=0.15)
    in_nest *= 0.85
    in_nest += 0.05
    ys, xs = _jittered_points(rng, n, 16.0, keep=in_nest)
    del in_nest
    h, e = _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))
    lumen = np.clip((_tex_grf(rng, n, 14.0) - 1.7) * 3, 0, 1)
    lumen *= -0.9
    lumen += 1
    h *= lumen
    e *= lumen
    return h, e


def _adipose(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Large empty fat cells with thin pink membranes (period at most 1024 px, repeated)."""
    m = n
    while m > 1024 and m % 2 == 0:
        m //= 2
    gap = _upsample2(_worley_gap(rng, m // 2, 44.0)) * 2  # F2 - F1 distance, full-resolution px
    membrane = np.clip((3.2 - gap) / 1.6, 0, 1)
    e = (0.02 + 0.5 * membrane).astype(np.float32)
    h = (0.01 + 0.06 * membrane).astype(np.float32)
    stamps = _nucleus_stamps(rng, 16, radius=(1.8, 2.4), elongation=(2.5, 3.5), irregularity=0.03,
                             od=(0.7, 0.9), grain=0.1, rim=0.0, nucleolus=0.0)
    ys, xs = np.nonzero(membrane > 0.9)
    pick = rng.choice(len(ys), size=min(len(ys), m * m // 40000), replace=False)
    h, e = _with_nuclei(h, e, _paste_periodic(m, stamps, ys[pick], xs[pick], rng))
    return np.tile(h, (n // m, n // m)), np.tile(e, (n // m, n // m))


def _decoy(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    e = (0.16 + 0.04 * _tex_grf(rng, n, 5.0)).astype(np.float32)
    h = (0.10 + 0.03 * _tex_grf(rng, n, 5.0)).astype(np.float32)
    stamps = _nucleus_stamps(rng, 48, radius=(4.4, 5.8), elongation=(1.0, 1.15), irregularity=0.03,
                             od=(1.05, 1.35), grain=0.08, rim=0.0, nucleolus=0.0)
    # patchy density, so that at low resolution the aggregate is as mottled as a lesion
    keep = np.clip(0.72 + 0.3 * _tex_grf(rng, n, 14.0), 0, 1)
    ys, xs = _jittered_points(rng, n, 13.0, keep=keep)
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


def _lesion(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    e = (0.26 + 0.06 * _tex_grf(rng, n, 6.0)).astype(np.float32)
    h = (0.18 + 0.05 * _tex_grf(rng, n, 6.0)).astype(np.float32)
    stamps = _nucleus_stamps(rng, 96, radius=(8.0, 12.0), elongation=(1.0, 1.5), irregularity=0.12,
                             od=(0.55, 1.05), grain=0.45, rim=0.35, nucleolus=0.7)
    ys, xs = _jittered_points(rng, n, 25.0, keep=np.full((n, n), 0.95, np.float32))
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


def _worley_gap(rng: np.random.Generator, n: int, spacing: float) -> np.ndarray:
    """F2 - F1 cell-distance field (n, n) float32 of a periodic jittered point grid (small at cell borders)."""
    cells = max(2, int(round(n / spacing)))
    size = n / cells
    jitter_y, jitter_x = rng.uniform(0.1, 0.9, (2, cells, cells)).astype(np.float32)
    coord = (np.arange(n, dtype=np.float32) + 0.5) / np.float32(size)  # in cell units, same for rows and cols
    cell = np.floor(coord).astype(int)
    d1 = np.full((n, n), np.inf, np.float32)
    d2 = np.full((n, n), np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = (cell + dy)[:, None], (cell + dx)[None, :]  # neighbour cell, not wrapped
            py = ny + jitter_y[ny % cells, nx % cells]
            px = nx + jitter_x[ny % cells, nx % cells]
            d = np.hypot(py - coord[:, None], px - coord[None, :])
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
    return (d2 - d1) * np.float32(size)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Periodic linear x2 upsampling of a 2-D array."""
    rows = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    rows[0::2] = a
    rows[1::2] = 0.5 * (a + np.roll(a, -1, 0))
    out = np.empty((rows.shape[0], 2 * a.shape[1]), a.dtype)
    out[:, 0::2] = rows
    out[:, 1::2] = 0.5 * (rows + np.roll(rows, -1, 1))
    return out


_TEXTURES = {"stroma": _stroma, "cellular": _cellular, "adipose": _adipose, "decoy": _decoy, "lesion": _lesion}


@functools.lru_cache(maxsize=2)
def _texture_bank(benign_period: int, spot_period: int) -> dict[str, np.ndarray]:
    """Stain codes of every texture, uint16 (P, P): (H code << 8) | E code, codes = OD / 2.5 * 255.

    Rendered once per process (about a second). Also holds each texture's
    code histogram '<name>.hist' (int64 (65536,), for mean colours without
    recolouring) and the fine edge noise 'noise' (float32 in [-1, 1], spot period).
    """
    bank: dict[str, np.ndarray] = {}
    for i, (name, make) in enumerate(_TEXTURES.items()):
        rng = np.random.default_rng(np.random.SeedSequence([_BANK_SEED, i]))
        n = spot_period if name in ("decoy", "lesion") else benign_period
        h, e = make(rng, n)
        hc = np.clip(np.rint(h * (255 / _OD_MAX)), 0, 255).astype(np.uint16)
        ec = np.clip(np.rint(e * (255 / _OD_MAX)), 0, 255).astype(np.uint16)
        bank[name] = (hc << 8) | ec
        bank[name + ".hist"] = np.bincount(bank[name].ravel(), minlength=65536)
    rng = np.random.default_rng(np.random.SeedSequence([_BANK_SEED, len(_TEXTURES)]))
    bank["noise"] = np.clip(_grf(rng, (spot_period, spot_period), 5.0) / 2.2, -1, 1)
    return bank


# --------------------------------------------------------------------------- per-slide appearance


def _stain_lut(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-slide stain colours: RGB uint8 (65536, 3) for each (H code << 8 | E code), and the background RGB."""
    haem = np.array([0.60, 0.76, 0.26]) * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.15)
    eosin = np.array([0.08, 0.90, 0.40]) * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.15)
    white = rng.uniform(238, 250)
    od = np.arange(256) * (_OD_MAX / 255)
    total = od[:, None, None] * haem + od[None, :, None] * eosin
    lut = np.clip(np.rint(white * np.exp(-total)), 0, 255).astype(np.uint8).reshape(65536, 3)
    background = np.clip(np.rint(white * np.array([0.99, 0.985, 0.995]) - rng.uniform(0, 4, 3)), 0, 255)
    return lut, background.astype(np.uint8)


class _Texture:
    """One texture on one slide at every level: wrapped periodic arrays that tiles are sliced from.

    levels[k] is (P_k + tile, P_k + tile[, 3]) so that any tile-sized window
    starting inside the period is a plain slice; periods[k] = P_k;
    shifts[k] = this slide's (row, col) offset into the period at level k.
    """

    def __init__(self, image: np.ndarray, shift: tuple[int, int], n_levels: int, downsample: int, tile: int):
        self.levels, self.periods, self.shifts = [], [], []
        for k in range(n_levels):
            if k > 0:
                image = _box_reduce(image, downsample)
            p = image.shape[0]
            sy, sx = (round(shift[0] / downsample**k) % p, round(shift[1] / downsample**k) % p)
            self.levels.append(_wrap_pad(image, tile))
            self.periods.append(p)
            self.shifts.append((sy, sx))

    def start(self, level: int, y: int, x: int) -> tuple[int, int]:
        """Where the window for level-`level` pixel (y, x) starts in levels[level]."""
        p = self.periods[level]
        sy, sx = self.shifts[level]
        return (y + sy) % p, (x + sx) % p

    def window(self, level: int, y: int, x: int, rows: int, cols: int) -> np.ndarray:
        r, c = self.start(level, y, x)
        return self.levels[level][r:r + rows, c:c + cols]


def _wrap_pad(image: np.ndarray, extra: int) -> np.ndarray:
    """The periodic image extended by `extra` rows and cols (wrapping around), (P + extra, P + extra, ...)."""
    p = image.shape[0]
    out = np.empty((p + extra, p + extra, *image.shape[2:]), image.dtype)
    for y in range(0, p + extra, p):
        for x in range(0, p + extra, p):
            h, w = min(p, p + extra - y), min(p, p + extra - x)
            out[y:y + h, x:x + w] = image[:h, :w]
    return out


def _box_reduce(image: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (period divisible by f), or the mean (1 x 1 period) once it is not."""
    p = image.shape[0]
    if p % f:
        means = image.mean(axis=(0, 1), keepdims=True, dtype=np.float32)
    else:
        means = np.zeros((p // f, p // f, *image.shape[2:]), np.float32)
        for i in range(f):
            for j in range(f):
                means += image[i::f, j::f]
        means *= np.float32(1 / (f * f))
    return np.rint(means).astype(np.uint8) if image.dtype == np.uint8 else means


def _as_rgba32(lut: np.ndarray) -> np.ndarray:
    """An RGB uint8 (n, 3) table as uint32 (n,) whose bytes are R, G, B, 0."""
    rgba = np.zeros((len(lut), 4), np.uint8)
    rgba[:, :3] = lut
    return rgba.view(np.uint32).ravel()


class _SlideTextures:
    """This slide's textures by name, each built on first use (types a slide lacks cost nothing).

    A texture is a bank texture recoloured with this slide's stains, turned by
    a multiple of 90 degrees, maybe mirrored, and shifted; all these choices
    are drawn up front, so the pixels do not depend on the order of use.
    Also: `noise` (fine edge noise, a _Texture) and `background` (RGB uint8).
    """

    def __init__(self, rng: np.random.Generator, downsample: int, n_levels: int, tile: int):
        benign_period, spot_period = _periods(downsample)
        self._bank = _texture_bank(benign_period, spot_period)
        lut, self.background = _stain_lut(rng)
        def shift(period: int) -> tuple[int, int]:
            # a multiple of every level's downsample (where the period allows), so levels stay aligned
            unit = math.gcd(period, downsample ** (n_levels - 1))
            return tuple(int(v) * unit for v in rng.integers(0, period // unit, 2))

        self._pose = {name: (int(rng.integers(0, 4)), bool(rng.random() < 0.5), shift(self._bank[name].shape[0]))
                      for name in _TEXTURES}
        noise_shift = shift(spot_period)
        self._levels = (n_levels, downsample, tile)
        self.noise = _Texture(self._bank["noise"], noise_shift, *self._levels)
        # decoys take the lesion's mean colour, so that the two look alike at low resolution
        delta = self._mean_colour("lesion", lut) - self._mean_colour("decoy", lut)
        decoy_lut = np.clip(np.rint(lut + delta), 0, 255).astype(np.uint8)
        self._luts = {name: _as_rgba32(decoy_lut if name == "decoy" else lut) for name in _TEXTURES}
        self._built: dict[str, _Texture] = {}

    def _mean_colour(self, name: str, lut: np.ndarray) -> np.ndarray:
        hist = self._bank[name + ".hist"]
        return hist @ lut.astype(np.float64) / hist.sum()

    def __getitem__(self, name: str) -> "_Texture":
        if name not in self._built:
            turns, mirror, shift = self._pose[name]
            codes = np.rot90(self._bank[name], turns)
            rgba = self._luts[name][codes[:, ::-1] if mirror else codes]  # a 4-byte gather is ~10x faster
            rgba = rgba[..., None].view(np.uint8)
            image = np.empty((*codes.shape, 3), np.uint8)
            for c in range(3):  # plane by plane: ~5x faster than copying rgba[..., :3]
                image[..., c] = rgba[..., c]
            self._built[name] = _Texture(image, shift, *self._levels)
        return self._built[name]


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Spot:
    """A lesion or decoy: an analytic blob, radius(θ) = r0 (1 + Σ_j a_j cos(j θ + φ_j))."""

    kind: str
    cx: float
    cy: float
    r0: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]
    box: tuple[int, int, int, int]  # (x, y, w, h), level-0 px, holds every pixel of the spot

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for j, (a, p) in enumerate(zip(self.amps, self.phases), start=2):
            r += np.float32(a) * np.cos(j * theta + np.float32(p))
        return np.float32(self.r0) * r

    def reach(self) -> float:
        return self.r0 * (1 + sum(abs(a) for a in self.amps)) + _SPOT_RAGGED


def _make_spot(rng: np.random.Generator, kind: str, cx: float, cy: float, r0: float, width: int, height: int) -> _Spot:
    amps = tuple(float(a) for a in rng.normal(0, 0.07, 4))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 4))
    spot = _Spot(kind, cx, cy, r0, amps, phases, (0, 0, 0, 0))
    theta = np.linspace(0, 2 * np.pi, 1440, endpoint=False, dtype=np.float32)
    r = spot.radius(theta) + _SPOT_RAGGED
    x0 = max(0, math.floor(cx + float((r * np.cos(theta)).min())))
    x1 = min(width, math.ceil(cx + float((r * np.cos(theta)).max())) + 1)
    y0 = max(0, math.floor(cy + float((r * np.sin(theta)).min())))
    y1 = min(height, math.ceil(cy + float((r * np.sin(theta)).max())) + 1)
    return dataclasses.replace(spot, box=(x0, y0, x1 - x0, y1 - y0))


@dataclasses.dataclass
class _Layout:
    """Where tissue, benign types and spots are, on a grid of nodes every _GRID level-0 px.

    distance: float32 (rows, cols) approximate signed distance to the tissue
    border in level-0 px (> 0 inside tissue) at node (i, j) = (y, x) = (i, j) * _GRID;
    logits: float32 (3, rows, cols) benign-type scores (stroma, cellular, adipose).
    """

    width: int
    height: int
    distance: np.ndarray
    logits: np.ndarray
    spots: list[_Spot]
    tissue_fraction: float

    @classmethod
    def make(cls, rng, width, height, mpp, n_lesions, n_decoys, lesion_size_um, attempts: int = 16) -> "_Layout":
        """A layout with exactly n_lesions lesions and n_decoys decoys inside its tissue.

        Draws new tissue until all spots fit (at most `attempts` times); the
        later attempts, which only small slides need, allow more tissue
        (up to 75 %) and smaller gaps between spots.
        """
        rows, cols = height // _GRID + 2, width // _GRID + 2
        size_px = (lesion_size_um[0] / mpp, lesion_size_um[1] / mpp)
        for attempt in range(attempts):
            crowded = attempt >= attempts // 2
            target = rng.uniform(0.6, 0.75) if crowded else rng.uniform(0.35, 0.55)
            distance, fraction = _tissue_distance(rng, width, height, rows, cols, target)
            scale = 600.0 / mpp / _GRID  # benign regions ~ 0.6 mm, with wiggly borders
            logits = np.stack([_smooth_noise(rng, (rows, cols), scale)
                               + 0.3 * _smooth_noise(rng, (rows, cols), scale / 5) + bias
                               for bias in _TYPE_BIAS]).astype(np.float32)
            spots: list[_Spot] = []
            for kind in ["lesion"] * n_lesions + ["decoy"] * n_decoys:
                spot = _place_spot(rng, kind, distance, size_px, spots, width, height, 0.15 if crowded else 0.5)
                if spot is None:
                    break
                spots.append(spot)
            else:
                return cls(width, height, distance, logits, spots, fraction)
        raise ValueError(
            f"write_synthetic_slide: cannot fit {n_lesions} lesions and {n_decoys} decoys of {lesion_size_um} µm "
            f"inside the tissue of a {width} x {height} slide at {mpp} µm/px; "
            "use a larger slide, or fewer or smaller lesions")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Non-periodic smooth noise (rows, cols), unit std: a periodic field on a larger grid, cropped."""
    pad = int(math.ceil(3 * sigma))
    big = _grf(rng, (shape[0] + 2 * pad, shape[1] + 2 * pad), max(sigma, 0.5))
    return big[pad:pad + shape[0], pad:pad + shape[1]]


def _tissue_distance(rng, width, height, rows, cols, target: float) -> tuple[np.ndarray, float]:
    """Signed distance-like field to the tissue border on the grid, and the tissue fraction (about `target`)."""
    y = (np.arange(rows, dtype=np.float32) * _GRID)[:, None]
    x = (np.arange(cols, dtype=np.float32) * _GRID)[None, :]
    short, area = min(width, height), math.sqrt(width * height)
    field = np.full((rows, cols), -2.0, np.float32)
    n_main = int(rng.integers(1, 4))
    blobs = [(rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height,
              rng.uniform(0.22, 0.36) * area / math.sqrt(n_main)) for _ in range(n_main)]
    blobs += [(rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height,
               rng.uniform(0.03, 0.07) * area) for _ in range(int(rng.integers(0, 5)))]
    for cx, cy, r in blobs:
        aspect, theta = rng.uniform(0.55, 1.0), rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        phi = np.arctan2(v, u)
        outline = 1 + sum(rng.normal(0, 0.12) / j * np.cos(j * phi + rng.uniform(0, 2 * np.pi)) for j in range(2, 6))
        field = np.maximum(field, 1 - np.hypot(u / r, v / (r * aspect)) / outline)
    field += 0.30 * _smooth_noise(rng, (rows, cols), 0.08 * short / _GRID)
    field += 0.10 * _smooth_noise(rng, (rows, cols), 0.02 * short / _GRID)
    border = np.minimum(np.minimum(x, width - x), np.minimum(y, height - y))
    field -= 3 * np.clip(1 - border / (0.04 * short), 0, 1)
    inside = (y < height) & (x < width)
    threshold = np.quantile(field[np.broadcast_to(inside, field.shape)], 1 - target)
    gy, gx = np.gradient(field, _GRID)
    slope = np.maximum(np.hypot(gy, gx), 1 / (0.25 * short))
    distance = ((field - threshold) / slope).astype(np.float32)
    fraction = float((distance > 0)[np.broadcast_to(inside, field.shape)].mean())
    return distance, fraction


def _place_spot(rng, kind, distance, size_px, spots, width, height, gap: float) -> _Spot | None:
    """A spot entirely inside tissue, `gap` times its radius away from the others, or None after many tries."""
    rows, cols = distance.shape
    candidates = np.flatnonzero(distance > _TISSUE_RAGGED + _EDGE)  # (distance is under-estimated deep inside)
    if len(candidates) == 0:
        return None
    for _ in range(500):
        r0 = rng.uniform(*size_px) / 2  # mean radius; the outline harmonics add or take ~10 %
        node = int(candidates[rng.integers(len(candidates))])
        cy = (node // cols + rng.uniform(-0.5, 0.5)) * _GRID
        cx = (node % cols + rng.uniform(-0.5, 0.5)) * _GRID
        spot = _make_spot(rng, kind, cx, cy, r0, width, height)
        x, y, w, h = spot.box
        if x <= 0 or y <= 0 or x + w >= width or y + h >= height:
            continue
        # the nodes that interpolate the box's pixels: all must be well inside tissue
        if distance[y // _GRID:(y + h - 1) // _GRID + 2, x // _GRID:(x + w - 1) // _GRID + 2].min() \
                <= _TISSUE_RAGGED + _EDGE:
            continue
        if any(math.hypot(cx - s.cx, cy - s.cy) < spot.reach() + s.reach() + gap * r0 for s in spots):
            continue
        return spot
    return None


# --------------------------------------------------------------------------- tiles


def _left_node(coords, n_nodes: int):
    """Index of the grid node left of (or at) each level-0 coordinate, clamped to 0 .. n_nodes - 2."""
    return np.clip(np.floor(np.asarray(coords, np.float64) / _GRID), 0, n_nodes - 2).astype(np.intp)


def _node_span(first: float, last: float, n_nodes: int) -> tuple[int, int]:
    """First and last grid node used to interpolate level-0 coordinates first..last (increasing)."""
    return int(_left_node(first, n_nodes)), int(_left_node(last, n_nodes)) + 1


class _Bilinear:
    """Bilinear interpolation from grid nodes to the pixels of one tile, separable and BLAS-free.

    ys, xs: level-0 coordinates of the tile's pixel rows / cols (increasing);
    the grid has nodes every _GRID px; `rows`/`cols` are the node spans used.
    """

    def __init__(self, ys: np.ndarray, xs: np.ndarray, grid_shape: tuple[int, int]):
        self.iy, self.ty, y0, y1 = self._axis(ys, grid_shape[0])
        self.ix, self.tx, x0, x1 = self._axis(xs, grid_shape[1])
        self.rows, self.cols = slice(y0, y1 + 1), slice(x0, x1 + 1)

    @staticmethod
    def _axis(coords, n_nodes):
        i0 = _left_node(coords, n_nodes)
        t = np.clip(np.asarray(coords, np.float64) / _GRID - i0, 0, 1).astype(np.float32)
        lo, hi = int(i0[0]), int(i0[-1]) + 1
        return i0 - lo, t, lo, hi

    def __call__(self, grid: np.ndarray) -> np.ndarray:
        """Values float32 (len(ys), len(xs)) of `grid` (full node grid, rows x cols)."""
        sub = grid[self.rows, self.cols]
        along_x = sub[:, self.ix] * (1 - self.tx) + sub[:, self.ix + 1] * self.tx
        return along_x[self.iy] * (1 - self.ty)[:, None] + along_x[self.iy + 1] * self.ty[:, None]


def _range_reduce(grid: np.ndarray, spans_y, spans_x, reduce) -> np.ndarray:
    """reduce (np.min / np.max) of grid over the node span of every tile -> (tile rows, tile cols)."""
    by_col = np.stack([reduce(grid[:, a:b + 1], axis=1) for a, b in spans_x], axis=1)
    return np.stack([reduce(by_col[a:b + 1], axis=0) for a, b in spans_y], axis=0)


class _Renderer:
    """Renders and JPEG-encodes any tile of any level of one slide."""

    def __init__(self, rng, layout: _Layout, tile_size: int, downsample: int, n_levels: int, quality: int):
        self.layout = layout
        self.tile_size = tile_size
        self.downsample = downsample
        self.quality = int(quality)
        self.textures = _SlideTextures(rng, downsample, n_levels, tile_size)
        self.noise, self.background = self.textures.noise, self.textures.background
        self._background_tile = self._encode(np.broadcast_to(self.background, (tile_size, tile_size, 3)))
        self._cache: dict[tuple, bytes] = {}
        self._plans: dict[int, tuple] = {}

    # ---- per level: which tiles are background, plain interior of one type, or need rendering
    def _plan(self, level: int, cols: int, rows: int):
        if level not in self._plans:
            self._plans[level] = self._make_plan(level, cols, rows)
        return self._plans[level]

    def _make_plan(self, level: int, cols: int, rows: int):
        f, t = self.downsample**level, self.tile_size
        distance, logits = self.layout.distance, self.layout.logits
        n_rows, n_cols = distance.shape

        def spans(n_tiles, n_nodes):
            return [_node_span((i * t + 0.5) * f, ((i + 1) * t - 0.5) * f, n_nodes) for i in range(n_tiles)]

        span_y, span_x = spans(rows, n_rows), spans(cols, n_cols)
        edge = _TISSUE_RAGGED + max(_EDGE, f) / 2
        empty = _range_reduce(distance, span_y, span_x, np.max) < -edge
        full = _range_reduce(distance, span_y, span_x, np.min) > edge
        pure = np.full((rows, cols), -1, np.int8)
        for a in range(len(_BENIGN)):
            margin = np.full((rows, cols), np.inf, np.float32)
            for b in range(len(_BENIGN)):
                if b != a:
                    margin = np.minimum(margin, _range_reduce(logits[a] - logits[b], span_y, span_x, np.min))
            pure[margin >= _TYPE_RAMP + 2 * max(map(abs, _TYPE_NOISE))] = a
        touched = np.zeros((rows, cols), bool)
        reach = t * f
        for spot in self.layout.spots:
            x, y, w, h = spot.box
            touched[max(0, y // reach):(y + h) // reach + 1, max(0, x // reach):(x + w) // reach + 1] = True
        return empty, full & (pure >= 0) & ~touched, pure

    def encoded_tiles(self, level: int, width: int, height: int) -> Iterator[bytes]:
        """JPEG bytes of every tile of a level, row by row (what tifffile writes)."""
        t = self.tile_size
        cols, rows = -(-width // t), -(-height // t)
        empty, plain, pure = self._plan(level, cols, rows)
        for row in range(rows):
            for col in range(cols):
                if empty[row, col]:
                    yield self._background_tile
                elif plain[row, col]:
                    yield self._plain_tile(level, row, col, int(pure[row, col]))
                else:
                    yield self._encode(self.render(level, col, row, int(pure[row, col])))

    def _plain_tile(self, level: int, row: int, col: int, kind: int) -> bytes:
        t = self.tile_size
        texture = self.textures[_BENIGN[kind]]
        key = (level, kind, *texture.start(level, row * t, col * t))
        data = self._cache.get(key)
        if data is None:
            data = self._encode(texture.window(level, row * t, col * t, t, t))
            if len(self._cache) < _CACHE_TILES:
                self._cache[key] = data
        return data

    def _encode(self, tile: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=self.quality, colorspace="RGB",
                                       outcolorspace="YCBCR", subsampling=(2, 2))

    def render(self, level: int, col: int, row: int, kind: int = -1) -> np.ndarray:
        """Pixels uint8 (tile, tile, 3) of tile (col, row) at `level`, from the procedural model.

        kind: the benign type that covers the whole tile, if the plan knows one, else -1.
        """
        f, t = self.downsample**level, self.tile_size
        ys = (row * t + np.arange(t) + 0.5) * f  # level-0 centres of the tile's pixels, float64
        xs = (col * t + np.arange(t) + 0.5) * f
        interp = _Bilinear(ys, xs, self.layout.distance.shape)
        top, left = row * t, col * t
        noise = self.noise.window(level, top, left, t, t)
        edge = max(_EDGE, f)

        if kind >= 0:
            base = self.textures[_BENIGN[kind]].window(level, top, left, t, t).astype(np.float32)
        else:
            base = self._mix_types(level, top, left, interp, noise)

        for spot in self.layout.spots:
            self._add_spot(base, spot, level, top, left, ys, xs, noise, edge)

        if self.layout.distance[interp.rows, interp.cols].min() <= _TISSUE_RAGGED + edge / 2:
            tissue = np.clip(0.5 + (interp(self.layout.distance) + _TISSUE_RAGGED * noise) / edge, 0, 1)
            base = self.background + tissue[..., None] * (base - self.background)
        base += 0.5  # round: every value is a convex mix of uint8 values, so in [0.5, 255.5]
        return base.astype(np.uint8)

    def _mix_types(self, level, top, left, interp: "_Bilinear", noise) -> np.ndarray:
        """Blend of the benign textures float32 (t, t, 3) over a tile where the type changes.

        Weights: each type's score (logit + its share of the fine noise) ramps
        from 0 to 1 within _TYPE_RAMP of the best score; weights sum to 1.
        """
        t, ramp = self.tile_size, np.float32(_TYPE_RAMP)
        logits = self.layout.logits[:, interp.rows, interp.cols]
        bound = 2 * max(map(abs, _TYPE_NOISE))
        best_low = max(g.min() for g in logits)  # the winner scores at least this (minus noise) everywhere
        present = [a for a in range(len(_BENIGN)) if logits[a].max() + bound >= best_low - _TYPE_RAMP]
        window = [self.textures[_BENIGN[a]].window(level, top, left, t, t) for a in present]
        scores = [interp(self.layout.logits[a]) + np.float32(_TYPE_NOISE[a]) * noise for a in present]
        if len(present) == 1:
            return window[0].astype(np.float32)
        if len(present) == 2:  # the usual border: one blend
            u = np.clip((scores[0] - scores[1]) / ramp, -1, 1)
            w = (1 + np.minimum(u, 0)) / (2 - np.abs(u))  # weight of the first type
            base = window[1].astype(np.float32)
            base += w[..., None] * (window[0] - base)
            return base
        best = np.maximum.reduce(scores)
        weights = [np.clip(1 - (best - s) / ramp, 0, 1) for s in scores]
        total = sum(weights)
        base = np.zeros((t, t, 3), np.float32)
        for w, image in zip(weights, window):
            base += (w / total)[..., None] * image
        return base

    def _add_spot(self, base, spot: _Spot, level, top, left, ys, xs, noise, edge) -> None:
        """Blend the spot's texture into `base` (in place) where the tile's pixels fall inside it.

        top, left: the tile's first pixel at `level`; ys, xs: level-0 centres of its rows / cols.
        """
        x, y, w, h = spot.box
        rows = np.flatnonzero((ys >= y) & (ys < y + h))
        cols = np.flatnonzero((xs >= x) & (xs < x + w))
        if len(rows) == 0 or len(cols) == 0:
            return
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        dy = (ys[r0:r1] - spot.cy).astype(np.float32)[:, None]
        dx = (xs[c0:c1] - spot.cx).astype(np.float32)[None, :]
        inside = spot.radius(np.arctan2(dy, dx)) - np.hypot(dy, dx) + _SPOT_RAGGED * noise[r0:r1, c0:c1]
        mask = np.clip(0.5 + inside / edge, 0, 1)[..., None]
        texture = self.textures[spot.kind].window(level, top + r0, left + c0, r1 - r0, c1 - c0)
        region = base[r0:r1, c0:c1]
        region += mask * (texture - region)

    def thumbnail(self, level: int, width: int, height: int, max_side: int) -> np.ndarray:
        """The whole slide rendered at `level` (<= 1024 px), box-reduced to at most `max_side` px."""
        f, t = self.downsample**level, self.tile_size
        w, h = max(1, width // f), max(1, height // f)
        image = np.empty((-(-h // t) * t, -(-w // t) * t, 3), np.uint8)
        for row in range(image.shape[0] // t):
            for col in range(image.shape[1] // t):
                image[row * t:(row + 1) * t, col * t:(col + 1) * t] = self.render(level, col, row)
        image = image[:h, :w]
        k = max(1, -(-max(w, h) // max_side))
        h2, w2 = max(1, h // k), max(1, w // k)
        return np.rint(image[:h2 * k, :w2 * k].reshape(h2, k, w2, k, 3).mean(axis=(1, 3))).astype(np.uint8)


_WRITE_PARAMS = inspect.signature(write_synthetic_slide).parameters
