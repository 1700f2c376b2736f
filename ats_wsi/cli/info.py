"""``ats-wsi info``: a table of each slide's format, backend, size, levels, µm/px, magnification, tiles;
with ``--check``, a sample of tiles decoded; for a checkpoint (``.pt``), what model it holds."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import AtsError
from ._common import HelpFormatter, format_table

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
CHECK_TILES = 64
"""Tiles ``--check`` decodes per slide when no N is given."""


def register(sub) -> None:
    """Add ``info`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("info", help="describe slides (format, backend, size, levels, mpp, tiles) or a checkpoint",
                       formatter_class=HelpFormatter)
    p.add_argument("slides", nargs="*", help="slide files, folders or glob patterns; or checkpoints (.pt) of "
                                             "`ats-wsi train`: task, classes, µm/px, encoder, epoch, metrics")
    p.add_argument("--backend", default="auto", choices=["auto", "openslide", "tifffile", "zarr"],
                   help="slide reader (auto: chosen per format)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px of the slides, overriding their metadata "
                                             "(shown as 'given'; for files that store none)")
    p.add_argument("--check", nargs="?", action=CheckTiles, const=CHECK_TILES, default=0, metavar="N",
                   help=f"also decode N level-0 tiles per slide, spread over the slide (default N: {CHECK_TILES}; at "
                        "most 30 s per slide); a slide with a broken tile is listed as unreadable. Before or "
                        "after the slides: `info --check SLIDE` and `info SLIDE --check` alike")
    p.set_defaults(func=run, check_slides=())


class CheckTiles(argparse.Action):
    """``--check [N]``: N tiles per slide. A value that is not a whole number is a slide
    (``info --check SLIDE``), kept with the number of slides named before it so that the
    slides stay in the order given."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            tiles = int(value)
        except ValueError:
            tiles = CHECK_TILES
            before = len(getattr(namespace, "slides", None) or ())
            namespace.check_slides = (*namespace.check_slides, (before, value))
        namespace.check = tiles


def _given_slides(args: argparse.Namespace) -> list[str]:
    """The slides in the order given, with one that followed ``--check`` put back in its place."""
    slides = list(args.slides)
    for before, value in reversed(args.check_slides):
        slides.insert(before, value)
    return slides


def _slide_row(path, args) -> list[str]:
    from ..slide import open_slide
    from ..slide.resolution import format_magnification, objective_power
    from ..slide.tilecheck import check_tiles

    with open_slide(path, backend=args.backend, mpp=args.mpp) as s:
        w, h = s.dimensions
        mpp = "-" if s.mpp is None else f"{s.mpp:.4g}" + (" (given)" if s.mpp_given else "")
        row = [str(path), s.format, s.backend, f"{w} x {h}", str(s.level_count),
               ",".join(f"{d:g}" for d in s.level_downsamples), mpp, format_magnification(*objective_power(s)),
               "x".join(str(v) for v in s.tile_size(0))]
        if args.check:
            done = check_tiles(s, 0, n=args.check, seconds=30.0)
            if done.error:
                from ..errors import CorruptSlideError

                raise CorruptSlideError(path, done.error)
            row.append(f"{done.tiles} of {done.total} ok")
        return row


def run(args: argparse.Namespace) -> int:
    """Print the table; exit 1 if any slide could not be read, 2 if none was found."""
    from ..slide import find_slides

    if args.mpp is not None and not 0 < args.mpp < float("inf"):
        print(f"ats-wsi info: --mpp must be a number > 0, got {args.mpp}", file=sys.stderr)
        return 2
    if args.check < 0:
        print(f"ats-wsi info: --check must be >= 0 tiles, got {args.check}", file=sys.stderr)
        return 2
    given = _given_slides(args)
    if not given:
        print("ats-wsi info: give at least one slide, folder, glob pattern or checkpoint", file=sys.stderr)
        return 2
    checkpoints = [a for a in given if Path(a).suffix.lower() in CHECKPOINT_SUFFIXES and Path(a).is_file()]
    status = _checkpoints(checkpoints) if checkpoints else 0
    inputs = [a for a in given if a not in checkpoints]
    if not inputs:
        return status
    header = ["slide", "format", "backend", "size (w x h)", "levels", "downsamples", "mpp", "magnification", "tile"]
    header += ["tiles decoded"] if args.check else []
    rows, errors = [], []
    for path in find_slides(inputs):
        try:
            rows.append(_slide_row(path, args))
        except AtsError as exc:
            errors.append((path, exc))
    if rows:
        print(format_table(rows, header))
    if errors:
        print(f"\n{len(errors)} slide(s) could not be read:", file=sys.stderr)
        for path, exc in errors:
            print(f"  {path}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    if not rows and not errors:
        print("no slides found", file=sys.stderr)
        return 2
    return 1 if errors or status else 0


def _checkpoints(paths) -> int:
    """Describe each checkpoint; 1 if any cannot be read."""
    status = 0
    for i, path in enumerate(paths):
        try:
            lines = checkpoint_lines(path)
        except AtsError as exc:
            print(f"ats-wsi info: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(("\n" if i else "") + "\n".join(lines))
    return status


def checkpoint_lines(path) -> list[str]:
    """What a checkpoint holds, one ``key: value`` line each: the task, classes, the µm/px of the
    low view and the patches, the feature net or encoder (with its weights' hash), epoch, metrics."""
    from ..classifier.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    c = payload.get("config") or {}
    names = c.get("class_names") or [str(k) for k in range(int(c.get("n_classes", 2)))]
    low = (f"{c['low_mpp']:g} µm/px" if c.get("low_mpp") else
           f"downsample {c.get('low_downsample')} of level 0 (µm/px follows each slide)")
    patch = (f"{c.get('patch_size')} px at {c['patch_mpp']:g} µm/px" if c.get("patch_mpp") else
             f"{c.get('patch_size')} px of level {c.get('patch_level', 0)} (µm/px follows each slide)")
    spec = c.get("feature_spec")
    if spec:
        sha = spec.get("weights_sha256")
        encoder = (f"{spec.get('name')} ({spec.get('source')}, {spec.get('mpp', '?')} µm/px, "
                   f"{'frozen' if c.get('feature_frozen') else 'trained'}; weights sha256 "
                   f"{sha[:16] + '...' if sha else 'not recorded'})")
    else:
        encoder = f"{c.get('feature_net')} (trained with the model, {c.get('feature_dim')} features)"
    m = payload.get("metrics") or {}

    def num(key):
        v = m.get(key)
        return "n/a" if v is None or v != v else f"{float(v):.4g}"

    return [f"checkpoint: {path}",
            f"task: slide classification by attention sampling ({c.get('sampler', 'attention')} draws of "
            f"{c.get('n_patches')} patches in training, {c.get('predict_patches') or c.get('n_patches')} "
            f"in prediction)",
            f"classes: {len(names)}: {', '.join(names)}",
            f"low view: {low}", f"patches: {patch}", f"features: {encoder}",
            f"epoch: {payload.get('epoch')}",
            f"validation: loss {num('val_loss')}, accuracy {num('val_acc')}, ROC AUC {num('val_auc')}",
            *_decision(payload, names),
            f"written by: ats-wsi {payload.get('ats_wsi_version', '?')}, torch {payload.get('torch_version', '?')}"]


def _decision(payload: dict, names) -> list[str]:
    """``predicted: NAME when P(NAME) >= T (Youden's J on the validation slides), else NAME`` for a two-class
    checkpoint with a validation threshold (what ``predict`` decides at); nothing otherwise."""
    from ..classifier import ModelConfig
    from ..classifier.checkpoint import stored_threshold

    try:
        threshold = stored_threshold(payload, ModelConfig.from_dict(payload["config"]))
    except Exception:  # noqa: BLE001 - a config this version cannot read: the lines above already say what it is
        return []
    if threshold is None or len(names) != 2:
        return []
    return [f"predicted: {names[1]} when P({names[1]}) >= {threshold:.3f} (Youden's J on the validation slides), "
            f"else {names[0]}"]
