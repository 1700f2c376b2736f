"""The ``demo``, ``train`` and ``predict`` sub-commands of ``ats-wsi``.

Argument parsing and printing live here (with :mod:`ats_wsi.cli`); the work
is done by :mod:`ats_wsi.run.train`, :mod:`ats_wsi.run.predict` and
:mod:`ats_wsi.run.demo`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (so that a bad value is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub) -> None:
    """Add the run commands to the ``ats-wsi`` sub-parser."""
    p = sub.add_parser("demo", help="end-to-end demo on synthetic slides (README command one)")
    p.add_argument("--out", default="ats-wsi-demo", help="folder for slides, run and results (default: %(default)s)")
    p.add_argument("--slides", type=int, default=48, help="number of synthetic slides (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (not accurate)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train an attention-sampling slide classifier")
    p.add_argument("manifest", help="CSV with columns path,label[,split]")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv")
    p.add_argument("--config", help="JSON file of model settings (flags below override it)")
    g = p.add_argument_group("model")
    g.add_argument("--attention-net", help="attention net name (ats_wsi.nets), default attention-small")
    g.add_argument("--feature-net", help="feature net name, e.g. feature-small, feature-medium, timm:resnet18")
    g.add_argument("--feature-dim", type=int)
    g.add_argument("--classes", type=int, dest="n_classes")
    g.add_argument("--n-patches", type=_positive_int)
    g.add_argument("--patch-size", type=int, help="patch side in pixels of --patch-level")
    g.add_argument("--patch-level", type=int)
    low = g.add_mutually_exclusive_group()
    low.add_argument("--low-downsample", type=float, help="attention input resolution as a downsample")
    low.add_argument("--low-mpp", type=float, help="attention input resolution in µm/px")
    g.add_argument("--replace", action=argparse.BooleanOptionalAction, default=None,
                   help="sample with replacement (default: without)")
    g.add_argument("--entropy", type=float, help="entropy regulariser weight")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=10)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--attention-lr", type=float, default=None,
                   help="separate learning rate for the attention net (default: --lr)")
    g.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule over the epochs")
    g.add_argument("--batch-size", type=_positive_int, default=4)
    g.add_argument("--device", default="cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--io-threads", type=int, default=2, help="tile-decoding threads")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="classify slides with a checkpoint; maps, overlays, CSVs")
    p.add_argument("checkpoint")
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--samples", type=_positive_int, default=1, help="average K samplings per slide")
    p.add_argument("--n-patches", type=_positive_int, help="patches per sampling (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="top-n cells instead of sampling")
    p.add_argument("--io-threads", type=int, default=2, help="tile-decoding threads per slide")
    p.add_argument("--torch-threads", type=_positive_int, default=1,
                   help="torch threads per slide (default: %(default)s, as on dask workers); results are "
                        "equal bit for bit only between runs with the same value")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.4", help="OME-Zarr version of the maps")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask.distributed scheduler")
    where.add_argument("--workers", type=_positive_int, help="start a local dask cluster with N worker processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- train


def _model_config(args):
    from .config import ModelConfig

    base = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"ats-wsi train: cannot read --config {args.config}: {exc}")
        base = base.get("model", base)
    for key in ("attention_net", "feature_net", "feature_dim", "n_classes", "n_patches", "patch_size",
                "patch_level", "replace", "entropy"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.low_downsample is not None:
        base.update(low_downsample=args.low_downsample, low_mpp=None)
    if args.low_mpp is not None:
        base.update(low_mpp=args.low_mpp, low_downsample=None)
    return ModelConfig.from_dict(base)


def cmd_train(args) -> int:
    from .config import build_model
    from .train import TrainSettings, train

    config = _model_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes under torchrun
    if args.batch_size % world:
        print(f"ats-wsi train: --batch-size {args.batch_size} must be a multiple of the {world} processes "
              f"(it is the total batch)", file=sys.stderr)
        return 2
    if not args.resume:  # (on resume the checkpoint's config is used)
        try:
            build_model(config)  # unknown net names or arguments fail here, with their message
        except (ValueError, TypeError, ImportError) as exc:
            print(f"ats-wsi train: bad model settings: {exc}", file=sys.stderr)
            return 2
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                             seed=args.seed, workers=args.io_threads, attention_lr=args.attention_lr,
                             schedule=args.schedule)

    def report(m):
        print(f"epoch {m.epoch:3d}  loss {m.train_loss:.4f}  acc {m.train_acc:.3f}  "
              f"val_loss {m.val_loss:.4f}  val_acc {m.val_acc:.3f}  {m.seconds:.1f}s", flush=True)

    train(args.manifest, args.out, config, settings, resume=args.resume, progress=not args.no_progress,
          on_epoch=report)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process speaks
        print(f"checkpoints in {Path(args.out) / 'checkpoints'}; last: {Path(args.out) / 'last.pt'}")
    return 0


# --------------------------------------------------------------------------- predict


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


def cmd_predict(args) -> int:
    from ..cli import expand_slide_args
    from .checkpoint import load_checkpoint
    from .predict import PredictSettings, predict_slides

    slides = expand_slide_args(args.slides)
    if not slides:
        print("ats-wsi predict: no slides found", file=sys.stderr)
        return 2
    load_checkpoint(args.checkpoint)  # a bad checkpoint fails here, before a cluster is started
    settings = PredictSettings(checkpoint=args.checkpoint, out_dir=args.out, samples=args.samples,
                               n_patches=args.n_patches, device=args.device, seed=args.seed,
                               deterministic=args.deterministic, workers=args.io_threads,
                               ngff_version=args.ngff, torch_threads=args.torch_threads)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(slides), desc="predict", unit="slide", dynamic_ncols=True)

    def progress(name, status):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{name}: {status}")

    client, cluster = _client(args)
    try:
        rows, errors = predict_slides(slides, settings, executor=client, progress=progress)
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    out = Path(args.out)
    print(f"{len(rows)} slide(s) predicted -> {out / 'predictions.csv'}")
    if errors:
        print(f"{len(errors)} slide(s) failed -> {out / 'errors.csv'}", file=sys.stderr)
        for e in errors:
            print(f"  {e['slide']}: {e['error']}: {e['message']}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    from .demo import DemoSettings, format_report, run_demo

    settings = DemoSettings(out=args.out, n_slides=args.slides, seed=args.seed, device=args.device,
                            quick=args.quick)
    if args.epochs is not None:
        settings.epochs = args.epochs
    report = run_demo(settings, log=lambda msg: print(msg, flush=True))
    print(format_report(report))
    return 0
