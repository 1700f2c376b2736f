"""A frozen ViT-S-sized encoder: training epochs with and without the feature cache, and
predict seconds per slide against dense tiling with the same encoder.

The encoder is built from torch alone (timm does not import in the main venv):
a ViT-S/16 in shape (patch 16, 384-d, 12 blocks, 6 heads, MLP 1536, CLS token),
random weights, exported once to a ``.pt2`` and loaded through an encoder spec
(224 px at 0.5 µm/px, 384-d, float32), frozen.

- ``epochs``: the demo (``ats-wsi demo``: its 48 slides of 4096 x 3072 at
  0.5 µm/px, its model and training settings) with the encoder as feature net
  (224 px at 0.5 µm/px, frozen), ``--epochs`` epochs, once without and once
  with ``--feature-cache`` (a fresh folder). The two trainings run in two child
  processes that take turns epoch by epoch (one runs while the other waits),
  so both see the same machine; each epoch's seconds come from ``train``'s
  metrics, with the cache's hits / lookups.
- ``samples``: ``predict(samples=K)`` on the demo's 12 test slides with the
  model the cached training left (attention trained for ``--epochs``): no
  cache, a fresh cache, and the same cache folder again through a new
  ``FeatureCache`` (features from disk), taking turns per slide.
- ``predict``: ``SlideClassifier.predict`` (the demo's 12 patches, one
  attention map) on libvips slides of ``--sizes`` (0.5 µm/px, the slides of
  ``predict_memory.py``), against dense tiling (CLAM / TRIDENT): every
  224 x 224 tile with tissue under it, read with the same PatchReader and run
  through the same encoder in batches of 32. Dense time is measured on
  ``--dense-tiles`` tiles spread over the slide and extrapolated to all
  tissue tiles (marked ``*``).

Usage::

    .venv/bin/python benchmarks/encoder_cache.py [--epochs 10] [--samples 8] [--sizes 10000 40000 80000] \
        [--dense-tiles 256]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # predict_memory's slides

DATA = Path(__file__).resolve().parent / "_data"
TRAINED = DATA / "encoder_demo48_last.pt"  # left by the cached training


def vit_s():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim=384, heads=6):
            super().__init__()
            self.heads = heads
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(a)
            return x + self.mlp(self.n2(x))

    class ViTS(nn.Module):
        def __init__(self, dim=384, depth=12):
            super().__init__()
            self.embed = nn.Conv2d(3, dim, 16, 16)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
            return self.norm(self.blocks(t))[:, 0]

    torch.manual_seed(0)
    return ViTS().eval()


def encoder_file() -> str:
    import torch

    path = DATA / "vit_s_random.pt2"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(vit_s(), (torch.rand(2, 3, 224, 224),), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(path))
    return str(path)


def spec() -> dict:
    return {"name": "vit-s-random", "source": "export", "weights": encoder_file(), "mpp": 0.5, "patch_px": 224,
            "input_px": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dim": 384}


def config():
    """The demo's model with the encoder as feature net (224 px at 0.5 µm/px, frozen)."""
    from ats_wsi.run.demo import demo_model_config

    base = demo_model_config()
    return dataclasses.replace(base, feature_net="encoder:vit-s-random", feature_kwargs={}, feature_spec=spec(),
                               feature_frozen=True, feature_dim=384, patch_size=224, patch_mpp=0.5)


def demo_set() -> Path:
    """The demo's slides (``ats-wsi demo``'s arguments), written once into ``_data/encoder_demo48``."""
    from ats_wsi.data.synthetic import make_slide_set
    from ats_wsi.run.demo import DemoSettings

    d = DemoSettings()
    return make_slide_set(DATA / "encoder_demo48", n_slides=d.n_slides, size=d.size, seed=d.seed, n_spots=(1, 1),
                          n_lesions=(1, 1), lesion_size_um=d.lesion_size_um, n_levels=3)


def child(mode: str, n: int) -> None:
    """One training (``mode`` "off" or "on"): says it is ready once set up, waits for a line on stdin
    before it starts and after every epoch, and prints each epoch's metrics as a JSON line."""
    import torch

    from ats_wsi.run.demo import DemoSettings
    from ats_wsi.run.train import TrainSettings, train

    torch.set_num_threads(2)
    d = DemoSettings()
    manifest = demo_set()
    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainSettings(epochs=n, batch_size=d.batch_size, lr=d.lr, attention_lr=d.attention_lr,
                                 schedule=d.schedule, seed=d.seed,
                                 feature_cache=os.path.join(tmp, "cache") if mode == "on" else None)

        def turn(m):
            print(json.dumps({"epoch": m.epoch, "seconds": m.seconds, "hits": m.feature_hits,
                              "misses": m.feature_misses, "train_loss": m.train_loss, "val_acc": m.val_acc}),
                  flush=True)
            sys.stdin.readline()  # wait for our next turn

        print(json.dumps({"ready": True}), flush=True)  # imports and slides done: nothing left to overlap
        sys.stdin.readline()
        train(manifest, Path(tmp) / "run", config(), settings, progress=False, on_epoch=turn)
        if mode == "on":  # the trained model, for samples()
            shutil.copyfile(Path(tmp) / "run" / "last.pt", TRAINED)
    print(json.dumps({"done": True}), flush=True)


