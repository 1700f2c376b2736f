"""``ats-wsi predict``: classify slides with a checkpoint; maps, overlays, CSVs."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import _encoder, _exports, _outcomes
from ..errors import OutputLockedError
from ..run.read_ahead import MAX_READ_AHEAD
from ._common import (HelpFormatter, LibraryLog, check_device, error, format_table, int_in, positive_int,
                      progress_bar)

EXIT_LOCKED = 75
"""Exit status when another run holds --out's lock (EX_TEMPFAIL: try again once it has ended)."""


def register(sub) -> None:
    """Add ``predict`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("predict", help="classify slides with a checkpoint; maps, overlays, CSVs",
                       formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of `ats-wsi train` (best.pt, last.pt, ...)")
    p.add_argument("slides", nargs="+", help="slide files, folders, glob patterns, or a manifest (.csv/.tsv with "
                                             "a path column; with labels, metrics are computed)")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--split", help="only the manifest's rows of this split (train, val, test; default: all)")
    p.add_argument("--bootstrap", type=int_in(1, 10**6), default=1000,
                   help="bootstrap resamples of the 95%% intervals in metrics.json (seed 0)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="average K samplings per slide (one attention map, K draws)")
    p.add_argument("--n-patches", type=positive_int,
                   help="patches per sampling (default: the checkpoint's predict_patches, else its n_patches)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (per slide)")
    p.add_argument("--deterministic", action="store_true", help="top-n cells instead of sampling")
    p.add_argument("--sampler", choices=["attention", "uniform"],
                   help="uniform: draw the patches uniformly over tissue instead of from the attention map, "
                        "everything else the same (the random-patch ablation; default: the checkpoint's)")
    p.add_argument("--readout", choices=["head", "top"],
                   help="how a slide's probabilities are read: head (the slide head over the estimate) or top "
                        "(the instance head's most positive drawn patch; needs an instance head; default: the "
                        "checkpoint's, docs/training.md 'The readout')")
    p.add_argument("--io-threads", type=int_in(1, 256), default=2, help="tile-decoding threads per slide")
    p.add_argument("--torch-threads", type=int_in(1, 1024), default=1,
                   help="torch threads per slide (as on dask workers); results are "
                        "equal bit for bit only between runs with the same value")
    p.add_argument("--read-ahead", type=int_in(0, MAX_READ_AHEAD), default=1, metavar="N",
                   help="slides prepared ahead in a background thread (opened, attention map, patches read) while "
                        "the encoder works on the current one; 0: one slide at a time. In process only; results "
                        "do not depend on it, memory grows by N slides' patches")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.4", help="OME-Zarr version of the maps")
    p.add_argument("--geojson", action="store_true",
                   help="also write geojson/NAME.geojson for QuPath (File > Import objects), level-0 pixels: the "
                        "prediction as a classified annotation, the attention map as detection tiles, the "
                        "sampled boxes and the top-attention regions")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask.distributed scheduler")
    where.add_argument("--workers", type=int_in(1, 4 * (os.cpu_count() or 1)),
                       help="start a local dask cluster with N worker processes (at most 4 per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    _register_resolution(p)
    _encoder.register_predict(p)
    _exports.register(p)
    _exports.register_roi(p)
    _outcomes.register(p)
    p.set_defaults(func=run)


def _manifest_columns(args, model) -> tuple[dict[str, float], dict[str, str]]:
    """Slide path -> µm/px and -> region of interest, from the manifests' ``mpp`` and ``roi`` columns."""
    from ..data.manifest import is_manifest, read_cohort

    mpp, roi = {}, {}
    for item in args.slides:
        if is_manifest(item):
            rows = read_cohort(item, classes=model.config.class_names, require_labels=False,
                               task=model.config.task, **_outcomes.columns(args, model)).split(args.split)
            mpp.update({str(r.path): r.mpp for r in rows if r.mpp})
            roi.update({str(r.path): str(r.roi) for r in rows if r.roi})
    return mpp, roi


def _register_resolution(p) -> None:
    """The slides' µm/px where their files store none (issue 16)."""
    g = p.add_argument_group("resolution")
    g.add_argument("--mpp", type=float, help="level-0 µm/px of the slides, overriding their metadata (for files "
                                             "without one; a checkpoint trained at --patch-mpp needs it)")


