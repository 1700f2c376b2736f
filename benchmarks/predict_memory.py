"""Peak memory of predicting one slide, small vs. huge (issues 4 and 8).

Writes synthetic slides of 10k x 10k and 80k x 80k (tile by tile, once, into
benchmarks/_data/), saves one checkpoint, and predicts each slide in a fresh
process with the same checkpoint and the same low-level resolution (µm/px).
Peak RSS is the process's VmHWM. Memory must not grow with the slide: the
ratio of the two peaks should stay within 1.25.

    python benchmarks/predict_memory.py [--sizes 10000 80000] [--low-mpp 16]
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
import json, sys, time
import torch
from ats_wsi.classifier import load_model
from ats_wsi.slide import open_slide

def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
torch.set_num_threads(2)
model = load_model(sys.argv[1])
base = vm_hwm_mb()
t = time.perf_counter()
with open_slide(sys.argv[2]) as slide:
    pred = model.predict(slide, samples=1)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": vm_hwm_mb(), "before_mb": base,
                  "map": list(pred.attention.shape), "low_downsample": pred.low_downsample,
                  "patches": pred.patches_read}))
"""


def ensure_slide(size: int) -> Path:
    from ats_wsi.data.synthetic import write_synthetic_slide

    path = DATA / f"bench_{size // 1000}k.svs"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_synthetic_slide(path, size, size, n_lesions=2, seed=size)
        print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def ensure_checkpoint(low_mpp: float, pool: int) -> Path:
    import torch

    from ats_wsi.classifier import save_checkpoint
    from ats_wsi.classifier import build_model
    from ats_wsi.run.demo import demo_model_config

    cfg = demo_model_config()
    cfg.low_downsample, cfg.low_mpp = None, low_mpp
    cfg.attention_kwargs = {**cfg.attention_kwargs, "pool": pool}
    torch.manual_seed(0)
    path = DATA / f"bench_model_mpp{low_mpp:g}_pool{pool}.pt"
    save_checkpoint(path, build_model(cfg))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 80_000])
    parser.add_argument("--low-mpp", type=float, default=16.0, help="µm/px of the attention net's input")
    parser.add_argument("--pool", type=int, default=4,
                        help="attention net pooling: cells of pool x low-mpp µm (default 4: 64 µm, one 128 px patch)")
    args = parser.parse_args()
    ckpt = ensure_checkpoint(args.low_mpp, args.pool)
    rows = []
    for size in args.sizes:
        slide = ensure_slide(size)
        out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(slide)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        rows.append((size, json.loads(out.stdout.strip().splitlines()[-1])))
    first = rows[0][1]["peak_mb"]
    print(f"\npredict one slide, low view at {args.low_mpp:g} µm/px, attention cells of {args.pool * args.low_mpp:g} µm "
          "(same checkpoint), fresh process each")
    print(f"{'slide':>14} {'low view':>12} {'attention map':>14} {'seconds':>8} {'peak RSS MB':>12} {'vs first':>9}")
    for size, r in rows:
        low = f"{round(size / r['low_downsample'])}²"
        amap = "x".join(str(v) for v in r["map"])
        print(f"{size:>6} x {size:<6} {low:>12} {amap:>14} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} "
              f"{r['peak_mb'] / first:>8.2f}x")


if __name__ == "__main__":
    main()