def epochs(n: int) -> list[str]:
    """Both trainings, taking turns epoch by epoch; the table of their epochs."""
    demo_set()  # written before the clock, once
    procs = {mode: subprocess.Popen([sys.executable, __file__, "--child", mode, "--epochs", str(n)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for mode in ("off", "on")}
    for proc in procs.values():  # both set up before the first epoch runs
        assert json.loads(proc.stdout.readline()).get("ready"), "a training process did not start"
    rows: dict[str, list[dict]] = {"off": [], "on": []}
    live = ["off", "on"]
    while live:
        for mode in list(live):
            proc = procs[mode]
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = json.loads(proc.stdout.readline() or '{"done": true}')
            if line.get("done"):
                live.remove(mode)
                proc.wait()
            else:
                rows[mode].append(line)
    lines = ["| epoch | no cache (s) | cache (s) | cache hits / lookups | train loss off / on |",
             "|---:|---:|---:|---:|---:|"]
    for off, on in zip(rows["off"], rows["on"]):
        lines.append(f"| {off['epoch']} | {off['seconds']:.1f} | {on['seconds']:.1f} | "
                     f"{on['hits']} / {on['hits'] + on['misses']} | {off['train_loss']:.4f} / {on['train_loss']:.4f} |")
    total_off, total_on = (sum(r["seconds"] for r in rows[k]) for k in ("off", "on"))
    hits = sum(r["hits"] for r in rows["on"])
    looked = sum(r["hits"] + r["misses"] for r in rows["on"])
    lines.append(f"| all | {total_off:.1f} | {total_on:.1f} ({total_off / max(total_on, 1e-9):.2f}x) | "
                 f"{hits} / {looked} ({100 * hits / max(looked, 1):.0f} %) | |")
    return lines


def samples(k: int) -> list[str]:
    """``predict(samples=k)`` on the demo's test slides with the model the cached training left:
    no cache, a fresh cache, and the cache again from its folder (a new FeatureCache: disk only);
    per slide the three take turns."""
    import torch

    from ats_wsi import load_model
    from ats_wsi.data.manifest import read_manifest
    from ats_wsi.encoders import FeatureCache, attach_feature_cache

    model = load_model(TRAINED)
    test = [str(r.path) for r in read_manifest(demo_set(), "test")]
    secs = {"off": [], "fresh": [], "disk": []}
    stats = {"fresh": [0, 0], "disk": [0, 0]}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for path in test:
            for mode in ("off", "fresh", "disk"):
                cache = None if mode == "off" else FeatureCache(os.path.join(tmp, "cache"))
                attach_feature_cache(model, cache)
                t0 = time.perf_counter()
                model.predict(path, samples=k, seed=0)
                secs[mode].append(time.perf_counter() - t0)
                if cache is not None:
                    got = cache.take_stats()
                    stats[mode][0] += got["hits"]
                    stats[mode][1] += got["hits"] + got["misses"]
    med = {m: statistics.median(v) for m, v in secs.items()}
    lines = [f"| predict --samples {k}, {len(test)} test slides | s per slide (median) | × no cache | "
             "cache hits / lookups |", "|---|---:|---:|---:|"]
    names = {"off": "no cache", "fresh": "cache, first run", "disk": "cache again (from its folder)"}
    for mode in ("off", "fresh", "disk"):
        hits, looked = stats.get(mode, (0, 0))
        hit = "" if mode == "off" else f"{hits} / {looked} ({100 * hits / looked:.0f} %)"
        lines.append(f"| {names[mode]} | {med[mode]:.2f} | {med['off'] / med[mode]:.2f} | {hit} |")
    return lines


def predict(size: int, dense_tiles: int) -> str:
    import numpy as np
    import torch

    from predict_memory import ensure_slide

    from ats_wsi.classifier import SlideInput, build_model

    path = ensure_slide(size)  # libvips, 0.5 µm/px, written once
    torch.manual_seed(0)
    model = build_model(config()).eval()
    t0 = time.perf_counter()
    pred = model.predict(path, seed=0)
    ats = time.perf_counter() - t0
    with SlideInput(path, model.config) as item, torch.no_grad():
        mask = item.view.mask  # the low view's tissue mask; one cell per 224 px tile
        rows, cols = size // 224, size // 224
        r, c = np.nonzero(_pool(mask, rows, cols))
        tiles = np.stack([c, r], 1) * 224
        pick = tiles[np.linspace(0, len(tiles) - 1, min(dense_tiles, len(tiles))).astype(int)]
        encoder = model.sampler.feature_net
        t0 = time.perf_counter()
        for k in range(0, len(pick), 32):
            patches = item.reader.read(pick[k:k + 32])
            encoder(patches)
        per_tile = (time.perf_counter() - t0) / len(pick)
    dense = per_tile * len(tiles)
    return (f"| {size // 1000}k² | {pred.patches_read} | {ats:.1f} | {len(tiles)} | {dense:.0f}* | "
            f"{dense / ats:.0f}x |")


def _pool(mask, rows, cols):
    import numpy as np

    h, w = mask.shape
    ri = (np.arange(rows + 1) * h) // rows
    ci = (np.arange(cols + 1) * w) // cols
    out = np.zeros((rows, cols), bool)
    for i in range(rows):
        band = mask[ri[i]:max(ri[i + 1], ri[i] + 1)]
        for j in range(cols):
            out[i, j] = band[:, ci[j]:max(ci[j + 1], ci[j] + 1)].any()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 40000, 80000])
    parser.add_argument("--dense-tiles", type=int, default=256)
    parser.add_argument("--skip-epochs", action="store_true")
    parser.add_argument("--samples", type=int, default=8, help="K of the predict --samples K rows (0: none)")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.epochs)
    import torch

    torch.set_num_threads(2)
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    if not args.skip_epochs:
        print("\n".join(epochs(args.epochs)), flush=True)
    if args.samples and TRAINED.exists():
        print("\n" + "\n".join(samples(args.samples)), flush=True)
    print("\n| slide | ATS patches | ATS predict (s) | tissue tiles | dense (s) | dense / ATS |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        print(predict(size, args.dense_tiles), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
