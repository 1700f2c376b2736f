"""Tiled attention equals one pass: values, borders, gradients, reader.

The nets are random stacks of "same"-padded convolutions and poolings whose
receptive field is known from the layer arithmetic (``known_fields``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ats_wsi.errors import SamplingError
from ats_wsi.sampling.receptive_field import ReceptiveField, receptive_field
from ats_wsi.sampling.tiled import (
    DEFAULT_TILE_THRESHOLD,
    _plan,
    should_tile,
    tiled_logits,
    tiled_logits_from_reader,
)
from known_fields import SEEDS, random_net

ROWS, COLS = 97, 131  # odd, non-square


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions on a shared machine: threads only wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




@pytest.fixture(scope="module")
def nets():
    built = {}
    for seed in SEEDS:
        net, field = random_net(seed, out_channels=1 + seed % 2, batchnorm=seed % 3 == 0)
        built[seed] = (net.eval(), field, receptive_field(net))
    return built


def assert_same_map(tiled, whole):
    assert tiled.shape == whole.shape
    scale = whole.abs().max().item() or 1.0
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5 * scale)


# --------------------------------------------------------------------------
# Tiled values equal one pass.

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tile_size", [6, 10, 37, (23, 50), 64, 1000])
def test_tiled_logits_equal_one_pass(nets, seed, tile_size):
    net, _, field = nets[seed]
    x = torch.randn(2, 3, ROWS, COLS, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert_same_map(tiled_logits(net, x, tile_size, field=field), net(x))


@pytest.mark.parametrize("shape", [(1, 1), (5, 200), (200, 7), (64, 64), (65, 63)])
def test_tiled_logits_equal_one_pass_on_thin_and_tiny_inputs(nets, shape):
    net, _, field = nets[1]
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        try:
            whole = net(x)
        except RuntimeError:
            pytest.skip(f"the net cannot take {shape}")
        assert_same_map(tiled_logits(net, x, 16, field=field), whole)


def test_tiled_logits_probe_the_field_when_not_given(nets):
    net, _, _ = nets[2]
    x = torch.randn(1, 3, ROWS, COLS)
    with torch.no_grad():
        assert_same_map(tiled_logits(net, x, 20), net(x))


def test_tiled_logits_keep_a_net_s_three_axis_output():
    class Squeeze(nn.Module):
        def forward(self, x):
            return x.squeeze(1)

    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1),
                        Squeeze())
    x = torch.randn(2, 3, ROWS, COLS)
    with torch.no_grad():
        whole = net(x)
        assert whole.ndim == 3
        assert_same_map(tiled_logits(net, x, 30), whole)


def test_tile_size_and_halo_are_width_by_height():
    field = ReceptiveField((3, 3), (1, 1), (-1, -1))
    rows, cols = _plan((ROWS, COLS), (COLS, 16), (0, 2), field)  # (w, h): whole rows, 16 high
    assert len(cols) == 1 and len(rows) == -(-ROWS // 16)
    assert rows[1].start == 16 - 2 and cols[0].start == 0  # a halo of h = 2 above the second strip


def test_a_halo_smaller_than_the_field_changes_the_map():
    # the check that the right halo is needed: the tests above are not vacuous
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)])
    field = receptive_field(net)
    x = torch.randn(1, 3, ROWS, COLS)
    with torch.no_grad():
        whole = net(x)
        assert_same_map(tiled_logits(net, x, 32, halo=3, field=field), whole)  # 3 suffice here
        assert not torch.allclose(tiled_logits(net, x, 32, halo=2, field=field), whole, atol=1e-4)


# --------------------------------------------------------------------------
# Gradients.

@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("seed", [0, 3, 5])
def test_gradients_equal_one_pass(nets, seed, checkpoint):
    net, _, field = nets[seed]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, ROWS, COLS, generator=generator)

    def grads(compute):
        net.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = compute(xg)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weight).sum().backward()
        return [xg.grad] + [p.grad.clone() for p in net.parameters()]

    whole = grads(net)
    tiled = grads(lambda xg: tiled_logits(net, xg, 24, checkpoint=checkpoint, field=field))
    for a, b in zip(tiled, whole):
        assert_same_map(a, b)


def test_checkpointing_keeps_only_the_tiles_inputs_for_backward(nets):
    net, _, field = nets[4]
    x = torch.randn(1, 3, ROWS, COLS)

    def saved_bytes(checkpoint):
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            tiled_logits(net, x, 32, checkpoint=checkpoint, field=field).sum()
        return total

    kept, recomputed = saved_bytes(False), saved_bytes(True)
    assert recomputed * 4 < kept


# --------------------------------------------------------------------------
# Normalisation over space.

def test_batchnorm_in_training_mode_is_refused_when_tiling():
    net, _ = random_net(0, batchnorm=True)
    field = receptive_field(net)
    net.train()
    with pytest.raises(SamplingError, match="eval mode"):
        tiled_logits(net, torch.randn(1, 3, ROWS, COLS), 32, field=field)


def test_batchnorm_in_training_mode_runs_when_one_tile_suffices():
    net, _ = random_net(0, batchnorm=True)
    field = receptive_field(net)
    net.train()
    x = torch.randn(2, 3, ROWS, COLS)
    assert_same_map(tiled_logits(net, x, 512, field=field), net(x))  # batch statistics both


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)])
def test_group_and_instance_norm_are_refused(norm):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.Conv2d(4, 1, 1)).eval()
    field = ReceptiveField((3, 3), (1, 1), (-1, -1))
    with pytest.raises(SamplingError, match="statistics"):
        tiled_logits(net, torch.randn(1, 3, ROWS, COLS), 32, field=field)


# --------------------------------------------------------------------------
# When to tile.

def test_should_tile_only_above_the_threshold():
    assert not should_tile((1024, 1024))
    assert should_tile((1024, 1025))
    assert should_tile(torch.Size([2, 3, 2500, 2500]))
    assert not should_tile((2, 3, 97, 131), threshold_pixels=97 * 131)
    assert should_tile((97, 131), threshold_pixels=0)
    assert not should_tile((10 ** 6, 10 ** 6), threshold_pixels=None)
    assert DEFAULT_TILE_THRESHOLD == 1024 * 1024


# --------------------------------------------------------------------------
# The reader-based variant.

@pytest.mark.parametrize("seed, tile_size", [(0, 16), (1, 37), (2, (23, 50)), (5, 1000), (6, 6)])
def test_reader_variant_equals_the_tensor_one(nets, seed, tile_size):
    net, _, field = nets[seed]
    image = np.random.default_rng(seed).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    halo = field.halo
    reads = []

    def read_region(row0, col0, rows, cols):
        assert 0 <= row0 and row0 + rows <= ROWS and 0 <= col0 and col0 + cols <= COLS
        reads.append((rows, cols))
        return image[row0:row0 + rows, col0:col0 + cols]

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_logits(net, x, tile_size, field=field)
    read = tiled_logits_from_reader(net, read_region, (ROWS, COLS), tile_size, field=field)
    assert_same_map(read, tiled)
    assert_same_map(read, whole)
    assert not read.requires_grad
    tile_w, tile_h = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    for rows, cols in reads:  # never more than one tile and its halo (halo and stride per (rows, cols))
        assert rows <= tile_h + 2 * halo[0] + field.stride[0]
        assert cols <= tile_w + 2 * halo[1] + field.stride[1]


def test_reader_variant_applies_the_given_normalisation(nets):
    net, _, field = nets[3]
    image = np.random.default_rng(0).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    mean = torch.tensor([0.7, 0.5, 0.6]).view(1, 3, 1, 1)

    def normalize(pixels):
        return pixels.float() / 255 - mean

    read = tiled_logits_from_reader(net, lambda r, c, h, w: image[r:r + h, c:c + w], (ROWS, COLS),
                                    20, normalize=normalize, field=field)
    with torch.no_grad():
        whole = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean)
    assert_same_map(read, whole)


def test_reader_variant_says_which_read_had_the_wrong_shape(nets):
    net, _, field = nets[0]
    with pytest.raises(SamplingError, match="read_region"):
        tiled_logits_from_reader(net, lambda r, c, h, w: np.zeros((h, w + 1, 3), np.uint8),
                                 (ROWS, COLS), 32, field=field)
