#!/usr/bin/env python
"""Megapixel MNIST: attention sampling against a full-resolution CNN.

Reproduces the megapixel-MNIST experiment of Katharopoulos & Fleuret (ICML
2019, arXiv 1905.03711) with this project's own ``AttentionSampler``:

- attention sampling: an attention net looks at a 1/10 average-pooled view of
  the image, 10 patches of 32 x 32 are drawn from its attention without
  replacement and read at full resolution, a small conv net turns each into a
  feature, and the unbiased expectation averages them; an entropy
  regulariser keeps the attention from collapsing early;
- baseline: the SAME conv blocks run over the whole full-resolution image,
  followed by global average pooling (the dense counterpart of averaging
  patch features), a batch norm and a linear head.

It prints one table (test error, seconds per training sample for forward +
backward, peak memory per training sample) for both methods next to the
paper's figures, writes ``summary.json`` and a figure (image, attention map,
sampled patches) into ``--out``. Both costs are measured in the same run, in
a fresh process per method (see ``measure_cost``).

Attention sampling's error rises again some epochs after its attention has
found the digits (mass leaks onto the background; docs/megamnist.md), so
full runs keep the best epoch on validation images (``--n-val``) and divide
the learning rate by 10 on a plateau (``--patience``).

    python examples/megamnist.py --quick                 # about a minute, for CI
    python examples/megamnist.py --setting easy --n-val 500 --patience 3 --parallel --threads 1 \\
        --baseline-epochs 3 --out runs/megamnist-easy    # the full easy run (docs/megamnist.md)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ats_wsi.data.megamnist import MegaMNIST
from ats_wsi.model import AttentionSampler
from ats_wsi.patches import TensorSource
from ats_wsi.sampling import SampleSoftmax

N_CLASSES = 10

# The paper's megapixel-MNIST figures (1500 x 1500 images, 10 patches). The
# stored copies of the paper that this project could search give only its
# abstract ("reduce computation and memory footprint by an order of
# magnitude for the same accuracy"), not the table's numbers: fill them in
# from Table 1 of arXiv 1905.03711 when a copy is at hand. ``None`` prints
# as "n/a"; never guess.
PAPER = {
    "source": "Katharopoulos & Fleuret, ICML 2019 (arXiv 1905.03711), megapixel-MNIST table",
    "attention_sampling": {"test_error": None, "seconds_per_sample": None, "peak_memory_per_sample_mb": None},
    "baseline_cnn": {"test_error": None, "seconds_per_sample": None, "peak_memory_per_sample_mb": None},
}

METHODS = ("attention_sampling", "baseline_cnn")
METHOD_NAMES = {"attention_sampling": "attention sampling", "baseline_cnn": "CNN, full resolution"}


# --------------------------------------------------------------------------
# Networks


def conv_blocks() -> nn.Sequential:
    """The feature extractor both methods share: [B, 1, H, W] -> [B, 32, H', W'].

    The reference's megapixel-MNIST feature net (a 7 x 7 conv, then three 3 x 3
    convs, 32 channels, ReLU) with a stride of 2 in the first conv, which
    makes the full-resolution baseline 4x cheaper on a CPU; a 32 x 32 patch
    still ends as a 7 x 7 map.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=7, stride=2), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
        nn.Conv2d(32, 32, kernel_size=3), nn.ReLU(),
    )


FEATURE_SCALE = 10.0
"""Norm of a patch feature. Features of constant norm are the paper's choice
(they make the sampled average a minimum-variance estimate); a norm of 1
bounds the head's logits by its weights' norm, which Adam takes thousands of
steps to grow, and in short tests the attention then took far longer to lock
onto the digits. A fixed norm of 10 (as cosine classifiers use) lets the
logits be confident from the start."""


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


