"""``ats-wsi predict``: classify slides with a checkpoint; maps, overlays, CSVs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import HelpFormatter, check_device, error, positive_int, progress_bar


def register(sub) -> None:
    """Add ``predict`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("predict", help="classify slides with a checkpoint; maps, overlays, CSVs",
                       formatter_class=HelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="average K samplings per slide (one attention map, K draws)")
    p.add_argument("--n-patches", type=positive_int, help="patches per sampling (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="top-n cells instead of sampling")
    p.add_argument("--io-threads", type=int, default=2, help="tile-decoding threads per slide")
    p.add_argument("--torch-threads", type=positive_int, default=1,
                   help="torch threads per slide (as on dask workers); results are "
                        "equal bit for bit only between runs with the same value")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.4", help="OME-Zarr version of the maps")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask.distributed scheduler")
    where.add_argument("--workers", type=positive_int, help="start a local dask cluster with N worker processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _client(args):
    """A dask client for --scheduler / --workers, or None (in process)."""
    if not args.scheduler and not args.workers:
        return None, None
    from distributed import Client, LocalCluster

    if args.scheduler:
        return Client(args.scheduler), None
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def run(args: argparse.Namespace) -> int:
    """Predict every slide; exit 1 if any failed (listed on stderr and in errors.csv)."""
    from ..classifier import load_model
    from ..run.predict import PredictSettings, predict_slides
    from ..slide import find_slides

    bad = check_device("predict", args.device)
    if bad:
        return error(bad)
    slides = find_slides(args.slides)
    if not slides:
        return error("ats-wsi predict: no slides found")
    load_model(args.checkpoint)  # a bad checkpoint fails here, before a cluster is started
    settings = PredictSettings(checkpoint=args.checkpoint, out_dir=args.out, samples=args.samples,
                               n_patches=args.n_patches, device=args.device, seed=args.seed,
                               deterministic=args.deterministic, workers=args.io_threads,
                               ngff_version=args.ngff, torch_threads=args.torch_threads)
    bar = progress_bar(len(slides), "predict", "slide", enabled=not args.no_progress)

    def progress(name, status):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{name}: {status}")

    client, cluster = _client(args)
    try:
        rows, errors = predict_slides(slides, settings, executor=client, progress=progress)
    finally:
        for thing in (bar, client, cluster):
            if thing is not None:
                thing.close()
    out = Path(args.out)
    print(f"{len(rows)} slide(s) predicted -> {out / 'predictions.csv'}")
    if errors:
        print(f"{len(errors)} slide(s) failed -> {out / 'errors.csv'}", file=sys.stderr)
        for e in errors:
            print(f"  {e['slide']}: {e['error']}: {e['message']}", file=sys.stderr)
        return 1
    return 0
