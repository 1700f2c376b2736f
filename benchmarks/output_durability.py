"""What durable outputs cost in `predict`: fsync before and after each rename, and the done
markers' digests checked on a rerun (issue 19, part 4).

Since issue 19 every output (the OME-Zarr map: each chunk and metadata file and folder; the
overlay PNG; the done marker; the CSVs) is fsynced under its temporary name, renamed, and its
folder fsynced; a rerun trusts a done marker only after the SHA-256 of the map and overlay it
vouches for match. This predicts the demo's 12 held-out slides (4096 x 3072, the demo's model,
untrained: the cost of writing does not depend on the weights) into fresh folders, in
interleaved rounds, with fsync as shipped and with fsync turned off (``os.fsync`` a no-op in
``ats_wsi.atomic``), then reruns each finished folder (every slide skipped) with the digest
check as shipped and turned off, and prints the medians.

Usage::

    .venv/bin/python benchmarks/output_durability.py [--slides 12] [--rounds 3] [--dir /tmp/x]

The folder (default: a new one under the system's temporary folder) decides what an fsync
costs: run it on the disk the results will go to.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", help="work folder (default: a new temporary one)")
    args = p.parse_args(argv)

    import torch

    from ats_wsi import atomic
    from ats_wsi.classifier import build_model, save_checkpoint
    from ats_wsi.data.synthetic import make_slide_set
    from ats_wsi.run import outdir, predict
    from ats_wsi.run.demo import demo_model_config

    work = Path(args.dir or tempfile.mkdtemp(prefix="ats-durability-"))
    work.mkdir(parents=True, exist_ok=True)
    make_slide_set(work / "slides", n_slides=args.slides, size=(4096, 3072), seed=0, n_spots=(1, 1),
                   n_lesions=(1, 1), lesion_size_um=(400.0, 800.0), n_levels=3)  # as the demo's
    slides = sorted(str(s) for s in (work / "slides").glob("*.svs"))
    torch.manual_seed(0)
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, build_model(demo_model_config()))
    real_fsync, real_match = atomic.os.fsync, outdir.outputs_match
    times = {"predict, fsync": [], "predict, no fsync": [], "rerun, digests checked": [],
             "rerun, not checked": []}
    n_fsync = []

    def run(out: Path) -> float:
        t = time.perf_counter()
        rows, errors = predict.predict_slides(slides, predict.PredictSettings(checkpoint=str(ckpt),
                                                                              out_dir=str(out)))
        assert len(rows) == len(slides) and not errors, errors
        return time.perf_counter() - t

    def counting(fd):
        n_fsync[-1] += 1
        return real_fsync(fd)

    predict.predict_slides(slides[:1], predict.PredictSettings(checkpoint=str(ckpt), out_dir=str(work / "warm")))
    for r in range(args.rounds):
        for mode in (("fsync", "no fsync") if r % 2 == 0 else ("no fsync", "fsync")):
            out = work / f"out-{r}-{mode.replace(' ', '-')}"
            n_fsync.append(0)
            atomic.os.fsync = counting if mode == "fsync" else (lambda fd: None)
            try:
                os.sync()
                times[f"predict, {mode}"].append(run(out))
            finally:
                atomic.os.fsync = real_fsync
            for check in ((True, False) if r % 2 == 0 else (False, True)):
                predict.outputs_match = real_match if check else (lambda out_dir, digests: bool(digests))
                try:
                    times["rerun, digests checked" if check else "rerun, not checked"].append(run(out))
                finally:
                    predict.outputs_match = real_match
            shutil.rmtree(out)
    n = len(slides)
    print(f"{n} slides of 4096 x 3072, demo model; {args.rounds} rounds; work folder {work}")
    print(f"fsync calls per predicted slide: {max(n_fsync) / n:.1f}")
    print(f"{'':24}  {'median s':>9}  {'ms/slide':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:24}  {m:9.2f}  {1000 * m / n:9.1f}")
    a, b = statistics.median(times["predict, fsync"]), statistics.median(times["predict, no fsync"])
    c, d = statistics.median(times["rerun, digests checked"]), statistics.median(times["rerun, not checked"])
    print(f"fsync costs {1000 * (a - b) / n:+.1f} ms/slide ({100 * (a - b) / b:+.1f} %); "
          f"the digest check {1000 * (c - d) / n:+.1f} ms/slide on a rerun")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
