"""A patch encoder learnt from the cohort itself, without labels (SimCLR), exported as a spec.

For users without a foundation encoder (no weights, no licence, no GPU to run a
ViT-L) and for the lesion benchmark: :func:`train_simclr` trains
:class:`SimCLRNet`, a small CNN, with SimCLR's contrastive loss (NT-Xent; Chen
et al., 2020) on two augmented views of each patch, and :func:`export_encoder`
writes it as a ``torch.export`` program plus an :class:`~.spec.EncoderSpec`
JSON, the same contract as any other encoder (``--feature-net encoder.pt2
--feature-spec spec.json --freeze-features --feature-cache``).

The augmentations are those that keep a patch's tissue class: a crop of
60–100 % of the side rescaled to the patch, flips and 90° rotations (one
``grid_sample``), stain jitter in haematoxylin–eosin optical density
(Ruifrok & Johnston's stain vectors), brightness and contrast jitter, and
occasional greyscale. Written here rather than taken from a library: the
self-supervised libraries (lightly, solo-learn) bring their own training
loops, image backends and dependencies for what is ~100 lines of torch, and
none exports to the encoder spec this package reads. Pixels come in as uint8
tensors; reading them from slides is :mod:`ats_wsi.run.pretrain`'s job.
"""
from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import write_bytes_atomic, write_json_atomic

__all__ = ["SimCLRNet", "SimCLRSettings", "augment", "export_encoder", "info_nce", "pool_mean_std",
           "train_simclr"]

# Ruifrok & Johnston (2001) stain vectors (optical density of H, E, DAB), rows normalised.
_HED = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
RGB_FROM_HED = _HED / _HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


