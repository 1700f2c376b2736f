"""The nested (zoom) estimator: unbiased value and gradients through both stages, by Monte Carlo.

One small two-stage problem is solved exactly by enumeration (autograd on
``Phi = sum_i a1_i sum_j a2_{j|i} f_ij``); ``COPIES`` independent two-stage
draws run in one batch (float64, fixed seeds), each back-propagated to its
own copy of the stage-1 logits, the stage-2 logits of every region and the
features. Every coordinate of the mean must lie within ``Z_MAX`` standard
errors of the exact value, for the four with/without-replacement
combinations.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.sampling import expectation, sample
from ats_wsi.sampling.nested import nested_expectation, sample_within
from montecarlo import z_scores

COPIES = 100_000
Z_MAX = 4.5
Z_BIASED = 10.0

LOGITS_1 = [0.8, -0.6, 0.2, -1.2]  # 4 regions, a1 from 0.09 to 0.42
LOGITS_2 = [[1.0, -0.5, 0.3, -1.0, 0.0],  # 5 cells per region
            [-0.2, 0.7, -1.3, 0.4, 0.1],
            [0.0, 0.0, 1.5, -0.7, -0.3],
            [0.6, -0.9, 0.2, 0.9, -0.4]]
MASK_2 = [[True] * 5, [True] * 5, [True] * 5, [True, False, True, True, False]]  # a region clipped by the slide
N1 = 3
N2 = 3


@dataclass
class Exact:
    """The exact value ``[D]`` and gradients of ``<g, Phi>``: logits_1 ``[K1]``, logits_2 ``[K1, K2]``,
    features ``[K1, K2, D]``."""

    phi: torch.Tensor
    grad_logits_1: torch.Tensor
    grad_logits_2: torch.Tensor
    grad_features: torch.Tensor


def _problem(dim: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits_1 = torch.tensor(LOGITS_1, dtype=torch.float64)
    logits_2 = torch.tensor(LOGITS_2, dtype=torch.float64)
    mask_2 = torch.tensor(MASK_2)
    features = torch.randn(*logits_2.shape, dim, generator=gen, dtype=torch.float64)
    g = torch.randn(dim, generator=gen, dtype=torch.float64)
    return logits_1, logits_2, mask_2, features, g


def _exact(logits_1, logits_2, mask_2, features, g) -> Exact:
    """Enumerate every region and cell: ``Phi`` and autograd's gradients of ``<g, Phi>``."""
    l1, l2, f = (t.clone().requires_grad_() for t in (logits_1, logits_2, features))
    a1 = torch.softmax(l1, dim=0)
    a2 = torch.softmax(l2.masked_fill(~mask_2, float("-inf")), dim=1)
    phi = torch.einsum("i,ij,ijd->d", a1, a2, f)
    grads = torch.autograd.grad(phi @ g, (l1, l2, f))
    return Exact(phi.detach(), *grads)


def _estimate(replace_1, replace_2, copies, seed, estimator=nested_expectation):
    """``copies`` two-stage draws: value ``[B, D]`` and gradients ``[B, K1]``, ``[B, K1, K2]``, ``[B, K1, K2, D]``.

    The sampler sees the softmax over ALL cells of a region and the mask, as
    the zoom does, so its renormalisation is on the gradient's path.
    """
    logits_1, logits_2, mask_2, features, g = _problem()
    K1, K2, D = features.shape
    l1 = logits_1.repeat(copies, 1).requires_grad_()
    l2 = logits_2.repeat(copies, 1, 1).requires_grad_()
    f = features.repeat(copies, 1, 1, 1).requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    regions, s1 = sample(torch.softmax(l1, dim=1), N1, replace=replace_1, generator=gen)
    i = regions[..., 0]  # [B, n1]
    a2 = torch.softmax(l2, dim=2).gather(1, i[..., None].expand(-1, -1, K2))  # [B, n1, K2]
    cells, s2 = sample_within(a2, N2, replace=replace_2, mask=mask_2[i], generator=gen)
    j = cells[..., 0]  # [B, n1, n2]
    in_regions = f.gather(1, i[..., None, None].expand(-1, -1, K2, D))  # [B, n1, K2, D]
    picked = in_regions.gather(2, j[..., None].expand(-1, -1, -1, D))  # [B, n1, n2, D]
    value = estimator(picked, s1, s2, replace_1, replace_2)
    grads = torch.autograd.grad((value @ g).sum(), (l1, l2, f))
    return value.detach(), grads