class FullResolutionCNN(nn.Module):
    """The baseline: conv blocks over the whole image, global average pool, batch norm, linear head.

    The digits cover about 1 % of an easy image (0.2 % of a hard one), so
    global average pooling shrinks their evidence a hundredfold; the batch
    norm on the pooled features brings it back to unit scale (without it the
    head did not learn at all in 300 steps on 200 x 200 images; with it, 5 %
    training error). Its statistics are recomputed under the final weights
    before testing (:func:`recompute_batch_norm`).
    """

    def __init__(self):
        super().__init__()
        self.blocks = conv_blocks()
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x_high: torch.Tensor):
        """x_high: float [B, 1, H, W] -> (logits [B, 10], 0, None)."""
        features = self.norm(self.blocks(x_high).mean(dim=(2, 3)))
        return self.head(features), x_high.new_zeros(()), None


def build_model(method: str, cfg: dict) -> nn.Module:
    if method == "attention_sampling":
        return AttentionSamplingClassifier(cfg["n_patches"], cfg["patch_size"], cfg["downsample"], cfg["entropy"])
    if method == "baseline_cnn":
        return FullResolutionCNN()
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------
# Training and evaluation


def make_datasets(cfg: dict, n_train: int) -> tuple[MegaMNIST, MegaMNIST]:
    size = None if cfg["image_size"] is None else (cfg["image_size"], cfg["image_size"])
    kw = dict(setting=cfg["setting"], seed=cfg["seed"], size=size)
    return MegaMNIST(n_train, split="train", **kw), MegaMNIST(cfg["n_test"], split="test", **kw)


def loader(ds: MegaMNIST, cfg: dict, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg["batch_size"], shuffle=shuffle, num_workers=cfg["workers"], generator=generator,
        drop_last=shuffle and len(ds) > cfg["batch_size"],  # no lone last sample for the baseline's batch norm
    )


def train(method: str, cfg: dict, epochs: int, n_train: int, init_from: Path | None = None) -> tuple[nn.Module, dict]:
    """Train one method; returns the model and its history (per-epoch loss, error, test error).

    ``init_from``: a state dict saved by an earlier run (``OUT/<method>.pt``)
    to start from instead of a random initialisation.

    With ``cfg["n_val"] > 0``, ``n_val`` further training-split images (new
    layouts, training digits; never test images) are a validation set: after
    every epoch the model is tested on it, the best state is kept and
    restored at the end (early stopping), and with ``cfg["patience"] > 0``,
    after that many epochs without a better validation error the best state
    is restored and the learning rate divided by 10 (at most
    ``cfg["max_decays"]`` times; after that, training stops). Epochs only
    count towards the patience once the best validation error is below
    ``cfg["plateau_below"]`` (0.5; chance is 0.9): before the attention has
    found the digits the error is flat by nature.
    """
    torch.manual_seed(cfg["seed"])
    device = torch.device(cfg["device"])
    model = build_model(method, cfg)
    if init_from is not None:
        model.load_state_dict(torch.load(init_from, map_location="cpu", weights_only=True))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    decay_at = sorted(cfg.get("lr_decay_at") or ())
    train_ds, test_ds = make_datasets(cfg, n_train)
    n_val = cfg.get("n_val", 0)
    val_ds = None
    if n_val > 0 and epochs > 0:
        full = MegaMNIST(n_train + n_val, split="train", setting=cfg["setting"], seed=cfg["seed"], size=train_ds.size)
        val_ds = torch.utils.data.Subset(full, range(n_train, n_train + n_val))
    rule = _Plateau(cfg.get("patience", 0), cfg.get("max_decays", 2), cfg.get("plateau_below", 0.5))
    history = {"train_loss": [], "train_error": [], "test_error_per_epoch": [], "val_error": [], "lr": [],
               "train_seconds": 0.0}
    start, eval_seconds = time.perf_counter(), 0.0
    for epoch in range(epochs):
        lr = cfg["lr"] * 0.1 ** (sum(epoch >= e for e in decay_at) + rule.decays)  # --lr-decay-at: from epoch e+1 on
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        total, wrong, loss_sum = 0, 0, 0.0
        bar = tqdm(loader(train_ds, cfg, True, cfg["seed"] + epoch), desc=f"{METHOD_NAMES[method]} {epoch + 1}/{epochs}",
                   leave=False, file=sys.stderr, disable=cfg["no_progress"])
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits, reg, _ = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss + reg).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()
            total += len(y)
            wrong += int((logits.argmax(1) != y).sum())
            loss_sum += float(loss.detach()) * len(y)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", err=f"{wrong / total:.3f}")
        history["train_loss"].append(loss_sum / max(total, 1))
        history["train_error"].append(wrong / max(total, 1))
        history["lr"].append(lr)
        t = time.perf_counter()
        note, stop = "", False
        if val_ds is not None:
            recompute_batch_norm(model, train_ds, cfg)
            history["val_error"].append(evaluate(model, val_ds, cfg))
            action, stop = rule.update(history["val_error"][-1], epoch + 1, model)
            note += f", validation error {history['val_error'][-1]:.4f}{action}"
        if cfg["eval_every_epoch"]:
            recompute_batch_norm(model, train_ds, cfg)
            history["test_error_per_epoch"].append(evaluate(model, test_ds, cfg))
            note += f", test error {history['test_error_per_epoch'][-1]:.4f}"
        eval_seconds += time.perf_counter() - t
        tqdm.write(
            f"[{METHOD_NAMES[method]}] epoch {epoch + 1}/{epochs}: loss {history['train_loss'][-1]:.4f}, "
            f"train error {history['train_error'][-1]:.4f}" + note,
            file=sys.stderr,
        )
        if stop:
            break
    history["train_seconds"] = time.perf_counter() - start - eval_seconds  # rendering included, testing not
    history["epochs"], history["n_train"] = len(history["train_loss"]), n_train
    if rule.best_state is not None:
        model.load_state_dict(rule.best_state)  # early stopping: the best validation epoch
        history["best_epoch"], history["best_val_error"] = rule.best_epoch, rule.best_error
    history["test_error"] = None
    if epochs == 0 and init_from is not None:
        # A model trained by an earlier run, tested here: keep that run's training record.
        history.update(_earlier_training(method, init_from))
    if epochs > 0 or init_from is not None:
        recompute_batch_norm(model, train_ds, cfg)
        history["test_error"] = evaluate(model, test_ds, cfg)
        tqdm.write(f"[{METHOD_NAMES[method]}] " + (f"loaded {init_from}: " if epochs == 0 else "final model: ")
                   + f"test error {history['test_error']:.4f}"
                   + (f" (best validation epoch {rule.best_epoch})" if rule.best_epoch else ""), file=sys.stderr)
    history["init_from"] = None if init_from is None else str(init_from)
    return model, history


