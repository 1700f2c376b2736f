"""A frozen ViT-S-sized encoder: training epochs with and without the feature cache, and
predict seconds per slide against dense tiling with the same encoder.

The encoder is built from torch alone (timm does not import in the main venv):
a ViT-S/16 in shape (patch 16, 384-d, 12 blocks, 6 heads, MLP 1536, CLS token),
random weights, exported once to a ``.pt2`` and loaded through an encoder spec
(224 px at 0.5 µm/px, 384-d, float32), frozen.

- ``epochs``: ``ats_wsi.run.train`` for ``--epochs`` epochs on a small demo-like
  set (6 synthetic slides of 3072 x 2560 at 0.5 µm/px: 4 train, 2 val; 16
  patches per slide), once without and once with ``--feature-cache``: seconds
  per epoch and the cache's hits / lookups.
- ``predict``: ``SlideClassifier.predict`` (16 patches, one attention map) on a
  synthetic slide of ``--sizes`` (0.5 µm/px), against dense tiling (CLAM /
  TRIDENT): every 224 x 224 tile with tissue under it, read with the same
  PatchReader and run through the same encoder in batches of 32. Dense time is
  measured on ``--dense-tiles`` tiles spread over the slide and extrapolated to
  all tissue tiles (marked ``*``).

Usage::

    .venv/bin/python benchmarks/encoder_cache.py [--epochs 10] [--sizes 10000 40000] [--dense-tiles 256]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "_data"


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


def config(**kw):
    from ats_wsi.classifier import ModelConfig

    s = spec()
    return ModelConfig(n_patches=16, patch_size=224, patch_mpp=0.5, low_downsample=16.0, feature_spec=s,
                       feature_frozen=True, feature_dim=384, feature_net="encoder:vit-s-random",
                       attention_kwargs={"pool": 4}, **kw)


def demo_set(folder: Path) -> Path:
    from ats_wsi.data.synthetic import write_synthetic_slide

    rows = []
    for i in range(6):
        path = folder / f"demo{i}.svs"
        if not path.exists():
            write_synthetic_slide(path, 3072, 2560, n_lesions=i % 2, seed=100 + i, mpp=0.5)
        rows.append(f"{path},{i % 2},{'train' if i < 4 else 'val'}")
    manifest = folder / "demo.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return manifest


def epochs(n: int) -> list[str]:
    from ats_wsi.run.train import TrainSettings, train

    manifest = demo_set(DATA / "encoder_demo")
    lines = ["| epoch | no cache (s) | cache (s) | cache hits / lookups |", "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, cache in (("off", None), ("on", os.path.join(tmp, "cache"))):
            settings = TrainSettings(epochs=n, batch_size=2, feature_cache=cache, workers=2)
            runs[name] = train(manifest, Path(tmp) / name, config(), settings, progress=False)
        for off, on in zip(runs["off"], runs["on"]):
            lines.append(f"| {off.epoch} | {off.seconds:.1f} | {on.seconds:.1f} | "
                         f"{on.feature_hits} / {on.feature_hits + on.feature_misses} |")
        total_off, total_on = (sum(m.seconds for m in runs[k]) for k in ("off", "on"))
        lines.append(f"| all | {total_off:.1f} | {total_on:.1f} | ({total_off / total_on:.2f}x) |")
    return lines


def predict(size: int, dense_tiles: int) -> str:
    import numpy as np
    import torch

    from ats_wsi.classifier import SlideInput, build_model
    from ats_wsi.data.synthetic import write_synthetic_slide

    path = DATA / f"encoder_{size}.svs"
    if not path.exists():
        write_synthetic_slide(path, size, size, seed=11, n_lesions=3, mpp=0.5)
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
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 40000])
    parser.add_argument("--dense-tiles", type=int, default=256)
    parser.add_argument("--skip-epochs", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    if not args.skip_epochs:
        print("\n".join(epochs(args.epochs)), flush=True)
    print("\n| slide | ATS patches | ATS predict (s) | tissue tiles | dense (s) | dense / ATS |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        print(predict(size, args.dense_tiles), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
