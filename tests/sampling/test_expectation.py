"""The estimators: unbiased values and gradients, checked by Monte Carlo.

Every statistical test draws ``COPIES`` independent samples of one small
problem in a single batch (float64, fixed seed) and requires each coordinate
of the mean to lie within ``Z_MAX`` standard errors (estimated from the
samples themselves) of the exact value.
"""
from __future__ import annotations

import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.sampling import expectation
from montecarlo import make_problem, run_estimator, z_scores

COPIES = 100_000
Z_MAX = 4.0
# A biased variant must miss by far more than the tolerance, or the test has
# no power to tell it from ours.
Z_BIASED = 10.0

LOGITS = [1.2, -0.3, 0.4, -1.5, 0.9, 0.0, -0.8]  # a from 0.04 to 0.33
CASES = {  # name: (logits, n, mask)
    "K7-n3": (LOGITS, 3, None),
    "K7-n6": (LOGITS, 6, None),  # n = K - 1
    "K7-n7": (LOGITS, 7, None),  # every cell drawn
    "skewed": ([4.0, -1.0, 0.5, -3.0, -2.0, 0.0, -4.0], 3, None),  # a_0 ~ 0.92, a_6 ~ 3e-4
    "masked": (LOGITS, 3, [False, True, True, True, False, True, True]),  # the two largest cells masked
}


@pytest.mark.parametrize(
    "replace, case",
    [(r, c) for r in (True, False) for c in CASES if r is False or c != "K7-n7"],
    ids=lambda v: v if isinstance(v, str) else ("replace" if v else "no-replace"),
)
def test_value_and_gradients_are_unbiased(replace, case):
    """Mean of Phi_hat -> Phi, of d<g,Phi_hat>/dlogits -> a_k(<g,f_k> - <g,Phi>),
    of d<g,Phi_hat>/df_k -> a_k g; the gradient reaches the logits only
    through sampled_attention (and, with a mask, through the sampler's
    renormalisation over the unmasked cells)."""
    logits, n, mask = CASES[case]
    problem = make_problem(logits, dim=3, seed=1, mask=mask)
    draws = run_estimator(problem, n=n, replace=replace, copies=COPIES, seed=2)

    z_value = z_scores(draws.value, problem.phi)
    z_logits = z_scores(draws.grad_logits, problem.grad_logits)
    z_features = z_scores(draws.grad_features, problem.grad_features)
    assert z_value.abs().max() < Z_MAX, z_value
    assert z_logits.abs().max() < Z_MAX, z_logits
    assert z_features.abs().max() < Z_MAX, z_features


def test_without_replacement_value_when_every_cell_is_drawn():
    """Both cells of a 2-cell map: Fe_0 = f_0 and Fe_1 = a_0 f_0 + a_1 f_1 = Phi."""
    a = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    f = torch.tensor([[[1.0], [5.0]]], dtype=torch.float64)
    # Phi_hat = (Fe_0 + Fe_1) / 2 = (f_0 + Phi) / 2
    phi = 0.3 * 1.0 + 0.7 * 5.0
    assert expectation(f, a, replace=False).item() == pytest.approx((1.0 + phi) / 2)


# ----- the literal formula, term by term, for the power tests -------------


def literal_gradient(a, f, g, terms=("pathwise", "draw", "renormalisation"), causal=True):
    """d<g, Phi_hat>/da_m without replacement, written term by term.

    a ``[B, n]``, f ``[B, n, D]``, g ``[D]`` -> ``[B, n]``. Python loops over
    the draws (n is small), vectorised over B. With ``causal=False`` each
    draw's score multiplies the whole Phi_hat instead of only the terms that
    depend on it.
    """
    B, n = a.shape
    pm = [1 - a[:, :i].sum(dim=1) for i in range(n)]
    fe = [(a[:, :i, None] * f[:, :i]).sum(dim=1) + pm[i][:, None] * f[:, i] for i in range(n)]
    e = torch.stack([x @ g for x in fe], dim=1)  # [B, n]
    phi = f @ g  # [B, n]
    out = torch.zeros_like(a)
    for m in range(n):
        first = m if causal else 0
        if "pathwise" in terms:
            out[:, m] += sum((phi[:, m] - phi[:, i] for i in range(m + 1, n)), torch.zeros(B, dtype=a.dtype))
        if "draw" in terms:
            out[:, m] += e[:, first:].sum(dim=1) / a[:, m]
        if "renormalisation" in terms:
            for j in range(m + 1, n):
                out[:, m] += e[:, (j if causal else 0):].sum(dim=1) / pm[j]
    return out / n


def _to_logits(problem, positions, grad_sampled):
    """Push gradients w.r.t. sampled probabilities ``[B, n]`` to the logits ``[B, K]``."""
    a = problem.attention
    grad_probs = torch.zeros(positions.shape[0], a.numel(), dtype=a.dtype)
    grad_probs.scatter_add_(1, positions, grad_sampled)
    return a * (grad_probs - (grad_probs @ a)[:, None])