class _Plateau:
    """The validation rule of :func:`train`: keep the best state; after ``patience`` epochs
    without a better error (counted only once the best is below ``below``), go back to it
    with a 10x smaller learning rate, at most ``max_decays`` times, then stop."""

    def __init__(self, patience: int, max_decays: int, below: float):
        self.patience, self.max_decays, self.below = patience, max_decays, below
        self.best_error, self.best_epoch, self.best_state = float("inf"), None, None
        self.decays = self.since_best = 0

    def update(self, error: float, epoch: int, model: nn.Module) -> tuple[str, bool]:
        """Record one epoch's validation error; returns (what was done, for the log; stop?)."""
        if error < self.best_error:
            self.best_error, self.best_epoch, self.since_best = error, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return "", False
        self.since_best += self.best_error < self.below  # before take-off a flat error is expected
        if not self.patience or self.since_best < self.patience:
            return "", False
        if self.decays >= self.max_decays:
            return f" (no better for {self.patience} epochs: stop)", True
        model.load_state_dict(self.best_state)
        self.decays, self.since_best = self.decays + 1, 0
        return f" (no better for {self.patience} epochs: back to epoch {self.best_epoch}, lr / 10)", False


def _earlier_training(method: str, state_path: Path) -> dict:
    """The training record of ``method`` in the run that wrote ``state_path`` (its ``summary.json``), if any."""
    summary_path = Path(state_path).parent / "summary.json"
    if not summary_path.exists():
        return {}
    earlier = json.loads(summary_path.read_text())["methods"].get(method, {})
    keys = ("train_loss", "train_error", "test_error_per_epoch", "val_error", "best_epoch", "best_val_error", "lr",
            "train_seconds", "epochs", "n_train")
    record = {k: earlier[k] for k in keys if k in earlier}
    record["trained_in"] = str(summary_path.parent)
    return record


