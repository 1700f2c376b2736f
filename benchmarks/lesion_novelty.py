"""Does an encoder's geometry let the novelty pick find the lesion? (issue 23, round six)

With a frozen encoder, ``ats-wsi train``'s instance loss has each positive slide
train the remembered patch farthest (Euclidean, in feature space) from every
patch of the negative slides (docs/training.md, "Which patch a positive slide
trains"). Whether that patch is on the lesion depends on the encoder alone, so
it can be measured in a minute, before any 20-minute training run:

1. read the linear probe's labelled patches of the manifest's training slides
   (``lesion_encoder.probe_patches``: lesion / follicle / other tissue by the
   ground-truth boxes, ambiguous rims left out; at most ``--per-class`` spots
   and ``--other`` plain patches a slide);
2. for each encoder spec given, encode them, and score every patch of a
   positive slide by its distance to the nearest patch of any negative slide;
3. print the AUC of that score for lesion patches against the positive slides'
   other patches, and in how many positive slides the farthest patch is on the
   lesion.

Usage::

    .venv/bin/python benchmarks/lesion_novelty.py MANIFEST ENC1/spec.json [ENC2/spec.json ...]
        [--patches-cache FILE.pt]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesion_common import read_cohort_slides  # noqa: E402
from lesion_encoder import encode_pixels, probe_patches  # noqa: E402

from ats_wsi.metrics import roc_auc  # noqa: E402


def novelty(features: list[torch.Tensor], sets: list[dict]) -> dict:
    """The novelty pick's AUC (lesion vs the rest of the positive slides) and how often it picks a lesion."""
    negatives = torch.cat([f for f, s in zip(features, sets) if s["label"] == 0])
    scores, is_lesion, picks = [], [], []
    for f, s in zip(features, sets):
        if s["label"] != 1:
            continue
        distance = torch.cdist(f, negatives).min(1).values.numpy()
        scores.append(distance)
        is_lesion.append(s["truth"] == 2)
        if (s["truth"] == 2).any():
            picks.append(bool(s["truth"][int(np.argmax(distance))] == 2))
    auc = roc_auc(np.concatenate(is_lesion).astype(int), np.concatenate(scores))
    return {"auc": float(auc), "lesion_picked": int(sum(picks)), "positive_slides": len(picks)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("specs", nargs="+", help="encoder spec JSON files (or registry names)")
    p.add_argument("--per-class", type=int, default=30, help="lesion and follicle patches a slide, at most")
    p.add_argument("--other", type=int, default=40, help="other-tissue patches a slide, at most")
    p.add_argument("--patches-cache", help="keep the read patches in this .pt file for the next run")
    args = p.parse_args(argv)
    from ats_wsi.encoders import build_encoder, load_spec

    cache = Path(args.patches_cache) if args.patches_cache else None
    if cache is not None and cache.is_file():
        sets = torch.load(cache, weights_only=False)
    else:
        rows = [r for r in read_cohort_slides(args.manifest) if r.split == "train"]
        sets = probe_patches(rows, mpp=0.5, patch_px=128, max_other=args.other, max_spot=args.per_class, seed=0)
        labels = {r.name: r.label for r in rows}
        for s in sets:
            s["label"] = labels[s["slide"]]
        if cache is not None:
            torch.save(sets, cache)
    print("| encoder | novelty AUC, lesion vs rest | farthest patch on the lesion |")
    print("|---|---:|---:|")
    for spec in args.specs:
        encode = build_encoder(load_spec(spec))
        found = novelty([torch.from_numpy(encode_pixels(encode, s["pixels"])) for s in sets], sets)
        print(f"| {spec} | {found['auc']:.3f} | {found['lesion_picked']} / {found['positive_slides']} |", flush=True)


if __name__ == "__main__":
    main()
