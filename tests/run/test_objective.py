"""The task objectives of training: the Cox gradient taken slide by slide equals the batch's,
and what a config takes from the training slides."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ats_wsi.classifier import ModelConfig
from ats_wsi.data.manifest import ManifestRow
from ats_wsi.errors import ManifestError
from ats_wsi.outcomes.losses import cox_partial_likelihood
from ats_wsi.run.objective import Objective, cox_gradients, fit_outcome, metric_fields


def _rows(times, events, targets=None):
    return [ManifestRow(Path(f"s{i}.svs"), None, time=t, event=e, target=None if targets is None else targets[i])
            for i, (t, e) in enumerate(zip(times, events))]


def test_cox_gradient_slide_by_slide_equals_the_batch_gradient():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 1)
    x = torch.randn(6, 5)
    rows = _rows([3.0, 1.0, 4.0, 1.0, 5.0, 2.0], [1, 1, 0, 1, 0, 1])
    objective = Objective(ModelConfig(task="survival", survival_loss="cox"))

    cox_partial_likelihood(net(x)[:, 0], torch.tensor([r.time for r in rows]),
                           torch.tensor([r.event for r in rows])).backward()
    direct = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()

    grads, loss = cox_gradients(objective, lambda i, row: net(x[i:i + 1]), list(enumerate(rows)))
    for i in range(6):  # what training does: one backward per slide
        (net(x[i:i + 1]).reshape(-1)[0] * grads[i]).backward()
    for got, want in zip((p.grad for p in net.parameters()), direct):
        assert torch.allclose(got, want, atol=1e-6)
    assert loss == pytest.approx(float(objective.batch_loss([net(x).detach()], rows)), rel=1e-6)


def test_cox_under_torchrun_is_refused_with_the_alternative():
    with pytest.raises(Exception, match="--survival-loss nll"):
        Objective(ModelConfig(task="survival", survival_loss="cox"), distributed=True)


def test_fit_outcome_sets_bins_from_event_times_and_the_target_scale():
    config = fit_outcome("m.csv", ModelConfig(task="survival", n_bins=2),
                         _rows([1.0, 2.0, 3.0, 4.0, 50.0], [1, 1, 1, 1, 0]))
    assert config.time_bins == [2.5] and config.head_outputs == 2
    with pytest.raises(ManifestError, match="no event among the 2 training slides"):
        fit_outcome("m.csv", ModelConfig(task="survival"), _rows([1.0, 2.0], [0, 0]))
    reg = fit_outcome("m.csv", ModelConfig(task="regression"), _rows([0, 0, 0], [0, 0, 0], [1.0, 2.0, 3.0]))
    assert reg.target_mean == 2.0 and reg.target_std == pytest.approx((2 / 3) ** 0.5)
    assert reg.head_outputs == 1 and ModelConfig(n_classes=3).head_outputs == 3


def test_metrics_csv_columns_name_the_task_score():
    fields = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc"]
    assert metric_fields("survival", fields) == (["epoch", "train_loss", "val_loss", "val_c_index"],
                                                 {"val_auc": "val_c_index"})
    assert metric_fields("classification", fields) == (fields, {})
