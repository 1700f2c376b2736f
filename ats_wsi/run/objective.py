"""What the slide head is trained for, by task: the loss of a slide (or of a batch, for Cox),
the outcome settings a config takes from the training slides, and the validation numbers.

- classification: cross-entropy (class weights as asked: :func:`class_weights`); validation accuracy and ROC AUC
  (computed by :func:`ats_wsi.run.train._evaluate`, as before this module).
- survival, ``nll``: the discrete-time negative log-likelihood per slide over
  quantile bins of the training slides' event times (stored in the config,
  so in the checkpoint); ``cox``: the Cox partial likelihood over each batch's
  slides, its gradient taken slide by slide (:func:`cox_gradients`; one process
  only). Validation: the loss and Harrell's C-index (in ``val_auc``'s place).
- regression: mean squared error of the target standardised by the training
  slides' mean and standard deviation (stored in the config); validation: the
  loss and R² (in ``val_auc``'s place).

:mod:`ats_wsi.outcomes` holds the formulas; this module applies them to manifest rows.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..classifier import ModelConfig
from ..data.manifest import ManifestRow
from ..errors import ConfigError, ManifestError, SlideError
from ..outcomes.losses import cox_partial_likelihood, discrete_time_nll, nll_risk, time_bin_cuts, time_bins_of

__all__ = ["Objective", "class_weights", "fit_outcome", "evaluate_outcome", "cox_gradients", "summary_view", "SCORE_NAME",
           "metric_fields"]

SCORE_NAME = {"classification": "val_auc", "survival": "val_c_index", "regression": "val_r2"}
"""The ``metrics.csv`` column of each task's validation score (``EpochMetrics.val_auc`` holds it)."""


