"""Dense gated attention-MIL over every tissue patch: the lesion benchmark's reference (issue 23).

1. Encode: for every slide of the manifest, EVERY patch of the non-overlapping grid of
   ``spec.patch_px`` pixels at ``spec.mpp`` µm/px with at least ``--min-tissue`` tissue
   (:func:`lesion_common.tissue_grid`) is read (:class:`ats_wsi.patches.PatchReader`) and run
   through the frozen encoder (:func:`ats_wsi.encoders.build_encoder`: a JSON spec with its
   ``.pt2`` / TorchScript file, or a registry name with ``--weights``). One HDF5 file per slide,
   the CLAM / TRIDENT layout (:func:`write_features`): ``features`` float32 ``[n, D]``,
   ``coords`` int64 ``[n, 2]`` (level-0 top-left ``x, y``). Resumable: a slide whose file exists
   (for the same encoder) is not encoded again; files are written under a temporary name and
   renamed. Files live in ``FEATURES/<spec name>-<spec digest[:12]>/<slide stem>.h5``.
2. Train gated ABMIL (Ilse, Tomczak & Welling, ICML 2018: ``a_k ∝ exp(w·(tanh(V h_k) ⊙ sigm(U h_k)))``,
   ``z = Σ a_k h_k``) on the train split: one bag per step, Adam, binary cross-entropy,
   ``--epochs`` epochs; the epoch kept is the one with the best val AUC (ties: lower val loss,
   then the earlier epoch).
3. Report on the test split, per seed and as mean ± sd over ``--seeds``: ROC AUC with a
   percentile-bootstrap 95 % CI (:func:`ats_wsi.metrics.evaluate`), balanced accuracy at 0.5,
   recall per ``stratum`` (sensitivity for tumour strata, specificity for ``normal``; from the
   manifest's column, else derived from the ground-truth boxes and marked so), patches encoded
   (= encoder calls) per slide, seconds per slide to encode (tissue mask + read + encode),
   training wall time.

Writes ``OUT/dense_abmil.json`` (every number, the settings, the command) and prints a table.

Usage::

    .venv/bin/python benchmarks/lesion_dense.py MANIFEST --spec ENC/spec.json --out OUT [--seeds 0,1,2]
        [--epochs 40] [--features DIR] [--min-tissue 0.25] [--threads 2]
    # an existing encoder (untested here: no foundation weights on this machine)
    .venv/bin/python benchmarks/lesion_dense.py MANIFEST --spec uni --weights /models/uni/pytorch_model.bin --out OUT
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesion_common import (CLASSES, derived_stratum, make_reader, open_cohort_slide,  # noqa: E402
                           read_cohort_slides, read_patches, set_threads, tissue_grid, truth_boxes)

H5_VERSION = 1


# --------------------------------------------------------------------------- features on disk

def feature_dir(root: str | os.PathLike, spec) -> Path:
    """``root/<spec name>-<digest[:12]>``: features of different encoders never share a folder."""
    return Path(root) / f"{spec.name}-{spec.digest()[:12]}"


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray, attrs: dict,
                   coords_attrs: dict) -> Path:
    """One slide's features in the CLAM / TRIDENT layout, written under a temporary name and renamed.

    Datasets: ``features`` float32 ``[n, D]``, ``coords`` int64 ``[n, 2]`` (level-0 ``x, y`` of each
    patch's top-left corner). ``attrs`` go on the file, ``coords_attrs`` on ``coords`` (CLAM reads
    ``patch_size`` / ``patch_level`` there, TRIDENT ``patch_size_level0`` too).
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.h5")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=np.asarray(features, np.float32).reshape(len(coords), -1))
            ds = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
            for k, v in coords_attrs.items():
                ds.attrs[k] = v
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(features [n, D], coords [n, 2], file attrs)`` of one slide's HDF5."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["features"][()], f["coords"][()], {k: _plain(v) for k, v in f.attrs.items()}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def encode_slide(encoder, row, path: str | os.PathLike, *, min_tissue: float = 0.25, batch: int = 64,
                 workers: int = 1) -> dict:
    """Encode every tissue patch of one slide into ``path`` (skipped when it exists); its record.

    The record (also the file's attrs): ``n_patches`` (= encoder calls), ``seconds`` (tissue mask +
    read + encode, as measured when the file was written), ``read_seconds``, ``encode_seconds``,
    ``tissue_seconds``, ``cached`` (True: the file was there).
    """
    path = Path(path)
    spec = encoder.spec
    if path.exists():
        _, _, attrs = read_features(path)
        if attrs.get("spec_digest") != spec.digest():
            raise ValueError(f"{path} holds features of another encoder ({attrs.get('encoder')}); "
                             f"use another features folder")
        return dict(attrs, cached=True)
    t0 = time.perf_counter()
    with open_cohort_slide(row) as slide:
        coords, frac, step = tissue_grid(slide, mpp=spec.mpp, patch_px=spec.patch_px, min_tissue=min_tissue)
        t_tissue = time.perf_counter() - t0
        reader = make_reader(slide, spec.mpp, spec.patch_px, workers)
        feats = np.empty((len(coords), spec.dim), np.float32)
        t_read = t_enc = 0.0
        t1 = time.perf_counter()
        for start, pixels in read_patches(reader, coords, batch):
            t2 = time.perf_counter()
            t_read += t2 - t1
            with torch.no_grad():
                feats[start:start + len(pixels)] = encoder(pixels).numpy()
            t1 = time.perf_counter()
            t_enc += t1 - t2
        reader.close()
        level0_mpp = float(slide.mpp)
        dims = slide.dimensions
    seconds = time.perf_counter() - t0
    attrs = {"version": H5_VERSION, "slide": str(row.path), "slide_name": row.name, "label": int(row.label),
             "split": row.split, "encoder": spec.name, "spec_digest": spec.digest(), "dim": int(spec.dim),
             "n_patches": int(len(coords)), "seconds": seconds, "tissue_seconds": t_tissue,
             "read_seconds": t_read, "encode_seconds": t_enc, "min_tissue": float(min_tissue),
             "width": int(dims[0]), "height": int(dims[1])}
    coords_attrs = {"patch_size": int(spec.patch_px), "patch_mpp": float(spec.mpp),
                    "patch_size_level0": float(step), "patch_level": 0, "level0_mpp": level0_mpp,
                    "target_magnification": 10.0 / float(spec.mpp), "level0_magnification": 10.0 / level0_mpp,
                    "tissue_fraction_min": float(frac.min()) if len(frac) else 0.0}
    write_features(path, feats, coords, attrs, coords_attrs)
    return dict(attrs, cached=False)


