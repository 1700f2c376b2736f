"""Why attention sampling does or does not learn a small lesion: per-epoch measurements
of a training run on a labelled synthetic cohort (ground truth in ``<stem>.lesions.json``).

Per epoch, on the training slides as they are trained (``train(on_slide=...)``):

- ``hit``: the share of a positive slide's draws whose box overlaps its lesion
  (the signal the head and the attention can learn from);
- ``decoy``: the share of all draws on a look-alike (follicle/decoy);
- ``p|pos``, ``p|neg``: the slide head's mean probability of the positive class;

and after the epoch, on up to ``--probe`` training positives with the weights of
that moment (no update):

- ``|g_ce|``, ``|g_ent|``, ``|g_dis|``: the norm of the attention net's gradient
  from the slide loss, the entropy term and the distillation loss, each alone
  (the draws seeded, the same for all three);
- ``head_df``: what the head sees: the logit difference (positive − negative
  class) of a lesion patch minus that of the other drawn patches, averaged (0:
  the head cannot tell them apart), by the instance head where the model has
  one, else by the slide head applied to single patches.

Then the best checkpoint (by validation AUC) predicts the test split: AUC, the
share of sampled patches on the lesion. Everything goes to ``OUT/diagnose.json``.

Usage::

    .venv/bin/python benchmarks/lesion_diagnose.py MANIFEST OUT [--settings JSON] [--probe 4]

``--settings`` is ``{"model": {ModelConfig keys}, "train": {TrainSettings keys}}``
over this script's defaults (the demo's small model at 8 µm/px, patches of 128 px
at 0.5 µm/px).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ats_wsi.classifier import ModelConfig, load_model  # noqa: E402
from ats_wsi.data.manifest import read_cohort  # noqa: E402
from ats_wsi.metrics import roc_auc  # noqa: E402
from ats_wsi.run._aids import distill_loss  # noqa: E402
from ats_wsi.run.train import TrainSettings, forward_slide, train  # noqa: E402
from lesion_common import truth_boxes  # noqa: E402

MODEL = dict(n_classes=2, attention_net="attention-small", attention_kwargs={"hidden": 8, "layers": 3, "pool": 4},
             feature_net="feature-small", feature_kwargs={"widths": [16, 32, 64], "stem_stride": 2, "norm": "none"},
             feature_dim=32, n_patches=16, patch_size=128, low_mpp=8.0, low_downsample=None, patch_mpp=0.5,
             entropy=0.01)
TRAIN = dict(epochs=30, batch_size=6, lr=3e-3, attention_lr=1e-2, schedule="cosine", select="auc", workers=2)


def truth_of(path) -> dict:
    """The slide's ground truth (``lesions`` and ``decoys`` boxes, level-0 px), read once per slide."""
    return _truth(str(path))


@functools.lru_cache(maxsize=None)
def _truth(path: str) -> dict:
    return truth_boxes(path)


def overlaps(boxes, targets) -> np.ndarray:
    """bool per box of ``boxes [n, 4]`` (x, y, w, h): overlaps any of ``targets``."""
    out = np.zeros(len(boxes), bool)
    for lx, ly, lw, lh in targets:
        out |= (boxes[:, 0] < lx + lw) & (lx < boxes[:, 0] + boxes[:, 2]) & \
               (boxes[:, 1] < ly + lh) & (ly < boxes[:, 1] + boxes[:, 3])
    return out


def drawn_boxes(item, result, model) -> np.ndarray:
    return item.source("cpu").boxes_level0(result.xy.cpu(), model.sampler.patch_size)[0].numpy()