def _slides_and_labels(args, model) -> tuple[list, list | None, list | None, list | None]:
    """Slides of the inputs, in order, and their labels, slide IDs and splits (each None where no
    manifest gives them)."""
    from ..data.manifest import is_manifest, read_cohort
    from ..errors import ManifestError
    from ..slide import find_slides

    slides, labels, ids, splits, seen = [], [], [], [], set()
    for item in args.slides:
        if is_manifest(item):
            names = model.config.class_names
            cohort = read_cohort(item, classes=names, require_labels=False, task=model.config.task,
                                 **_outcomes.columns(args, model))
            if cohort.class_names and not names:
                raise ManifestError(f"{item}: labels are class names {cohort.class_names}, but the checkpoint "
                                    f"has none; write its labels as class indices 0..{model.config.n_classes - 1}")
            has_split = "split" in cohort.columns
            found = [(r.path, r.label, r.slide_id, r.split if has_split else None) for r in cohort.split(args.split)]
            for r in cohort.split(args.split):
                if r.label is not None and r.label >= model.config.n_classes:
                    raise ManifestError(f"{item}:{r.line}: label {r.label}, but the checkpoint has "
                                        f"{model.config.n_classes} classes")
        else:
            found = [(p, None, None, None) for p in find_slides([item])]
        for path, label, slide_id, split in found:
            if str(path) not in seen:
                seen.add(str(path))
                slides.append(path)
                labels.append(label)
                ids.append(slide_id)
                splits.append(split)
    has_manifest = any(is_manifest(a) for a in args.slides)
    return (slides, labels if has_manifest else None, ids if any(ids) else None,
            splits if any(v is not None for v in splits) else None)


def _report_metrics(args, rows, errors, config) -> None:
    """metrics.json and the table of them: per split when the rows come from several splits."""
    from ..data.manifest import normalise_split
    from ..run.prediction_metrics import write_prediction_metrics, write_split_metrics

    out = Path(args.out)
    extra = {"failed": len(errors), "checkpoint": str(args.checkpoint)}
    if config.n_classes == 2:  # what the predicted column, accuracy and confusion matrix cut at
        threshold, source = _exports.operating_threshold(args)
        extra["decision"] = {"threshold": threshold, "source": source}
    labelled = {r.get("split") or "" for r in rows if r.get("label") not in (None, "")}
    if args.split is None and len(labelled) > 1:
        curves = {}  # ROC/PR of each split in splits/SPLIT/curves/
        for split in labelled:
            got = _exports.curves(args, out / "splits" / (split or "none"),
                                  [r for r in rows if (r.get("split") or "") == split], config)
            got["curves"] = {k: f"splits/{split or 'none'}/{v}" for k, v in got.get("curves", {}).items()}
            curves[split] = got
        per = write_split_metrics(out, rows, config.n_classes, config.class_names, resamples=args.bootstrap,
                                  seed=0, extra=extra, per_split=curves)
        print(f"\nmetrics per split ({', '.join(per)}) -> {out / 'metrics.json'}: never pooled across splits")
        for split, m in per.items():
            _print_metrics(m, f"split {split}: ")
            _exports.print_curves(m, out / "splits" / (split or "none"))
    else:
        split = normalise_split(args.split) if args.split else (labelled.pop() or None if labelled else None)
        m = write_prediction_metrics(out, rows, config.n_classes, config.class_names, resamples=args.bootstrap,
                                     seed=0, extra={**extra, "split": split, **_exports.curves(args, out, rows, config)})
        _print_metrics(m, f"split {split}: " if split else "", out / "metrics.json")
        _exports.print_curves(m, out)
    if errors:
        print(f"({len(errors)} slide(s) failed and are not counted)")


def _print_metrics(m, head: str, path=None) -> None:
    """The table of one set of metrics."""
    b = m["bootstrap"]
    print(f"\n{head}metrics of {m['n']} labelled slide(s){' -> ' + str(path) if path else ''} (95% intervals: "
          f"{b['resamples']} bootstrap resamples, seed {b['seed']})")

    def num(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    table = [[label, num(m[key]["value"]), f"[{num(m[key]['ci_low'])}, {num(m[key]['ci_high'])}]"]
             for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                                ("roc_auc", f"ROC AUC ({m['roc_auc_kind']})"))]
    print(format_table(table, ["metric", "value", "95% CI"]))
    names = m["class_names"]
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    print(format_table([[n, *map(str, r)] for n, r in zip(names, m["confusion_matrix"])], ["", *names]))


