"""Flags of ``ats-wsi predict`` for what users take away (issue 27): features, top patches."""
from __future__ import annotations

import argparse

from ._common import positive_int


def register(p) -> None:
    """The export flags of ``ats-wsi predict`` (their own group)."""
    from ..exports import MAX_EXPORT_PATCHES

    g = p.add_argument_group("exports (docs/cli.md#exports)")
    g.add_argument("--export-features", action="store_true",
                   help="also write features/NAME.h5: the sampled patches' features [n, D] and level-0 coords "
                        "[n, 2] (the TRIDENT/CLAM layout), their attention and draw order, and the slide "
                        "embedding; needs h5py (pip install 'ats-wsi[hdf5]')")
    g.add_argument("--export-patches", type=positive_int, metavar="K",
                   help=f"also write the K highest-attention sampled patches of each slide as PNG, and a "
                        f"contact sheet, to patches/NAME/ (K <= {MAX_EXPORT_PATCHES})")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="two classes: a slide is predicted class 1 when P(class 1) >= T (the predicted column, "
                        "accuracy, confusion matrix, sensitivity and specificity); default: the threshold chosen "
                        "on the validation slides in training (Youden's J, stored in the checkpoint), else 0.5")


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the export flags (one line), or None; checked before any slide is read."""
    from ..errors import MissingExtraError
    from ..exports import MAX_EXPORT_PATCHES, require_h5py

    if args.export_patches is not None and args.export_patches > MAX_EXPORT_PATCHES:
        return f"ats-wsi predict: --export-patches must be at most {MAX_EXPORT_PATCHES}, got {args.export_patches}"
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        return f"ats-wsi predict: --threshold is a probability, 0 to 1; got {args.threshold}"
    if args.export_features:
        try:
            require_h5py()
        except MissingExtraError as exc:
            return f"ats-wsi predict: {exc}"
    return None


def settings(args: argparse.Namespace) -> dict:
    """The :class:`~ats_wsi.run.predict.PredictSettings` fields of the export flags."""
    return {"export_features": bool(args.export_features), "export_patches": int(args.export_patches or 0)}


def operating_threshold(args: argparse.Namespace) -> tuple[float, str]:
    """``(threshold on P(class 1), where it came from)``: ``--threshold``, else the checkpoint's
    validation threshold (Youden's J), else 0.5."""
    from ..classifier import ModelConfig
    from ..classifier.checkpoint import read_checkpoint, stored_threshold

    if args.threshold is not None:
        return float(args.threshold), "--threshold"
    payload = read_checkpoint(args.checkpoint)  # the threshold load_model gives the model: the same rule
    stored = stored_threshold(payload, ModelConfig.from_dict(payload["config"]))
    if stored is not None:
        return stored, "checkpoint: Youden's J on the validation slides"
    return 0.5, "default 0.5 (the checkpoint has no validation threshold)"


def curves(args: argparse.Namespace, out, rows, config) -> dict:
    """Write ``curves/`` for the labelled rows; what :func:`~ats_wsi.exports.curves.curve_report`
    returns, for ``metrics.json`` (an empty dict without a labelled row)."""
    import numpy as np

    from ..exports.curves import curve_report

    labelled = [r for r in rows if r.get("label") not in (None, "")]
    if not labelled:
        return {}
    probs = np.array([[float(r[f"p{k}"]) for k in range(config.n_classes)] for r in labelled])
    names = config.class_names or [str(k) for k in range(config.n_classes)]
    threshold, source = operating_threshold(args) if config.n_classes == 2 else (None, "")
    return curve_report(out, [int(r["label"]) for r in labelled], probs, names, threshold=threshold,
                        threshold_source=source, resamples=args.bootstrap, seed=0)


def print_curves(m: dict, out) -> None:
    """One line per class of AUPRC, and the operating point's sensitivity and specificity."""
    def num(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    for name, a in m.get("auprc", {}).items():
        print(f"AUPRC {name}: {num(a['value'])} [{num(a['ci_low'])}, {num(a['ci_high'])}]")
    op = m.get("operating_point")
    if op:
        print(f"at P({op['positive_class']}) >= {op['threshold']:.3f} ({op['source']}): sensitivity "
              f"{num(op['sensitivity'])}, specificity {num(op['specificity'])}")
    if m.get("curves"):
        print(f"ROC and PR curves -> {out}/curves/ (roc.csv, roc.png, pr.csv, pr.png)")


def register_roi(p) -> None:
    """``--roi``, ``--roi-include``, ``--roi-exclude`` (``train`` and ``predict``)."""
    g = p.add_argument_group("regions of interest (docs/cli.md#regions-of-interest)")
    g.add_argument("--roi", metavar="FILE|DIR",
                   help="draw patches only inside annotations: a GeoJSON file (QuPath: Export objects) in level-0 "
                        "pixels, or a folder of NAME.geojson per slide (NAME: the slide's file name without its "
                        "suffix); polygons with holes and MultiPolygons")
    g.add_argument("--roi-include", metavar="CLASS", action="append",
                   help="only features of this class make the region (repeat for more; default: every class "
                        "not excluded)")
    g.add_argument("--roi-exclude", metavar="CLASS", action="append",
                   help="cut features of this class out of the region, e.g. Artifact, Pen (repeat for more)")


def roi_settings(args: argparse.Namespace) -> dict:
    """The ``roi``, ``roi_include``, ``roi_exclude`` settings of the flags (train and predict alike)."""
    from pathlib import Path

    return {"roi": str(Path(args.roi).resolve()) if args.roi else None,
            "roi_include": list(args.roi_include) if args.roi_include else None,
            "roi_exclude": list(args.roi_exclude or [])}
