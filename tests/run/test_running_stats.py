"""BatchNorm running statistics folded in slide by slide (what keeps DDP equal to one process).

Captured per forward and folded after the batch, they must equal what the
layers compute themselves when every slide runs in one process, in order.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ats_wsi.run.train import _RunningStats


def _net(momentum):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=momentum), nn.Flatten(), nn.LazyLinear(1))


def _buffers(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_capture_then_fold_equals_the_layers_own_updates(momentum):
    slides = [torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    native, folded = _net(momentum), _net(momentum)
    native(slides[0]), folded(slides[0])  # materialise the lazy layer, one update each
    folded.load_state_dict(native.state_dict())
    stats = _RunningStats(folded)
    assert len(stats.layers) == 2

    for batch in (slides[:3], slides[3:]):
        for x in batch:
            native(x).sum().backward()
            before = _buffers(folded)
            with stats.capture():
                folded(x).sum().backward()  # the backward reads the buffers: they are put back after it
            after = _buffers(folded)
            assert all(torch.equal(before[k], after[k]) for k in before)  # untouched until the fold
        stats.fold(len(batch), world=1, distributed=False)
        want, got = _buffers(native), _buffers(folded)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_zero_weight_pass_is_not_counted():
    net = _net(0.1)
    net(torch.randn(4, 3, 9, 9))
    stats = _RunningStats(net)
    before = _buffers(net)
    with stats.capture(keep=False):
        net(torch.randn(4, 3, 9, 9))
    stats.fold(0, world=1, distributed=False)
    after = _buffers(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_net_without_batchnorm_is_left_alone():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    stats = _RunningStats(net)
    with stats.capture():
        net(torch.randn(2, 3, 5, 5))
    stats.fold(1, world=1, distributed=False)
    assert stats.layers == [] and stats.captured == []
