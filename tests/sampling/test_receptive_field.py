"""The receptive-field probe and declared fields (ats_wsi.sampling.receptive_field).

The nets have fields known from the layer arithmetic (``known_fields``), so
the probe is checked against numbers not computed by the code under test.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ats_wsi.errors import SamplingError
from ats_wsi.nets import AttentionNet
from ats_wsi.sampling.receptive_field import ReceptiveField, receptive_field
from known_fields import SEEDS, random_net


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions on a shared machine: threads only wait on each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", SEEDS)
def test_probe_finds_the_analytic_field_of_random_nets(seed):
    net, analytic = random_net(seed, out_channels=1 + seed % 2, batchnorm=seed % 3 == 0)
    assert receptive_field(net.eval()) == analytic


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
    net.receptive_field = (9, 5)  # (w, h)
    assert receptive_field(net) == ReceptiveField((5, 9), (2, 2), None)  # per array axis (rows, cols)
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
    for pool, layers in ((1, 3), (2, 3), (4, 2)):
        net = AttentionNet(3, hidden=4, layers=layers, pool=pool)
        probed = receptive_field(net, declared=False)
        assert probed.size == (net.receptive_field,) * 2
        assert probed.stride == (pool, pool)


def test_halo_is_the_field_rounded_up_to_the_stride():
    assert ReceptiveField((7, 7), (1, 1), (-3, -3)).halo == (7, 7)
    assert ReceptiveField((7, 6), (2, 4), (-3, -2)).halo == (8, 8)
    assert ReceptiveField((5, 5), (2, 2), None).halo == (6, 6)
    # a field far off-centre needs more than its size on one side
    assert ReceptiveField((3, 3), (1, 1), (-10, 0)).halo == (10, 3)