def _flat_joint(features, s1, s2, replace_1, replace_2):
    """A tempting wrong variant: one one-stage estimator over all n1·n2 draws with joint probabilities."""
    return expectation(features.flatten(1, 2), (s1[..., None] * s2).flatten(1), replace_1 and replace_2)


COMBINATIONS = [(r1, r2) for r1 in (True, False) for r2 in (True, False)]


@pytest.mark.parametrize("replace_1, replace_2", COMBINATIONS,
                         ids=[f"{'r' if a else 'nr'}1-{'r' if b else 'nr'}2" for a, b in COMBINATIONS])
def test_value_and_gradients_of_both_stages_are_unbiased(replace_1, replace_2):
    exact = _exact(*_problem())
    value, (g1, g2, gf) = _estimate(replace_1, replace_2, COPIES, seed=10 + 2 * replace_1 + replace_2)
    checks = {"value": z_scores(value, exact.phi), "logits_1": z_scores(g1, exact.grad_logits_1),
              "logits_2": z_scores(g2, exact.grad_logits_2), "features": z_scores(gf, exact.grad_features)}
    for name, z in checks.items():
        assert z.abs().max() < Z_MAX, (name, z)


def test_the_masked_cells_of_a_clipped_region_get_nothing():
    _, (_, g2, gf) = _estimate(False, False, 1000, seed=3)
    masked = ~torch.tensor(MASK_2)
    assert (gf[:, masked] == 0).all()
    assert g2[:, masked].abs().max() < 1e-15  # rounding of the sampler's renormalisation


def test_the_flat_joint_estimator_without_replacement_is_caught():
    """Flattening both stages into one draw list and calling the one-stage
    estimator with the joint probabilities a1·a2 is biased without
    replacement (the draws are not sequential draws from the joint law):
    the Monte-Carlo check must see it, else it has no power."""
    exact = _exact(*_problem())
    value, (g1, _, _) = _estimate(False, False, COPIES, seed=21, estimator=_flat_joint)
    worst = max(z_scores(value, exact.phi).abs().max(), z_scores(g1, exact.grad_logits_1).abs().max())
    assert worst > Z_BIASED


def test_nested_equals_the_outer_estimator_of_the_inner_estimates():
    gen = torch.Generator().manual_seed(4)
    s1 = torch.softmax(torch.randn(2, 6, generator=gen, dtype=torch.float64), dim=1)[:, :3]
    s2 = torch.softmax(torch.randn(2, 3, 7, generator=gen, dtype=torch.float64), dim=2)[..., :4]
    f = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    for r1, r2 in COMBINATIONS:
        inner = torch.stack([expectation(f[:, r], s2[:, r], r2) for r in range(3)], dim=1)
        assert torch.allclose(nested_expectation(f, s1, s2, r1, r2), expectation(inner, s1, r1))


def test_shapes_that_do_not_nest_are_refused():
    f = torch.zeros(2, 3, 4, 5)
    with pytest.raises(SamplingError, match=r"\[B, n1, n2, \.\.\.\]"):
        nested_expectation(f, torch.ones(2, 3), torch.ones(2, 3, 5), True, True)
    with pytest.raises(SamplingError, match=r"\[B, n1, n2, \.\.\.\]"):
        nested_expectation(f, torch.ones(2, 4), torch.ones(2, 3, 4), True, True)
    with pytest.raises(SamplingError, match="stage-2 attention"):
        sample_within(torch.ones(2, 4) / 4, 1)
    with pytest.raises(SamplingError, match="stage-2 mask"):
        sample_within(torch.ones(2, 3, 4) / 4, 1, mask=torch.ones(3, 4, dtype=torch.bool))


def test_sample_within_draws_each_region_from_its_own_map():
    """Region r's draws land only on the one cell its map allows."""
    attention = torch.zeros(2, 3, 5)
    for b in range(2):
        for r in range(3):
            attention[b, r, (b + 2 * r) % 5] = 1.0
    positions, sampled = sample_within(attention, 4, replace=True)
    expected = torch.tensor([[(b + 2 * r) % 5 for r in range(3)] for b in range(2)])
    assert (positions[..., 0] == expected[..., None]).all()
    assert positions.shape == (2, 3, 4, 1) and (sampled == 1).all()
