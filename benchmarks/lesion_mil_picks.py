"""Which patch should a positive slide train? The multiple-instance picks, offline, on frozen features.

The diagnosis behind ``--instance-memory`` (issue 23, docs/training.md): with a
frozen encoder, the instance head of ``ats-wsi train`` is a linear layer on
fixed features, so the picks can be compared without the slide reads. This
script reads, per slide of a labelled synthetic cohort (``<stem>.lesions.json``),
up to ``--other`` grid patches of plain tissue, ``--spot`` on follicles and
``--spot`` on the lesion (``lesion_encoder.probe_patches``), encodes them with
the frozen encoder of a checkpoint, then trains a linear instance head on
bags of the train split's slides (a positive bag keeps only ``--lesion-keep``
of its lesion patches: a lesion is a few draws among many) with each rule,
``--steps`` steps of 6 slides, Adam lr 3e-3, for each seed:

- ``top1``: the plain multiple-instance loss (every patch of a negative bag
  negative; a positive bag's patch the head scores highest, positive);
- ``novel``: the same, but a positive bag's patch is the one farthest from
  every negative patch (``ats_wsi.run._aids.InstanceMemory.most_novel``);
- ``mean``: every patch gets its slide's label;
- ``abmil``: gated attention-MIL over the bag (Ilse et al., 2018); its
  attention score is the patch score.

Printed per rule and seed: the patch AUC of lesion against follicle and
against other tissue on the val and test slides, and the slide AUC of the
test slides' largest patch score.

Usage::

    .venv/bin/python benchmarks/lesion_mil_picks.py CHECKPOINT MANIFEST --out feats.npz [--seeds 0,1,2]
    .venv/bin/python benchmarks/lesion_mil_picks.py CHECKPOINT MANIFEST --features feats.npz   # reuse them
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesion_common import read_cohort_slides  # noqa: E402
from lesion_encoder import probe_patches  # noqa: E402

from ats_wsi.classifier import load_model  # noqa: E402
from ats_wsi.metrics import roc_auc  # noqa: E402
from ats_wsi.run._aids import InstanceMemory  # noqa: E402

RULES = ("top1", "novel", "mean", "abmil")


def encode_cohort(checkpoint: str, manifest: str, *, other: int, spot: int) -> dict:
    """Features (``F``), truth (``T``: 0 other, 1 follicle, 2 lesion), slide index (``S``), and per slide
    its label (``Y``) and split (``SP``)."""
    model = load_model(checkpoint).eval()
    rows = read_cohort_slides(manifest)
    sets = probe_patches(rows, mpp=model.config.patch_mpp or 0.5, patch_px=model.config.patch_size,
                         max_other=other, max_spot=spot)
    by_name = {r.name: r for r in rows}
    feats, truth, slide, labels, splits = [], [], [], [], []
    with torch.no_grad():
        for k, s in enumerate(sets):
            px = s["pixels"]
            f = torch.cat([model.sampler.feature_net(px[i:i + 256].float().div(255)) for i in range(0, len(px), 256)])
            feats.append(f.float().numpy())
            truth.append(s["truth"])
            slide += [k] * len(f)
            labels.append(by_name[s["slide"]].label)
            splits.append(by_name[s["slide"]].split)
    return dict(F=np.concatenate(feats), T=np.concatenate(truth), S=np.array(slide), Y=np.array(labels),
                SP=np.array(splits))


def _bags(d: dict, lesion_keep: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    out = []
    for k in np.flatnonzero(d["SP"] == "train"):
        idx = np.flatnonzero(d["S"] == k)
        lesion = idx[d["T"][idx] == 2]
        out.append((np.r_[idx[d["T"][idx] != 2], rng.permutation(lesion)[:lesion_keep]], int(d["Y"][k])))
    return out


def train_rule(d: dict, rule: str, seed: int, *, steps: int, lesion_keep: int, lr: float = 3e-3) -> np.ndarray:
    """Train one rule; the patch scores of every patch of the cohort."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    feats = torch.tensor(d["F"]).float()
    bags = _bags(d, lesion_keep, rng)
    dim = feats.shape[1]
    head = torch.nn.Linear(dim, 2)
    gate = torch.nn.ModuleList([torch.nn.Linear(dim, 64), torch.nn.Linear(dim, 64), torch.nn.Linear(64, 1)])
    params = list(head.parameters()) + (list(gate.parameters()) if rule == "abmil" else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    memory = InstanceMemory(10 ** 6, 1, dim)  # the package's pick, fed every negative bag
    for j, (b, y) in enumerate(bags):
        if y == 0:
            memory.add(f"n{j}", 0, torch.stack([torch.arange(len(b)), torch.zeros(len(b), dtype=torch.long)], 1),
                       feats[b])

    def attention(x):
        return gate[2](torch.tanh(gate[0](x)) * torch.sigmoid(gate[1](x))).squeeze(1)

    for _ in range(steps):
        loss = 0.0
        for j in rng.permutation(len(bags))[:6]:
            b, y = bags[j]
            x = feats[b]
            logits = head(x)
            if rule == "mean":
                loss = loss + F.cross_entropy(logits, torch.full((len(b),), y))
            elif rule == "abmil":
                a = torch.softmax(attention(x), 0)
                loss = loss + F.cross_entropy(head((a[:, None] * x).sum(0, keepdim=True)), torch.tensor([y]))
            elif y == 0:
                loss = loss + F.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long))
            else:
                top = (memory.most_novel(x) if rule == "novel"
                       else int(torch.argmax((logits[:, 1] - logits[:, 0]).detach())))
                loss = loss + F.cross_entropy(logits[top:top + 1], torch.tensor([1]))
        opt.zero_grad()
        (loss / 6).backward()
        opt.step()
    with torch.no_grad():
        if rule == "abmil":
            return attention(feats).numpy()
        logits = head(feats)
        return (logits[:, 1] - logits[:, 0]).numpy()


