"""Survival and regression outcomes: losses (torch) and metrics (numpy; lifelines and scipy
from the ``survival`` extra).

- :mod:`.losses`: the discrete-time negative log-likelihood over quantile bins of
  event times (Zadeh & Schmid 2020, the loss of CLAM-surv), the Cox partial
  likelihood over a batch (Breslow's ties), and the risk each head gives.
- :mod:`.survival_metrics`: Harrell's and Uno's C-index with bootstrap intervals,
  Kaplan–Meier risk groups and their log-rank test.
- :mod:`.regression_metrics`: MAE, RMSE, R², Pearson and Spearman with intervals.
"""
from __future__ import annotations

TASKS = ("classification", "survival", "regression")
SURVIVAL_LOSSES = ("nll", "cox")

__all__ = ["TASKS", "SURVIVAL_LOSSES"]
