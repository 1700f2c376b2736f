"""Turn the attention network's logits into a spatial probability map."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SamplingError
from .distribution import _flat_mask

__all__ = ["SampleSoftmax", "ends_with_softmax", "split_softmax"]


class SampleSoftmax(nn.Module):
    """Softmax over all cells of a map, with optional smoothing and mask.

    ``a = softmax(logits / temperature)`` over the spatial cells of each map,
    then ``a <- (1 - smoothing) a + smoothing / K``: a floor of
    ``smoothing / K`` on every cell, so that no cell's probability (and the
    ``1 / a`` in the estimators' gradients) collapses to 0.

    Args:
        smoothing: in ``[0, 1]``; the share of mass spread uniformly.
        temperature: ``> 0``; logits are divided by it before the softmax.

    Forward:
        logits: float ``[B, 1, h, w]`` (conv output; the channel axis is
            dropped) or ``[B, *spatial]``. A 4-D or higher input must have
            exactly one channel on axis 1.
        mask: optional bool ``[B, *spatial]`` or ``[*spatial]``, True where a
            cell may be attended. Masked cells get probability 0; the softmax
            and the smoothing (``K`` = number of unmasked cells of the map)
            run over the unmasked cells only.

    Returns:
        ``[B, *spatial]`` probabilities summing to 1 over each map. The
        softmax's own float32 normaliser drifts with the map's size (a map of
        2.4 million cells summed to 1.0006, over the samplers' tolerance), so
        the result is divided once more by its sum taken in float64, as the
        streamed softmax (:func:`~ats_wsi.sampling.streamed.softmax_`) does.
    """

    def __init__(self, smoothing: float = 0.0, temperature: float = 1.0):
        super().__init__()
        if not 0.0 <= smoothing <= 1.0:
            raise SamplingError(f"smoothing must lie in [0, 1], got {smoothing}")
        if not temperature > 0:
            raise SamplingError(f"temperature must be positive, got {temperature}")
        self.smoothing = float(smoothing)
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, temperature={self.temperature}"

    def forward(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = _drop_channel(logits)
        shape = logits.shape
        flat = logits.reshape(shape[0], -1) / self.temperature
        if mask is None:
            probs = _normalised(torch.softmax(flat, dim=1))
            probs = (1 - self.smoothing) * probs + self.smoothing / flat.shape[1]
            return probs.reshape(shape)
        keep = _flat_mask(mask, shape, logits.device)
        probs = _normalised(torch.softmax(flat.masked_fill(~keep, float("-inf")), dim=1))
        cells = keep.sum(dim=1, keepdim=True).to(probs.dtype)
        probs = (1 - self.smoothing) * probs + (self.smoothing / cells) * keep
        return probs.reshape(shape)


def _normalised(probs: torch.Tensor) -> torch.Tensor:
    """``probs [B, K]`` divided by their sum over K taken in float64 (differentiable; the sum is 1 up to
    the rounding of a float32 softmax, so the gradient is the softmax's)."""
    return probs / probs.sum(dim=1, keepdim=True, dtype=torch.float64).to(probs.dtype)


def _drop_channel(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise SamplingError("logits must be a floating-point torch.Tensor")
    if logits.dim() < 2:
        raise SamplingError(f"logits must be [B, *spatial], got shape {tuple(logits.shape)}")
    if logits.dim() >= 4:
        if logits.shape[1] != 1:
            raise SamplingError(
                f"logits of shape {tuple(logits.shape)} must have one channel on axis 1"
            )
        return logits.squeeze(1)
    return logits


def ends_with_softmax(net: nn.Module) -> bool:
    """Whether ``net`` is a :class:`SampleSoftmax` or a Sequential ending in one (it returns probabilities)."""
    if isinstance(net, SampleSoftmax):
        return True
    return isinstance(net, nn.Sequential) and len(net) > 0 and ends_with_softmax(net[-1])


def split_softmax(net: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(body, SampleSoftmax)`` for a Sequential ending in one, else ``(net, None)``."""
    if isinstance(net, nn.Sequential) and len(net) > 1 and isinstance(net[-1], SampleSoftmax):
        return net[:-1], net[-1]
    return net, None
