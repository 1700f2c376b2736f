"""Nets with known receptive fields, for the probe and tiling tests.

Random stacks of "same"-padded convolutions and poolings whose receptive
field is computed from the layer arithmetic (:func:`analytic_field`), not by
the code under test.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from ats_wsi.sampling.receptive_field import ReceptiveField

# A layer is (module, (ky, kx), stride, (py, px)).

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


def analytic_field(layers) -> ReceptiveField:
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
    return nn.Sequential(*modules), analytic_field(layers)


def _random_batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


SEEDS = range(8)
