"""A small self-supervised patch encoder for the lesion benchmark (issue 23), and its linear probe.

Foundation-model weights cannot be downloaded here, so this trains one from the
cohort itself, without labels:

1. sample random tissue patches (``--patch-px`` pixels at ``--mpp`` µm/px; default
   128 px at 0.5 µm/px) from the train-split slides of a manifest, read through
   :class:`ats_wsi.patches.PatchReader` (tissue: ``Slide.tissue_mask``; labels are
   never read);
2. train ``SimCLRNet`` of :mod:`ats_wsi.encoders.simclr` (what ``ats-wsi pretrain`` trains; a stride-2 stem and three stride-2 blocks of two 3x3
   convolutions with BatchNorm, global average pooling, D = ``--dim``) with SimCLR's
   InfoNCE loss (NT-Xent, Chen et al. 2020) on two augmented views of each
   patch: a random crop (60-100 % of the side) rescaled to the patch, flips and
   90° rotations (one ``grid_sample``), HED stain jitter (Ruifrok-Johnston
   stain vectors: each stain scaled by 1 ± 0.05 and shifted by ± 0.05 OD), RGB
   brightness/contrast jitter and random greyscale; projector 2-layer MLP to
   64-d, temperature 0.2, Adam;
3. write ``encoder.pt2`` (``torch.export``, dynamic batch) and ``spec.json`` (source
   ``export``, ``mpp``/``patch_px``/``input_px``, ``dim``, the pool's mean/std,
   pooling ``model``), load them back through :func:`ats_wsi.encoders.build_encoder`
   and check that it gives the in-memory net's features;
4. linear probe: patches of held-out slides labelled by the ground-truth boxes
   (lesion / decoy / other tissue, :func:`lesion_common.patch_truth`), a
   scikit-learn logistic regression on the frozen, standardised features,
   trained on the train-split slides' patches and scored on the val + test
   slides' patches; the same probe on the untrained net (same seed) and on the
   patches' mean/sd colour shows what the training bought.

Use it with ats-wsi::

    ats-wsi train MANIFEST --feature-net OUT/encoder.pt2 --feature-spec OUT/spec.json \\
        --freeze-features --feature-cache DIR ...

An existing encoder instead of training one (UNI, Virchow2, ...: a registry name or a JSON spec,
with a local weights file)::

    .venv/bin/python benchmarks/lesion_encoder.py MANIFEST --out OUT --spec uni --weights /models/uni/pytorch_model.bin

writes ``OUT/spec.json`` (the resolved spec: weights' place and sha256) and runs the linear probe
with that encoder. UNTESTED here: no foundation weights (nor a working timm) on this machine; the
code path is the one ``ats-wsi`` itself uses (``build_encoder``), and ``lesion_dense.py --spec
OUT/spec.json`` takes the result.

Usage::

    .venv/bin/python benchmarks/lesion_encoder.py MANIFEST --out DIR [--patches 2048] [--steps 200]
        [--batch 64] [--dim 128] [--seed 0] [--threads 2] [--probe-other 40]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesion_common import (PATCH_CLASSES, make_reader, open_cohort_slide, patch_truth,  # noqa: E402
                           read_cohort_slides, read_patches, set_threads, tissue_grid, truth_boxes)

from ats_wsi.encoders.simclr import SimCLRNet as SmallCNN  # noqa: E402,F401  (the net, for the probe's untrained row)
from ats_wsi.encoders.simclr import SimCLRSettings, augment, export_encoder, pool_mean_std, train_simclr  # noqa: E402,F401


# --------------------------------------------------------------------------- the patches

def sample_patches(rows, n: int, *, mpp: float = 0.5, patch_px: int = 128, min_tissue: float = 0.5,
                   seed: int = 0, workers: int = 1) -> torch.Tensor:
    """``n`` random tissue patches (uint8 ``[n, 3, patch_px, patch_px]``) from the slides ``rows``.

    Each slide gives an equal share. A patch is a tissue grid cell (at least ``min_tissue``
    tissue, :func:`lesion_common.tissue_grid`) shifted by a random offset of up to half a patch,
    so patches need not lie on the grid. Labels and ground truth are not read.
    """
    rng = np.random.default_rng(seed)
    share = np.full(len(rows), n // len(rows))
    share[: n - share.sum()] += 1
    out = []
    for row, k in zip(rows, share):
        if not k:
            continue
        with open_cohort_slide(row) as slide:
            coords, _, step = tissue_grid(slide, mpp=mpp, patch_px=patch_px, min_tissue=min_tissue)
            if not len(coords):
                coords, _, step = tissue_grid(slide, mpp=mpp, patch_px=patch_px, min_tissue=0.0)
            pick = coords[rng.integers(0, len(coords), size=int(k))]
            jitter = rng.integers(-int(step // 2), int(step // 2) + 1, size=pick.shape)
            w, h = slide.dimensions
            xy = np.clip(pick + jitter, 0, [max(0, w - int(math.ceil(step))), max(0, h - int(math.ceil(step)))])
            reader = make_reader(slide, mpp, patch_px, workers)
            out += [b for _, b in read_patches(reader, xy)]
            reader.close()
    return torch.cat(out).contiguous()


# --------------------------------------------------------------------------- training (ats_wsi.encoders.simclr)

def train_encoder(patches: torch.Tensor, *, dim: int = 128, steps: int = 200, batch: int = 64, lr: float = 2e-3,
                  temperature: float = 0.2, seed: int = 0, mean=None, std=None, log=None):
    """:func:`ats_wsi.encoders.simclr.train_simclr` with this script's arguments; ``log(step, loss)`` every 10 steps."""
    settings = SimCLRSettings(steps=steps, batch=batch, lr=lr, temperature=temperature, dim=dim, seed=seed)

    def every_tenth(step, loss):
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log(step, loss)

    return train_simclr(patches, settings, mean=mean, std=std, on_step=every_tenth)


