"""Fixtures for the sampling tests."""
from __future__ import annotations

import pytest

from montecarlo import Problem, make_problem


@pytest.fixture
def problem() -> Problem:
    """K = 7 cells, D = 3, non-uniform attention (max/min about 15)."""
    return make_problem([1.2, -0.3, 0.4, -1.5, 0.9, 0.0, -0.8], dim=3, seed=0)
