"""Batch prediction, or training (``--train``), with and without read-ahead (issue 30).

Writes N synthetic JPEG slides (once, into benchmarks/_data/read_ahead/, git-ignored), saves the demo's
model (seeded, untrained) with ``--n-patches`` patches of ``--patch`` px, and predicts all slides with
``predict_slides`` at each ``--read-ahead`` depth, the depths interleaved round after round (a shared
machine's load then falls on every depth alike). Each run starts in a fresh results folder. Prints per
depth: the median seconds per slide, the encoder busy fraction of ``run.json`` (encoder seconds / wall
seconds) and the ratio of seconds per slide to read-ahead 0's; checks that every depth gave the same
probabilities.

    python benchmarks/read_ahead.py [--slides 8] [--size 4096] [--n-patches 48] [--patch 128]
                                    [--depths 0 1 2] [--rounds 3] [--device cpu] [--torch-threads 1]

With ``--train`` it trains the same model instead (``--epochs``, ``--batch-size``), without and with
``TrainSettings.read_ahead`` (the next slide of a batch prepared in a background thread:
:mod:`ats_wsi.run.train_ahead`), interleaved round after round, and prints per setting the median
seconds per epoch, the seconds the training thread waited for patches, the slides read ahead per
epoch and the ratio to the serial run's seconds; checks that both gave the same weights bit for bit.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data" / "read_ahead"


def ensure_slides(n: int, size: int) -> list[Path]:
    """``n`` synthetic slides of ``size`` x ``size * 3 // 4`` pixels (written once)."""
    from ats_wsi.data.synthetic import write_synthetic_slide

    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = DATA / f"slide-{size}-{i:02d}.svs"
        if not path.is_file():
            write_synthetic_slide(path, size, size * 3 // 4, n_lesions=i % 2, seed=100 + i)
        paths.append(path)
    return paths


def save_model(folder: Path, n_patches: int, patch: int) -> Path:
    """The demo's model config, seeded and untrained, as a checkpoint."""
    from ats_wsi.classifier import build_model, save_checkpoint
    from ats_wsi.run.demo import demo_model_config

    config = demo_model_config()
    config.n_patches, config.patch_size = n_patches, patch
    torch.manual_seed(0)
    path = folder / "model.pt"
    save_checkpoint(path, build_model(config))
    return path


def run_once(slides, checkpoint, out: Path, depth: int, args) -> tuple[dict, list]:
    """One batch prediction: ``(run.json's summary, each slide's probabilities)``."""
    from ats_wsi.run.predict import PredictSettings, predict_slides

    summary: dict = {}
    settings = PredictSettings(checkpoint=str(checkpoint), out_dir=str(out), device=args.device, read_ahead=depth,
                               torch_threads=args.torch_threads, workers=args.io_threads, samples=args.samples)
    rows, errors = predict_slides(slides, settings, on_summary=summary.update)
    if errors:
        raise SystemExit(f"read-ahead {depth}: {len(errors)} slide(s) failed: {errors[0]['message']}")
    return summary, [r["p1"] for r in rows]


def train_once(slides, out: Path, read_ahead: bool, args) -> tuple[list, dict]:
    """One training run of ``args.epochs`` epochs: ``(its EpochMetrics, its last weights)``."""
    from ats_wsi.classifier import read_checkpoint
    from ats_wsi.run.demo import demo_model_config
    from ats_wsi.run.train import TrainSettings, train

    config = demo_model_config()
    config.n_patches, config.patch_size = args.n_patches, args.patch
    manifest = out.parent / "manifest.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():  # lesions on the odd slides (ensure_slides): label 1
        manifest.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(slides)))
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, device=args.device, workers=args.io_threads,
                             check_tiles=0, read_ahead=read_ahead)
    history = train(manifest, out, config, settings)
    return history, read_checkpoint(out / "last.pt")["state_dict"]