@pytest.fixture(scope="module")
def no_replacement_draws():
    problem = make_problem(LOGITS, dim=3, seed=1)
    return problem, run_estimator(problem, n=3, replace=False, copies=COPIES, seed=3)


def _literal_z(problem, draws, **kwargs):
    f = problem.features[draws.positions]
    grad = literal_gradient(draws.sampled_attention, f, problem.g, **kwargs)
    return z_scores(_to_logits(problem, draws.positions, grad), problem.grad_logits)


def test_literal_formula_agrees_with_the_vectorised_backward(no_replacement_draws):
    problem, draws = no_replacement_draws
    f = problem.features[draws.positions]
    literal = literal_gradient(draws.sampled_attention, f, problem.g)
    assert torch.allclose(_to_logits(problem, draws.positions, literal), draws.grad_logits, atol=1e-12)


@pytest.mark.parametrize("dropped", ["pathwise", "draw", "renormalisation"])
def test_each_gradient_term_is_needed(no_replacement_draws, dropped):
    """Dropping any one term biases the logit gradient far beyond the tolerance."""
    problem, draws = no_replacement_draws
    terms = tuple(t for t in ("pathwise", "draw", "renormalisation") if t != dropped)
    assert _literal_z(problem, draws).abs().max() < Z_MAX
    assert _literal_z(problem, draws, terms=terms).abs().max() > Z_BIASED


def test_pairing_each_score_with_later_terms_only_keeps_the_mean(no_replacement_draws):
    """Multiplying each draw's score by all of Phi_hat (plain REINFORCE) is
    unbiased too: the earlier terms meet a score of conditional mean 0. The
    causal pairing used in the backward only removes variance."""
    problem, draws = no_replacement_draws
    assert _literal_z(problem, draws, causal=False).abs().max() < Z_MAX
    f = problem.features[draws.positions]
    full = _to_logits(problem, draws.positions, literal_gradient(draws.sampled_attention, f, problem.g, causal=False))
    assert (draws.grad_logits.var(dim=0) <= full.var(dim=0)).all()


def test_inclusive_cumsum_in_the_feature_gradient_is_caught(no_replacement_draws):
    """The feature weight (pm_m + (n-1-m) a_m)/n needs pm from an EXCLUSIVE
    cumulative sum. With an inclusive one the forward of a port can still be
    right, but the mean feature gradient misses a_k: the Monte-Carlo check
    must see it."""
    problem, draws = no_replacement_draws
    a, q = draws.sampled_attention, draws.positions
    n, K = a.shape[1], problem.attention.numel()
    later = torch.arange(n - 1, -1, -1, dtype=a.dtype)

    def per_cell(pm):  # sum of the weights landing on each cell, [B, K]
        weights = (pm + later * a) / n
        return torch.zeros(a.shape[0], K, dtype=a.dtype).scatter_add_(1, q, weights)

    exclusive = 1 - (a.cumsum(dim=1) - a)
    inclusive = 1 - a.cumsum(dim=1)
    assert z_scores(per_cell(exclusive), problem.attention).abs().max() < Z_MAX
    assert z_scores(per_cell(inclusive), problem.attention).abs().max() > Z_BIASED
    # and the autograd feature gradient is the exclusive one
    assert torch.allclose(draws.grad_features @ problem.g / (problem.g @ problem.g), per_cell(exclusive))


# ----- fixed samples: exact formulas -------------------------------------


def test_with_replacement_backward_matches_the_exact_formula():
    gen = torch.Generator().manual_seed(4)
    B, n = 5, 4
    f = torch.randn(B, n, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    a = (torch.rand(B, n, generator=gen, dtype=torch.float64) * 0.5 + 0.01).requires_grad_()
    g = torch.randn(B, 2, 3, generator=gen, dtype=torch.float64)

    out = expectation(f, a, replace=True)
    assert torch.allclose(out, f.mean(dim=1))
    grad_f, grad_a = torch.autograd.grad(out, (f, a), g)
    phi = (f * g[:, None]).sum(dim=(2, 3))
    assert torch.allclose(grad_a, phi / (n * a))
    assert torch.allclose(grad_f, g[:, None].expand_as(f) / n)


def test_without_replacement_forward_is_the_mean_of_sequential_terms():
    gen = torch.Generator().manual_seed(5)
    B, n = 6, 5
    a = torch.softmax(torch.randn(B, 9, generator=gen, dtype=torch.float64), dim=1)[:, :n]
    f = torch.randn(B, n, 4, generator=gen, dtype=torch.float64)
    terms = []
    for i in range(n):
        left = 1 - a[:, :i].sum(dim=1, keepdim=True)
        terms.append((a[:, :i, None] * f[:, :i]).sum(dim=1) + left * f[:, i])
    assert torch.allclose(expectation(f, a, replace=False), torch.stack(terms).mean(dim=0))


def test_without_replacement_backward_matches_the_literal_formula_on_any_feature_shape():
    gen = torch.Generator().manual_seed(6)
    B, n = 4, 5
    a = torch.softmax(torch.randn(B, 8, generator=gen, dtype=torch.float64), dim=1)[:, :n]
    a.requires_grad_()
    f = torch.randn(B, n, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, generator=gen, dtype=torch.float64)

    out = expectation(f, a, replace=False)
    grad_f, grad_a = torch.autograd.grad(out, (f, a), g.expand(B, 2, 3))
    expected = literal_gradient(a.detach(), f.detach().reshape(B, n, 6), g.reshape(6))
    assert torch.allclose(grad_a, expected)
    pm = 1 - (a.cumsum(dim=1) - a)
    weights = (pm + torch.arange(n - 1, -1, -1) * a) / n
    assert torch.allclose(grad_f, weights[:, :, None, None].detach() * g)


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4)], ids=["scalar", "vector", "CHW"])
def test_any_feature_shape(replace, shape):
    f = torch.randn(2, 3, *shape, requires_grad=True)
    a = torch.tensor([[0.2, 0.3, 0.1], [0.5, 0.25, 0.125]], requires_grad=True)
    out = expectation(f, a, replace)
    assert out.shape == (2, *shape)
    out.sum().backward()
    assert f.grad.shape == f.shape and a.grad.shape == a.shape
    assert torch.isfinite(f.grad).all() and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("replace", [True, False])
