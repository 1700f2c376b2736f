"""Patches at 0.5 µm/px from a 0.25 µm/px slide: PatchReader(mpp=0.5) against what a user writes today.

A 40x scan stores levels at 1, 4 and 16 (0.25, 1 and 4 µm/px): there is no
0.5 µm/px (20x) level, so a 224² patch at 0.5 µm/px is a 448² region of
level 0 reduced 2 x 2. The slide here is ``write_synthetic_slide(mpp=0.25,
n_levels=3)`` (Aperio-style, 256² JPEG tiles, Q85), read with:

- ``openslide + numpy mean``: ``OpenSlide.read_region((x, y), 0, (448, 448))``
  per patch, RGBA -> RGB numpy, ``reshape(224, 2, 224, 2, 3).mean((1, 3))``
  rounded to uint8 (what a user writes without a reader that knows µm);
- ``openslide + PIL``: the same read, then PIL ``convert("RGB")`` and
  ``resize((224, 224), Image.BOX)`` (its box filter is the 2 x 2 mean here);
- ``PatchReader(mpp=0.5)``: ``PatchReader(slide, patch_size=224, mpp=0.5,
  workers=1).read(xy)`` per batch (each tile decoded once per batch, exact
  2 x 2 mean in integers, rounded half up).

All in ONE thread (``workers=1``, torch and BLAS threads 1): the ratio is
per thread. cuCIM is not installed in this environment, so it is not in
the table. Each round draws new random level-0 corners (the same for every
method), the methods run interleaved in rotating order, and the table shows
the median of ``--repeats`` rounds after one warm-up round; the file is read
into the page cache first. Patches per CPU-second (this process, one
thread) is the fair rate on a loaded machine. The last columns compare each
method's pixels with PatchReader's on one round.

Usage::

    .venv/bin/python benchmarks/mpp_patches.py [--size 24000 20000] [--n 64] [--repeats 5]

The slide is written once into ``benchmarks/_data/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "_data"
PATCH, MPP, SLIDE_MPP = 224, 0.5, 0.25
REGION = int(PATCH * MPP / SLIDE_MPP)  # 448 level-0 pixels


def slide_path(width: int, height: int) -> Path:
    """The 0.25 µm/px synthetic slide with levels at 1, 4, 16 (written once)."""
    from ats_wsi.data.synthetic import write_synthetic_slide

    path = DATA / f"mpp025_{width}x{height}.svs"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        write_synthetic_slide(path, width, height, mpp=SLIDE_MPP, n_levels=3, downsample=4, tile_size=256,
                              n_lesions=2, seed=16)
    return path


def openslide_numpy(osr, xy) -> np.ndarray:
    out = np.empty((len(xy), PATCH, PATCH, 3), np.uint8)
    for i, (x, y) in enumerate(xy):
        rgba = np.asarray(osr.read_region((int(x), int(y)), 0, (REGION, REGION)))
        mean = rgba[:, :, :3].reshape(PATCH, 2, PATCH, 2, 3).mean(axis=(1, 3))
        out[i] = np.floor(mean + 0.5)
    return out


def openslide_pil(osr, xy) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(xy), PATCH, PATCH, 3), np.uint8)
    for i, (x, y) in enumerate(xy):
        img = osr.read_region((int(x), int(y)), 0, (REGION, REGION)).convert("RGB")
        out[i] = np.asarray(img.resize((PATCH, PATCH), Image.Resampling.BOX))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=(24_000, 20_000), metavar=("W", "H"))
    p.add_argument("--n", type=int, default=64, help="patches per round")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import openslide
    import torch

    from ats_wsi.patches import PatchReader
    from ats_wsi.slide import open_slide

    torch.set_num_threads(1)
    path = slide_path(*args.size)
    with open(path, "rb") as fh:  # page cache warm: time decoding, not the disk
        while fh.read(1 << 24):
            pass
    osr = openslide.OpenSlide(str(path))
    slide = open_slide(path)
    assert slide.mpp == SLIDE_MPP and osr.properties["openslide.vendor"] == "aperio"
    reader = PatchReader(slide, patch_size=PATCH, mpp=MPP, workers=1)
    assert (reader.level, reader.factor) == (0, 2)
    w0, h0 = slide.dimensions

    def ours(xy):
        return reader.read(xy).permute(0, 2, 3, 1).numpy()

    methods = {"openslide + numpy mean": lambda xy: openslide_numpy(osr, xy),
               "openslide + PIL BOX": lambda xy: openslide_pil(osr, xy),
               "PatchReader(mpp=0.5)": ours}
    names = list(methods)
    rng = np.random.default_rng(0)
    times = {m: [] for m in names}
    cpu = {m: [] for m in names}
    diffs = {}
    for r in range(args.repeats + 1):  # round 0 is the warm-up
        xy = np.stack([rng.integers(0, w0 - REGION, args.n), rng.integers(0, h0 - REGION, args.n)], axis=1)
        outs = {}
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = methods[name](xy)
            if r:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        if r == 1:
            ref = outs["PatchReader(mpp=0.5)"].astype(np.int16)
            diffs = {m: np.abs(outs[m].astype(np.int16) - ref) for m in names}
    base = statistics.median(times["openslide + numpy mean"])
    print(f"{args.n} random 224² patches at 0.5 µm/px per round from a {w0}x{h0} 0.25 µm/px slide "
          f"(levels 1/4/16, 256² JPEG Q85), one thread, median of {args.repeats} interleaved rounds; "
          f"{os.cpu_count()} CPUs, {platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    cpu_base = statistics.median(cpu["openslide + numpy mean"])
    print("| method | patches/s | × openslide + numpy | patches per CPU-s | × (CPU) "
          "| max abs diff vs PatchReader | mean abs diff |")
    print("|---|---|---|---|---|---|---|")
    for m in names:
        t, c = statistics.median(times[m]), statistics.median(cpu[m])
        print(f"| {m} | {args.n / t:,.0f} | {base / t:.2f} | {args.n / c:,.0f} | {cpu_base / c:.2f} "
              f"| {int(diffs[m].max())} | {diffs[m].mean():.4f} |")
    reader.close(), slide.close(), osr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
