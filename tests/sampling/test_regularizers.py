"""Entropy of attention maps, the entropy regulariser and SampleSoftmax."""
from __future__ import annotations

import math

import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.sampling import SampleSoftmax, entropy_regularizer, multinomial_entropy


def test_entropy_matches_a_hand_computation():
    a = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    # -(0.5 log 0.5 + 2 * 0.25 log 0.25) = 0.5 log 2 + log 2
    assert multinomial_entropy(a).tolist() == pytest.approx([1.5 * math.log(2), 0.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_map_has_entropy_log_k(dtype):
    a = torch.full((2, 3, 5), 1 / 15, dtype=dtype)
    entropy = multinomial_entropy(a)
    assert entropy.shape == (2,) and entropy.dtype == dtype
    assert torch.allclose(entropy, torch.full((2,), math.log(15), dtype=dtype))


def test_entropy_gradient_is_finite_at_zero_cells():
    a = torch.tensor([[0.7, 0.3, 0.0, 0.0]], requires_grad=True)
    multinomial_entropy(a).sum().backward()
    assert torch.isfinite(a.grad).all()
    # d(-a log a)/da = -(log a + 1) on the positive cells
    assert torch.allclose(a.grad[0, :2], -(torch.log(a[0, :2].detach()) + 1))


def test_regularizer_follows_the_reference_formula():
    a = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    expected = 0.1 * (a * torch.log(a + 1e-8)).sum() / 2
    assert entropy_regularizer(a, 0.1).item() == pytest.approx(expected.item())
    assert entropy_regularizer(a, 0.1).item() == pytest.approx(-0.1 * multinomial_entropy(a).mean().item(), abs=1e-7)


def test_minimising_a_positive_regularizer_raises_the_entropy():
    logits = torch.tensor([[3.0, 0.0, -1.0, 0.5]], requires_grad=True)
    before = multinomial_entropy(torch.softmax(logits, dim=1)).item()
    entropy_regularizer(torch.softmax(logits, dim=1), strength=1.0).backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    assert multinomial_entropy(torch.softmax(logits, dim=1)).item() > before


def test_regularizer_gradient_is_finite_at_zero_cells():
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    entropy_regularizer(a, 1.0).backward()
    assert torch.isfinite(a.grad).all()


# ----- SampleSoftmax --------------------------------------------------------


def test_softmax_of_conv_logits_is_a_spatial_distribution():
    logits = torch.randn(2, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    a = SampleSoftmax()(logits)
    assert a.shape == (2, 4, 6)
    expected = torch.softmax(logits.reshape(2, -1), dim=1).reshape(2, 4, 6)
    assert torch.allclose(a, expected)
    assert torch.allclose(SampleSoftmax()(logits[:, 0]), expected)  # [B, h, w] too


def test_smoothing_and_temperature():
    logits = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = SampleSoftmax(smoothing=0.2, temperature=2.0)(logits)
    plain = torch.softmax(logits.reshape(3, -1) / 2.0, dim=1).reshape(3, 5, 5)
    assert torch.allclose(a, 0.8 * plain + 0.2 / 25)
    assert torch.allclose(a.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    assert a.min() >= 0.2 / 25


def test_mask_gives_masked_cells_zero_probability():
    logits = torch.randn(2, 1, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 0] = False  # 4 cells masked in map 0
    a = SampleSoftmax(smoothing=0.1)(logits, mask)
    assert (a[~mask] == 0).all()
    assert torch.allclose(a.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
    kept = torch.softmax(logits[0, 0][mask[0]], dim=0)
    assert torch.allclose(a[0][mask[0]], 0.9 * kept + 0.1 / 8)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SampleSoftmax(smoothing=1.5), "smoothing"),
        (lambda: SampleSoftmax(temperature=0.0), "temperature"),
        (lambda: SampleSoftmax()(torch.zeros(2, 3, 4, 4)), "one channel"),
        (lambda: SampleSoftmax()(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool)), "fully masked"),
        (lambda: multinomial_entropy(torch.ones(3)), "at least one cell axis"),
    ],
)
def test_bad_arguments_raise_sampling_error(make, message):
    with pytest.raises(SamplingError, match=message):
        make()
