"""The attention map's spread that training reports per epoch (``EpochMetrics.attention_sd``)."""
import math
from types import SimpleNamespace

import pytest
import torch

from ats_wsi.run.train import _logit_sd


def test_the_spread_is_the_sd_of_the_logits_over_the_cells_the_map_may_draw():
    logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, -1.0, 9.0]]], requires_grad=True)
    attention = torch.tensor([[[0.2, 0.3, 0.0], [0.4, 0.1, 0.0]]])  # the last column is not tissue
    got = _logit_sd(SimpleNamespace(logits=logits, attention=attention))
    assert got == pytest.approx(torch.tensor([0.0, 1.0, 2.0, -1.0]).std().item(), rel=1e-6)


def test_no_spread_for_uniform_draws_or_a_result_without_logits():
    attention = torch.full((1, 2, 2), 0.25)
    assert math.isnan(_logit_sd(SimpleNamespace(logits=torch.zeros(1, 2, 2), attention=attention)))
    assert math.isnan(_logit_sd(SimpleNamespace(logits=None, attention=attention)))
    one = torch.tensor([[[1.0, 0.0]]])
    assert math.isnan(_logit_sd(SimpleNamespace(logits=torch.ones(1, 1, 2, requires_grad=True), attention=one)))
