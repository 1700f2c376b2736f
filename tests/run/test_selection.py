"""best.pt's epoch (run/selection.py): by a validation number, or the last epoch."""
from __future__ import annotations

import math

import pytest

from ats_wsi.run.selection import SELECT, best_epoch
from ats_wsi.run.settings import EpochMetrics

NAN = math.nan


def history(rows):
    """EpochMetrics of (val_loss, val_acc, val_auc) per epoch, numbered from 1."""
    return [EpochMetrics(i + 1, 0.5, 0.5, loss, acc, 1.0, 1e-3, val_auc=auc) for i, (loss, acc, auc) in enumerate(rows)]


ROWS = [(0.60, 0.50, 0.70), (0.40, 0.75, 1.00), (0.45, 0.75, 0.90), (0.30, 0.75, 1.00), (0.50, 0.50, 0.80)]


@pytest.mark.parametrize("select, epoch", [
    ("auc", 4),  # 1.00 twice: the lower loss
    ("accuracy", 4),  # 0.75 three times: the lowest loss
    ("loss", 4),
    ("last", 5),  # whatever the validation said
])
def test_each_rule_picks_its_epoch(select, epoch):
    assert select in SELECT
    assert best_epoch(history(ROWS), select).epoch == epoch


def test_ties_go_to_the_later_epoch_and_no_validation_means_the_last():
    assert best_epoch(history([(0.5, 0.5, 0.9), (0.5, 0.5, 0.9), (0.6, 0.5, 0.8)]), "auc").epoch == 2
    assert best_epoch(history([(NAN, NAN, NAN)] * 3), "auc").epoch == 3
    with pytest.raises(ValueError, match="select must be one of"):
        best_epoch(history(ROWS), "best")

