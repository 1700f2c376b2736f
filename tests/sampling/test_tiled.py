"""Tiled attention equals one pass: values, borders, gradients, reader, probe.

The nets are random stacks of "same"-padded convolutions and poolings whose
receptive field is known from the layer arithmetic (``_analytic_field``), so
both the probe and the tiling are checked against numbers not computed by
the code under test.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ats_wsi.errors import SamplingError
from ats_wsi.sampling.tiled import (
    DEFAULT_TILE_THRESHOLD,
    ReceptiveField,
    receptive_field,
    should_tile,
    tiled_logits,
    tiled_logits_from_reader,
)

ROWS, COLS = 97, 131  # odd, non-square


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions on a shared machine: threads only wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------
# Nets with known fields. A layer is (module, (ky, kx), stride, (py, px)).

def _conv(cin, cout, k, stride=1):
    ky, kx = (k, k) if isinstance(k, int) else k
    padding = (ky // 2, kx // 2)
    return nn.Conv2d(cin, cout, (ky, kx), stride=stride, padding=padding), (ky, kx), stride, padding


LAYERS = {
    "conv3": lambda c: _conv(c, c, 3),
    "conv5": lambda c: _conv(c, c, 5),
    "conv3x5": lambda c: _conv(c, c, (3, 5)),
    "conv3-stride2": lambda c: _conv(c, c, 3, stride=2),  # map of ceil(n / 2)
    "avgpool2": lambda c: (nn.AvgPool2d(2), (2, 2), 2, (0, 0)),  # floor(n / 2)
    "maxpool2-ceil": lambda c: (nn.MaxPool2d(2, ceil_mode=True), (2, 2), 2, (0, 0)),
    "maxpool3-stride2": lambda c: (nn.MaxPool2d(3, stride=2, padding=1), (3, 3), 2, (1, 1)),
}
STRIDED = {"conv3-stride2", "avgpool2", "maxpool2-ceil", "maxpool3-stride2"}


def _analytic_field(layers) -> ReceptiveField:
    size, stride, offset = [1, 1], [1, 1], [0, 0]
    for _, kernel, layer_stride, padding in layers:
        for axis in range(2):
            offset[axis] -= padding[axis] * stride[axis]
            size[axis] += (kernel[axis] - 1) * stride[axis]
            stride[axis] *= layer_stride
    return ReceptiveField(tuple(size), tuple(stride), tuple(offset))


def random_net(seed: int, channels: int = 4, out_channels: int = 1, batchnorm: bool = False):
    """A random "same"-padded conv net and its receptive field, computed by hand."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    names = [rng.choice(sorted(LAYERS)) for _ in range(rng.randint(2, 4))]
    while sum(name in STRIDED for name in names) > 2:
        names.remove(next(name for name in names if name in STRIDED))
    layers = [_conv(3, channels, 3)] + [LAYERS[name](channels) for name in names]
    modules = []
    for module, *_ in layers:
        modules.append(module)
        if isinstance(module, nn.Conv2d):
            if batchnorm:
                modules.append(_random_batchnorm(channels))
            modules.append(nn.ReLU())
    modules.append(nn.Conv2d(channels, out_channels, 1))
    return nn.Sequential(*modules), _analytic_field(layers)


def _random_batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


SEEDS = range(8)


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
# The receptive-field probe.

@pytest.mark.parametrize("seed", SEEDS)
def test_probe_finds_the_analytic_field_of_random_nets(nets, seed):
    _, analytic, probed = nets[seed]
    assert probed == analytic


@pytest.mark.parametrize("builder, size, stride, offset", [
    (lambda: nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)]), (7, 7), (1, 1), (-3, -3)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)),
     (7, 7), (2, 2), (-3, -3)),
    (lambda: nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 1, 3, padding=1)), (6, 6), (2, 2), (-2, -2)),
    (lambda: nn.Conv2d(3, 1, (3, 5), padding=(1, 2)), (3, 5), (1, 1), (-1, -2)),
    (lambda: nn.Sequential(nn.AvgPool2d((2, 4)), nn.Conv2d(3, 1, 5, padding=2)), (10, 20), (2, 4), (-4, -8)),
])
def test_probe_finds_known_fields(builder, size, stride, offset):
    assert receptive_field(builder()) == ReceptiveField(size, stride, offset)


def test_probe_sees_through_dead_relus_and_zero_weights():
    # every hidden unit dead and the last layer zero: the gradient is 0 everywhere
    net = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    nn.init.constant_(net[0].bias, -1e6)
    nn.init.zeros_(net[2].weight)
    assert receptive_field(net) == ReceptiveField((7, 7), (1, 1), (-3, -3))


def test_probe_grows_past_a_field_wider_than_its_first_input():
    net = nn.Sequential(nn.AvgPool2d(4), *[nn.Conv2d(3, 3, 5, padding=2) for _ in range(5)])
    assert receptive_field(net, probe_size=32) == ReceptiveField((84, 84), (4, 4), (-40, -40))


def test_probe_refuses_a_net_that_is_not_local():
    class GlobalContrast(nn.Module):
        def forward(self, x):
            return x - x.mean(dim=(2, 3), keepdim=True)

    with pytest.raises(SamplingError, match="not local"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), GlobalContrast()),
                        max_probe_size=128)


def test_declared_field_is_trusted_and_its_stride_measured():
    net = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 1, 3, padding=1))
    net.receptive_field = 9
    assert receptive_field(net) == ReceptiveField((9, 9), (2, 2), None)
    assert receptive_field(net, declared=False) == ReceptiveField((6, 6), (2, 2), (-2, -2))
    net.receptive_field = ReceptiveField((5, 3), (2, 2), (-2, -1))
    assert receptive_field(net) is net.receptive_field


def test_probe_leaves_the_net_untouched():
    net, _ = random_net(0, batchnorm=True)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    receptive_field(net)
    assert net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_probe_agrees_with_the_attention_net_s_declared_field():
    nets = pytest.importorskip("ats_wsi.nets")
    for pool, layers in ((1, 3), (2, 3), (4, 2)):
        net = nets.AttentionNet(3, hidden=4, layers=layers, pool=pool)
        probed = receptive_field(net, declared=False)
        assert probed.size == (net.receptive_field,) * 2
        assert probed.stride == (pool, pool)


def test_halo_is_the_field_rounded_up_to_the_stride():
    assert ReceptiveField((7, 7), (1, 1), (-3, -3)).halo == (7, 7)
    assert ReceptiveField((7, 6), (2, 4), (-3, -2)).halo == (8, 8)
    assert ReceptiveField((5, 5), (2, 2), None).halo == (6, 6)
    # a field far off-centre needs more than its size on one side
    assert ReceptiveField((3, 3), (1, 1), (-10, 0)).halo == (10, 3)


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
    tile = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    for rows, cols in reads:  # never more than one tile and its halo
        assert rows <= tile[0] + 2 * halo[0] + field.stride[0]
        assert cols <= tile[1] + 2 * halo[1] + field.stride[1]


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
