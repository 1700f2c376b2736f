#!/usr/bin/env python
"""Megapixel MNIST with attention sampling: build the data, train, evaluate, print.

The megapixel-MNIST experiment of Katharopoulos & Fleuret (ICML 2019, arXiv
1905.03711) with this project's ``AttentionSampler``: an attention net looks
at a 1/10 average-pooled view of the image, 10 patches of 32 x 32 are drawn
from its attention without replacement and read at full resolution, a small
conv net turns each into a feature, and the unbiased expectation averages
them; an entropy regulariser keeps the attention from collapsing early.

    python examples/megamnist.py --quick             # 112 x 112 images, about a minute on a CPU
    python examples/megamnist.py --setting hard --epochs 100

The comparison with a full-resolution CNN (time and memory per sample, the
paper's table, figures, early stopping) is ``benchmarks/megamnist_costs.py``,
which trains the networks defined here (docs/megamnist.md).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ats_wsi.data.megamnist import MegaMNIST
from ats_wsi.model import AttentionSampler
from ats_wsi.patches import TensorSource
from ats_wsi.sampling import SampleSoftmax

N_CLASSES = 10

FEATURE_SCALE = 10.0
"""Norm of a patch feature. Features of constant norm are the paper's choice
(they make the sampled average a minimum-variance estimate); a norm of 1
bounds the head's logits by its weights' norm, which Adam takes thousands of
steps to grow, and the attention then takes far longer to lock onto the
digits. A fixed norm of 10 (as cosine classifiers use) lets the logits be
confident from the start."""


def conv_blocks() -> nn.Sequential:
    """The feature extractor: [B, 1, H, W] -> [B, 32, H', W'].

    The reference's megapixel-MNIST feature net (a 7 x 7 conv, then three 3 x 3
    convs, 32 channels, ReLU) with a stride of 2 in the first conv; a 32 x 32
    patch ends as a 7 x 7 map.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=7, stride=2), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
    )


class PatchFeatures(nn.Module):
    """Patch -> feature: conv blocks, global max pool, fixed norm. [N, 1, ph, pw] -> [N, 32]."""

    def __init__(self):
        super().__init__()
        self.blocks = conv_blocks()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return FEATURE_SCALE * F.normalize(self.blocks(patches).amax(dim=(2, 3)), dim=1)


def attention_net(smoothing: float = 1e-5) -> nn.Sequential:
    """Low-resolution view -> attention: [B, 1, h, w] -> probabilities [B, h, w].

    Three "same"-padded 3 x 3 convs (8, 8, 1 channels, tanh), so the map has
    the view's size and a receptive field offset of 0.
    """
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.Tanh(),
        nn.Conv2d(8, 8, kernel_size=3, padding=1), nn.Tanh(),
        nn.Conv2d(8, 1, kernel_size=3, padding=1),
        SampleSoftmax(smoothing=smoothing),
    )


class AttentionSamplingClassifier(nn.Module):
    """Attention sampling over a full-resolution batch held in memory.

    Args:
        n_patches: patches drawn per image (without replacement).
        patch_size: side of a square patch in full-resolution pixels.
        downsample: the attention net sees ``avg_pool(x_high, downsample)``.
        entropy: strength of the entropy regulariser.
    """

    def __init__(self, n_patches: int = 10, patch_size: int = 32, downsample: int = 10, entropy: float = 1e-4):
        super().__init__()
        self.downsample = downsample
        self.sampler = AttentionSampler(
            attention_net(), PatchFeatures(), n_patches=n_patches, patch_size=(patch_size, patch_size),
            replace=False, receptive_field=0, entropy=entropy,
        )
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x_high: torch.Tensor):
        """x_high: float [B, 1, H, W] -> (logits [B, 10], regulariser loss (scalar), AttentionResult)."""
        x_low = F.avg_pool2d(x_high, self.downsample)
        result = self.sampler(x_low, TensorSource(x_high))
        return self.head(result.features), result.entropy_loss, result


def train_epoch(model: nn.Module, loader, optimizer, device: torch.device, clip: float = 1.0) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, training error)."""
    model.train()
    total, wrong, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits, reg, _ = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss + reg).backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += len(y)
        wrong += int((logits.argmax(1) != y).sum())
        loss_sum += float(loss.detach()) * len(y)
    return loss_sum / max(total, 1), wrong / max(total, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Test error (share of wrong labels); the model still samples its patches."""
    model.eval()
    wrong, total = 0, 0
    for x, y in loader:
        logits, _, _ = model(x.to(device))
        wrong += int((logits.argmax(1).cpu() != y).sum())
        total += len(y)
    return wrong / max(total, 1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=("easy", "hard"), default="easy")
    p.add_argument("--image-size", type=int, default=None, help="square image side overriding the setting's size")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="112 x 112 'easy' images, 1024 of them, 12 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.setting, args.image_size, args.epochs, args.n_train, args.n_test = "easy", 112, 12, 1024, 200
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    size = None if args.image_size is None else (args.image_size, args.image_size)
    train_ds = MegaMNIST(args.n_train, args.setting, seed=args.seed, split="train", size=size)
    test_ds = MegaMNIST(args.n_test, args.setting, seed=args.seed, split="test", size=size)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=generator)
    test_loader = torch.utils.data.DataLoader(test_ds, batch_size=args.batch_size)

    model = AttentionSamplingClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"Megapixel MNIST, {args.setting}, {train_ds.size[0]} x {train_ds.size[1]}: "
          f"{len(train_ds)} train / {len(test_ds)} test images, device {device}")
    for epoch in range(args.epochs):
        loss, error = train_epoch(model, train_loader, optimizer, device)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.4f}, train error {error:.4f}")
    print(f"test error: {evaluate(model, test_loader, device):.4f} (chance: 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
