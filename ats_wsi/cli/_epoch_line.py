"""What ``ats-wsi train`` prints about an epoch beyond its numbers: the epoch line's notes (encoder
busy, slides read ahead, the attention's spread), when the map is flat, and why read-ahead is off."""
from __future__ import annotations

import math

__all__ = ["busy_note", "flat_after_exploring", "read_ahead_note", "spread_note"]


def flat_after_exploring(metrics, explore_epochs: int) -> bool:
    """Whether an epoch's attention map is flat (logit sd below :data:`~ats_wsi.run.settings.FLAT_ATTENTION`)
    once the exploration epochs are over: its draws are uniform, and a ReLU attention net whose units all
    stopped firing does not come back (docs/training.md, "A flat attention map")."""
    from ..run.settings import FLAT_ATTENTION

    sd = getattr(metrics, "attention_sd", float("nan"))
    return metrics.epoch > max(1, explore_epochs) and math.isfinite(sd) and sd < FLAT_ATTENTION


def spread_note(metrics) -> str:
    """`` attn sd X`` for an epoch line (empty for uniform draws)."""
    sd = getattr(metrics, "attention_sd", float("nan"))
    return f"  attn sd {sd:.3f}" if math.isfinite(sd) else ""


def busy_note(metrics) -> str:
    """``  encoder 37%  read ahead 4`` (encoder's busy fraction, slides read ahead) for an epoch line, or empty."""
    busy = getattr(metrics, "encoder_busy", float("nan"))
    ahead = getattr(metrics, "read_ahead_slides", 0)
    return (f"  encoder {busy:.0%}" if busy == busy else "") + (f"  read ahead {ahead}" if ahead else "")


def read_ahead_note(config, world: int = 1) -> str | None:
    """The stderr line for ``--read-ahead`` asked for where the run cannot read ahead (None: it can)."""
    from ..run.train_ahead import read_ahead_refusal

    why = read_ahead_refusal(config, distributed=world > 1)
    return f"ats-wsi train: --read-ahead is off for this run: {why}" if why else None