# --------------------------------------------------------------------------- export and load back

def check_export(spec_path, net: SmallCNN, patches: torch.Tensor) -> dict:
    """Load ``spec_path`` through ``ats_wsi.encoders.build_encoder`` (frozen) and compare its features on
    uint8 ``patches`` with the in-memory net's (normalised the spec's way): the largest absolute difference."""
    from ats_wsi.encoders import build_encoder, load_spec

    spec = load_spec(str(spec_path))
    encoder = build_encoder(spec, frozen=True)
    m, s = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        loaded = encoder(patches)
        direct = net.eval()((patches.float().div(255) - m) / s)
    diff = float((loaded - direct).abs().max())
    return {"max_abs_diff": diff, "shape": list(loaded.shape), "feature_scale": float(direct.abs().mean()),
            "spec_digest": encoder.spec.digest()}


# --------------------------------------------------------------------------- linear probe

def probe_patches(rows, *, mpp: float, patch_px: int, max_other: int = 40, max_spot: int = 60, seed: int = 0,
                  workers: int = 1) -> list[dict]:
    """Per slide: the labelled grid patches (uint8), every class capped per slide (lesion and decoy at
    ``max_spot``, other tissue at ``max_other``, drawn at random), ambiguous ones left out."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        with open_cohort_slide(row) as slide:
            coords, _, step = tissue_grid(slide, mpp=mpp, patch_px=patch_px, min_tissue=0.25)
            truth = patch_truth(coords, step, truth_boxes(row.path))
            keep = []
            for cls, cap in ((0, max_other), (1, max_spot), (2, max_spot)):
                idx = np.flatnonzero(truth == cls)
                keep.append(rng.permutation(idx)[:cap] if len(idx) > cap else idx)
            keep = np.sort(np.concatenate(keep))
            if not len(keep):
                continue
            reader = make_reader(slide, mpp, patch_px, workers)
            pixels = torch.cat([b for _, b in read_patches(reader, coords[keep])])
            reader.close()
        out.append({"slide": row.name, "split": row.split, "pixels": pixels, "truth": truth[keep]})
    return out


def encode_pixels(encode, pixels: torch.Tensor, batch: int = 128) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([encode(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]).numpy()


def colour_features(pixels: torch.Tensor) -> torch.Tensor:
    """Mean and sd of each RGB channel: the probe's colour-only baseline."""
    x = pixels.float().div(255)
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)


