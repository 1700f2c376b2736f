"""Peak memory of predicting one slide, from 10k² to 100k² (issues 4, 8 and 16).

Writes libvips JPEG pyramids of 10k², 40k² and 100k² pixels at 0.5 µm/px
(once, into benchmarks/_data/, git-ignored; the 100k² one takes ~10 min and
~4 GB), and predicts each slide in a fresh process with the demo's nets
(seeded, untrained) at the same low-view resolution (µm/px), so the low view
and the attention map grow with the slide. Peak RSS is the process's VmHWM.
Memory must not grow with the slide: the peaks should stay within 1.1×.

``--repo DIR`` runs the code of another checkout (its ``.venv``; this
Python when it has none), e.g. the code before issue 16 for a before/after
table. The child uses ``SlideClassifier.predict`` (``ats_wsi.classifier``,
issue 13 on): checkouts older than that are not supported.

    python benchmarks/predict_memory.py [--sizes 10000 40000 100000] [--low-mpp 8] [--repo DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"

CHILD = r"""
import dataclasses, json, sys, time
import torch
from ats_wsi.classifier import build_model
from ats_wsi.run.demo import demo_model_config

def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
torch.set_num_threads(2)
cfg = demo_model_config()
cfg = dataclasses.replace(cfg, low_downsample=None, low_mpp=float(sys.argv[1]),
                          attention_kwargs={**cfg.attention_kwargs, "pool": int(sys.argv[2])})
torch.manual_seed(0)
model = build_model(cfg).eval()
from ats_wsi.slide import open_slide
base = vm_hwm_mb()
t = time.perf_counter()
with open_slide(sys.argv[3]) as slide:
    pred = model.predict(slide, samples=1)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": vm_hwm_mb(), "before_mb": base,
                  "map": list(pred.attention.shape), "low_downsample": pred.low_downsample,
                  "patches": pred.patches_read}))
"""


def ensure_slide(size: int, writer: str = "vips") -> Path:
    """A ``size`` x ``size`` slide at 0.5 µm/px, 256² JPEG tiles, written once into ``_data/``."""
    path = DATA / (f"bench_vips_{size // 1000}k.tif" if writer == "vips" else f"bench_{size // 1000}k.svs")
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if writer == "vips":
        write_vips_slide(path, size, size)
    else:
        from ats_wsi.data.synthetic import write_synthetic_slide

        write_synthetic_slide(path, size, size, n_lesions=2, seed=size)
    print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def write_vips_slide(path: Path, width: int, height: int) -> None:
    """A tissue-like JPEG pyramid by libvips at 0.5 µm/px: perlin blobs of tissue over glass, a
    4096² texture of worley nuclei, stroma shading and noise repeated under them (so that a 100k²
    slide takes minutes to write, not an hour)."""
    import pyvips

    side = min(4096, width, height)
    nuclei = pyvips.Image.worley(side, side, cell_size=16, seed=2) < 2.5
    shade = pyvips.Image.perlin(side // 8, side // 8, cell_size=16, seed=4).resize(8, kernel="linear")
    noise = pyvips.Image.gaussnoise(side, side, sigma=8, mean=0, seed=3)
    block = pyvips.Image.black(side, side, bands=3)
    stroma = (shade * 0.3 + 0.9) * block.new_from_image([226, 142, 188])
    texture = (nuclei.ifthenelse(block.new_from_image([96, 58, 150]), stroma) + noise).cast("uchar")
    texture = pyvips.Image.new_from_memory(texture.write_to_memory(), side, side, 3, "uchar")
    texture = texture.replicate(-(-width // side), -(-height // side)).crop(0, 0, width, height)
    tissue = pyvips.Image.perlin(width // 32, height // 32, cell_size=40, seed=1).resize(32, kernel="linear") > 0
    glass = pyvips.Image.black(width, height, bands=3) + [238, 236, 241]
    img = tissue.ifthenelse(texture, glass.cast("uchar"))
    tmp = path.with_suffix(".tmp.tif")
    img.copy(interpretation="srgb").tiffsave(
        str(tmp), tile=True, pyramid=True, compression="jpeg", Q=85, tile_width=256, tile_height=256,
        xres=2000.0, yres=2000.0, resunit="cm", bigtiff=True)  # libvips' xres is pixels per mm
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000])
    parser.add_argument("--low-mpp", type=float, default=8.0,
                        help="µm/px of the attention net's input (default 8: the demo's downsample 16 at 0.5 µm/px)")
    parser.add_argument("--pool", type=int, default=4,
                        help="attention net pooling: cells of pool x low-mpp µm (default 4, the demo's)")
    parser.add_argument("--writer", choices=["vips", "tifffile"], default="vips")
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="checkout whose code runs (its .venv)")
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per slide; the table shows the highest peak")
    args = parser.parse_args()
    python = args.repo / ".venv" / "bin" / "python"
    if not python.exists():  # a git worktree shares its environment with the main checkout
        python = Path(sys.executable)
    rows = []
    for size in args.sizes:
        slide = ensure_slide(size, args.writer)
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([str(python), "-c", CHILD, str(args.low_mpp), str(args.pool), str(slide)],
                                 capture_output=True, text=True, cwd=args.repo)
            if out.returncode:
                sys.exit(out.stderr)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append((size, max(runs, key=lambda r: r["peak_mb"]), [r["peak_mb"] for r in runs]))
    first = rows[0][1]["peak_mb"]
    print(f"\npredict one slide ({args.repo}), low view at {args.low_mpp:g} µm/px, attention cells of "
          f"{args.pool * args.low_mpp:g} µm, demo nets, fresh process each")
    print(f"{'slide':>16} {'low view':>12} {'attention map':>14} {'seconds':>8} {'peak RSS MB':>12} {'vs first':>9}"
          f"  runs")
    for size, r, peaks in rows:
        low = f"{round(size / r['low_downsample'])}²"
        amap = "x".join(str(v) for v in r["map"])
        print(f"{size:>7} x {size:<7} {low:>12} {amap:>14} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} "
              f"{r['peak_mb'] / first:>8.2f}x  {' '.join(f'{p:.0f}' for p in peaks)}")


if __name__ == "__main__":
    main()