def score(d: dict, scores: np.ndarray) -> tuple[float, float, float]:
    """Lesion-vs-follicle and lesion-vs-other patch AUCs (val + test slides), test slide AUC of the max."""
    held = np.isin(d["SP"], ["val", "test"])[d["S"]]
    t, s = d["T"][held], scores[held]

    def auc(a, b):
        return roc_auc(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b])

    test = np.flatnonzero(d["SP"] == "test")
    slide = roc_auc(d["Y"][test], np.array([scores[d["S"] == k].max() for k in test]))
    return auc(s[t == 2], s[t == 1]), auc(s[t == 2], s[t == 0]), slide


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint of ats-wsi train with a frozen encoder (its feature net)")
    ap.add_argument("manifest", help="the lesion benchmark's manifest (slides with <stem>.lesions.json)")
    ap.add_argument("--out", help="save the features here (.npz)")
    ap.add_argument("--features", help="reuse features saved with --out")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lesion-keep", type=int, default=3)
    ap.add_argument("--other", type=int, default=120)
    ap.add_argument("--spot", type=int, default=40)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.features:
        d = dict(np.load(args.features))
    else:
        d = encode_cohort(args.checkpoint, args.manifest, other=args.other, spot=args.spot)
        if args.out:
            np.savez(args.out, **d)
    print(f"{len(d['F'])} patches of {len(d['Y'])} slides ({np.bincount(d['T'], minlength=3).tolist()} other/"
          f"follicle/lesion) in {time.perf_counter() - t0:.0f} s")
    print("| rule | seed | lesion vs follicle | lesion vs other | slide AUC (max, test) |\n|---|---|---|---|---|")
    for rule in args.rules.split(","):
        for seed in map(int, args.seeds.split(",")):
            ld, lo, sl = score(d, train_rule(d, rule, seed, steps=args.steps, lesion_keep=args.lesion_keep))
            print(f"| {rule} | {seed} | {ld:.3f} | {lo:.3f} | {sl:.3f} |", flush=True)


if __name__ == "__main__":
    main()
