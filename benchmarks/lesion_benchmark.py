"""The lesion benchmark table (issue 23): attention sampling against uniform random patches
(and, when its JSON is given, dense gated ABMIL over every tissue patch) on a cohort with
ground truth, each trained and predicted exactly as a user runs the command.

Rows, each trained once with ``ats-wsi train`` (its defaults, plus the row's flags) and
predicted on the test split with ``ats-wsi predict --split test --n-patches N`` for every
``N`` of ``--n``:

- ``defaults``: the command's defaults and nothing else: an encoder pretrained on the training
  slides (SimCLR, ``RUN/encoder``), frozen, under attention sampling (docs/training.md, "The
  default encoder"); ``uniform-defaults``: the same with ``--sampler uniform``;
- ``ats``: ``--no-pretrain``, the built-in feature net trained end to end from scratch;
- ``uniform``: ``--no-pretrain --sampler uniform`` (draws uniform over tissue, everything else the same);
- ``ats-frozen`` / ``uniform-frozen``: the same with a frozen encoder (``--encoder SPEC``:
  a spec JSON beside its ``.pt2``/``.pt`` file, e.g. from ``lesion_encoder.py``) and a
  feature cache;
- ``ats-frozen-zoom``: ``ats-frozen`` with attention that zooms (docs/zoom.md): ``--zoom-mpp 2
  --zoom-regions 8 --zoom-size 256 --n-patches 4``, the same 32 patches a slide as the one-stage
  rows (8 regions of 256 µm read at 2 µm/px, 4 patches drawn in each); at prediction each ``N``
  of ``--n`` is ``N / 8`` patches in each of the 8 regions (``N`` patches a slide, as the others);
- ``defaults-zoom``: the defaults with attention that zooms: ``--zoom-regions`` regions of
  ``--zoom-patches`` patches in training (measured with ``--zoom-regions 16 --zoom-patches 2``:
  the defaults' 32 a step), at prediction ``N / regions`` patches in each (``N`` a slide); its
  validation draws the one-stage defaults' 128 a slide (``--predict-patches 128 / regions``);
- ``defaults-low2``: the defaults with the attention map at the zoom's 2 µm/px over the whole
  slide (``--low-mpp 2``): what one stage costs at that resolution;
- ``dense``: read from ``--dense dense_abmil.json`` (``lesion_dense.py``) when given.

Columns: test AUC with its bootstrap 95 % CI, the AUC of each lesion stratum's tumors
against all normals, balanced accuracy at 0.5, sensitivity per lesion stratum (``<0.5mm``, ``0.5-2mm``) and specificity, sensitivity and specificity at the threshold chosen on the validation
slides in training (Youden's J, ``predict``'s ``metrics.json``), patches encoded per slide, the
share of each slide's tissue read, seconds per slide from the file (open, low view,
attention, reads, encoding: ``predictions.csv``), level-0 pixels read per slide (the patches'
boxes, plus a zoom's regions: ``pixels_read``), where the draws land (``draws``: the share of a
positive slide's patches on its lesion, of its slides with at least one, and of all slides' patches on
a follicle, from the boxes in each slide's ``.done`` record and the ground truth), training wall
time. The same model is
predicted at several ``N`` (trained at the default 32): how the AUC grows with the tissue
read. Writes ``OUT/lesion_benchmark.json``, ``OUT/lesion_benchmark.md`` and
``OUT/lesion_benchmark.png`` (AUC against the share of tissue read, per method).

Usage::

    .venv/bin/python benchmarks/lesion_benchmark.py MANIFEST OUT [--rows ats,uniform] [--n 8,16,32,64]
        [--encoder ENC/spec.json] [--dense DENSE/dense_abmil.json] [--epochs 30] [--readout top|head]
        [--predict-sampler uniform] [-- EXTRA TRAIN FLAGS]
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesion_common import read_cohort_slides  # noqa: E402
from lesion_dense import evaluate_split  # noqa: E402

from ats_wsi.metrics import roc_auc  # noqa: E402

ATS = [sys.executable, "-m", "ats_wsi.cli"]
ROWS = ("defaults", "uniform-defaults", "ats", "uniform", "ats-frozen", "uniform-frozen", "ats-frozen-zoom",
        "defaults-zoom", "defaults-low2")
PATCH_UM = 64.0  # the defaults' patch: 128 px at 0.5 µm/px
ZOOM_REGIONS = 8
"""Regions a zoom row draws per slide (n1, ``--zoom-regions``); n2 = N / n1 patches in each, N patches a slide."""
ZOOM_PATCHES = 4
"""Patches a zoom row draws per region in training (``--zoom-patches``): 8 x 4 = the one-stage rows' 32."""
VALIDATION_PATCHES = 128
"""Patches a slide the one-stage defaults' validation draws (4 x 32): a defaults-zoom row draws as many."""


