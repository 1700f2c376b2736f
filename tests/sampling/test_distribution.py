"""Sampling cells from attention maps: the law, the order, masks and errors.

Statistical checks use Pearson's chi-square against the exact law, rejecting
above the chi-square quantile at z = 4 (one-sided level about 3e-5), with
fixed seeds.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ats_wsi.errors import SamplingError
from ats_wsi.sampling import sample
from montecarlo import chi2_statistic, chi2_upper

DRAWS = 100_000


def _repeat(attention: torch.Tensor, copies: int) -> torch.Tensor:
    return attention.expand(copies, *attention.shape[1:]).contiguous()


def _flat(positions: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``[B, n, ndim]`` coordinates -> ``[B, n]`` flat cell indices."""
    index = torch.zeros(positions.shape[:2], dtype=torch.long)
    for axis, size in enumerate(spatial):
        index = index * size + positions[..., axis]
    return index


def _map(seed: int, shape=(1, 3, 4), dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    return torch.softmax(logits.reshape(shape[0], -1), dim=1).reshape(shape)


# ----- the law -------------------------------------------------------------


def test_first_draws_follow_the_masked_renormalised_attention():
    attention = _map(0)  # [1, 3, 4], (row, col)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = mask[0, 0] = False
    gen = torch.Generator().manual_seed(1)
    positions, _ = sample(_repeat(attention, DRAWS), 3, replace=False, mask=mask, generator=gen)

    first = _flat(positions[:, :1], (3, 4))[:, 0]
    counts = torch.bincount(first, minlength=12).double()
    keep = mask.reshape(-1)
    assert counts[~keep].sum() == 0
    probs = attention.reshape(-1)[keep] / attention.reshape(-1)[keep].sum()
    assert chi2_statistic(counts[keep], probs) < chi2_upper(int(keep.sum()) - 1)


def test_ordered_draws_without_replacement_follow_sequential_sampling():
    """All 24 ordered triples from K = 4 cells: P(q) = prod_i a_qi / (1 - sum_{j<i} a_qj)."""
    a = torch.tensor([[0.45, 0.3, 0.15, 0.1]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    positions, sampled = sample(_repeat(a, 2 * DRAWS), 3, replace=False, generator=gen)
    q = positions[..., 0]
    codes = q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]
    counts = torch.bincount(codes, minlength=64).double()

    triples = list(itertools.permutations(range(4), 3))
    exact = torch.zeros(64, dtype=torch.float64)
    for t in triples:
        left, p = 1.0, 1.0
        for cell in t:
            p *= a[0, cell].item() / left
            left -= a[0, cell].item()
        exact[t[0] * 16 + t[1] * 4 + t[2]] = p
    possible = exact > 0
    assert counts[~possible].sum() == 0  # no repeated cell, ever
    assert exact.sum().item() == pytest.approx(1.0)
    assert chi2_statistic(counts[possible], exact[possible]) < chi2_upper(len(triples) - 1)
    assert torch.equal(sampled, a[0][q])


def test_draws_with_replacement_are_iid_from_the_attention():
    a = _map(3, shape=(1, 6))
    gen = torch.Generator().manual_seed(4)
    positions, _ = sample(_repeat(a, DRAWS // 4), 4, replace=True, generator=gen)
    q = positions[..., 0]
    counts = torch.bincount(q.reshape(-1), minlength=6).double()
    assert chi2_statistic(counts, a[0]) < chi2_upper(5)
    # pairs (first, second) are independent: the joint law is the product
    pairs = torch.bincount(q[:, 0] * 6 + q[:, 1], minlength=36).double()
    assert chi2_statistic(pairs, torch.outer(a[0], a[0]).reshape(-1)) < chi2_upper(35)


@settings(max_examples=25, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    batch=st.integers(1, 4),
    data=st.data(),
)
def test_without_replacement_never_repeats_nor_draws_masked_cells(spatial, batch, data):
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial)
    mask = torch.rand(shape, generator=gen) < 0.7
    mask.reshape(batch, -1)[:, 0] = True  # at least one unmasked cell per map
    n = data.draw(st.integers(1, int(mask.reshape(batch, -1).sum(dim=1).min())))
    attention = _map(seed, shape=shape)
    replace = data.draw(st.booleans())

    positions, sampled = sample(attention, n, replace=replace, mask=mask, generator=gen)
    assert positions.shape == (batch, n, len(spatial)) and positions.dtype == torch.long
    flat = _flat(positions, tuple(spatial))
    assert mask.reshape(batch, -1).gather(1, flat).all()
    if not replace:
        assert all(len(set(row.tolist())) == n for row in flat)
    probs = attention.reshape(batch, -1) * mask.reshape(batch, -1)
    probs = probs / probs.sum(dim=1, keepdim=True)
    assert torch.allclose(sampled, probs.gather(1, flat))


def test_zero_probability_cells_come_last_and_masked_cells_never():
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False])
    gen = torch.Generator().manual_seed(5)
    positions, sampled = sample(_repeat(a, 1000), 3, replace=False, mask=mask, generator=gen)
    q = positions[..., 0]
    assert set(q[:, 2].tolist()) == {2}
    assert torch.equal(q[:, :2].sort(dim=1).values, torch.tensor([[0, 1]]).expand(1000, 2))
    assert torch.equal(sampled[:, 2], torch.zeros(1000, dtype=torch.float64))


def test_zero_probability_cells_are_drawn_uniformly_once_the_mass_is_exhausted():
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(6)
    positions, _ = sample(_repeat(a, 30_000), 2, replace=False, generator=gen)
    assert (positions[:, 0, 0] == 0).all()
    counts = torch.bincount(positions[:, 1, 0], minlength=4).double()[1:]
    assert chi2_statistic(counts, torch.full((3,), 1 / 3, dtype=torch.float64)) < chi2_upper(2)


def test_logits_give_the_same_draws_as_their_softmax():
    logits = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    probs = torch.softmax(logits.reshape(5, -1), dim=1).reshape(5, 4, 6)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(8)) < 0.8
    for replace in (True, False):
        a = sample(probs, 5, replace=replace, mask=mask, generator=torch.Generator().manual_seed(9))
        b = sample(logits, 5, replace=replace, logits=True, mask=mask, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a[0], b[0])
        assert torch.allclose(a[1], b[1])