def _save_state(model: nn.Module, path: Path) -> None:
    """Write a state dict atomically (temp file in the same folder, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _train_and_save(method: str, cfg: dict, epochs: int, n_train: int, init_from: Path | None, out: Path) -> dict:
    """``--parallel`` worker: train one method in this (spawned) process, save it, return its history."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    model, history = train(method, cfg, epochs, n_train, init_from=init_from)
    _save_state(model, out / f"{method}.pt")
    return history


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, train_ds: MegaMNIST, cfg: dict, batches: int = 16) -> None:
    """Set batch-norm statistics from ``batches`` training batches under the final weights.

    The baseline's pooled features are a large background constant plus a
    ~1 % digit signal; the constant drifts as the weights learn, and running
    averages taken during training then miss the signal entirely (in a test:
    57 % test error with them, 2 % after recomputing). A no-op for models
    without batch norm.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = torch.device(cfg["device"])
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for k, (x, _) in enumerate(loader(train_ds, cfg, True, cfg["seed"] + 10_000)):
        if k == batches:
            break
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@contextlib.contextmanager
def _seeded(cfg: dict):
    """Draw from a generator seeded with ``cfg["seed"]``, leaving the training's random stream as it was."""
    device = torch.device(cfg["device"])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg["seed"])
        yield


@torch.no_grad()
def evaluate(model: nn.Module, test_ds: MegaMNIST, cfg: dict) -> float:
    """Test error (share of wrong labels); attention sampling still samples its patches.

    The samples are drawn from a generator seeded with ``cfg["seed"]`` (the
    training's random stream is saved and restored around it), so one model
    gets one test error, whichever run tests it.
    """
    model.eval()
    device = torch.device(cfg["device"])
    wrong = 0
    with _seeded(cfg):
        for x, y in tqdm(loader(test_ds, cfg, False), desc="test", leave=False, file=sys.stderr,
                         disable=cfg["no_progress"]):
            logits, _, _ = model(x.to(device))
            wrong += int((logits.argmax(1).cpu() != y).sum())
    return wrong / max(len(test_ds), 1)