def zoom_flags(regions: int = ZOOM_REGIONS, patches: int = ZOOM_PATCHES) -> list[str]:
    """A zoom row's flags over its one-stage row: ``regions`` of 256 µm at 2 µm/px, ``patches`` drawn in each."""
    return ["--zoom-mpp", "2", "--zoom-regions", str(regions), "--zoom-size", "256", "--n-patches", str(patches)]


ZOOM_FLAGS = zoom_flags()


def predict_n_patches(row: str, n: int, regions: int = ZOOM_REGIONS) -> int:
    """The ``--n-patches`` of ``ats-wsi predict`` that reads ``n`` patches a slide: per region for a zoom row."""
    if not row.endswith("zoom"):
        return n
    if n % regions:
        raise SystemExit(f"row {row} reads n1 = {regions} regions; --n {n} is not a multiple of it")
    return n // regions


def predict_variant(readout: str | None, sampler: str | None) -> tuple[str | None, str | None, list[str]]:
    """How ``--readout``/``--predict-sampler`` change the predictions of a trained row: the label
    the row's entry gets (``ROW (LABEL)``), the slug of its prediction folders (``test-SLUG-nN``) and
    the flags ``ats-wsi predict`` gets; ``(None, None, [])`` for the checkpoint's own settings."""
    parts, flags = [], []
    if readout:
        parts.append(readout)
        flags += ["--readout", readout]
    if sampler:
        parts.append(f"{sampler} draws")
        flags += ["--sampler", sampler]
    if not parts:
        return None, None, []
    return ", ".join(parts), "-".join(p.split()[0] for p in parts), flags


