"""The optimiser's parameter groups and the learning rate of each epoch (a function of the epoch
alone, so that a resumed run continues the same schedule), and the mean over processes."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["param_groups", "lr_factor", "set_lr", "all_mean"]


def param_groups(model: nn.Module, settings) -> list[dict]:
    """One param group, or two (the rest first, then the attention) when ``attention_lr`` is set.

    The attention group holds every attention net of the sampler: the one net of a
    one-stage model, both stages' nets of a zoom (``sampler.attention_nets``).
    Each group carries its ``base_lr``, which :func:`set_lr` scales per epoch.
    """
    trained = [p for p in model.parameters() if p.requires_grad]  # not a frozen encoder's
    if settings.attention_lr is None:
        return [{"params": trained, "base_lr": settings.lr}]
    nets = getattr(model.sampler, "attention_nets", None) or (model.sampler.attention_net,)
    attention = [p for net in nets for p in net.parameters()]
    ids = {id(p) for p in attention}
    rest = [p for p in trained if id(p) not in ids]
    return [{"params": rest, "base_lr": settings.lr},
            {"params": attention, "lr": settings.attention_lr, "base_lr": settings.attention_lr}]


def lr_factor(settings, epoch: int) -> float:
    """The multiplier of the base learning rates in ``epoch`` (0-based)."""
    warm = max(int(settings.warmup_epochs), 0)
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "cosine":
        span = max(settings.epochs - warm, 1)
        t = min(max(epoch - warm, 0) / span, 1.0)
        low = float(settings.min_lr_ratio)
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {settings.schedule!r}")


def set_lr(optimizer, settings, epoch: int) -> None:
    # A function of the epoch alone, so a resumed run continues the same schedule.
    factor = lr_factor(settings, epoch)
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", settings.lr) * factor


def all_mean(losses, correct, seen, distributed) -> tuple[float, float]:
    totals = torch.tensor([float(np.sum(losses)), float(correct), float(seen)], dtype=torch.float64)
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(totals)
    loss_sum, correct_sum, n = totals.tolist()
    return loss_sum / max(n, 1), correct_sum / max(n, 1)
