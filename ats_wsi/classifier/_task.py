"""Checks of a model config's task fields (``task``, ``survival_loss``, ``n_bins``, ``time_bins``,
``target_mean``/``target_std``), beside :mod:`._config_check`'s sizes and resolutions."""
from __future__ import annotations

import math

from ..outcomes import SURVIVAL_LOSSES, TASKS
from ..outcomes.losses import MAX_BINS

__all__ = ["READOUTS", "readout_problems", "slide_value", "task_problems"]


def task_problems(config) -> list[str]:
    """What is out of range in the task fields of a built config (one line each)."""
    problems = []
    if config.task not in TASKS:
        problems.append(f"'task' must be one of {list(TASKS)}, got {config.task!r}")
    if config.survival_loss not in SURVIVAL_LOSSES:
        problems.append(f"'survival_loss' must be one of {list(SURVIVAL_LOSSES)}, got {config.survival_loss!r}")
    if not (isinstance(config.n_bins, int) and not isinstance(config.n_bins, bool) and 1 <= config.n_bins <= MAX_BINS):
        problems.append(f"'n_bins' must be an integer in 1..{MAX_BINS}, got {config.n_bins!r}")
    cuts = config.time_bins
    if cuts is not None:
        ok = isinstance(cuts, (list, tuple)) and len(cuts) < MAX_BINS and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in cuts)
        if not ok or any(b <= a for a, b in zip(cuts, cuts[1:])):
            problems.append(f"'time_bins' must be fewer than {MAX_BINS} increasing finite cut points, got {cuts!r}")
    for key in ("target_mean", "target_std"):
        value = getattr(config, key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            problems.append(f"{key!r} must be a finite number, got {value!r}")
    if isinstance(config.target_std, (int, float)) and not config.target_std > 0:
        problems.append(f"'target_std' must be > 0 (targets are divided by it), got {config.target_std!r}")
    if config.task in ("survival", "regression") and config.instance_head:
        problems.append(f"'instance_head' is for classification (its per-patch losses need classes); set it to "
                        f"false for task {config.task!r}")
    problems += readout_problems(config)
    return problems


READOUTS = ("head", "top")
"""How a draw's class probabilities are read: the slide head, or the instance head's top patch."""


def readout_problems(config) -> list[str]:
    """What is wrong with ``readout`` and ``negative_class`` (one line each)."""
    if config.readout not in READOUTS:
        return [f"'readout' must be one of {list(READOUTS)}, got {config.readout!r}"]
    n = config.n_classes
    neg = config.negative_class
    if not (isinstance(neg, int) and not isinstance(neg, bool) and isinstance(n, int) and 0 <= neg < n):
        return [f"'negative_class' must be a class index in 0..{n - 1 if isinstance(n, int) else '?'}, got {neg!r}"]
    if config.readout == "top" and (not config.instance_head or config.task != "classification"):
        return ["'readout' \"top\" reads the instance head's most positive drawn patch: it needs "
                "'instance_head' true and task 'classification' (or set 'readout' to \"head\")"]
    return []


def slide_value(config, logits) -> float | None:
    """The risk (survival) or the value in the target's unit (regression) of one slide's head
    output ``logits [1, K]``; None for classification."""
    if config.task == "survival":
        from ..outcomes.losses import nll_risk

        return float(nll_risk(logits)[0]) if config.survival_loss == "nll" else float(logits[0, 0])
    if config.task == "regression":
        return float(logits[0, 0]) * float(config.target_std) + float(config.target_mean)
    return None