def _client(args):
    """A dask client for --scheduler / --workers, or None (in process)."""
    if not args.scheduler and not args.workers:
        return None, None
    from distributed import Client, LocalCluster

    if args.scheduler:
        return Client(args.scheduler), None
    # Worker logs are silenced up to ERROR: a slide's failure reaches the user as errors.csv and one
    # line, and a loaded machine's shutdown race ("Failed to communicate with scheduler during
    # heartbeat") is noise, not news.
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def run(args: argparse.Namespace) -> int:
    """Predict every slide; exit 1 if any failed (listed on stderr and in errors.csv)."""
    from ..classifier import load_model
    from ..data.manifest import is_manifest, normalise_split
    from ..run.predict import PredictSettings, predict_slides

    bad = check_device("predict", args.device) or _exports.check(args)
    if bad:
        return error(bad)
    manifests = [a for a in args.slides if is_manifest(a)]
    if args.split is not None:
        if not manifests:
            return error("ats-wsi predict: --split selects rows of a manifest, and no manifest (.csv/.tsv) was given")
        try:
            normalise_split(args.split)
        except ValueError as exc:
            return error(f"ats-wsi predict: --split: {exc}")
    # A bad checkpoint fails here, before a cluster is started (its class names read the manifests).
    model = load_model(args.checkpoint, feature_weights=args.feature_weights) if manifests else None
    slides, labels, slide_ids, splits = _slides_and_labels(args, model)
    if not slides:
        return error("ats-wsi predict: no slides found" + (f" in split {args.split!r}" if args.split else ""))
    if args.mpp is not None and not 0 < args.mpp < float("inf"):
        return error(f"ats-wsi predict: --mpp must be a number > 0, got {args.mpp}")
    from ..slide.resolution import MAX_MPP, MIN_MPP, plausible_mpp

    if args.mpp is not None and not plausible_mpp(args.mpp):
        return error(f"ats-wsi predict: --mpp {args.mpp:g} is outside the plausible {MIN_MPP:g}–{MAX_MPP:g} µm/px "
                     f"of a slide scan")
    from ..classifier.prediction import MAX_SAMPLES

    if args.samples > MAX_SAMPLES:
        return error(f"ats-wsi predict: --samples {args.samples} is more than {MAX_SAMPLES} samplings per slide")
    if model is None:
        model = load_model(args.checkpoint, feature_weights=args.feature_weights)
    if args.readout == "top" and not model.config.instance_head:
        return error(f"ats-wsi predict: --readout top reads the instance head's most positive patch, and "
                     f"{args.checkpoint} has no instance head (train with --instance-head, or use --readout head)")
    given_mpp, given_roi = _manifest_columns(args, model) if manifests else ({}, {})
    settings = PredictSettings(checkpoint=args.checkpoint, out_dir=args.out, samples=args.samples,
                               n_patches=args.n_patches, device=args.device, seed=args.seed,
                               deterministic=args.deterministic, workers=args.io_threads,
                               ngff_version=args.ngff, torch_threads=args.torch_threads, mpp=args.mpp,
                               geojson=args.geojson, feature_cache=args.feature_cache, threshold=args.threshold,
                               feature_weights=args.feature_weights, sampler=args.sampler, readout=args.readout,
                               slide_mpp=given_mpp, slide_roi=given_roi, read_ahead=args.read_ahead,
                               **_exports.settings(args), **_exports.roi_settings(args))
    bar = progress_bar(len(slides), "predict", "slide", enabled=not args.no_progress)

    def progress(name, status):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{name}: {status}")

    out = Path(args.out)
    client, cluster = _client(args)
    summary: dict = {}
    try:
        with LibraryLog(out / "predict.log") as log:
            rows, errors = predict_slides(slides, settings, executor=client, progress=progress, labels=labels,
                                          slide_ids=slide_ids, splits=splits, model=model,
                                          outcomes=_outcomes.outcomes(args, model, slides), on_summary=summary.update)
    except OutputLockedError as exc:  # another run writes --out (a full or read-only one: exit 1, one line)
        print(f"ats-wsi predict: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    finally:
        for thing in (bar, client, cluster):
            if thing is not None:
                thing.close()
    return _finish(args, out, rows, errors, labels, log, model, summary)


def _busy_line(summary: dict) -> str:
    """``encoder busy 43% of 12.3 s (read-ahead 1)``, or how long the run took where no clock ran (dask)."""
    ahead = f"read-ahead {summary['read_ahead']}" if summary.get("executor") == "in process" else "dask"
    if summary.get("encoder_busy") is None:
        return f"{summary.get('wall_seconds', 0):.1f} s ({ahead})"
    return f"encoder busy {summary['encoder_busy']:.0%} of {summary['wall_seconds']:.1f} s ({ahead})"


def _finish(args, out: Path, rows, errors, labels, log, model, summary: dict) -> int:
    """Say what was written; the metrics table for a labelled cohort; exit 1 if any slide failed."""
    print(f"{len(rows)} slide(s) predicted -> {out / 'predictions.csv'}"
          + (f"; {_busy_line(summary)} -> {out / 'run.json'}" if summary else ""))
    cached = [r for r in rows if "feature_hits" in r]
    if cached:
        hits, misses = (sum(int(r[k]) for r in cached) for k in ("feature_hits", "feature_misses"))
        disk = sum(int(r.get("feature_disk_hits", 0)) for r in cached)
        print(f"feature cache: {hits} of {hits + misses} patch features served by the cache ({disk} from "
              f"{args.feature_cache}), {misses} computed")
    if log.summary("predict"):
        print(log.summary("predict"), file=sys.stderr)
    if model.config.task != "classification":
        if labels is not None:  # a manifest: its outcome cells are in predictions.csv
            _outcomes.report(args, rows, errors, model.config)
    else:
        if model.config.n_classes == 2:
            threshold, source = _exports.operating_threshold(args)
            names = model.class_names
            print(f"predicted: {names[1]} when P({names[1]}) >= {threshold:.3f} ({source}), else {names[0]}")
        if labels is not None and any(v is not None for v in labels):
            _report_metrics(args, rows, errors, model.config)
    if errors:
        print(f"{len(errors)} slide(s) failed -> {out / 'errors.csv'}", file=sys.stderr)
        for e in errors:
            print(f"  {e['slide']}: {e['error']}: {e['message']}", file=sys.stderr)
        return 1
    return 0