def main_train(args) -> None:
    """``--train``: epoch seconds without and with read-ahead, interleaved; a ratio table."""
    torch.set_num_threads(args.torch_threads)
    slides = ensure_slides(args.slides, args.size)
    runs = {False: [], True: []}
    weights = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_once(slides[:2], Path(tmp) / "warm" / "run", False, args)  # imports, first-call costs
        for r in range(args.rounds):
            for ahead in ((False, True) if r % 2 == 0 else (True, False)):
                history, weights[ahead] = train_once(slides, Path(tmp) / f"r{r}-{ahead}" / "run", ahead, args)
                runs[ahead] += history
    same = all(torch.equal(weights[True][k], weights[False][k]) for k in weights[False])
    print(f"{len(slides)} slides of {args.size}x{args.size * 3 // 4} px, {args.n_patches} patches of {args.patch}² px, "
          f"batch {args.batch_size}, {args.epochs} epoch(s) x {args.rounds} rounds (median over epochs), device "
          f"{args.device}, torch threads {args.torch_threads}, io threads {args.io_threads}; "
          f"{platform.processor() or platform.machine()}")
    serial = statistics.median(m.seconds for m in runs[False])
    print(f"{'read-ahead':>10}  {'s/epoch':>8}  {'read wait s':>11}  {'slides ahead':>12}  {'vs serial':>9}")
    for ahead in (False, True):
        s = statistics.median(m.seconds for m in runs[ahead])
        wait = statistics.median(m.read_wait for m in runs[ahead])
        used = statistics.median(m.read_ahead_slides for m in runs[ahead])
        print(f"{'on' if ahead else 'off':>10}  {s:8.3f}  {wait:11.3f}  {used:12g}  {serial / s:8.2f}x")
    print(f"same weights bit for bit: {same}")
    if not same:
        raise SystemExit("read-ahead changed what was learnt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096, help="slide width in pixels (height 3/4 of it)")
    parser.add_argument("--n-patches", type=int, default=48)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--io-threads", type=int, default=1)
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--train", action="store_true", help="time training epochs instead of prediction")
    parser.add_argument("--epochs", type=int, default=2, help="--train: epochs per run")
    parser.add_argument("--batch-size", type=int, default=4, help="--train: slides per optimiser step")
    args = parser.parse_args()
    if args.train:
        return main_train(args)
    if 0 not in args.depths:
        args.depths = [0, *args.depths]
    slides = ensure_slides(args.slides, args.size)
    seconds = {d: [] for d in args.depths}
    busy = {d: [] for d in args.depths}
    probabilities = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_model(Path(tmp), args.n_patches, args.patch)
        run_once(slides[:1], checkpoint, Path(tmp) / "warm-up", 0, args)  # imports, first-call costs
        for r in range(args.rounds):
            for depth in (args.depths if r % 2 == 0 else args.depths[::-1]):  # interleaved, alternating order
                t = time.perf_counter()
                summary, probs = run_once(slides, checkpoint, Path(tmp) / f"r{r}-d{depth}", depth, args)
                seconds[depth].append((time.perf_counter() - t) / len(slides))
                busy[depth].append(summary["encoder_busy"])
                probabilities.setdefault(depth, probs)
    same = all(probabilities[d] == probabilities[0] for d in args.depths)
    serial = statistics.median(seconds[0])
    print(f"{len(slides)} slides of {args.size}x{args.size * 3 // 4} px, {args.n_patches} patches of "
          f"{args.patch}² px, device {args.device}, torch threads {args.torch_threads}, io threads "
          f"{args.io_threads}, {args.rounds} rounds (median); {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads available")
    print(f"{'read-ahead':>10}  {'s/slide':>8}  {'encoder busy':>12}  {'vs serial':>9}")
    table = []
    for depth in args.depths:
        s, b = statistics.median(seconds[depth]), statistics.median(busy[depth])
        table.append({"read_ahead": depth, "seconds_per_slide": s, "encoder_busy": b, "ratio": serial / s,
                      "rounds": seconds[depth]})
        print(f"{depth:>10}  {s:8.3f}  {b:12.0%}  {serial / s:8.2f}x")
    print(f"same probabilities at every depth: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "same": same}, indent=1))
    if not same:
        raise SystemExit("the depths gave different probabilities")


if __name__ == "__main__":
    main()
