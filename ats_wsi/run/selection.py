"""Which epoch ``best.pt`` is: by validation accuracy, AUC or loss, or the last one."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["SELECT", "best_epoch"]

SELECT = ("accuracy", "auc", "loss", "last")
"""What :func:`best_epoch` may select by (``--select``)."""


def best_epoch(history: Sequence, select: str = "accuracy"):
    """The epoch (of ``history``, EpochMetrics) that ``best.pt`` copies.

    ``accuracy``: highest validation accuracy, then lowest loss; ``auc``:
    highest validation AUC, then lowest loss; ``loss``: lowest validation
    loss; ``last``: the last epoch (a few validation slides make the best of
    many noisy epochs mostly the luckiest: docs/training.md, "Patches at
    prediction, which epoch, and the threshold").
    Later epochs win ties; without validation numbers (NaN) the last epoch is
    best.
    """
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")

    if select == "last":
        return history[-1]

    def key(m):
        neg_loss = -m.val_loss if not math.isnan(m.val_loss) else 0.0
        if select == "loss":
            return neg_loss, m.epoch
        score = m.val_acc if select == "accuracy" else getattr(m, "val_auc", float("nan"))
        return (-1.0 if math.isnan(score) else score), neg_loss, m.epoch

    return max(history, key=key)
