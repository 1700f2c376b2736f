"""Fixtures shared by the batch-prediction tests of run/: a tiny untrained model's checkpoint."""
from __future__ import annotations

import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint

from run_helpers import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained :data:`TINY` model's checkpoint (seed 0)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(**TINY)))
    return path
