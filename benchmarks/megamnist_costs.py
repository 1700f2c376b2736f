#!/usr/bin/env python
"""Megapixel MNIST: attention sampling against a full-resolution CNN, cost per sample and accuracy.

Reproduces the megapixel-MNIST experiment of Katharopoulos & Fleuret (ICML
2019, arXiv 1905.03711) with this project's own ``AttentionSampler`` (the
network of ``examples/megamnist.py``):

- attention sampling: an attention net looks at a 1/10 average-pooled view of
  the image, 10 patches of 32 x 32 are drawn from its attention without
  replacement and read at full resolution, a small conv net turns each into a
  feature, and the unbiased expectation averages them; an entropy
  regulariser keeps the attention from collapsing early;
- baseline: the SAME conv blocks run over the whole full-resolution image,
  followed by global average pooling (the dense counterpart of averaging
  patch features), a batch norm and a linear head.

It prints one table (test error, seconds per training sample for forward +
backward, peak memory per training sample) for both methods next to the
paper's figures, writes ``summary.json`` and a figure (image, attention map,
sampled patches) into ``--out``. Both costs are measured in the same run, in
a fresh process per method (see ``megamnist_measure.measure_cost``).

Attention sampling's error rises again some epochs after its attention has
found the digits (mass leaks onto the background; docs/megamnist.md), so
full runs keep the best epoch on validation images (``--n-val``) and divide
the learning rate by 10 on a plateau (``--patience``).

    python benchmarks/megamnist_costs.py --quick                 # about a minute, for CI
    python benchmarks/megamnist_costs.py --setting easy --n-val 500 --patience 3 --parallel --threads 1 \\
        --baseline-epochs 3 --out runs/megamnist-easy    # the full easy run (docs/megamnist.md)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

import torch

from ats_wsi.data.megamnist import MegaMNIST
from megamnist_figures import save_attention_figure, save_data_figure
from megamnist_measure import measure_cost
from megamnist_train import (
    METHOD_NAMES,
    METHODS,
    _save_state,
    _train_and_save,
    attention_on_digits,
    build_model,
    make_datasets,
    train,
)

# The paper's megapixel-MNIST figures (1500 x 1500 images, 10 patches). The
# stored copies of the paper that this project could search give only its
# abstract ("reduce computation and memory footprint by an order of
# magnitude for the same accuracy"), not the table's numbers: fill them in
# from Table 1 of arXiv 1905.03711 when a copy is at hand. ``None`` prints
# as "n/a"; never guess.
PAPER = {
    "source": "Katharopoulos & Fleuret, ICML 2019 (arXiv 1905.03711), megapixel-MNIST table",
    "attention_sampling": {"test_error": None, "seconds_per_sample": None, "peak_memory_per_sample_mb": None},
    "baseline_cnn": {"test_error": None, "seconds_per_sample": None, "peak_memory_per_sample_mb": None},
}


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "error":
        return f"{100 * value:.2f} %"
    if kind == "seconds":
        return f"{1000 * value:.2f} ms"
    return f"{value:.1f} MB"


def format_table(summary: dict) -> str:
    """The one table: this run and the paper, per method."""
    rows = [("method", "trained on", "test error", "time / sample", "peak memory / sample",
             "paper: error", "paper: time", "paper: memory")]
    for method in METHODS:
        ours, paper = summary["methods"][method], summary["paper"][method]
        epochs = ours.get("epochs")
        rows.append((
            METHOD_NAMES[method] + (" (from --init-from)" if ours.get("init_from") and not ours.get("trained_in") else ""),
            "-" if epochs is None else f"{epochs} x {ours.get('n_train')} images"
            + (f" ({ours['trained_in']})" if ours.get("trained_in") else ""),
            "not trained" if epochs == 0 and ours.get("test_error") is None else _fmt(ours.get("test_error"), "error"),
            _fmt(ours.get("seconds_per_sample"), "seconds"),
            _fmt(ours.get("peak_memory_per_sample_mb"), "mb"),
            _fmt(paper["test_error"], "error"),
            _fmt(paper["seconds_per_sample"], "seconds"),
            _fmt(paper["peak_memory_per_sample_mb"], "mb"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    a, b = summary["methods"]["attention_sampling"], summary["methods"]["baseline_cnn"]
    ratio = []
    if a.get("seconds_per_sample") and b.get("seconds_per_sample"):
        ratio.append(f"time {b['seconds_per_sample'] / a['seconds_per_sample']:.1f}x")
    if a.get("peak_memory_per_sample_mb") and b.get("peak_memory_per_sample_mb"):
        ratio.append(f"memory {b['peak_memory_per_sample_mb'] / a['peak_memory_per_sample_mb']:.1f}x")
    cfg = summary["config"]
    head = (f"Megapixel MNIST, {cfg['setting']} ({cfg['width']} x {cfg['height']}, {cfg['n_noise']} clutter patterns), "
            f"{cfg['n_train']} train / {cfg['n_test']} test images, device {cfg['device']}")
    foot = [f"attention sampling is cheaper than the baseline by: {', '.join(ratio) or 'n/a'}"]
    if a.get("attention_on_digits") is not None:
        foot.append(f"attention on the digits' cells: {100 * a['attention_on_digits']:.1f} % of the mass; "
                    f"sampled patches holding half a digit or more: {100 * a['patches_on_digits']:.1f} % "
                    "(first 200 test images)")
    foot.append(f"paper: {summary['paper']['source']} (n/a: figures not available to this run, see docs/megamnist.md)")
    return "\n".join([head, *lines, *foot])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", choices=("easy", "hard"), default="easy")
    p.add_argument("--image-size", type=int, default=None, help="square image side overriding the setting's size")
    p.add_argument("--epochs", type=int, default=40, help="attention-sampling epochs")
    p.add_argument("--baseline-epochs", type=int, default=None,
                   help="baseline epochs (default: --epochs); 0 measures its cost without training it")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--baseline-n-train", type=int, default=None, help="baseline training images (default: --n-train)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay-at", type=int, nargs="*", default=[],
                   help="multiply the learning rate by 0.1 after each of these epochs (e.g. 40 50)")
    p.add_argument("--n-val", type=int, default=0,
                   help="validation images (training split, new layouts): keep the best epoch (early stopping)")
    p.add_argument("--patience", type=int, default=0,
                   help="with --n-val: after this many epochs without a better validation error, "
                        "go back to the best state and divide the learning rate by 10")
    p.add_argument("--plateau-below", type=float, default=0.5,
                   help="with --patience: count epochs without progress only once the best validation error is below this")
    p.add_argument("--max-decays", type=int, default=2, help="with --patience: stop after this many decays")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--n-patches", type=int, default=10)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--downsample", type=int, default=10, help="the attention net sees avg_pool(image, this)")
    p.add_argument("--entropy", type=float, default=1e-4,
                   help="entropy regulariser strength (the reference's megapixel-MNIST default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (rendering)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--measure-batch", type=int, default=4, help="batch size of the cost measurement")
    p.add_argument("--measure-steps", type=int, default=5, help="timed steps of the cost measurement (median)")
    p.add_argument("--parallel", action="store_true",
                   help="train the two methods at the same time, one process each (use with --threads 1 on 2 cores)")
    p.add_argument("--eval-every-epoch", action="store_true", help="test error after every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: 112 x 112 'easy' images, 1024 of them, 12 epochs (under a minute)")
    p.add_argument("--out", type=Path, default=Path("megamnist-out"), help="folder for summary.json and the figure")
    p.add_argument("--figure", type=Path, default=None, help="attention figure path (default: OUT/megamnist.png)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start attention sampling from this state dict (e.g. OUT/attention_sampling.pt of an easy run)")
    p.add_argument("--baseline-init-from", type=Path, default=None,
                   help="start the baseline from this state dict; with --baseline-epochs 0 it is only tested")
    p.add_argument("--report", type=Path, default=None,
                   help="only print the table of an earlier run's summary.json (and --paper-* figures), then exit")
    p.add_argument("--data-figure", type=Path, default=None,
                   help="only write a figure of one easy and one hard image to this path, then exit")
    args = p.parse_args(argv)
    if args.measure_batch < 2:
        p.error("--measure-batch must be at least 2 (the baseline's batch norm needs two samples)")
    if args.quick:
        defaults = dict(setting="easy", image_size=112, epochs=12, baseline_epochs=1, n_train=1024,
                        baseline_n_train=256, n_test=200, measure_batch=2, measure_steps=2, threads=1)
        for key, value in defaults.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.data_figure is not None:
        save_data_figure(args.data_figure, args.seed)
        print(f"wrote {args.data_figure}")
        return 0
    if args.report is not None:
        print(format_table(json.loads(args.report.read_text())))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    probe = MegaMNIST(1, args.setting, size=None if args.image_size is None else (args.image_size,) * 2)
    cfg = {
        "setting": args.setting, "image_size": args.image_size, "width": probe.size[0], "height": probe.size[1],
        "n_noise": probe.n_noise, "n_train": args.n_train, "n_test": args.n_test, "batch_size": args.batch_size,
        "lr": args.lr, "lr_decay_at": list(args.lr_decay_at), "n_val": args.n_val, "patience": args.patience,
        "max_decays": args.max_decays, "plateau_below": args.plateau_below, "clip": args.clip, "n_patches": args.n_patches, "patch_size": args.patch_size,
        "downsample": args.downsample, "entropy": args.entropy, "device": args.device, "seed": args.seed,
        "workers": args.workers, "measure_batch": args.measure_batch, "measure_steps": args.measure_steps,
        "eval_every_epoch": args.eval_every_epoch, "no_progress": args.no_progress,
        "threads": torch.get_num_threads(), "quick": args.quick,
    }
    baseline_epochs = args.epochs if args.baseline_epochs is None else args.baseline_epochs
    baseline_n_train = args.n_train if args.baseline_n_train is None else args.baseline_n_train
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = {
        "attention_sampling": (args.epochs, args.n_train, args.init_from),
        "baseline_cnn": (baseline_epochs, baseline_n_train, args.baseline_init_from),
    }
    methods = {}
    models = {}
    if args.parallel:
        # One spawned process per method, each with cfg["threads"] torch threads:
        # on a 2-core machine with --threads 1 both trainings share the wall time.
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(jobs)) as pool:
            pending = {m: pool.apply_async(_train_and_save, (m, cfg, *job, args.out)) for m, job in jobs.items()}
            for method, result in pending.items():
                methods[method] = result.get()
        for method in METHODS:
            models[method] = build_model(method, cfg)
            models[method].load_state_dict(torch.load(args.out / f"{method}.pt", map_location="cpu", weights_only=True))
            models[method].to(torch.device(cfg["device"]))
    else:
        for method, job in jobs.items():
            models[method], methods[method] = train(method, cfg, *job)
            _save_state(models[method], args.out / f"{method}.pt")
    for method in METHODS:
        methods[method].update(measure_cost(method, cfg))

    figure = args.figure or args.out / "megamnist.png"
    _, test_ds = make_datasets(cfg, 1)
    methods["attention_sampling"].update(attention_on_digits(models["attention_sampling"], test_ds, cfg))
    save_attention_figure(models["attention_sampling"], test_ds, 0, figure)
    summary = {"config": cfg, "methods": methods, "paper": PAPER, "figure": str(figure)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"wrote {args.out / 'summary.json'}, the models' state dicts and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
