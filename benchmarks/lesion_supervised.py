"""Can `ats-wsi train`'s default feature net tell a lesion patch from a look-alike when it is told which is which?

The control experiment for issue 23's diagnosis: patches centred in the
ground-truth lesion and follicle boxes of a labelled synthetic cohort
(``<stem>.lesions.json``), at the training patch size and µm/px, train the
default feature net (``feature-small`` with ``cli/train.py``'s
``FEATURE_DEFAULTS``) plus a linear layer with the patch labels, on the
train-split slides' patches; the held-out accuracy on the test-split slides'
patches is printed every ``--every`` steps. If it learns in tens of steps, the
net is not what keeps attention sampling at chance from scratch: the slide
label's signal per step is.

Usage::

    .venv/bin/python benchmarks/lesion_supervised.py MANIFEST [--steps 400] [--batch 32] [--lr 3e-3] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesion_common import make_reader, open_cohort_slide, read_cohort_slides, truth_boxes  # noqa: E402

from ats_wsi.cli.train import FEATURE_DEFAULTS  # noqa: E402
from ats_wsi.nets import create_feature_net  # noqa: E402


def box_patches(rows, split: str, rng: np.random.Generator, *, mpp: float, patch_px: int, per_lesion: int = 8,
                per_decoy: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches centred in the middle half of each lesion (label 1) and follicle (label 0) box of a split."""
    pixels, labels = [], []
    for row in rows:
        if row.split != split:
            continue
        boxes = truth_boxes(row.path)
        with open_cohort_slide(row) as slide:
            reader = make_reader(slide, mpp, patch_px)
            side = patch_px * reader.resolution.downsample
            xy, lab = [], []
            for label, key, k in ((1, "lesions", per_lesion), (0, "decoys", per_decoy)):
                for x, y, w, h in boxes[key]:
                    cx = x + w / 2 + rng.uniform(-0.25, 0.25, k) * w
                    cy = y + h / 2 + rng.uniform(-0.25, 0.25, k) * h
                    xy += np.stack([cx - side / 2, cy - side / 2], 1).round().astype(np.int64).tolist()
                    lab += [label] * k
            if xy:
                pixels.append(reader.read(np.asarray(xy)))
                labels += lab
            reader.close()
    return torch.cat(pixels), torch.tensor(labels)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--patch-px", type=int, default=128)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    rows = read_cohort_slides(a.manifest)
    xtr, ytr = box_patches(rows, "train", rng, mpp=a.mpp, patch_px=a.patch_px)
    xte, yte = box_patches(rows, "test", rng, mpp=a.mpp, patch_px=a.patch_px)
    print(f"train {len(ytr)} patches ({int(ytr.sum())} lesion), test {len(yte)} ({int(yte.sum())} lesion)")
    dim = FEATURE_DEFAULTS["feature_dim"]
    net = nn.Sequential(create_feature_net("feature-small", out_features=dim, **FEATURE_DEFAULTS["feature_kwargs"]),
                        nn.ReLU(), nn.Linear(dim, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr)

    def norm(x):
        return (x.float() / 255 - 0.5) / 0.25

    t0 = time.perf_counter()
    print("| step | training loss | held-out accuracy | lesion recall | follicle recall | s |\n|---|---|---|---|---|---|")
    for step in range(1, a.steps + 1):
        idx = torch.randint(len(ytr), (a.batch,))
        loss = nn.functional.cross_entropy(net(norm(xtr[idx])), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            with torch.no_grad():
                pred = net(norm(xte)).argmax(1)
            acc = float((pred == yte).float().mean())
            rec1 = float((pred[yte == 1] == 1).float().mean())
            rec0 = float((pred[yte == 0] == 0).float().mean())
            print(f"| {step} | {loss.item():.3f} | {acc:.3f} | {rec1:.3f} | {rec0:.3f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
