"""Peak memory of the attention net over a large low view: one pass vs tiles.

Each case runs in a fresh process (peak RSS is per process) on a square low
view of ``--size`` pixels with a small conv net (the shape of
``attention-small``: three 3 × 3 convolutions of ``--hidden`` channels, a
1 × 1 to one logit). Prints peak RSS, the growth above the RSS just before the
attention ran (input and net already in memory), the seconds, and the growth
as a ratio of the one-pass figure of the same mode.

    python benchmarks/attention_memory.py --size 2500 --tile 512

Not a test: numbers depend on the machine and the allocator.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    "one pass": ("inference", "whole"),
    "tiles": ("inference", "tiled"),
    "tiles read from uint8": ("inference", "reader"),
    "one pass + backward": ("training", "whole"),
    "tiles + backward": ("training", "tiled"),
    "tiles + checkpoint + backward": ("training", "checkpoint"),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(name: str, size: int, hidden: int, tile: int) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from ats_wsi.sampling.receptive_field import receptive_field
    from ats_wsi.sampling.tiled import tiled_logits, tiled_logits_from_reader

    mode, how = CASES[name]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(hidden, 1, 1))
    field = receptive_field(net)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    x = None if how == "reader" else torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    before, start = _rss_mib(), time.perf_counter()
    if how == "reader":
        logits = tiled_logits_from_reader(net, lambda r, c, h, w: image[r:r + h, c:c + w],
                                          (size, size), tile, field=field)
    else:
        with torch.set_grad_enabled(mode == "training"):
            logits = net(x) if how == "whole" else tiled_logits(
                net, x, tile, checkpoint=how == "checkpoint", field=field)
            if mode == "training":
                logits.sum().backward()
    seconds = time.perf_counter() - start
    return {"peak": _peak_mib(), "growth": _peak_mib() - before, "seconds": seconds,
            "map": list(logits.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2500, help="side of the low view, pixels")
    parser.add_argument("--hidden", type=int, default=8, help="channels of the hidden layers")
    parser.add_argument("--tile", type=int, default=512, help="tile side, pixels (without halo)")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.hidden, args.tile)))
        return
    results = {}
    for name in CASES:
        command = [sys.executable, __file__, "--case", name, "--size", str(args.size),
                   "--hidden", str(args.hidden), "--tile", str(args.tile)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    print(f"attention net over {args.size}² low pixels, hidden={args.hidden}, tile={args.tile}")
    print(f"{'case':<32}{'peak RSS MiB':>14}{'growth MiB':>12}{'× one pass':>12}{'seconds':>10}")
    for name, result in results.items():
        baseline = results["one pass" if CASES[name][0] == "inference" else "one pass + backward"]
        ratio = result["growth"] / max(baseline["growth"], 1e-9)
        print(f"{name:<32}{result['peak']:>14.0f}{result['growth']:>12.0f}{ratio:>12.2f}"
              f"{result['seconds']:>10.1f}")


if __name__ == "__main__":
    main()