@torch.no_grad()
def attention_on_digits(model: "AttentionSamplingClassifier", test_ds: MegaMNIST, cfg: dict, n: int = 200) -> dict:
    """Where attention sampling looks, on the first ``n`` test images.

    - ``attention_on_digits``: mean share of the attention mass on the cells
      that overlap a digit's 28 x 28 box (the boxes cover ~2 % of an easy
      image's cells, ~0.3 % of a hard one's);
    - ``patches_on_digits``: mean share of the sampled patches that hold at
      least half of a digit box (an overlap of 392 of its 784 pixels).
    """
    model.eval()
    device = torch.device(cfg["device"])
    ds, side = cfg["downsample"], cfg["patch_size"]
    mass, hits = [], []
    with _seeded(cfg):
        for i in range(min(n, len(test_ds))):
            x, _ = test_ds[i]
            _, _, result = model(x[None].to(device))
            attention = result.attention[0].cpu()
            boxes = np.asarray(test_ds.layout(i).boxes)  # [5, 4]: x, y, w, h
            covered = torch.zeros_like(attention, dtype=torch.bool)
            for bx, by, bw, bh in boxes:
                covered[by // ds:-(-(by + bh) // ds), bx // ds:-(-(bx + bw) // ds)] = True
            mass.append(float(attention[covered].sum()))
            xy = result.xy[0].cpu().numpy()[:, None, :]  # [n, 1, 2] against boxes [5, 4]
            lo, hi = np.maximum(xy, boxes[:, :2]), np.minimum(xy + side, boxes[:, :2] + boxes[:, 2:])
            overlap = np.clip(hi - lo, 0, None).prod(-1)  # [n, 5] pixels shared by patch and box
            hits.append(float((overlap >= boxes[:, 2:].prod(-1) / 2).any(1).mean()))
    return {"attention_on_digits": float(np.mean(mass)), "patches_on_digits": float(np.mean(hits))}


# --------------------------------------------------------------------------
# Cost per training sample, each method in a fresh process


def measure_cost(method: str, cfg: dict) -> dict:
    """Seconds and peak memory per training sample (forward + backward) of one method.

    Each number comes from a fresh, spawned process, so that one method's
    allocations cannot hide or inflate the other's. The batch
    (``measure_batch`` full-resolution images) is rendered and resident
    before measuring, for both methods; one warm-up step runs first, so that
    kernels loaded on first use and first-call caches are not counted.

    - time: mean wall time of ``forward + loss + backward`` over
      ``measure_steps`` steps, divided by the batch size;
    - memory on CPU: peak resident set size (Linux ``VmHWM``, reset through
      ``/proc/self/clear_refs`` just before one forward + backward) minus the
      resident size just before it, divided by the batch size. In that
      process glibc hands every freed block over 128 KiB back to the system
      (``MALLOC_MMAP_THRESHOLD_``), so that the resident size follows live
      memory; this slows allocation down, hence the separate process for
      time. On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory
      allocated before the step.
    """
    memory = _in_fresh_process(method, cfg, "memory",
                               {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"})
    timing = _in_fresh_process(method, cfg, "time", {})
    return {**memory, **timing, "measure_batch": cfg["measure_batch"]}


def _in_fresh_process(method: str, cfg: dict, what: str, env: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a spawned child reads its environment at start-up
    try:
        proc = ctx.Process(target=_measure_in_child, args=(method, cfg, what, queue))
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result = queue.get(timeout=3600)
    proc.join()
    if "error" in result:
        raise RuntimeError(f"measuring the {what} of {method} failed: {result['error']}")
    return result


def _measure_in_child(method: str, cfg: dict, what: str, queue) -> None:
    try:
        queue.put(_measure(method, cfg, what))
    except BaseException as err:  # report to the parent instead of hanging it
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _measure(method: str, cfg: dict, what: str) -> dict:
    """In a fresh process: ``{"seconds_per_sample"}`` or ``{"peak_memory_per_sample_mb", "memory_method"}``."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    device = torch.device(cfg["device"])
    model = build_model(method, cfg).to(device)
    train_ds, _ = make_datasets(cfg, cfg["measure_batch"])
    x = torch.stack([train_ds[i][0] for i in range(len(train_ds))]).to(device)
    y = torch.tensor([train_ds.layout(i).label for i in range(len(train_ds))], device=device)
    batch = len(x)

    def step():
        logits, reg, _ = model(x)
        (F.cross_entropy(logits, y) + reg).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if what == "time":
        times = []
        for _ in range(cfg["measure_steps"]):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return {"seconds_per_sample": float(np.median(times)) / batch}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
        memory_method = "torch.cuda.max_memory_allocated delta"
    else:
        before, exact = _reset_peak_rss()
        step()
        peak = _peak_rss() - before
        memory_method = "peak RSS delta (VmHWM after clear_refs)" if exact else "peak RSS delta (ru_maxrss)"
    return {"peak_memory_per_sample_mb": max(peak, 0) / batch / 2**20, "memory_method": memory_method}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> tuple[int, bool]:
    """(resident bytes now, whether the peak was reset so that it starts from now)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") * 1024, True
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _ru_unit(), False


def _peak_rss() -> int:
    try:
        return _status_kb("VmHWM") * 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _ru_unit()


def _ru_unit() -> int:
    return 1 if sys.platform == "darwin" else 1024


# --------------------------------------------------------------------------
# Figures (PIL only: matplotlib is not a dependency)


def _grey(image: np.ndarray, side: int):
    """float [H, W] in [0, 1] -> RGB PIL image, longest side ``side`` (area resampling)."""
    from PIL import Image

    img = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    scale = side / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BOX), scale


def _heat(values: np.ndarray, size: tuple[int, int]):
    """float [h, w] -> RGB PIL image of ``size`` (w, h), black-red-yellow-white by value / max."""
    from PIL import Image

    v = values / max(float(values.max()), 1e-12)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.NEAREST)


@torch.no_grad()
def save_attention_figure(model: AttentionSamplingClassifier, ds: MegaMNIST, index: int, path: Path) -> None:
    """Image with true digit boxes and sampled patches, the attention map, and the patches."""
    from PIL import Image, ImageDraw

    model.eval()
    x, label = ds[index]
    device = next(model.parameters()).device
    logits, _, result = model(x[None].to(device))
    attention = result.attention[0].cpu().numpy()
    xy = result.xy[0].cpu().numpy()
    patches = result.patches[0, :, 0].cpu().numpy()
    side = 500
    image, scale = _grey(x[0].numpy(), side)
    draw = ImageDraw.Draw(image)
    layout = ds.layout(index)
    for (bx, by, bw, bh), c in zip(layout.boxes, layout.classes):
        colour = (0, 200, 0) if c == layout.label else (60, 140, 255)
        draw.rectangle([bx * scale - 2, by * scale - 2, (bx + bw) * scale + 2, (by + bh) * scale + 2], outline=colour)
    ph, pw = patches.shape[-2:]
    for px, py in xy:
        draw.rectangle([px * scale, py * scale, (px + pw) * scale, (py + ph) * scale], outline=(255, 40, 40), width=2)
    heat = _heat(attention, image.size)
    zoom = 3
    strip_h = ph * zoom + 10
    canvas = Image.new("RGB", (image.width * 2 + 10, image.height + strip_h + 30), (255, 255, 255))
    canvas.paste(image, (0, 20))
    canvas.paste(heat, (image.width + 10, 20))
    for k, p in enumerate(patches):
        tile, _ = _grey(p, max(ph, pw) * zoom)
        canvas.paste(tile, (k * (pw * zoom + 6), image.height + 30))
    text = ImageDraw.Draw(canvas)
    text.text((0, 2), f"label {label}, predicted {int(logits.argmax())}: digits of the label (green), "
                      f"others (blue), sampled patches (red)", fill=(0, 0, 0))
    text.text((image.width + 10, 2 + 0), "attention (1/10 view)", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_data_figure(path: Path, seed: int = 0) -> None:
    """One "easy" and one "hard" image side by side, each with a zoom on a digit."""
    from PIL import Image, ImageDraw

    panels = []
    for setting in ("easy", "hard"):
        ds = MegaMNIST(1, setting, seed=seed, split="train")
        image = ds.render(0)[0]
        layout = ds.layout(0)
        view, scale = _grey(image, 500)
        draw = ImageDraw.Draw(view)
        for bx, by, bw, bh in layout.boxes:
            draw.rectangle([bx * scale - 3, by * scale - 3, (bx + bw) * scale + 3, (by + bh) * scale + 3],
                           outline=(0, 200, 0))
        x0, y0 = layout.digit_xy[0]
        crop = image[max(0, y0 - 50):y0 + 78, max(0, x0 - 50):x0 + 78]
        zoom, _ = _grey(crop, 250)
        panel = Image.new("RGB", (500 + 10 + 250, 520), (255, 255, 255))
        panel.paste(view, (0, 20))
        panel.paste(zoom, (510, 20))
        ImageDraw.Draw(panel).text(
            (0, 2), f"{setting}: {image.shape[1]} x {image.shape[0]}, label {layout.label}, "
                    f"digits {layout.classes.tolist()}; right: full resolution around a digit", fill=(0, 0, 0))
        panels.append(panel)
    canvas = Image.new("RGB", (panels[0].width, sum(p.height for p in panels) + 10), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (0, panels[0].height + 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# --------------------------------------------------------------------------
# Report


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "error":
        return f"{100 * value:.2f} %"
    if kind == "seconds":
        return f"{1000 * value:.2f} ms"
    return f"{value:.1f} MB"


def format_table(summary: dict) -> str:
    """The one table: this run and the paper, per method."""
    rows = [("method", "trained on", "test error", "time / sample", "peak memory / sample",
             "paper: error", "paper: time", "paper: memory")]
    for method in METHODS:
        ours, paper = summary["methods"][method], summary["paper"][method]
        epochs = ours.get("epochs")
        rows.append((
            METHOD_NAMES[method] + (" (from --init-from)" if ours.get("init_from") and not ours.get("trained_in") else ""),
            "-" if epochs is None else f"{epochs} x {ours.get('n_train')} images"
            + (f" ({ours['trained_in']})" if ours.get("trained_in") else ""),
            "not trained" if epochs == 0 and ours.get("test_error") is None else _fmt(ours.get("test_error"), "error"),
            _fmt(ours.get("seconds_per_sample"), "seconds"),
            _fmt(ours.get("peak_memory_per_sample_mb"), "mb"),
            _fmt(paper["test_error"], "error"),
            _fmt(paper["seconds_per_sample"], "seconds"),
            _fmt(paper["peak_memory_per_sample_mb"], "mb"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    a, b = summary["methods"]["attention_sampling"], summary["methods"]["baseline_cnn"]
    ratio = []
    if a.get("seconds_per_sample") and b.get("seconds_per_sample"):
        ratio.append(f"time {b['seconds_per_sample'] / a['seconds_per_sample']:.1f}x")
    if a.get("peak_memory_per_sample_mb") and b.get("peak_memory_per_sample_mb"):
        ratio.append(f"memory {b['peak_memory_per_sample_mb'] / a['peak_memory_per_sample_mb']:.1f}x")
    cfg = summary["config"]
    head = (f"Megapixel MNIST, {cfg['setting']} ({cfg['width']} x {cfg['height']}, {cfg['n_noise']} clutter patterns), "
            f"{cfg['n_train']} train / {cfg['n_test']} test images, device {cfg['device']}")
    foot = [f"attention sampling is cheaper than the baseline by: {', '.join(ratio) or 'n/a'}"]
    if a.get("attention_on_digits") is not None:
        foot.append(f"attention on the digits' cells: {100 * a['attention_on_digits']:.1f} % of the mass; "
                    f"sampled patches holding half a digit or more: {100 * a['patches_on_digits']:.1f} % "
                    "(first 200 test images)")
    foot.append(f"paper: {summary['paper']['source']} (n/a: figures not available to this run, see docs/megamnist.md)")
    return "\n".join([head, *lines, *foot])


# --------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", choices=("easy", "hard"), default="easy")
    p.add_argument("--image-size", type=int, default=None, help="square image side overriding the setting's size")
    p.add_argument("--epochs", type=int, default=40, help="attention-sampling epochs")
    p.add_argument("--baseline-epochs", type=int, default=None,
                   help="baseline epochs (default: --epochs); 0 measures its cost without training it")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--baseline-n-train", type=int, default=None, help="baseline training images (default: --n-train)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay-at", type=int, nargs="*", default=[],
                   help="multiply the learning rate by 0.1 after each of these epochs (e.g. 40 50)")
    p.add_argument("--n-val", type=int, default=0,
                   help="validation images (training split, new layouts): keep the best epoch (early stopping)")
    p.add_argument("--patience", type=int, default=0,
                   help="with --n-val: after this many epochs without a better validation error, "
                        "go back to the best state and divide the learning rate by 10")
    p.add_argument("--plateau-below", type=float, default=0.5,
                   help="with --patience: count epochs without progress only once the best validation error is below this")
    p.add_argument("--max-decays", type=int, default=2, help="with --patience: stop after this many decays")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--n-patches", type=int, default=10)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--downsample", type=int, default=10, help="the attention net sees avg_pool(image, this)")
    p.add_argument("--entropy", type=float, default=1e-4,
                   help="entropy regulariser strength (the reference's megapixel-MNIST default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (rendering)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--measure-batch", type=int, default=4, help="batch size of the cost measurement")
    p.add_argument("--measure-steps", type=int, default=5, help="timed steps of the cost measurement (median)")
    p.add_argument("--parallel", action="store_true",
                   help="train the two methods at the same time, one process each (use with --threads 1 on 2 cores)")
    p.add_argument("--eval-every-epoch", action="store_true", help="test error after every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: 112 x 112 'easy' images, 1024 of them, 12 epochs (under a minute)")
    p.add_argument("--out", type=Path, default=Path("megamnist-out"), help="folder for summary.json and the figure")
    p.add_argument("--figure", type=Path, default=None, help="attention figure path (default: OUT/megamnist.png)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start attention sampling from this state dict (e.g. OUT/attention_sampling.pt of an easy run)")
    p.add_argument("--baseline-init-from", type=Path, default=None,
                   help="start the baseline from this state dict; with --baseline-epochs 0 it is only tested")
    p.add_argument("--report", type=Path, default=None,
                   help="only print the table of an earlier run's summary.json (and --paper-* figures), then exit")
    p.add_argument("--data-figure", type=Path, default=None,
                   help="only write a figure of one easy and one hard image to this path, then exit")
    args = p.parse_args(argv)
    if args.measure_batch < 2:
        p.error("--measure-batch must be at least 2 (the baseline's batch norm needs two samples)")
    if args.quick:
        defaults = dict(setting="easy", image_size=112, epochs=12, baseline_epochs=1, n_train=1024,
                        baseline_n_train=256, n_test=200, measure_batch=2, measure_steps=2, threads=1)
        for key, value in defaults.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.data_figure is not None:
        save_data_figure(args.data_figure, args.seed)
        print(f"wrote {args.data_figure}")
        return 0
    if args.report is not None:
        print(format_table(json.loads(args.report.read_text())))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    probe = MegaMNIST(1, args.setting, size=None if args.image_size is None else (args.image_size,) * 2)
    cfg = {
        "setting": args.setting, "image_size": args.image_size, "width": probe.size[0], "height": probe.size[1],
        "n_noise": probe.n_noise, "n_train": args.n_train, "n_test": args.n_test, "batch_size": args.batch_size,
        "lr": args.lr, "lr_decay_at": list(args.lr_decay_at), "n_val": args.n_val, "patience": args.patience,
        "max_decays": args.max_decays, "plateau_below": args.plateau_below, "clip": args.clip, "n_patches": args.n_patches, "patch_size": args.patch_size,
        "downsample": args.downsample, "entropy": args.entropy, "device": args.device, "seed": args.seed,
        "workers": args.workers, "measure_batch": args.measure_batch, "measure_steps": args.measure_steps,
        "eval_every_epoch": args.eval_every_epoch, "no_progress": args.no_progress,
        "threads": torch.get_num_threads(), "quick": args.quick,
    }
    baseline_epochs = args.epochs if args.baseline_epochs is None else args.baseline_epochs
    baseline_n_train = args.n_train if args.baseline_n_train is None else args.baseline_n_train
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = {
        "attention_sampling": (args.epochs, args.n_train, args.init_from),
        "baseline_cnn": (baseline_epochs, baseline_n_train, args.baseline_init_from),
    }
    methods = {}
    models = {}
    if args.parallel:
        # One spawned process per method, each with cfg["threads"] torch threads:
        # on a 2-core machine with --threads 1 both trainings share the wall time.
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(jobs)) as pool:
            pending = {m: pool.apply_async(_train_and_save, (m, cfg, *job, args.out)) for m, job in jobs.items()}
            for method, result in pending.items():
                methods[method] = result.get()
        for method in METHODS:
            models[method] = build_model(method, cfg)
            models[method].load_state_dict(torch.load(args.out / f"{method}.pt", map_location="cpu", weights_only=True))
            models[method].to(torch.device(cfg["device"]))
    else:
        for method, job in jobs.items():
            models[method], methods[method] = train(method, cfg, *job)
            _save_state(models[method], args.out / f"{method}.pt")
    for method in METHODS:
        methods[method].update(measure_cost(method, cfg))

    figure = args.figure or args.out / "megamnist.png"
    _, test_ds = make_datasets(cfg, 1)
    methods["attention_sampling"].update(attention_on_digits(models["attention_sampling"], test_ds, cfg))
    save_attention_figure(models["attention_sampling"], test_ds, 0, figure)
    summary = {"config": cfg, "methods": methods, "paper": PAPER, "figure": str(figure)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"wrote {args.out / 'summary.json'}, the models' state dicts and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