def metric_fields(task: str, fields: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``(columns of metrics.csv, {EpochMetrics field: column})`` for ``task``: survival and
    regression have no accuracy, and their score is named for what it is."""
    if task == "classification":
        return list(fields), {}
    rename = {"val_auc": SCORE_NAME[task]}
    return [rename.get(f, f) for f in fields if not f.endswith("_acc")], rename


def fit_outcome(manifest, config: ModelConfig, train_rows: Sequence[ManifestRow]) -> ModelConfig:
    """``config`` with what its task takes from the training slides: the time bins
    (``nll``, unless set) or the target's mean and standard deviation (regression)."""
    if config.task == "survival" and config.survival_loss == "nll" and config.time_bins is None:
        times, events = [r.time for r in train_rows], [r.event for r in train_rows]
        if not any(events):
            raise ManifestError(f"{manifest}: no event among the {len(train_rows)} training slides; survival "
                                f"needs slides whose event (death, progression) was observed")
        return replace(config, time_bins=time_bin_cuts(times, events, config.n_bins))
    if config.task == "survival" and not any(r.event for r in train_rows):
        raise ManifestError(f"{manifest}: no event among the {len(train_rows)} training slides")
    if config.task == "regression" and (config.target_mean, config.target_std) == (0.0, 1.0):
        values = np.array([r.target for r in train_rows], dtype=np.float64)
        std = float(values.std()) if values.size > 1 else 0.0
        return replace(config, target_mean=float(values.mean()), target_std=std if std > 0 else 1.0)
    return config


def class_weights(rows: Sequence[ManifestRow], n_classes: int, mode: str | None) -> list[float] | None:
    """Loss weight per class: None (all 1), or ``"balanced"``: ``n / (K * n_k)``
    over the training rows (as scikit-learn's ``class_weight="balanced"``; a
    class without training slides gets 1)."""
    if mode is None or mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weights must be None or 'balanced', got {mode!r}")
    counts = np.bincount([r.label for r in rows], minlength=n_classes).astype(np.float64)
    present = counts > 0
    k = int(present.sum())
    return [float(len(rows) / (k * c)) if c else 1.0 for c in counts]


class Objective:
    """The training loss of a task (see the module docstring)."""

    def __init__(self, config: ModelConfig, class_weight: list[float] | None = None, distributed: bool = False):
        self.config, self.class_weight = config, class_weight
        self.task = config.task
        self.batched = config.task == "survival" and config.survival_loss == "cox"
        if self.batched and distributed:
            raise ConfigError(None, "--survival-loss cox takes its loss over each batch's slides in one process; "
                                    "run it without torchrun, or use --survival-loss nll")

    def slide_loss(self, logits: Tensor, row: ManifestRow) -> Tensor:
        """The loss of one slide, before :meth:`weight` (not for Cox: see :meth:`batch_loss`)."""
        device = logits.device
        if self.task == "classification":
            return F.cross_entropy(logits, torch.tensor([row.label], device=device))
        if self.task == "regression":
            c = self.config
            return F.mse_loss(logits[:, 0].float(), torch.tensor([(row.target - c.target_mean) / c.target_std],
                                                                 device=device, dtype=torch.float32))
        bins = torch.as_tensor(time_bins_of([row.time], self.config.time_bins), device=device)
        return discrete_time_nll(logits, bins, torch.tensor([row.event], device=device))

    def weight(self, row: ManifestRow) -> float:
        """The weight of a slide's loss: its class's (``--class-weights balanced``), else 1."""
        return 1.0 if self.class_weight is None or self.task != "classification" else self.class_weight[row.label]

    def batch_loss(self, outputs: Sequence[Tensor], rows: Sequence[ManifestRow]) -> Tensor:
        """The Cox partial likelihood of a batch's slide outputs (each ``[1, 1]``)."""
        device = outputs[0].device
        return cox_partial_likelihood(torch.cat([o.reshape(-1) for o in outputs]),
                                      torch.tensor([r.time for r in rows], device=device),
                                      torch.tensor([r.event for r in rows], device=device))

    def correct(self, logits: Tensor, row: ManifestRow) -> int:
        """1 when a classifier's slide is right (0 for the other tasks: they have no accuracy)."""
        return int(self.task == "classification" and logits.argmax(-1).item() == row.label)


def evaluate_outcome(objective: Objective, forward: Callable, rows: Sequence[ManifestRow],
                     failures=None, epoch: int = 0) -> tuple[float, float, float, float]:
    """Validation ``(loss, nan, score, nan)`` of a survival or regression model: the score is
    Harrell's C (survival) or R² (regression). ``forward(i, row)`` gives a slide's ``[1, K]`` output."""
    from ..outcomes.survival_metrics import harrell_c

    outputs, kept = [], []
    with torch.no_grad():
        for i, row in enumerate(rows):
            if failures is not None and row in failures:
                continue
            try:
                outputs.append(forward(i, row).float())
            except SlideError as exc:
                if failures is None:
                    raise
                failures.record(row, exc, epoch)
                continue
            kept.append(row)
    nan = float("nan")
    if not kept:
        return nan, nan, nan, nan
    if objective.batched:
        loss = float(objective.batch_loss(outputs, kept))
    else:
        loss = float(np.mean([float(objective.slide_loss(o, r)) for o, r in zip(outputs, kept)]))
    stacked = torch.cat(outputs)
    if objective.task == "survival":
        risk = nll_risk(stacked) if objective.config.survival_loss == "nll" else stacked[:, 0]
        score = harrell_c(risk.cpu().numpy(), [r.time for r in kept], [r.event for r in kept])
    else:
        c = objective.config
        values = stacked[:, 0].cpu().numpy() * c.target_std + c.target_mean
        y = np.array([r.target for r in kept])
        total = float(np.sum((y - y.mean()) ** 2))
        score = 1.0 - float(np.sum((y - values) ** 2)) / total if total > 0 else nan
    return loss, nan, (score if not math.isnan(score) else nan), nan


def summary_view(config: ModelConfig, rows: Sequence[ManifestRow]) -> tuple[ModelConfig, list[ManifestRow]]:
    """The config and rows the cohort summary counts: classes for a classifier; events and
    censored slides for survival; slides for regression."""
    if config.task == "survival":
        return (replace(config, n_classes=2, class_names=["censored", "event"]),
                [replace(r, label=r.event, class_name=None) for r in rows])
    if config.task == "regression":
        return replace(config, n_classes=1, class_names=["slides"]), [replace(r, label=0) for r in rows]
    return config, list(rows)


def cox_gradients(objective: Objective, forward: Callable, batch: Sequence[tuple[int, ManifestRow]],
                  failures=None) -> tuple[dict[int, float], float]:
    """``({index: d loss / d risk}, loss)`` of the Cox partial likelihood over a batch.

    ``forward(index, row)`` gives a slide's ``[1, 1]`` output (called without
    gradients). Training then runs each slide again with gradients and back-
    propagates ``risk * d loss / d risk``: by the chain rule the sum over the batch
    is the gradient of the batch's Cox loss, taken slide by slide like every other
    loss (BatchNorm's statistics and memory stay per slide). Slides that fail
    are left out (the second pass records them).
    """
    risks, kept = [], []
    with torch.no_grad():
        for index, row in batch:
            if failures is not None and row in failures:
                continue
            try:
                risks.append(forward(index, row).reshape(-1)[0].float())
            except SlideError:
                continue
            kept.append((index, row))
    if not kept:
        return {}, 0.0
    leaf = torch.stack(risks).detach().requires_grad_(True)
    loss = objective.batch_loss([leaf], [row for _, row in kept])
    if loss.requires_grad:
        loss.backward()
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return {index: float(g) for (index, _), g in zip(kept, grad)}, float(loss.detach())
