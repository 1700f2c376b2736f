"""Training an attention-sampling slide classifier from a manifest.

One slide is one forward pass (slides differ in size; the low view keeps its
µm/px), and a batch accumulates the gradients of ``batch_size`` slides before
one optimiser step. Under ``torchrun`` the slides of each batch are shared
among the processes and DDP averages their gradients, which gives the same
update as one process with the same total batch: every slide's draws are
seeded by (seed, epoch, slide index), whatever process runs it, and BatchNorm
running statistics are folded in slide by slide in the batch's order on every
process (:class:`_RunningStats`), as one process would.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.lowview import read_low_view
from ..data.manifest import ManifestRow, read_manifest
from ..errors import CheckpointError, ManifestError
from ..outputs import write_csv_atomic, write_json_atomic
from ..patches.reader import PatchReader
from ..patches.slide_source import SlideSource
from .checkpoint import read_checkpoint, save_checkpoint
from .config import ModelConfig, SlideClassifier, build_model
from .predict import low_inputs

__all__ = ["TrainSettings", "train", "EpochMetrics"]


@dataclass
class TrainSettings:
    """How to train (plain values; stored in every checkpoint)."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 4
    device: str = "cpu"
    seed: int = 0
    workers: int = 2
    train_split: str = "train"
    val_split: str = "val"
    attention_lr: float | None = None
    """Learning rate of the attention net (None: ``lr``); its own optimiser param group."""
    schedule: str = "constant"
    """``"constant"`` or ``"cosine"`` (per epoch, from ``lr`` down to ``min_lr_ratio * lr``)."""
    warmup_epochs: int = 0
    """Epochs of linear warm-up (from ``lr / (warmup_epochs + 1)``) before the schedule."""
    min_lr_ratio: float = 0.0


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float


METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"]


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(index) * 104_729) & 0x7FFFFFFF


class _SlideCache:
    """Open slides, their patch readers and low views, kept for the whole run."""

    def __init__(self, config: ModelConfig, workers: int):
        self.config, self.workers = config, workers
        self.slides, self.readers, self.views = {}, {}, {}

    def get(self, path: Path):
        from ..slide import open_slide

        key = str(path)
        if key not in self.slides:
            slide = open_slide(path)
            self.slides[key] = slide
            self.views[key] = read_low_view(slide, **self.config.low_resolution())
            self.readers[key] = PatchReader(slide, self.config.patch_level, self.config.patch_size,
                                            workers=self.workers, cache_bytes=16 * 2**20)
        return self.slides[key], self.readers[key], self.views[key]

    def close(self):
        for reader in self.readers.values():
            reader.close()
        for slide in self.slides.values():
            slide.close()


