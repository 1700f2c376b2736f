"""The attention map's arithmetic in blocks of map rows (ats_wsi.sampling.streamed).

Each function is compared with its one-shot counterpart: the same draws for
the same CPU generator, the same probabilities up to float rounding (sums in
another order: rtol 1e-6 in float32), and the law of the draws checked by
Pearson's chi-square against the exact law of sequential sampling (z = 4,
one-sided level about 3e-5, fixed seed).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from ats_wsi.errors import SamplingError
from ats_wsi.sampling import SampleSoftmax, entropy_regularizer, sample, streamed
from montecarlo import chi2_statistic, chi2_upper


def _logits(shape=(1, 9, 7), seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3


def _mask(shape=(1, 9, 7), seed=1):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[..., 0, 0] = True
    return mask


@pytest.mark.parametrize("block_cells", [1, 7, 20, 10_000])  # one row, whole rows, all
@pytest.mark.parametrize("smoothing, temperature", [(0.0, 1.0), (0.1, 0.5)])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_in_place_equals_sample_softmax(block_cells, smoothing, temperature, masked):
    logits, mask = _logits(), (_mask() if masked else None)
    expected = SampleSoftmax(smoothing, temperature)(logits, mask)
    work = logits.clone()
    out = streamed.softmax_(work, mask, smoothing=smoothing, temperature=temperature, block_cells=block_cells)
    assert out.data_ptr() == work.data_ptr()  # in place: no map-sized copy
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-9)
    if masked:
        assert (out[~mask] == 0).all()


@pytest.mark.parametrize("block_cells", [1, 7, 20, 10_000])
@pytest.mark.parametrize("replace, deterministic", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("masked", [False, True])
def test_blocks_draw_the_cells_sample_draws(block_cells, replace, deterministic, masked):
    mask = _mask((2, 9, 7)) if masked else None
    probs = SampleSoftmax()(_logits((2, 9, 7)), mask)
    a = sample(probs, 6, replace=replace, mask=mask, generator=torch.Generator().manual_seed(5),
               deterministic=deterministic)
    b = streamed.sample_blocks(probs, 6, replace=replace, mask=mask, generator=torch.Generator().manual_seed(5),
                               deterministic=deterministic, block_cells=block_cells)
    assert torch.equal(a[0], b[0])  # the same cells, in the same (draw) order
    torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=0)


def test_blocks_draw_zero_cells_last_and_never_masked_ones():
    probs = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    mask = torch.tensor([[[True, True, False], [True, True, True]]])
    for seed in range(20):
        gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a = sample(probs, 5, mask=mask, generator=gen_a)
        b = streamed.sample_blocks(probs, 5, mask=mask, generator=gen_b, block_cells=3)
        assert torch.equal(a[0], b[0])
        assert set(map(tuple, b[0][0, :2].tolist())) == {(0, 0), (1, 1)}
        assert (0, 2) not in set(map(tuple, b[0][0].tolist()))


def test_blocks_refuse_more_draws_than_cells():
    probs = SampleSoftmax()(_logits((1, 2, 2)))
    with pytest.raises(SamplingError, match="distinct"):
        streamed.sample_blocks(probs, 5, block_cells=2)
    with pytest.raises(SamplingError, match="at least 1"):
        streamed.sample_blocks(probs, 0)


def test_streamed_draws_follow_sequential_sampling():
    """Chi-square of the ordered pairs (first, second draw) of a 2 x 3 map drawn
    in blocks of one row (so every draw merges two blocks' top-k), against
    P(i, j) = a_i a_j / (1 - a_i); 20 000 draws, seed 3, z = 4."""
    a = torch.tensor([[0.3, 0.1, 0.2], [0.05, 0.25, 0.1]], dtype=torch.float32)
    copies = 20_000
    gen = torch.Generator().manual_seed(3)
    positions, sampled = streamed.sample_blocks(a.expand(copies, 2, 3).contiguous(), 2, generator=gen,
                                                block_cells=3)
    cells = positions[..., 0] * 3 + positions[..., 1]  # [copies, 2]
    counts = torch.bincount(cells[:, 0] * 6 + cells[:, 1], minlength=36).double()
    flat = a.flatten().double()
    exact = torch.zeros(36, dtype=torch.float64)
    for i, j in itertools.permutations(range(6), 2):
        exact[i * 6 + j] = flat[i] * flat[j] / (1 - flat[i])
    possible = exact > 0
    assert counts[~possible].sum() == 0  # never the same cell twice
    assert chi2_statistic(counts[possible], exact[possible]) < chi2_upper(int(possible.sum()) - 1)
    assert torch.equal(sampled, a.flatten()[cells])


def test_entropy_loss_equals_the_regulariser():
    probs = SampleSoftmax()(_logits((2, 9, 7)), _mask((2, 9, 7)))
    for strength in (0.0, 0.01, -2.0):
        expected = entropy_regularizer(probs, strength)
        got = streamed.entropy_loss(probs, strength, block_cells=7)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("shape, map_shape", [((40, 60), (10, 15)), ((37, 53), (9, 13)),
                                              ((41, 59), (11, 16)), ((12, 12), (12, 12))])
@pytest.mark.parametrize("min_tissue", [0.0, 0.25, 0.5])
def test_pool_mask_counts_adaptive_pooling_bins(shape, map_shape, min_tissue):
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.6
    reads = []

    def read_mask(r, c, h, w):
        reads.append((r, c, h, w))
        return pixels[r:r + h, c:c + w].numpy()

    rows_per_cell = shape[0] / map_shape[0]
    got = streamed.pool_mask(read_mask, shape, map_shape, min_tissue,
                             block_pixels=int(2 * rows_per_cell * shape[1]) + 1)
    mean = nn.functional.adaptive_avg_pool2d(pixels[None, None].double(), map_shape)[0, 0]
    assert torch.equal(got, mean > min_tissue)
    assert len(reads) == -(-map_shape[0] // 2)  # two map rows a read
