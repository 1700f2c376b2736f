"""``ats-wsi demo``: synthetic slides -> train -> predict -> report (README command one)."""
from __future__ import annotations

import argparse

from ._common import HelpFormatter, check_device, error, transient_bars


def register(sub) -> None:
    """Add ``demo`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("demo", help="end-to-end demo on synthetic slides (README command one)",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="ats-wsi-demo", help="folder for slides, run and results")
    p.add_argument("--slides", type=int, default=48, help="number of synthetic slides")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the slides, the model and the draws")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, mps")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (not accurate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo, printing its steps and the report."""
    from ..run.demo import DemoSettings, format_report, run_demo

    bad = check_device("demo", args.device)
    if bad:
        return error(bad)
    settings = DemoSettings(out=args.out, n_slides=args.slides, seed=args.seed, device=args.device,
                            quick=args.quick)
    if args.epochs is not None:
        settings.epochs = args.epochs
    report = run_demo(settings, log=lambda msg: print(msg, flush=True), progress=transient_bars())
    print(format_report(report))
    return 0
