"""Attention sampling against dense tiling, on one slide at three sizes.

Both methods run the same feature net (``ats_wsi.nets`` "feature-small",
64 features) on 256 x 256 level-0 patches and read them with the same
PatchReader (tile-aligned for dense tiling: its most favourable case):

- ``ATS``: the low view at downsample 64 (a pyramid level) -> tissue mask ->
  attention net ("attention-small") -> 32 patches sampled without
  replacement from tissue cells -> PatchReader -> feature net -> the
  unbiased expectation (``AttentionSampler.forward``);
- ``dense``: what CLAM-style pipelines do: the same tissue mask at
  downsample 64, every level-0 tile (256 x 256) with any tissue under it
  read and run through the feature net, in batches of 64; features averaged.

Each method runs in its own subprocess (so peak RSS is its own); time and RSS
are measured after the imports (torch alone is a few hundred MB, shown as
"RSS at start"). Pixels decoded count whole tiles decoded at every level
read. With ``--dense-max-tiles N`` (default 1536) dense tiling runs on N
tissue tiles spread evenly over the slide and its time is extrapolated to all
tissue tiles (setup + N-tile time x tiles / N): the table marks such rows.
``--dense-max-tiles 0`` runs every tile.

Usage::

    .venv/bin/python benchmarks/ats_vs_dense.py [--sizes 10000 40000 80000] [--dense-max-tiles 1536]

Slides are written once into ``benchmarks/_data/`` (git-ignored) by
``ats_wsi.data.write_synthetic_slide`` (Aperio-style JPEG, 256 tiles, levels 1, 4, 16, 64, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "_data"
LOW_DOWNSAMPLE = 64.0
PATCH = 256
N_PATCHES = 32
DENSE_BATCH = 64


def slide_path(size: int) -> Path:
    return DATA / f"synthetic_{size}.svs"


def prepare(size: int) -> Path:
    path = slide_path(size)
    if not path.exists():
        from ats_wsi.data.synthetic import write_synthetic_slide

        DATA.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(path, size, size, tile_size=PATCH, seed=11, n_lesions=3)
    return path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def nets():
    import torch

    from ats_wsi.nets import create_attention_net, create_feature_net

    torch.manual_seed(0)
    return create_attention_net("attention-small").eval(), create_feature_net("feature-small", out_features=64).eval()


def low_level_pixels(slide, level: int) -> int:
    cols, rows = slide.tile_grid(level)
    tw, th = slide.tile_size(level)
    return cols * rows * tw * th


# ----------------------------------------------------------------------------- the two methods


def run_ats(path: str) -> dict:
    import torch

    from ats_wsi.slide.lowview import read_low_view
    from ats_wsi.model import AttentionSampler
    from ats_wsi.patches import PatchReader, SlideSource
    from ats_wsi.slide import open_slide

    torch.set_num_threads(2)
    attention_net, feature_net = nets()
    start_rss, start = rss_mb(), time.perf_counter()
    with open_slide(path) as slide, torch.no_grad():
        view = read_low_view(slide, downsample=LOW_DOWNSAMPLE)
        x_low = torch.from_numpy(view.image).permute(2, 0, 1)[None].float() / 255
        mask = torch.from_numpy(view.mask)[None]  # on the low view's pixels: the sampler pools it
        sampler = AttentionSampler(attention_net, feature_net, n_patches=N_PATCHES, patch_size=PATCH)
        reader = PatchReader(slide, 0, PATCH, workers=2)
        source = SlideSource([slide], 0, low_downsample=view.downsample, readers=[reader])
        result = sampler(x_low, source, mask, generator=torch.Generator().manual_seed(0))
        assert result.features.shape == (1, 64)
        decoded = low_level_pixels(slide, view.level) + reader.stats.tiles_decoded * PATCH * PATCH
        reader.close()
    return {"seconds": time.perf_counter() - start, "start_rss_mb": start_rss, "peak_rss_mb": rss_mb(),
            "pixels_decoded": decoded, "patches": N_PATCHES, "extrapolated": False}


def tissue_tiles(slide, view):
    """(col, row) of every level-0 tile with any tissue under it, from the low-view mask."""
    import numpy as np

    from ats_wsi.sampling.streamed import pool_mask

    cols, rows = slide.tile_grid(0)
    # one mask cell per level-0 tile: cell (r, c) covers the tile's low pixels
    mask = view.mask
    grid = pool_mask(lambda r0, c0, h, w: mask[r0:r0 + h, c0:c0 + w], mask.shape, (rows, cols)).numpy()
    r, c = np.nonzero(grid)
    return np.stack([c, r], axis=1)


def run_dense(path: str, max_tiles: int) -> dict:
    import numpy as np
    import torch

    from ats_wsi.slide.lowview import read_low_view
    from ats_wsi.patches import PatchReader
    from ats_wsi.slide import open_slide

    torch.set_num_threads(2)
    _, feature_net = nets()
    start_rss, start = rss_mb(), time.perf_counter()
    with open_slide(path) as slide, torch.no_grad():
        view = read_low_view(slide, downsample=LOW_DOWNSAMPLE)
        tiles = tissue_tiles(slide, view)
        n_all = len(tiles)
        run = tiles if not max_tiles or max_tiles >= n_all else tiles[np.linspace(0, n_all - 1, max_tiles).astype(int)]
        setup = time.perf_counter() - start
        reader = PatchReader(slide, 0, PATCH, workers=2, cache_bytes=0)
        total = torch.zeros(64)
        for i in range(0, len(run), DENSE_BATCH):
            patches = reader.read(run[i:i + DENSE_BATCH] * PATCH)
            total += feature_net(patches.float() / 255).sum(0)
        features = total / len(run)
        assert features.shape == (64,)
        decoded = reader.stats.tiles_decoded
        reader.close()
        low_px = low_level_pixels(slide, view.level)
    seconds = time.perf_counter() - start
    scale = n_all / len(run)
    return {"seconds": setup + (seconds - setup) * scale, "measured_seconds": seconds,
            "start_rss_mb": start_rss, "peak_rss_mb": rss_mb(),
            "pixels_decoded": low_px + int(decoded * scale) * PATCH * PATCH, "patches": n_all,
            "measured_patches": len(run), "extrapolated": len(run) < n_all}


# ----------------------------------------------------------------------------- driver


def in_subprocess(method: str, path: Path, max_tiles: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--slide", str(path), "--dense-max-tiles", str(max_tiles)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 80_000])
    parser.add_argument("--dense-max-tiles", type=int, default=1536,
                        help="run dense tiling on at most this many tissue tiles and extrapolate (0: all)")
    parser.add_argument("--worker", choices=["ats", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help="only write the slides")
    args = parser.parse_args(argv)

    if args.worker:
        out = run_ats(args.slide) if args.worker == "ats" else run_dense(args.slide, args.dense_max_tiles)
        print(json.dumps(out))
        return
    paths = {size: prepare(size) for size in args.sizes}
    if args.prepare:
        return
    print(f"feature-small (64 features) on 256² level-0 patches; low view at downsample {LOW_DOWNSAMPLE:g}; "
          f"ATS n = {N_PATCHES}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    header = ("slide", "method", "patches", "wall s", "RSS at start MB", "peak RSS MB", "Mpx decoded",
              "dense / ATS time", "dense / ATS pixels")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for size, path in paths.items():
        ats = in_subprocess("ats", path, args.dense_max_tiles)
        dense = in_subprocess("dense", path, args.dense_max_tiles)
        for name, r in (("ATS", ats), ("dense tiling", dense)):
            patches = f"{r['patches']:,}"
            wall = f"{r['seconds']:.1f}"
            if r["extrapolated"]:
                patches += f" (ran {r['measured_patches']:,})"
                wall = f"{wall} (extrapolated; {r['measured_seconds']:.1f} measured)"
            ratio_t = f"{dense['seconds'] / ats['seconds']:.0f}×" if name == "dense tiling" else ""
            ratio_p = f"{dense['pixels_decoded'] / ats['pixels_decoded']:.0f}×" if name == "dense tiling" else ""
            print(f"| {size // 1000}k × {size // 1000}k | {name} | {patches} | {wall} | {r['start_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['pixels_decoded'] / 1e6:,.0f} | {ratio_t} | {ratio_p} |")


if __name__ == "__main__":
    main()
