"""AttentionSampler's draws: uniform over tissue (the random-patch baseline), smoothing,
and the per-patch fields (patch features, attention logits at the drawn cells)."""
import numpy as np
import pytest
import torch
from scipy import stats

from ats_wsi.errors import SamplingError

from model_helpers import LOW, make_sampler
from model_helpers import make_inputs as _inputs


def make_inputs(batch=1, seed=0):
    return _inputs(batch, seed)


def test_uniform_sampler_draws_every_tissue_cell_equally_often():
    # A strongly peaked attention net: with sampler="uniform" it must not matter.
    model = make_sampler(sampler="uniform", n_patches=4, replace=True)
    with torch.no_grad():
        model.attention_net.body[-1].bias.fill_(0.0)
        model.attention_net.body[-1].weight.mul_(50.0)
    x_low, x_high = make_inputs()
    mask = torch.zeros(1, *LOW, dtype=torch.bool)
    mask[0, 2:8, 3:9] = True  # 36 tissue cells
    counts = np.zeros(LOW)
    gen = torch.Generator().manual_seed(5)
    for _ in range(900):
        result = model(x_low, x_high, mask, generator=gen)
        for r, c in result.positions[0].tolist():
            counts[r, c] += 1
    assert counts[~mask[0].numpy()].sum() == 0  # never off tissue
    inside = counts[mask[0].numpy()]
    # 3,600 draws over 36 cells: chi-square goodness of fit to uniform, seed fixed.
    assert stats.chisquare(inside).pvalue > 0.01
    assert torch.allclose(result.attention[0][mask[0]], torch.full((36,), 1 / 36))


def test_uniform_sampler_leaves_the_attention_net_without_gradient():
    model = make_sampler(sampler="uniform", entropy=0.1)
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=torch.Generator().manual_seed(1))
    (result.features.sum() + result.entropy_loss).backward()
    assert all(p.grad is None for p in model.attention_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.feature_net.parameters())
    assert torch.equal(result.sampled_logits, torch.zeros_like(result.sampled_logits))


def test_an_unknown_sampler_is_refused():
    with pytest.raises(SamplingError, match="sampler must be one of"):
        make_sampler(sampler="random")
    model = make_sampler()
    with pytest.raises(SamplingError, match="uniformly"):
        model.set_sampler("uniformly")


def test_smoothing_puts_a_floor_under_every_tissue_cell():
    model = make_sampler(smoothing=0.3)
    with torch.no_grad():
        model.attention_net.body[-1].weight.mul_(40.0)
    x_low, x_high = make_inputs()
    attention = model.attention_map(x_low)
    assert attention.min() >= 0.3 / (LOW[0] * LOW[1]) - 1e-7
    assert torch.allclose(attention.sum(), torch.tensor(1.0))


def test_patch_features_and_sampled_logits_are_those_of_the_drawn_cells():
    model = make_sampler(n_patches=6)
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=torch.Generator().manual_seed(3))
    each = model.feature_net(result.patches.flatten(0, 1)).reshape(1, 6, -1)
    assert torch.allclose(result.patch_features, each, atol=1e-6)
    logits = model.attention_net(x_low)[:, 0]  # [1, rows, cols]
    rows, cols = result.positions[0].unbind(-1)
    assert torch.allclose(result.sampled_logits[0], logits[0, rows, cols], atol=1e-6)
    # and the logits carry gradient to the attention net
    result.sampled_logits.sum().backward()
    assert model.attention_net.body[0].weight.grad.abs().sum() > 0


def test_temperature_sharpens_the_map_as_logits_divided_by_it():
    cold, warm = make_sampler(temperature=0.25), make_sampler()
    x_low, _ = make_inputs()
    logits = warm.attention_net(x_low)[:, 0].flatten()
    assert torch.allclose(cold.attention_map(x_low).flatten(), torch.softmax(logits / 0.25, 0), atol=1e-6)
    assert torch.allclose(warm.attention_map(x_low).flatten(), torch.softmax(logits, 0), atol=1e-6)