def test_float32_matches_float64(replace):
    gen = torch.Generator().manual_seed(7)
    a64 = torch.softmax(torch.randn(3, 10, generator=gen, dtype=torch.float64), dim=1)[:, :4]
    f64 = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    results = {}
    for dtype in (torch.float32, torch.float64):
        a = a64.to(dtype).requires_grad_()
        f = f64.to(dtype).requires_grad_()
        out = expectation(f, a, replace)
        out.sum().backward()
        assert out.dtype == dtype and a.grad.dtype == dtype and f.grad.dtype == dtype
        results[dtype] = (out, a.grad, f.grad)
    for low, high in zip(results[torch.float32], results[torch.float64]):
        assert torch.allclose(low.double(), high, rtol=1e-4, atol=1e-5)


def test_mass_left_is_clamped_to_the_drawn_probability():
    """Rounding can make 1 - sum_{j<i} a_j smaller than a_i (impossible
    exactly); the estimator then uses pm_i = a_i and stays finite."""
    a = torch.tensor([[0.75, 0.25 + 1e-6]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64, requires_grad=True)
    out = expectation(f, a, replace=False)
    # weights: w_0 = (1 + a_0)/2, w_1 = a_1/2 (clamped pm_1 = a_1)
    assert out.item() == pytest.approx((1 + 0.75) / 2 * 1.0 + (0.25 + 1e-6) / 2 * 3.0)
    out.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(f.grad).all()


def test_zero_probability_draws_give_finite_gradients():
    """A map with fewer positive cells than draws: the extra draws carry
    sampled_attention 0 and contribute no attention gradient."""
    a = torch.tensor([[0.6, 0.4, 0.0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[[1.0], [2.0], [7.0]]], dtype=torch.float64, requires_grad=True)
    out = expectation(f, a, replace=False)
    assert out.item() == pytest.approx(((1.0) + (0.6 * 1 + 0.4 * 2) + (0.6 * 1 + 0.4 * 2)) / 3)
    out.backward()
    assert torch.isfinite(a.grad).all() and a.grad[0, 2] == 0


def test_gradients_reach_only_the_inputs_that_ask_for_them():
    f = torch.randn(2, 3, 4)
    a = torch.full((2, 3), 0.2, requires_grad=True)
    for replace in (True, False):
        (grad,) = torch.autograd.grad(expectation(f, a, replace).sum(), a)
        assert grad.shape == a.shape


@pytest.mark.parametrize(
    "features, attention, message",
    [
        (torch.randn(2, 3, 4), torch.rand(2, 4), "sampled_attention"),
        (torch.randn(2, 3, 4), torch.rand(2, 3, 1), "sampled_attention"),
        (torch.randn(2), torch.rand(2), "features must be"),
        (torch.randn(2, 0, 4), torch.rand(2, 0), "0 samples"),
        (torch.randint(0, 3, (2, 3)), torch.rand(2, 3), "floating point"),
    ],
)
def test_bad_inputs_raise_sampling_error(features, attention, message):
    with pytest.raises(SamplingError, match=message):
        expectation(features, attention, replace=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("replace", [True, False])
def test_cuda_matches_cpu(replace):
    gen = torch.Generator().manual_seed(8)
    a = torch.softmax(torch.randn(4, 12, generator=gen), dim=1)[:, :5]
    f = torch.randn(4, 5, 3, generator=gen)
    outputs = []
    for device in ("cpu", "cuda"):
        a_d = a.to(device).requires_grad_()
        f_d = f.to(device).requires_grad_()
        out = expectation(f_d, a_d, replace)
        out.sum().backward()
        outputs.append([t.cpu() for t in (out, a_d.grad, f_d.grad)])
    for cpu, cuda in zip(*outputs):
        assert torch.allclose(cpu, cuda, rtol=1e-5, atol=1e-6)