def row_flags(row: str, encoder: str | None, out: Path, regions: int = ZOOM_REGIONS,
              patches: int = ZOOM_PATCHES) -> list[str]:
    """The flags of ``ats-wsi train`` that make a row (over the command's defaults); a zoom row's
    ``regions`` and ``patches`` a region."""
    flags = ["--sampler", "uniform"] if row.startswith("uniform") else []
    if row in ("ats", "uniform"):
        flags += ["--no-pretrain"]
    if row.endswith("zoom"):
        flags += zoom_flags(regions, patches)
    if row == "defaults-zoom":
        flags += ["--predict-patches", str(max(1, VALIDATION_PATCHES // regions))]
    if row == "defaults-low2":
        flags += ["--low-mpp", "2"]
    if "frozen" in row:
        if not encoder:
            raise SystemExit(f"row {row} needs --encoder SPEC.json")
        spec = json.loads(Path(encoder).read_text())
        flags += ["--feature-net", spec["weights"], "--feature-spec", encoder, "--freeze-features",
                  "--feature-cache", str(out / "cache")]
    return flags


def run(cmd: list[str], log: Path) -> float:
    """Run a command, its output to ``log``; its wall time in seconds (raises on failure)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def tissue_mm2(path) -> float:
    """The slide's tissue area in mm² from its ground truth."""
    from ats_wsi.data.synthetic import load_synthetic_slide

    truth = load_synthetic_slide(path)
    return truth.tissue_fraction * truth.width * truth.height * (truth.mpp / 1000) ** 2


def score(predictions: Path, cohort: dict) -> dict:
    """Metrics of one ``predictions.csv`` of the test split."""
    with open(predictions, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [cohort[r["slide"]].label for r in rows]
    strata = [cohort[r["slide"]].stratum or "?" for r in rows]
    probs = [float(r["p1"]) for r in rows]
    out = evaluate_split(labels, probs, strata)
    out["auc_by_stratum"] = {}  # the stratum's tumors against every normal slide
    for stratum in sorted({s for s, y in zip(strata, labels) if y == 1}):
        keep = [i for i, (s, y) in enumerate(zip(strata, labels)) if s == stratum or y == 0]
        out["auc_by_stratum"][stratum] = float(roc_auc([labels[i] for i in keep],
                                                       np.array([[1 - probs[i], probs[i]] for i in keep])))
    patches = np.array([float(r["patches_read"]) for r in rows])
    tissue = np.array([tissue_mm2(r["slide"]) for r in rows])
    out.update(patches_per_slide=float(patches.mean()),
               tissue_read=float(np.mean(patches * (PATCH_UM / 1000) ** 2 / tissue)),
               seconds_per_slide=float(np.mean([float(r["seconds"]) for r in rows])),
               pixels_read_per_slide=float(np.mean([float(r["pixels_read"]) for r in rows])))
    out["draws"] = draw_shares(rows, predictions.parent, cohort)
    metrics = predictions.parent / "metrics.json"  # predict's operating point: the validation threshold
    if metrics.is_file():
        out["operating_point"] = json.loads(metrics.read_text()).get("operating_point")
    return out


def draw_shares(rows: list[dict], folder: Path, cohort: dict) -> dict | None:
    """Where a prediction's patches landed, from each slide's ``.done`` record (its level-0 boxes)
    and the ground truth: ``on_lesion``, the mean over positive slides of the share of their
    patches that overlap the lesion; ``lesion_found``, the share of positive slides with at least
    one; ``on_follicle``, the mean over all slides of the share on a follicle. None without records."""
    from lesion_common import truth_boxes
    from lesion_diagnose import overlaps

    lesion, found, follicle = [], [], []
    for r in rows:
        marker = folder / ".done" / f"{r['name']}.json"
        if not marker.is_file():
            return None
        boxes = np.asarray(json.loads(marker.read_text())["boxes_xywh"], dtype=np.float64).reshape(-1, 4)
        truth = truth_boxes(r["slide"])
        follicle.append(float(overlaps(boxes, truth["decoys"]).mean()) if len(boxes) else 0.0)
        if cohort[r["slide"]].label == 1 and truth["lesions"]:
            on = overlaps(boxes, truth["lesions"])
            lesion.append(float(on.mean()) if len(boxes) else 0.0)
            found.append(bool(on.any()))
    return {"on_lesion": float(np.mean(lesion)) if lesion else float("nan"),
            "lesion_found": float(np.mean(found)) if found else float("nan"),
            "on_follicle": float(np.mean(follicle)) if follicle else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--rows", default="ats,uniform", help=f"comma-separated, of {','.join(ROWS)}")
    ap.add_argument("--n", default="8,16,32,64", help="patches per slide at prediction")
    ap.add_argument("--encoder", help="spec JSON of a frozen encoder (rows *-frozen)")
    ap.add_argument("--dense", help="dense_abmil.json of lesion_dense.py, for the dense row")
    ap.add_argument("--epochs", type=int, default=None, help="override the command's default epochs")
    ap.add_argument("--zoom-regions", type=int, default=ZOOM_REGIONS, help="regions a zoom row draws (n1)")
    ap.add_argument("--zoom-patches", type=int, default=ZOOM_PATCHES,
                    help="patches a zoom row draws in each region in training (n2)")
    ap.add_argument("--readout", choices=["top", "head"], default=None,
                    help="predict with `--readout R` (default: the checkpoint's); rows are then named 'ROW (R)' and "
                         "predicted into ROW/test-R-nN: the same trained model read both ways")
    ap.add_argument("--predict-sampler", choices=["attention", "uniform"], default=None,
                    help="predict with `--sampler S` (uniform: the trained model with its attention ablated, the "
                         "same n drawn uniformly over tissue); rows are then named 'ROW (S draws)'")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra  # more flags for every `ats-wsi train` (after --)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = {str(r.path): r for r in read_cohort_slides(args.manifest)}
    results = json.loads((out / "lesion_benchmark.json").read_text()) if (out / "lesion_benchmark.json").is_file() \
        else {"manifest": str(args.manifest), "rows": {}}
    results["command"] = " ".join(sys.argv)
    for row in args.rows.split(","):
        if row not in ROWS:
            raise SystemExit(f"unknown row {row!r}; rows are {ROWS}")
        folder = out / row
        folder.mkdir(exist_ok=True)
        train = [*ATS, "train", str(args.manifest), "--out", str(folder / "run"), "--no-progress",
                 *row_flags(row, args.encoder, folder, args.zoom_regions, args.zoom_patches),
                 *(["--epochs", str(args.epochs)] if args.epochs else []),
                 *args.extra]
        label, slug, variant = predict_variant(args.readout, args.predict_sampler)
        entry = results["rows"].setdefault(row if label is None else f"{row} ({label})", {})
        if not (folder / "run" / "best.pt").is_file():
            entry["train_seconds"] = run(train, folder / "train.log")
        entry["train_command"] = " ".join(train)
        for n in args.n.split(","):
            pred = folder / (f"test-n{n}" if slug is None else f"test-{slug}-n{n}")
            cmd = [*ATS, "predict", str(folder / "run" / "best.pt"), str(args.manifest), "--split", "test",
                   "--out", str(pred), "--n-patches", str(predict_n_patches(row, int(n), args.zoom_regions)), "--no-progress",
                   *variant]
            if not (pred / "predictions.csv").is_file():
                run(cmd, folder / f"predict-n{n}.log")
            entry[f"n{n}"] = score(pred / "predictions.csv", cohort)
            print(f"{row:15s} {label or ''} n={n:>3s}  AUC {entry[f'n{n}']['roc_auc']['value']:.3f}", flush=True)
        (out / "lesion_benchmark.json").write_text(json.dumps(results, indent=1))
    if args.dense:
        results["rows"]["dense"] = json.loads(Path(args.dense).read_text())
    (out / "lesion_benchmark.json").write_text(json.dumps(results, indent=1))
    (out / "lesion_benchmark.md").write_text("\n".join(table(results)) + "\n")
    figure(results, out / "lesion_benchmark.png")
    print("\n".join(table(results)))
    return 0


def _ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"


def table(results: dict) -> list[str]:
    """The markdown table of every (row, n)."""
    lines = ["| method | n | AUC [95 % CI] | AUC <0.5 mm | AUC 0.5-2 mm | balanced acc. | sens. <0.5 mm | "
             "sens. 0.5-2 mm | spec. | sens. / spec. at val. threshold | patches/slide | tissue read | s/slide | "
             "px read/slide | draws on lesion / slides found / on follicles | train s |",
             "|" + "---|" * 16]
    for row, entry in results["rows"].items():
        if row == "dense":
            continue
        for key in sorted((k for k in entry if k.startswith("n") and k[1:].isdigit()), key=lambda k: int(k[1:])):
            m = entry[key]
            per = m.get("per_stratum", {})
            rec = [f"{per[s]['recall']:.2f} ({per[s]['n']})" if s in per else "–" for s in ("<0.5mm", "0.5-2mm",
                                                                                         "normal")]
            by = m.get("auc_by_stratum", {})
            strat = " | ".join(f"{by[s]:.3f}" if s in by else "–" for s in ("<0.5mm", "0.5-2mm"))
            op = m.get("operating_point") or {}
            at = f"{op['sensitivity']:.2f} / {op['specificity']:.2f} ({op['threshold']:.3f})" if op else "–"
            d = m.get("draws")
            draws = f"{d['on_lesion']:.2f} / {d['lesion_found']:.2f} / {d['on_follicle']:.2f}" if d else "–"
            lines.append(f"| {row} | {key[1:]} | {_ci(m['roc_auc'])} | {strat} | {_ci(m['balanced_accuracy'])} | "
                         f"{' | '.join(rec)} | {at} | {m['patches_per_slide']:.0f} | {100 * m['tissue_read']:.2f} % | "
                         f"{m['seconds_per_slide']:.2f} | {m.get('pixels_read_per_slide', float('nan')):.2g} | "
                         f"{draws} | {entry.get('train_seconds', float('nan')):.0f} |")
    return lines


def figure(results: dict, path: Path) -> None:
    """AUC against the share of tissue read, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = results["rows"].get("dense", {}).get("summary", {}).get("roc_auc")
    if dense:  # dense ABMIL encodes every tissue patch: one point at 100 %, the mean ± sd over its seeds
        ax.errorbar([100.0], [dense["mean"]], yerr=[[dense["sd"]], [dense["sd"]]], marker="s", color="black",
                    capsize=3, ls="none", label=f"dense ABMIL ({dense['n']} seeds)")
    for row, entry in results["rows"].items():
        keys = sorted((k for k in entry if k.startswith("n") and k[1:].isdigit()), key=lambda k: int(k[1:]))
        if not keys:
            continue
        x = [100 * entry[k]["tissue_read"] for k in keys]
        y = [entry[k]["roc_auc"]["value"] for k in keys]
        lo = [entry[k]["roc_auc"]["value"] - entry[k]["roc_auc"]["ci_low"] for k in keys]
        hi = [entry[k]["roc_auc"]["ci_high"] - entry[k]["roc_auc"]["value"] for k in keys]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=row)
    ax.set_xscale("log")
    ax.set_xlabel("share of each slide's tissue read (%)")
    ax.set_ylabel("test ROC AUC (95 % CI)")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylim(0.0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