class SimCLRNet(nn.Module):
    """Normalised patches ``[N, 3, s, s]`` -> features ``[N, dim]``, any side ``s``.

    A 3 × 3 stride-2 stem (``stem`` channels), a block of (3 × 3 stride 2,
    3 × 3) convolutions with BatchNorm and ReLU per entry of ``widths``,
    global average pooling and a linear map to ``dim``.
    """

    def __init__(self, dim: int = 128, widths: tuple[int, ...] = (48, 96, 128), stem: int = 32):
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        layers = conv(3, stem, 2)
        cin = stem
        for width in widths:
            layers += conv(cin, width, 2) + conv(width, width, 1)
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, dim)
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class SimCLRSettings:
    """How :func:`train_simclr` trains (the defaults: about 4 min on 2 CPU cores for 128 px patches; 400 steps,
    not 200: docs/training.md, "The default encoder", measures why)."""

    steps: int = 400
    batch: int = 64
    lr: float = 2e-3
    temperature: float = 0.2
    dim: int = 128
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError for settings that cannot train."""
        if self.steps < 1 or self.batch < 2 or self.dim < 1:
            raise ValueError(f"SimCLR needs steps >= 1, batch >= 2 and dim >= 1, got {self}")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"SimCLR needs lr > 0 and temperature > 0, got {self}")


def pool_mean_std(patches: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 patches ``[n, 3, h, w]`` scaled to [0, 1]."""
    x = patches.float().div(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def augment(patches: Tensor, gen: torch.Generator, *, crop: tuple[float, float] = (0.6, 1.0), hed: float = 0.05,
            bright: float = 0.1, contrast: float = 0.2, grey: float = 0.1) -> Tensor:
    """One random view of each patch: uint8 ``[B, 3, s, s]`` -> float in [0, 1], same shape.

    A crop of side ``crop`` (fraction of the patch, anywhere inside it) rescaled
    to the patch with a random flip and 90° rotation; each stain's optical
    density scaled by ``1 ± hed`` and shifted by ``± hed``; brightness
    ``± bright``; contrast ``1 ± contrast``; greyscale with probability ``grey``.
    Everything random comes from ``gen``.
    """
    x = patches.float().div(255)
    b = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (b,)), generator=gen)

    side = u(*crop)
    shift = (1 - side)[:, None] * u(-1, 1, b, 2)
    turn = torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(turn).round(), torch.sin(turn).round()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = side * cos * flip, -side * sin
    theta[:, 1, 0], theta[:, 1, 1] = side * sin * flip, side * cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    od = -torch.log(x.clamp(1 / 255, 1)).permute(0, 2, 3, 1) @ HED_FROM_RGB  # [B, s, s, 3] stain densities
    od = od * u(1 - hed, 1 + hed, b, 1, 1, 3) + u(-hed, hed, b, 1, 1, 3)
    x = torch.exp(-(od @ RGB_FROM_HED)).permute(0, 3, 1, 2).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(1 - contrast, 1 + contrast)[:, None, None, None] + mean
    x = x + u(-bright, bright)[:, None, None, None]
    g = torch.rand(b, generator=gen) < grey
    if g.any():
        x[g] = x[g].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return x.clamp(0, 1)


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's NT-Xent loss of two views ``[B, d]``: each view's positive is the other view of its
    patch, the other ``2B - 2`` views are its negatives (cosine similarity over ``temperature``)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def train_simclr(patches: Tensor, settings: SimCLRSettings = SimCLRSettings(), *, mean=None, std=None,
                 on_step: Callable[[int, float], None] | None = None) -> tuple[SimCLRNet, dict]:
    """Train :class:`SimCLRNet` on uint8 patches ``[n, 3, s, s]`` (n >= 2); return it (eval mode) and a record.

    The net sees views normalised with ``mean``/``std`` (default: the pool's
    own, :func:`pool_mean_std`), as :class:`~.module.PatchEncoder` will feed it
    from the exported spec. Adam with a 10 % warm-up and a cosine decay; a
    2-layer projector to 64-d that is dropped after training.
    ``on_step(step, loss)`` is called after every step.
    """
    settings.check()
    if patches.ndim != 4 or patches.shape[1] != 3 or patches.shape[0] < 2 or patches.dtype != torch.uint8:
        raise ValueError(f"train_simclr needs uint8 patches [n >= 2, 3, s, s], got {patches.dtype} "
                         f"{tuple(patches.shape)}")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    if mean is None or std is None:
        mean, std = pool_mean_std(patches)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    net = SimCLRNet(settings.dim)
    proj = nn.Sequential(nn.Linear(settings.dim, settings.dim), nn.ReLU(inplace=True), nn.Linear(settings.dim, 64))
    opt = torch.optim.Adam([*net.parameters(), *proj.parameters()], lr=settings.lr, weight_decay=1e-6)
    steps, warm = settings.steps, max(1, settings.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    net.train(), proj.train()
    batch = min(settings.batch, len(patches))
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        x = patches[torch.randint(0, len(patches), (batch,), generator=gen)]
        v1, v2 = (augment(x, gen) - m) / s, (augment(x, gen) - m) / s
        loss = info_nce(proj(net(v1)), proj(net(v2)), settings.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    net.eval()
    first, last = losses[:10], losses[-10:]
    record = {**asdict(settings), "patches": int(len(patches)), "seconds": time.perf_counter() - t0,
              "loss_first10": sum(first) / len(first), "loss_last10": sum(last) / len(last),
              "chance_loss": math.log(2 * batch - 1), "mean": [float(v) for v in mean],
              "std": [float(v) for v in std]}
    return net, record


def export_encoder(net: SimCLRNet, out_dir: str | os.PathLike, *, mean, std, mpp: float, patch_px: int,
                   name: str = "simclr", notes: str = "") -> tuple[Path, Path]:
    """Write ``out_dir/encoder.pt2`` (``torch.export``, dynamic batch) and ``out_dir/spec.json``.

    The spec (source ``export``) says what the net was trained on: ``patch_px``
    pixels at ``mpp`` µm/px, normalised with ``mean``/``std``; its ``weights``
    is the ``.pt2``'s absolute path (``--feature-net`` overrides it). Each file
    is written under a temporary name and renamed. Returns both paths.
    """
    out = Path(out_dir)
    net = net.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(net, (torch.zeros(2, 3, patch_px, patch_px),), dynamic_shapes={"x": {0: batch}})
    pt2, spec_path = out / "encoder.pt2", out / "spec.json"
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_bytes_atomic(pt2, buffer.getvalue())
    spec = {"name": name, "source": "export", "weights": str(pt2.resolve()), "mpp": float(mpp),
            "patch_px": int(patch_px), "input_px": int(patch_px), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "dtype": "float32", "pooling": "model", "dim": int(net.dim),
            "notes": notes or "SimCLRNet trained with SimCLR on the cohort's unlabelled patches (ats-wsi pretrain)"}
    write_json_atomic(spec_path, spec)
    return pt2, spec_path
