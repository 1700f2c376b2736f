"""Training for the Megapixel-MNIST cost benchmark (``megamnist_costs.py``): both methods, one loop.

Attention sampling is the network of ``examples/megamnist.py`` (imported from
there, so the benchmark measures what the example trains); the baseline is
the same conv blocks over the whole full-resolution image. Training keeps the
best epoch on validation images and divides the learning rate by 10 on a
plateau (:class:`_Plateau`); batch-norm statistics are recomputed under the
final weights before testing.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ats_wsi.atomic import atomic_path
from ats_wsi.data.megamnist import MegaMNIST


def _load_example():
    """``examples/megamnist.py`` as the module ``megamnist_example`` (examples/ is not a package)."""
    if "megamnist_example" in sys.modules:
        return sys.modules["megamnist_example"]
    path = Path(__file__).resolve().parents[1] / "examples" / "megamnist.py"
    spec = importlib.util.spec_from_file_location("megamnist_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()
AttentionSamplingClassifier = example.AttentionSamplingClassifier
conv_blocks = example.conv_blocks
N_CLASSES = example.N_CLASSES

METHODS = ("attention_sampling", "baseline_cnn")
METHOD_NAMES = {"attention_sampling": "attention sampling", "baseline_cnn": "CNN, full resolution"}


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
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


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
