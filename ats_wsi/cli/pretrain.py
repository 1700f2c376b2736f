"""``ats-wsi pretrain``: train a patch encoder on a cohort's unlabelled tissue (SimCLR) and export it."""
from __future__ import annotations

import argparse
import sys

from ._common import HelpFormatter, positive_int, progress_bar

EPILOG = """\
Then train attention sampling on the frozen encoder (its features cached):
  ats-wsi train MANIFEST --out run --feature-net OUT/encoder.pt2 --feature-spec OUT/spec.json \\
      --freeze-features --feature-cache OUT/cache
Use the --mpp and --patch-size you will train with (ats-wsi train's --patch-mpp, --patch-size).
"""


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="train a patch encoder on the cohort's tissue without labels (SimCLR)",
                       description="Read random tissue patches of a manifest's training slides (labels are "
                                   "never read), train a small CNN with SimCLR, and write OUT/encoder.pt2, "
                                   "OUT/spec.json and OUT/pretrain.json.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    from ..encoders.simclr import SimCLRSettings  # (train's register imports it too)

    p.add_argument("manifest", help="CSV/TSV with a path column (split and mpp columns honoured)")
    p.add_argument("--out", required=True, help="folder for encoder.pt2, spec.json and pretrain.json")
    p.add_argument("--split", default="train", help="the split whose slides are read ('all': every row)")
    p.add_argument("--patches", type=positive_int, default=2048, help="random tissue patches read")
    p.add_argument("--balance", type=float, default=1.0, metavar="SHARE",
                   help="share of the patches drawn colour-balanced (every tissue colour about equally often, so "
                        "that rare tissue is in the pool) instead of uniformly over tissue")
    p.add_argument("--mpp", type=float, default=0.5, help="µm/px of the patches (train's --patch-mpp)")
    p.add_argument("--patch-size", type=positive_int, default=128, help="patch side in px (train's --patch-size)")
    p.add_argument("--steps", type=positive_int, default=SimCLRSettings().steps, help="SimCLR training steps")
    p.add_argument("--batch", type=positive_int, default=64, help="patches per step (2 views each)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (Adam, warm-up then cosine)")
    p.add_argument("--dim", type=positive_int, default=128, help="feature dimension D")
    p.add_argument("--seed", type=int, default=0, help="seed of the patches drawn and of the training")
    p.add_argument("--workers", type=positive_int, default=2, help="threads that read a slide's patches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def pretrain_with_bars(manifest, out, settings, *, show: bool) -> dict:
    """:func:`ats_wsi.run.pretrain.pretrain` with a progress bar for the slides read and one for the steps."""
    from ..run.pretrain import pretrain

    bars: dict[str, object] = {}

    def on_slide(done: int, total: int) -> None:
        if "read" not in bars:
            bars["read"] = progress_bar(total, "read patches", "slide", show)
        if bars["read"] is not None:
            bars["read"].update(1)

    def on_step(step: int, loss: float) -> None:
        if "train" not in bars:
            bars["train"] = progress_bar(settings.simclr.steps, "SimCLR", "step", show)
        bar = bars["train"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        return pretrain(manifest, out, settings, on_slide=on_slide, on_step=on_step)
    finally:
        for bar in bars.values():
            if bar is not None:
                bar.close()


def run(args: argparse.Namespace) -> int:
    from ..encoders.simclr import SimCLRSettings
    from ..run.pretrain import PretrainSettings

    settings = PretrainSettings(
        n_patches=args.patches, balance=args.balance, mpp=args.mpp, patch_px=args.patch_size,
        split=None if args.split.lower() == "all" else args.split, workers=args.workers,
        simclr=SimCLRSettings(steps=args.steps, batch=args.batch, lr=args.lr, dim=args.dim, seed=args.seed))
    result = pretrain_with_bars(args.manifest, args.out, settings, show=not args.no_progress)
    rec = result["training"]
    print(f"SimCLR on {rec['patches']} patches of {len(result['slides'])} slides: loss "
          f"{rec['loss_first10']:.3f} -> {rec['loss_last10']:.3f} (chance {rec['chance_loss']:.3f}), "
          f"{result['read_seconds']:.0f} s reading, {rec['seconds']:.0f} s training")
    print(f"encoder: {result['encoder']}\nspec:    {result['spec']}")
    print(EPILOG.splitlines()[0], file=sys.stderr)
    return 0