class Diagnostics:
    """The per-epoch measurements (see the module docstring)."""

    def __init__(self, probe: int, patch: int):
        self.probe, self.patch = probe, patch
        self.epochs: list[dict] = []
        self.now = defaultdict(list)
        self.inputs = {}

    def on_slide(self, epoch, row, item, logits, result):
        self.inputs[str(row.path)] = (row, item)
        t = truth_of(row.path)
        boxes = item.source("cpu").boxes_level0(result.xy.cpu(), self.patch)[0].numpy()
        p = torch.softmax(logits.float(), -1)[0, 1].item()
        if row.label:
            self.now["hit"].append(overlaps(boxes, t["lesions"]).mean())
            self.now["p_pos"].append(p)
        else:
            self.now["p_neg"].append(p)
        self.now["decoy"].append(overlaps(boxes, t["decoys"]).mean())

    def probe_gradients(self, model, epoch: int) -> dict:
        """Attention-net gradient norms of each loss term alone, and the head's view, on training positives."""
        positives = [(r, it) for r, it in self.inputs.values() if r.label][: self.probe]
        params = [p for p in model.sampler.attention_net.parameters() if p.requires_grad]
        out = defaultdict(list)
        model.train()
        for k, (row, item) in enumerate(positives):
            gen = torch.Generator().manual_seed(1000 + 31 * epoch + k)
            logits, result = forward_slide(model, item, gen, "cpu")
            terms = {"g_ce": F.cross_entropy(logits, torch.tensor([row.label])), "g_ent": result.entropy_loss}
            if model.instance_head is not None and result.sampled_logits is not None:
                terms["g_dis"] = distill_loss(result.sampled_logits[0], model.instance_logits(result)[0])
            for name, value in terms.items():
                if not value.requires_grad:
                    out[name].append(0.0)
                    continue
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                out[name].append(float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))))
            hit = overlaps(drawn_boxes(item, result, model), truth_of(row.path)["lesions"])
            if hit.any() and (~hit).any():
                with torch.no_grad():
                    per_patch = model.instance_head if model.instance_head is not None else model.head
                    each = per_patch(result.patch_features[0].float())  # [n, C]
                    margin = (each[:, 1] - each[:, 0]).numpy()
                out["head_df"].append(float(margin[hit].mean() - margin[~hit].mean()))
        model.zero_grad(set_to_none=True)
        return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--settings", default="{}", help='JSON {"model": {...}, "train": {...}} over the defaults')
    ap.add_argument("--probe", type=int, default=4, help="training positives probed for gradients per epoch")
    ap.add_argument("--samples", type=int, default=1, help="draws averaged per test slide")
    ap.add_argument("--encoder", metavar="SPEC", help="a frozen pretrained encoder (spec JSON or registered name) "
                                                      "as the feature net, with a feature cache in OUT/cache")
    args = ap.parse_args(argv)
    given = json.loads(args.settings)
    model_kw, train_kw = {**MODEL, **given.get("model", {})}, {**TRAIN, **given.get("train", {})}
    if args.encoder:
        from ats_wsi.encoders import load_spec

        spec = load_spec(args.encoder)
        model_kw.update(feature_spec=spec.to_dict(), feature_frozen=True, feature_net=f"encoder:{spec.name}",
                        feature_dim=spec.dim, patch_mpp=spec.mpp, patch_size=spec.patch_px)
        model_kw.pop("feature_kwargs", None)
        train_kw.setdefault("feature_cache", str(Path(args.out) / "cache"))
    diag = Diagnostics(args.probe, model_kw["patch_size"])
    out = Path(args.out)
    grabbed = {}
    import ats_wsi.run.train as train_module

    original = train_module.set_exploration

    def grab(model, settings, epoch):  # the live model, for the gradient probe after each epoch
        grabbed["model"] = model
        original(model, settings, epoch)

    def on_epoch(m):
        now, diag.now = diag.now, defaultdict(list)
        row = dict(epoch=m.epoch, loss=m.train_loss, acc=m.train_acc, val_auc=m.val_auc, seconds=m.seconds,
                   hit=float(np.mean(now["hit"])), decoy=float(np.mean(now["decoy"])),
                   p_pos=float(np.mean(now["p_pos"])), p_neg=float(np.mean(now["p_neg"])))
        row.update(diag.probe_gradients(grabbed["model"], m.epoch) if args.probe else {})
        diag.epochs.append(row)
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)

    train_module.set_exploration = grab
    t0 = time.perf_counter()
    try:
        train(args.manifest, out, ModelConfig(**model_kw), TrainSettings(**train_kw), progress=False,
              on_epoch=on_epoch, on_slide=diag.on_slide)
    finally:
        train_module.set_exploration = original
    train_seconds = time.perf_counter() - t0
    test = evaluate(out / "best.pt", args.manifest, args.samples)
    report = dict(command=" ".join(sys.argv), model=model_kw, train=train_kw, epochs=diag.epochs,
                  train_seconds=train_seconds, test=test)
    (out / "diagnose.json").write_text(json.dumps(report, indent=1))
    print(f"RESULT {out}: test AUC {test['auc']:.3f} (n={test['n']}), lesion share of test draws "
          f"{test['hit']:.3f}, train {train_seconds:.0f} s", flush=True)
    return 0


def evaluate(checkpoint, manifest, samples: int) -> dict:
    """Test-split AUC of a checkpoint, and the share of its draws on the lesion in positives."""
    model = load_model(checkpoint)
    rows = read_cohort(manifest).split("test")
    probs, labels, hits = [], [], []
    for row in rows:
        pred = model.predict(row.path, samples=samples, seed=0)
        probs.append(pred.probabilities)
        labels.append(row.label)
        if row.label:
            hits.append(overlaps(pred.boxes_xywh, truth_of(row.path)["lesions"]).mean())
    return dict(auc=float(roc_auc(labels, np.stack(probs))), n=len(rows), hit=float(np.mean(hits)),
                probabilities=[float(p[1]) for p in probs], labels=labels)


if __name__ == "__main__":
    sys.exit(main())