class _RunningStats:
    """BatchNorm running statistics, updated slide by slide in the batch's order.

    Left alone, each DDP process would fold only its own slides of a batch
    into its BatchNorm buffers (and DDP would broadcast rank 0's), so the
    running statistics, the validation loss and the checkpoints would differ
    from one process running the same batches. Instead, each slide's batch
    statistics are captured during its forward (momentum 1 makes the layer
    store exactly them in its buffers, which are then put back), gathered
    from every process after the batch, and folded in in the batch's order.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.track_running_stats and m.running_mean is not None]
        self.size = sum(2 * m.running_mean.numel() for m in self.layers)
        self.captured: list[torch.Tensor] = []

    @contextlib.contextmanager
    def capture(self, keep: bool = True):
        """Around one slide's forward and backward: record its statistics (if ``keep``) and
        leave the buffers as they were."""
        saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                 for m in self.layers]
        for m in self.layers:
            m.momentum = 1.0
        try:
            yield
            if keep and self.layers:
                self.captured.append(torch.cat([torch.cat([m.running_mean, m.running_var]) for m in self.layers]))
        finally:
            with torch.no_grad():
                for m, (momentum, mean, var, count) in zip(self.layers, saved):
                    m.momentum = momentum
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                    m.num_batches_tracked.copy_(count)

    def fold(self, batch_len: int, world: int, distributed: bool) -> None:
        """Fold the captured statistics of one batch (``batch_len`` slides) into the buffers.

        Slide ``p`` of the batch ran on process ``p % world`` as its
        ``p // world``-th slide (the batch is dealt as ``batch[rank::world]``).
        """
        mine, self.captured = self.captured, []
        if not self.layers:
            return
        if distributed:
            import torch.distributed as dist

            ref = self.layers[0].running_mean
            local = torch.zeros(math.ceil(batch_len / world), self.size, dtype=ref.dtype, device=ref.device)
            if mine:
                local[:len(mine)] = torch.stack(mine)
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            ordered = [gathered[p % world][p // world] for p in range(batch_len)]
        else:
            ordered = mine
        with torch.no_grad():
            for stats in ordered:
                offset = 0
                for m in self.layers:
                    c = m.running_mean.numel()
                    m.num_batches_tracked.add_(1)
                    f = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
                    m.running_mean.mul_(1 - f).add_(stats[offset:offset + c], alpha=f)
                    m.running_var.mul_(1 - f).add_(stats[offset + c:offset + 2 * c], alpha=f)
                    offset += 2 * c


def forward_slide(model, cache: _SlideCache, row: ManifestRow, generator: torch.Generator, device):
    """One slide through the model: ``(logits [1, C], AttentionResult)``."""
    slide, reader, view = cache.get(row.path)
    inner = getattr(model, "module", model)
    x_low, mask = low_inputs(view, device)
    source = SlideSource([slide], inner.config.patch_level, low_downsample=view.downsample,
                         readers=[reader], device=device)
    return model(x_low, source, mask, generator=generator)


def _evaluate(model, cache, rows, seed, epoch, device) -> tuple[float, float]:
    if not rows:
        return float("nan"), float("nan")
    model.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for i, row in enumerate(rows):
            gen = torch.Generator(device=device).manual_seed(_item_seed(seed + 1, epoch, i))
            logits, _ = forward_slide(model, cache, row, gen, device)
            target = torch.tensor([row.label], device=device)
            losses.append(F.cross_entropy(logits, target).item())
            correct += int(logits.argmax(-1).item() == row.label)
    return float(np.mean(losses)), correct / len(rows)


def train(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ModelConfig | None = None,
    settings: TrainSettings | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> list[EpochMetrics]:
    """Train a slide classifier; checkpoints every epoch into ``out_dir``.

    Args:
        manifest: CSV ``path,label[,split]``.
        out_dir: gets ``checkpoints/epoch-NNN.pt``, ``last.pt``, ``best.pt``
            (best validation accuracy, else last), ``metrics.csv``, ``config.json``.
        config: the model (ignored on resume: the checkpoint's is used).
        settings: :class:`TrainSettings`.
        resume: continue from ``out_dir/last.pt``.
        progress: show a progress bar per epoch (stderr).
        on_epoch: called with each epoch's metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs as DDP (gloo on CPU,
    nccl on CUDA); only rank 0 writes files.

    Returns:
        The metrics of every epoch (including resumed ones).
    """
    import torch.distributed as dist

    settings = settings or TrainSettings()
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    device = torch.device(settings.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    train_rows = read_manifest(manifest, settings.train_split)
    val_rows = read_manifest(manifest, settings.val_split)
    if not train_rows:
        raise ManifestError(f"{manifest}: no slides in split {settings.train_split!r}")
    if distributed and settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of the {world} processes")
    if settings.batch_size < 1 or settings.epochs < 0:
        raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {settings.batch_size} and {settings.epochs}")

    history: list[EpochMetrics] = []
    start_epoch = 0
    payload = None
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise CheckpointError(last, "cannot resume: no last.pt in the run folder")
        payload = read_checkpoint(last)
        config = ModelConfig.from_dict(payload["config"], path=last)
        start_epoch = int(payload["epoch"])
        history = [EpochMetrics(**m) for m in payload.get("train_config", {}).get("history", [])]
    config = config or ModelConfig()
    for row in train_rows + val_rows:
        if row.label >= config.n_classes:
            raise ManifestError(f"{manifest}: {row.path} has label {row.label}, but the model has "
                                f"n_classes={config.n_classes} (labels 0..{config.n_classes - 1}); set --classes")
    torch.manual_seed(settings.seed)
    model: SlideClassifier = build_model(config).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, settings), lr=settings.lr, weight_decay=settings.weight_decay)
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        if "optimizer" in payload:
            optimizer.load_state_dict(payload["optimizer"])
    net = model
    if distributed:
        # Buffers (BatchNorm statistics) are kept equal by _RunningStats, not broadcast from rank 0.
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {"model": config.to_dict(), "train": asdict(settings)})

    cache = _SlideCache(config, settings.workers)
    running_stats = _RunningStats(model)
    n_batches = math.ceil(len(train_rows) / settings.batch_size)
    try:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            _set_lr(optimizer, settings, epoch)
            order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_rows))
            net.train()
            losses, correct, seen = [], 0, 0
            bar = _progress(n_batches, f"epoch {epoch + 1}/{settings.epochs}", progress and rank == 0)
            for b in range(n_batches):
                batch = order[b * settings.batch_size:(b + 1) * settings.batch_size]
                # A short last batch may leave a process without a slide; it still has to
                # join the gradient all-reduce, so it runs one slide with weight 0.
                mine = [(idx, 1.0) for idx in batch[rank::world]] or [(batch[0], 0.0)]
                optimizer.zero_grad(set_to_none=True)
                for j, (idx, weight) in enumerate(mine):
                    row = train_rows[idx]
                    gen = torch.Generator(device=device).manual_seed(_item_seed(settings.seed, epoch, idx))
                    sync = contextlib.nullcontext() if (not distributed or j == len(mine) - 1) else net.no_sync()
                    # capture() restores the BatchNorm buffers only after the backward, which reads them.
                    with sync, running_stats.capture(keep=weight > 0):
                        logits, result = forward_slide(net, cache, row, gen, device)
                        target = torch.tensor([row.label], device=device)
                        ce = F.cross_entropy(logits, target)
                        loss = (ce + result.entropy_loss) * (weight * world / len(batch))
                        loss.backward()
                    if weight:
                        losses.append(ce.item())
                        correct += int(logits.argmax(-1).item() == row.label)
                        seen += 1
                optimizer.step()
                running_stats.fold(len(batch), world, distributed)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{correct / max(seen, 1):.2f}")
            if bar is not None:
                bar.close()
            train_loss, train_acc = _all_mean(losses, correct, seen, distributed)
            val_loss, val_acc = _evaluate(model, cache, val_rows, settings.seed, epoch, device) if rank == 0 else (0.0, 0.0)
            metrics = EpochMetrics(epoch + 1, train_loss, train_acc, val_loss, val_acc,
                                   time.perf_counter() - t0, optimizer.param_groups[0]["lr"])
            history.append(metrics)
            if rank == 0:
                _save_epoch(out, model, optimizer, metrics, history, settings)
            if on_epoch is not None and rank == 0:
                on_epoch(metrics)
    finally:
        cache.close()
        if distributed and dist.is_initialized():
            dist.barrier()
    return history


def _param_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    """One param group, or two (attention net first) when ``attention_lr`` is set.

    Each group carries its ``base_lr``, which :func:`_set_lr` scales per epoch.
    """
    if settings.attention_lr is None:
        return [{"params": list(model.parameters()), "base_lr": settings.lr}]
    attention = list(model.sampler.attention_net.parameters())
    ids = {id(p) for p in attention}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "base_lr": settings.lr},
            {"params": attention, "lr": settings.attention_lr, "base_lr": settings.attention_lr}]


def lr_factor(settings: TrainSettings, epoch: int) -> float:
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


def _set_lr(optimizer, settings: TrainSettings, epoch: int) -> None:
    # A function of the epoch alone, so a resumed run continues the same schedule.
    factor = lr_factor(settings, epoch)
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", settings.lr) * factor


def _all_mean(losses, correct, seen, distributed) -> tuple[float, float]:
    totals = torch.tensor([float(np.sum(losses)), float(correct), float(seen)], dtype=torch.float64)
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(totals)
    loss_sum, correct_sum, n = totals.tolist()
    return loss_sum / max(n, 1), correct_sum / max(n, 1)


def _save_epoch(out: Path, model, optimizer, metrics: EpochMetrics, history, settings: TrainSettings) -> None:
    train_config = {**asdict(settings), "history": [asdict(m) for m in history]}
    ckpt = save_checkpoint(out / "checkpoints" / f"epoch-{metrics.epoch:03d}.pt", model, epoch=metrics.epoch,
                           optimizer=optimizer, metrics=asdict(metrics), train_config=train_config)
    import shutil

    from ..outputs import atomic_path

    with atomic_path(out / "last.pt") as tmp:
        shutil.copyfile(ckpt, tmp)
    best = max(history, key=lambda m: (m.val_acc if not math.isnan(m.val_acc) else -1.0, -m.val_loss if not math.isnan(m.val_loss) else 0.0, m.epoch))
    best_ckpt = out / "checkpoints" / f"epoch-{best.epoch:03d}.pt"
    # Also when best.pt is missing (a run stopped between writing last.pt and best.pt).
    if best.epoch == metrics.epoch or (not (out / "best.pt").is_file() and best_ckpt.is_file()):
        with atomic_path(out / "best.pt") as tmp:
            shutil.copyfile(best_ckpt, tmp)
    write_csv_atomic(out / "metrics.csv", [asdict(m) for m in history], METRIC_FIELDS)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)
