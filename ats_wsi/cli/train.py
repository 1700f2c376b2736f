"""``ats-wsi train``: train an attention-sampling slide classifier from a manifest."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ._common import HelpFormatter, check_device, error, positive_int

_CONFIG_FLAGS = ("attention_net", "feature_net", "feature_dim", "n_classes", "n_patches", "patch_size",
                 "patch_level", "replace", "entropy")


def register(sub) -> None:
    """Add ``train`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("train", help="train an attention-sampling slide classifier", formatter_class=HelpFormatter)
    p.add_argument("manifest", help="CSV with columns path,label[,split]")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv")
    p.add_argument("--config", help="JSON file of model settings (flags below override it)")
    g = p.add_argument_group("model (default: the config file's, else ModelConfig's)")
    g.add_argument("--attention-net", help="attention net name (ats_wsi.nets), default attention-small")
    g.add_argument("--feature-net", help="feature net name, e.g. feature-small, feature-medium, timm:resnet18")
    g.add_argument("--feature-dim", type=int)
    g.add_argument("--classes", type=int, dest="n_classes")
    g.add_argument("--n-patches", type=positive_int)
    g.add_argument("--patch-size", type=int, help="patch side in pixels of --patch-level")
    g.add_argument("--patch-level", type=int)
    low = g.add_mutually_exclusive_group()
    low.add_argument("--low-downsample", type=float, help="attention input resolution as a downsample")
    low.add_argument("--low-mpp", type=float, help="attention input resolution in µm/px")
    g.add_argument("--replace", action=argparse.BooleanOptionalAction, default=None,
                   help="sample with replacement (default: without)")
    g.add_argument("--entropy", type=float, help="entropy regulariser weight")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=10)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--attention-lr", type=float, default=None,
                   help="separate learning rate for the attention net (default: --lr)")
    g.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule over the epochs")
    g.add_argument("--batch-size", type=positive_int, default=4)
    g.add_argument("--device", default="cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--io-threads", type=int, default=2, help="tile-decoding threads")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def model_config(args: argparse.Namespace):
    """The ModelConfig of ``--config`` with the model flags applied over it."""
    from ..classifier import ModelConfig

    base = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"ats-wsi train: cannot read --config {args.config}: {exc}")
        base = base.get("model", base)
    for key in _CONFIG_FLAGS:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.low_downsample is not None:
        base.update(low_downsample=args.low_downsample, low_mpp=None)
    if args.low_mpp is not None:
        base.update(low_mpp=args.low_mpp, low_downsample=None)
    return ModelConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    """Train, printing one line per epoch."""
    from ..classifier import build_model
    from ..run.train import TrainSettings, train

    bad = check_device("train", args.device)
    if bad:
        return error(bad)
    config = model_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes under torchrun
    if args.batch_size % world:
        return error(f"ats-wsi train: --batch-size {args.batch_size} must be a multiple of the {world} "
                     f"processes (it is the total batch)")
    if not args.resume:  # (on resume the checkpoint's config is used)
        try:
            build_model(config)  # unknown net names or arguments fail here, with their message
        except (ValueError, TypeError, ImportError) as exc:
            return error(f"ats-wsi train: bad model settings: {exc}")
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


__all__ = ["register", "run", "model_config"]