def test_logits_accept_minus_infinity_as_probability_zero():
    logits = torch.tensor([[0.0, float("-inf"), 1.0]])
    positions, sampled = sample(logits, 2, logits=True, generator=torch.Generator().manual_seed(0))
    assert set(positions[0, :, 0].tolist()) == {0, 2}
    assert torch.isfinite(sampled).all()


# ----- gradients -----------------------------------------------------------


@pytest.mark.parametrize("logits", [False, True])
def test_sampled_attention_carries_the_gradient_of_the_renormalised_map(logits):
    gen = torch.Generator().manual_seed(10)
    raw = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    source = raw if logits else torch.softmax(raw.reshape(3, -1), dim=1).reshape(3, 5, 4)
    source = source.detach().requires_grad_()
    mask = torch.rand(3, 5, 4, generator=gen) < 0.6
    positions, sampled = sample(source, 4, logits=logits, mask=mask, generator=gen)
    weights = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((sampled * weights).sum(), source)

    reference = source.detach().requires_grad_()
    flat = reference.reshape(3, -1)
    if logits:
        probs = torch.softmax(flat.masked_fill(~mask.reshape(3, -1), float("-inf")), dim=1)
    else:
        kept = flat * mask.reshape(3, -1)
        probs = kept / kept.sum(dim=1, keepdim=True)
    gathered = probs.gather(1, _flat(positions, (5, 4)))
    (expected,) = torch.autograd.grad((gathered * weights).sum(), reference)
    assert torch.allclose(grad, expected)
    assert grad[~mask].abs().max() == 0  # masked cells get no gradient


def test_positions_themselves_carry_no_gradient():
    a = torch.full((2, 3, 3), 1 / 9, requires_grad=True)
    positions, sampled = sample(a, 2)
    assert not positions.requires_grad and sampled.requires_grad


# ----- inference, shapes, dtypes, devices ---------------------------------


def test_deterministic_gives_the_top_k_in_descending_order():
    a = torch.tensor([[[0.05, 0.45], [0.2, 0.3]], [[0.4, 0.1], [0.15, 0.35]]])
    mask = torch.tensor([[[True, True], [True, True]], [[False, True], [True, True]]])
    for replace in (True, False):
        positions, sampled = sample(a, 3, replace=replace, mask=mask, deterministic=True)
        assert positions[0].tolist() == [[0, 1], [1, 1], [1, 0]]
        assert positions[1].tolist() == [[1, 1], [1, 0], [0, 1]]
        assert (sampled[:, :-1] >= sampled[:, 1:]).all()