def encode_cohort(encoder, rows, features_root, *, min_tissue: float = 0.25, batch: int = 64,
                  workers: int = 1, log=None) -> list[dict]:
    """:func:`encode_slide` for every slide; the records, in manifest order (each with ``h5``)."""
    folder = feature_dir(features_root, encoder.spec)
    out = []
    for i, row in enumerate(rows):
        path = folder / f"{row.name}.h5"
        rec = encode_slide(encoder, row, path, min_tissue=min_tissue, batch=batch, workers=workers)
        rec["h5"] = str(path)
        out.append(rec)
        if log is not None:
            log(f"[{i + 1}/{len(rows)}] {row.name}: {rec['n_patches']} patches, {rec['seconds']:.2f} s"
                + (" (from its file)" if rec["cached"] else ""))
    return out


# --------------------------------------------------------------------------- gated ABMIL

class GatedABMIL(nn.Module):
    """Gated attention-based MIL (Ilse et al. 2018) for one bag ``[n, D]`` -> ``(logit, attention [n])``.

    ``h = ReLU(W x)`` (``hidden``, dropout), ``a = softmax_k(w · (tanh(V h_k) ⊙ sigmoid(U h_k)))``
    (``attn`` wide, dropout on the gates), ``z = Σ_k a_k h_k``, logit ``= c · z``.
    """

    def __init__(self, dim: int, hidden: int = 128, attn: int = 64, dropout: float = 0.25):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.V = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh(), nn.Dropout(dropout))
        self.U = nn.Sequential(nn.Linear(hidden, attn), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(attn, 1)
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(bag)  # [n, hidden]
        a = torch.softmax(self.w(self.V(h) * self.U(h)).squeeze(-1), dim=0)  # [n]
        return self.classifier(a @ h).squeeze(-1), a


def predict_bags(model: GatedABMIL, bags: list[torch.Tensor]) -> np.ndarray:
    """P(tumour) per bag (eval mode); an empty bag (no tissue patch) gets 0.5."""
    model.eval()
    out = []
    with torch.no_grad():
        for bag in bags:
            out.append(0.5 if len(bag) == 0 else float(torch.sigmoid(model(bag)[0])))
    return np.asarray(out)


def _loss(model, bags, labels) -> float:
    p = np.clip(predict_bags(model, bags), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train_abmil(train_bags, train_labels, val_bags, val_labels, *, epochs: int = 40, lr: float = 2e-4,
                weight_decay: float = 1e-4, hidden: int = 128, attn: int = 64, dropout: float = 0.25,
                seed: int = 0) -> tuple[GatedABMIL, dict]:
    """Train gated ABMIL one bag per step; the model at the best val-AUC epoch and the history.

    Bags are float tensors ``[n_i, D]``; labels 0/1. Without val bags (or with one class
    only in val) the last epoch is kept.
    """
    from ats_wsi.metrics import roc_auc

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GatedABMIL(train_bags[0].shape[1], hidden=hidden, attn=attn, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    lossf = nn.BCEWithLogitsLoss()
    usable = [i for i, b in enumerate(train_bags) if len(b)]
    history = []
    best, best_key = None, None
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for i in torch.randperm(len(usable), generator=gen).tolist():
            k = usable[i]
            logit, _ = model(train_bags[k])
            loss = lossf(logit, torch.tensor(float(train_labels[k])))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        rec = {"epoch": epoch, "train_loss": total / max(1, len(usable))}
        if val_bags:
            probs = predict_bags(model, val_bags)
            rec["val_auc"] = roc_auc(val_labels, probs)
            rec["val_loss"] = _loss(model, val_bags, val_labels)
            auc = -1.0 if np.isnan(rec["val_auc"]) else rec["val_auc"]
            key = (auc, -rec["val_loss"])
        else:
            key = (epoch, 0.0)
        if best_key is None or key > best_key:
            best_key, best = key, (epoch, copy.deepcopy(model.state_dict()))
        history.append(rec)
    model.load_state_dict(best[1])
    model.eval()
    return model, {"history": history, "best_epoch": best[0], "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- evaluation

def evaluate_split(labels, probs, strata=None, *, resamples: int = 1000, seed: int = 0) -> dict:
    """AUC (bootstrap CI), balanced accuracy at 0.5 (CI), recall per stratum."""
    from ats_wsi.metrics import evaluate

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    pred = (probs >= 0.5).astype(np.int64)
    ev = evaluate(labels, np.stack([1 - probs, probs], 1), predicted=pred, class_names=CLASSES,
                  resamples=resamples, seed=seed)
    out = {"n": int(len(labels)), "roc_auc": ev["roc_auc"], "balanced_accuracy": ev["balanced_accuracy"],
           "accuracy": ev["accuracy"], "confusion_matrix": ev["confusion_matrix"]}
    if strata is not None:
        per = {}
        for name in sorted(set(strata)):
            idx = [i for i, s in enumerate(strata) if s == name]
            want = 0 if name == "normal" else 1
            per[name] = {"n": len(idx), "recall": float(np.mean(pred[idx] == want)),
                         "kind": "specificity" if want == 0 else "sensitivity"}
        out["per_stratum"] = per
    return out


def _mean_sd(values) -> dict:
    values = [float(v) for v in values if v is not None and not np.isnan(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(per_seed: list[dict]) -> dict:
    """Mean ± sd (sample sd) over seeds of test AUC, balanced accuracy, recall per stratum, training time."""
    out = {"roc_auc": _mean_sd([r["test"]["roc_auc"]["value"] for r in per_seed]),
           "balanced_accuracy": _mean_sd([r["test"]["balanced_accuracy"]["value"] for r in per_seed]),
           "train_seconds": _mean_sd([r["train_seconds"] for r in per_seed]),
           "best_epoch": _mean_sd([r["best_epoch"] for r in per_seed])}
    strata = sorted({s for r in per_seed for s in r["test"].get("per_stratum", {})})
    out["per_stratum"] = {s: _mean_sd([r["test"]["per_stratum"][s]["recall"] for r in per_seed
                                       if s in r["test"].get("per_stratum", {})]) for s in strata}
    return out


# --------------------------------------------------------------------------- the whole run

def run_dense(manifest, spec, out_dir, *, weights=None, features_root=None, seeds=(0, 1, 2), epochs: int = 40,
              lr: float = 2e-4, weight_decay: float = 1e-4, dropout: float = 0.25, hidden: int = 128,
              attn: int = 64, min_tissue: float = 0.25, batch: int = 64, workers: int = 1,
              resamples: int = 1000, command: str | None = None, log=print) -> dict:
    """Encode every tissue patch, train gated ABMIL per seed, evaluate on test; the result (also
    written to ``out_dir/dense_abmil.json``)."""
    from ats_wsi.encoders import build_encoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_cohort_slides(manifest)
    encoder = build_encoder(spec, weights=weights, frozen=True)
    features_root = Path(features_root) if features_root else out / "features"
    t0 = time.perf_counter()
    records = encode_cohort(encoder, rows, features_root, min_tissue=min_tissue, batch=batch, workers=workers,
                            log=log)
    encode_wall = time.perf_counter() - t0
    bags = {r.name: torch.from_numpy(read_features(rec["h5"])[0]) for r, rec in zip(rows, records)}
    strata, stratum_source = _strata(rows, encoder.spec.mpp)
    by = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test")}
    per_seed = []
    for seed in seeds:
        model, hist = train_abmil([bags[r.name] for r in by["train"]], [r.label for r in by["train"]],
                                  [bags[r.name] for r in by["val"]], [r.label for r in by["val"]], epochs=epochs,
                                  lr=lr, weight_decay=weight_decay, hidden=hidden, attn=attn, dropout=dropout,
                                  seed=seed)
        probs = predict_bags(model, [bags[r.name] for r in by["test"]])
        test = evaluate_split([r.label for r in by["test"]], probs, [strata[r.name] for r in by["test"]],
                              resamples=resamples, seed=seed)
        per_seed.append({"seed": seed, "best_epoch": hist["best_epoch"], "train_seconds": hist["seconds"],
                         "test": test, "history": hist["history"],
                         "test_probabilities": {r.name: float(p) for r, p in zip(by["test"], probs)}})
        log(f"seed {seed}: best epoch {hist['best_epoch']}, test AUC {test['roc_auc']['value']:.3f}, "
            f"trained in {hist['seconds']:.1f} s")
    n = [rec["n_patches"] for rec in records]
    secs = [rec["seconds"] for rec in records]
    result = {
        "method": "dense gated ABMIL (Ilse et al. 2018) over every tissue patch",
        "command": command or " ".join([Path(sys.executable).name] + sys.argv),
        "manifest": str(Path(manifest).resolve()), "encoder": encoder.spec.to_dict(),
        "settings": {"seeds": list(seeds), "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                     "dropout": dropout, "hidden": hidden, "attn": attn, "min_tissue": min_tissue,
                     "batch": batch, "bootstrap_resamples": resamples, "threads": torch.get_num_threads(),
                     "model_selection": "best val AUC (ties: lower val loss, then earlier epoch)"},
        "splits": {s: len(v) for s, v in by.items()}, "stratum_source": stratum_source,
        "encoding": {"patches_per_slide": _describe(n), "seconds_per_slide": _describe(secs),
                     "encode_seconds_per_patch": sum(r["encode_seconds"] for r in records) / max(1, sum(n)),
                     "read_seconds_per_patch": sum(r["read_seconds"] for r in records) / max(1, sum(n)),
                     "slides_encoded_now": sum(not r["cached"] for r in records),
                     "slides_from_files": sum(bool(r["cached"]) for r in records), "wall_seconds": encode_wall,
                     "features_folder": str(feature_dir(features_root, encoder.spec))},
        "slides": [{k: rec[k] for k in ("slide_name", "label", "split", "n_patches", "seconds", "cached", "h5")}
                   | {"stratum": strata[r.name]} for r, rec in zip(rows, records)],
        "per_seed": per_seed, "summary": summarise(per_seed),
    }
    path = out / "dense_abmil.json"
    tmp = out / f".dense_abmil.tmp-{os.getpid()}.json"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    for line in table(result):
        log(line)
    return result


def _describe(values) -> dict:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "min": float(np.min(values)),
            "max": float(np.max(values))}


def _strata(rows, mpp: float) -> tuple[dict[str, str], str]:
    if all(r.stratum for r in rows):
        return {r.name: r.stratum for r in rows}, "manifest"
    return ({r.name: r.stratum or derived_stratum(r, truth_boxes(r.path), r.mpp or _slide_mpp(r)) for r in rows},
            "derived: largest lesion's longest side in the .lesions.json boxes")


def _slide_mpp(row) -> float:
    with open_cohort_slide(row) as slide:
        return float(slide.mpp)


def table(result: dict) -> list[str]:
    """The printed table: one row per seed and the mean ± sd."""
    strata = sorted(result["summary"]["per_stratum"])
    head = "| seed | best epoch | test AUC [95 % CI] | bal. acc. @0.5 | " + " | ".join(
        f"{s} ({_kind(s)})" for s in strata) + " | train s |"
    lines = [f"dense gated ABMIL, encoder {result['encoder']['name']} (D={result['encoder']['dim']}), "
             f"test slides: {result['splits']['test']}", head, "|---" * (5 + len(strata)) + "|"]
    for r in result["per_seed"]:
        t = r["test"]
        cells = [f"{t['per_stratum'][s]['recall']:.2f} (n={t['per_stratum'][s]['n']})"
                 if s in t.get("per_stratum", {}) else "-" for s in strata]
        lines.append(f"| {r['seed']} | {r['best_epoch']} | {t['roc_auc']['value']:.3f} "
                     f"[{t['roc_auc']['ci_low']:.2f}, {t['roc_auc']['ci_high']:.2f}] | "
                     f"{t['balanced_accuracy']['value']:.3f} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} |")
    s = result["summary"]

    def ms(d, digits=3):
        return "-" if d["mean"] is None else f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"

    lines.append(f"| mean ± sd | {ms(s['best_epoch'], 1)} | {ms(s['roc_auc'])} | {ms(s['balanced_accuracy'])} | "
                 + " | ".join(ms(s["per_stratum"][k], 2) for k in strata) + f" | {ms(s['train_seconds'], 1)} |")
    e = result["encoding"]
    lines.append(f"encoder calls (patches) per slide: mean {e['patches_per_slide']['mean']:.0f}, median "
                 f"{e['patches_per_slide']['median']:.0f} (min {e['patches_per_slide']['min']:.0f}, max "
                 f"{e['patches_per_slide']['max']:.0f}); encode s per slide: mean "
                 f"{e['seconds_per_slide']['mean']:.2f}, "
                 f"median {e['seconds_per_slide']['median']:.2f} ({e['read_seconds_per_patch'] * 1e3:.2f} ms read + "
                 f"{e['encode_seconds_per_patch'] * 1e3:.2f} ms encode per patch); {e['slides_encoded_now']} slides "
                 f"encoded now, {e['slides_from_files']} from their files")
    lines.append(f"strata: {result['stratum_source']}")
    return lines


def _kind(stratum: str) -> str:
    return "spec." if stratum == "normal" else "sens."


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--spec", required=True, help="encoder spec: JSON file (e.g. lesion_encoder.py's spec.json) "
                                                 "or registry name")
    p.add_argument("--weights", help="the encoder's weights / .pt2 / TorchScript file (overrides the spec's)")
    p.add_argument("--out", required=True)
    p.add_argument("--features", help="folder of the per-slide HDF5 files (default OUT/features)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--attn", type=int, default=64)
    p.add_argument("--min-tissue", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64, help="patches per encoder call")
    p.add_argument("--workers", type=int, default=1, help="tile-decoding threads of the patch reader")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the CIs")
    a = p.parse_args(argv)
    set_threads(a.threads)
    run_dense(a.manifest, a.spec, a.out, weights=a.weights, features_root=a.features,
              seeds=[int(s) for s in a.seeds.split(",") if s.strip()], epochs=a.epochs, lr=a.lr,
              weight_decay=a.weight_decay, dropout=a.dropout, hidden=a.hidden, attn=a.attn,
              min_tissue=a.min_tissue, batch=a.batch, workers=a.workers, resamples=a.resamples)


if __name__ == "__main__":
    main()