def linear_probe(features: list[np.ndarray], sets: list[dict], seed: int = 0) -> dict:
    """Logistic regression on features of the train-split slides' patches, scored on the other slides'.

    Returns accuracy, balanced accuracy and per-class recall on the held-out patches (three classes:
    other / decoy / lesion), and the lesion-vs-decoy accuracy among held-out spot patches (the
    distinction only the high-resolution texture makes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = [i for i, s in enumerate(sets) if s["split"] == "train"]
    held = [i for i, s in enumerate(sets) if s["split"] != "train"]
    if not train or not held:
        raise ValueError("the linear probe needs patches of train-split slides and of val/test slides")
    xtr, ytr = np.concatenate([features[i] for i in train]), np.concatenate([sets[i]["truth"] for i in train])
    xte, yte = np.concatenate([features[i] for i in held]), np.concatenate([sets[i]["truth"] for i in held])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))
    clf.fit(xtr, ytr)
    pred = clf.predict(xte)
    cm = confusion_matrix(yte, pred, labels=[0, 1, 2])
    recall = {PATCH_CLASSES[k]: float(cm[k, k] / cm[k].sum()) if cm[k].sum() else None for k in range(3)}
    spots = yte > 0  # lesion and decoy patches: right when the 3-class prediction is their class
    spot_acc = float(np.mean(pred[spots] == yte[spots])) if spots.any() else None
    return {"accuracy": float(accuracy_score(yte, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
            "recall": recall, "lesion_vs_decoy_accuracy": spot_acc,
            "confusion": cm.tolist(), "n_train": {PATCH_CLASSES[k]: int((ytr == k).sum()) for k in range(3)},
            "n_test": {PATCH_CLASSES[k]: int((yte == k).sum()) for k in range(3)},
            "train_slides": len(train), "test_slides": len(held)}


def probe_report(rows, encoders: dict, *, mpp: float, patch_px: int, max_other: int = 40, seed: int = 0,
                 workers: int = 1) -> dict:
    """:func:`linear_probe` of each ``encoders[name]`` (uint8 patches -> features) on the same patches."""
    sets = probe_patches(rows, mpp=mpp, patch_px=patch_px, max_other=max_other, seed=seed, workers=workers)
    out = {}
    for name, encode in encoders.items():
        feats = [encode_pixels(encode, s["pixels"]) for s in sets]
        out[name] = linear_probe(feats, sets, seed=seed)
    return out


# --------------------------------------------------------------------------- the script

def run(manifest, out_dir, *, patches: int = 2048, steps: int = 200, batch: int = 64, dim: int = 128,
        lr: float = 2e-3, mpp: float = 0.5, patch_px: int = 128, seed: int = 0, probe: bool = True,
        probe_other: int = 40, spec: str | None = None, weights: str | None = None, workers: int = 1,
        log=print) -> dict:
    """Train (or take, with ``spec``) the encoder, write ``encoder.pt2``/``spec.json``, probe it; the record."""
    from ats_wsi.encoders import build_encoder

    rows = read_cohort_slides(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"manifest": str(Path(manifest).resolve()), "command": " ".join(sys.argv)}
    if spec is not None:  # an existing encoder (UNI, Virchow2, ...): untested here, see the module docstring
        encoder = build_encoder(spec, weights=weights, frozen=True)
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(encoder.spec.to_dict(), indent=1))
        record.update(encoder=encoder.spec.to_dict(), spec_path=str(spec_path))
        mpp, patch_px = encoder.spec.mpp, encoder.spec.patch_px
        encoders = {encoder.spec.name: encoder, "colour mean/sd": colour_features}
    else:
        train_rows = [r for r in rows if r.split == "train"]
        t0 = time.perf_counter()
        pool = sample_patches(train_rows, patches, mpp=mpp, patch_px=patch_px, seed=seed, workers=workers)
        record["sample_seconds"] = time.perf_counter() - t0
        log(f"{len(pool)} unlabelled patches from {len(train_rows)} train slides "
            f"in {record['sample_seconds']:.1f} s")
        mean, std = pool_mean_std(pool)
        net, record["training"] = train_encoder(
            pool, dim=dim, steps=steps, batch=batch, lr=lr, seed=seed, mean=mean, std=std,
            log=lambda i, loss: log(f"step {i:4d}  InfoNCE {loss:.3f}"))
        pt2, spec_path = export_encoder(net, out, mean=mean, std=std, mpp=mpp, patch_px=patch_px,
                                        name="lesion-simclr")
        record["export_check"] = check_export(spec_path, net, pool[:32])
        record.update(encoder_file=str(pt2), spec_path=str(spec_path))
        log(f"wrote {pt2} and {spec_path}; loaded back: max |diff| {record['export_check']['max_abs_diff']:.2e}")
        encoder = build_encoder(str(spec_path), frozen=True)
        torch.manual_seed(seed)
        untrained = SmallCNN(dim).eval()
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        encoders = {"SimCLR (this encoder)": encoder,
                    "untrained SmallCNN": lambda p: untrained((p.float().div(255) - m) / s),
                    "colour mean/sd": colour_features}
    if probe:
        t0 = time.perf_counter()
        record["probe"] = probe_report(rows, encoders, mpp=mpp, patch_px=patch_px, max_other=probe_other,
                                       seed=seed, workers=workers)
        record["probe_seconds"] = time.perf_counter() - t0
        for line in probe_table(record["probe"]):
            log(line)
    (out / "encoder_record.json").write_text(json.dumps(record, indent=1))
    return record


def probe_table(probe: dict) -> list[str]:
    lines = ["| features | accuracy | balanced acc. | recall other / decoy / lesion | lesion vs decoy |",
             "|---|---:|---:|---:|---:|"]
    for name, r in probe.items():
        rec = " / ".join("-" if r["recall"][k] is None else f"{r['recall'][k]:.2f}" for k in PATCH_CLASSES)
        lvd = "-" if r["lesion_vs_decoy_accuracy"] is None else f"{r['lesion_vs_decoy_accuracy']:.3f}"
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {rec} | {lvd} |")
    if probe:
        r = next(iter(probe.values()))
        lines.append(f"held-out patches ({r['test_slides']} val/test slides): {r['n_test']}; "
                     f"train patches ({r['train_slides']} slides): {r['n_train']}")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for encoder.pt2, spec.json, encoder_record.json")
    p.add_argument("--patches", type=int, default=2048, help="unlabelled patches sampled for training")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64, help="patches per step (two views each)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--patch-px", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="tile-decoding threads of the patch reader")
    p.add_argument("--probe-other", type=int, default=40, help="'other tissue' patches per slide in the probe")
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--spec", help="use this encoder (registry name or JSON spec) instead of training one "
                                  "(untested here: no foundation weights on this machine)")
    p.add_argument("--weights", help="with --spec: the local weights file or folder")
    a = p.parse_args(argv)
    set_threads(a.threads)
    run(a.manifest, a.out, patches=a.patches, steps=a.steps, batch=a.batch, dim=a.dim, lr=a.lr, mpp=a.mpp,
        patch_px=a.patch_px, seed=a.seed, probe=not a.no_probe, probe_other=a.probe_other, spec=a.spec,
        weights=a.weights, workers=a.workers)


if __name__ == "__main__":
    main()
