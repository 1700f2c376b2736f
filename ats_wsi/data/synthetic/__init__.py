"""Synthetic whole-slide images written as real Aperio-style pyramidal TIFFs.

The demo, the tests and the benchmarks need slides whose answer is known:
``write_synthetic_slide`` writes one, ``make_slide_set`` writes a labelled set
with a manifest, ``make_lesion_benchmark`` a cohort shaped like lymph-node
sections (below), ``load_lesions`` reads back the ground truth.

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

Textures are drawn in pixels: nuclei are 16–36 px wide whatever ``mpp`` says
(right for 0.5 µm/px). ``texture_scale=k`` draws every texture length (nuclei,
fibres, fat cells, ragged borders) ``k`` times larger, which is what a
``0.5 / k`` µm/px scanner sees: ``write_synthetic_slide(..., mpp=0.25,
texture_scale=2)`` is a 40x scan whose 2 x 2 block means look, in colour and
nucleus-scale texture, like a 0.5 µm/px slide (its own random draws, not the
same pixels).

A benchmark cohort
------------------
``make_lesion_benchmark(out_dir, n_slides=120, seed=0)`` writes a cohort
shaped like CAMELYON16's lymph-node sections: 10 x 7.5 mm slides, tissue in
a few fragments, 3–6 "follicles" (the decoys, 0.2–0.8 mm) on every slide,
exactly one lesion on a tumor slide with a log-uniform diameter in 0.1–2 mm
(strata ``<0.5mm`` and ``0.5-2mm``; on average ~1.5 % of the tissue), half
of each label scanned at 0.25 µm/px (physical textures, ``AppMag = 40``) and
half at 0.5, splits stratified by label and stratum (64 / 16 / 40), and a
manifest ``path,label,split,mpp,lesion_mm,stratum`` that
:func:`ats_wsi.data.manifest.read_cohort` reads. It resumes like
``make_slide_set`` and can write with a pool of processes (``workers``).

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
The ``texture_scale=2`` bank takes 6.6 s once per process (peak RSS 0.84 GB).
``make_lesion_benchmark`` with its defaults (120 slides, 60 of them 40000 x
30000 at 0.25 µm/px, 9.1 GB in all): 661 s CPU in one process (995 s wall on
a shared, loaded 2-core machine), peak RSS 0.74 GB; ``workers`` divides that.

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
same folder and renamed when complete (:mod:`ats_wsi.atomic`).

Coordinates: ``(x, y)`` in level-0 pixels, sizes ``(w, h)``, like openslide.
Arrays are ``(rows, cols) = (y, x)``.

Modules (one idea each)
-----------------------
``_write`` (one slide: arguments, pyramid, the write), ``_slide_set`` (a
labelled set and its manifest), ``_benchmark`` (the lymph-node-like cohort), ``_truth`` (``SyntheticSlide`` and the
``.lesions.json`` file), ``_aperio`` (Aperio page descriptions and page
order: :func:`aperio_description`), ``_layout`` (tissue, types, spots on the
node grid), ``_render`` (tiles), ``_stain`` (per-slide colours and texture
levels), ``_tissue`` (the texture bank), ``_noise`` (periodic noise fields).
"""
from ._aperio import aperio_description
from ._benchmark import make_lesion_benchmark
from ._slide_set import make_slide_set
from ._survival import make_survival_cohort
from ._truth import SyntheticSlide, load_lesions, load_synthetic_slide
from ._write import SYNTHETIC_VERSION, write_synthetic_slide

__all__ = [
    "make_survival_cohort",
    "SYNTHETIC_VERSION",
    "SyntheticSlide",
    "aperio_description",
    "load_lesions",
    "load_synthetic_slide",
    "make_lesion_benchmark",
    "make_slide_set",
    "write_synthetic_slide",
]
