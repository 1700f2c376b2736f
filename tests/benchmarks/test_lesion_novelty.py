"""benchmarks/lesion_novelty.py: the novelty pick's score, by hand on four slides."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from lesion_novelty import novelty  # noqa: E402


def test_the_farthest_patch_from_every_negative_patch_is_scored_and_picked():
    sets = [{"label": 0, "truth": np.array([0, 1])}, {"label": 0, "truth": np.array([0])},
            {"label": 1, "truth": np.array([0, 2, 1])}, {"label": 1, "truth": np.array([2, 0])}]
    features = [torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
                torch.tensor([[0.0, 0.5], [5.0, 0.0], [3.0, 0.0]]),  # distances 0.5, 4, 2: the lesion is farthest
                torch.tensor([[1.5, 0.0], [0.0, 3.0]])]  # distances 0.5, 2: a plain patch is farthest
    found = novelty(features, sets)
    # lesion scores 4 and 0.5 against the others' 0.5, 2 and 2: pairs won 3 + 0.5 (a tie) of 6
    assert found["auc"] == pytest.approx((3 + 0.5) / 6)
    assert found["lesion_picked"] == 1 and found["positive_slides"] == 2