@pytest.mark.parametrize("spatial", [(9,), (3, 5), (2, 3, 4)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("replace", [True, False])
def test_positions_index_the_map_of_any_rank_and_dtype(spatial, dtype, replace):
    attention = _map(11, shape=(4, *spatial), dtype=dtype)
    positions, sampled = sample(attention, 5, replace=replace, generator=torch.Generator().manual_seed(12))
    assert positions.shape == (4, 5, len(spatial)) and positions.dtype == torch.long
    assert sampled.shape == (4, 5) and sampled.dtype == dtype
    batch = torch.arange(4)[:, None].expand(4, 5)
    at = attention[(batch, *positions.unbind(-1))]
    assert torch.allclose(sampled, at, rtol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("replace", [True, False])
def test_a_generator_makes_draws_reproducible(replace):
    attention = _map(13, shape=(3, 16, 16))
    draw = lambda seed: sample(attention, 8, replace=replace, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(1)[0], draw(1)[0])
    assert not torch.equal(draw(1)[0], draw(2)[0])


def test_a_rounded_float32_map_passes_the_sum_check_in_float64():
    a = torch.softmax(torch.randn(2, 10_000), dim=1).double()
    positions, _ = sample(a, 3)
    assert positions.shape == (2, 3, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("replace", [True, False])
def test_cuda_sampling(replace):
    attention = _map(14, shape=(2, 8, 8)).float().cuda()
    mask = torch.ones(8, 8, dtype=torch.bool, device="cuda")
    mask[:4] = False
    gen = lambda: torch.Generator(device="cuda").manual_seed(15)
    positions, sampled = sample(attention, 6, replace=replace, mask=mask, generator=gen())
    assert positions.device.type == "cuda" and sampled.device.type == "cuda"
    assert (positions[..., 0] >= 4).all()
    assert torch.equal(positions, sample(attention, 6, replace=replace, mask=mask, generator=gen())[0])


# ----- errors -------------------------------------------------------------

_A = torch.full((2, 2, 3), 1 / 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention=_A, n=7), "only 6 unmasked cells"),
        (dict(attention=_A, n=7, deterministic=True, replace=True), "only 6 unmasked cells"),
        (dict(attention=_A, n=3, mask=torch.tensor([[True, False, False], [True, False, False]])), "only 2 unmasked"),
        (dict(attention=_A, n=0), "at least 1"),
        (dict(attention=_A, n=2.0), "must be an int"),
        (dict(attention=_A.masked_fill(_A > 0, float("nan")), n=1), "NaN"),
        (dict(attention=_A.clone().index_put_((torch.tensor(0),) * 3, torch.tensor(float("inf"))), n=1), "Inf"),
        (dict(attention=torch.tensor([[1.25, -0.25]]), n=1), "negative"),
        (dict(attention=_A * 2, n=1), "sums to 2"),
        (dict(attention=torch.zeros(2, 2, 3), n=1, logits=False), "sums to 0"),
        (dict(attention=torch.zeros(2, 2, 3).fill_(float("nan")), n=1, logits=True), "NaN"),
        (dict(attention=torch.full((2, 3), float("inf")), n=1, logits=True), r"\+Inf"),
        (dict(attention=torch.full((2, 3), float("-inf")), n=1, logits=True), "finite logit"),
        (dict(attention=_A, n=1, mask=torch.zeros(2, 2, 3, dtype=torch.bool)), "fully masked"),
        (dict(attention=_A, n=1, mask=torch.ones(3, 2, dtype=torch.bool)), "does not match"),
        (dict(attention=_A, n=1, mask=torch.ones(2, 3)), "bool"),
        (dict(attention=torch.tensor([0.5, 0.5]), n=1), "at least one spatial axis"),
        (dict(attention=torch.tensor([[1, 0]]), n=1), "floating-point"),
        (
            dict(attention=torch.tensor([[0.0, 0.0, 1.0]]), n=1, mask=torch.tensor([True, True, False])),
            "no probability mass",
        ),
    ],
)
def test_bad_inputs_raise_sampling_error(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        sample(**kwargs)


def test_with_replacement_may_draw_more_cells_than_the_map_has():
    positions, _ = sample(torch.tensor([[0.25, 0.75]]), 10, replace=True)
    assert positions.shape == (1, 10, 1)
