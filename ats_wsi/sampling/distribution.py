"""Draw positions from an attention map, with or without replacement.

The attention is a distribution over the K cells of a map of any spatial rank
(``[B, K]``, ``[B, h, w]``, ``[B, d, h, w]``, ...). Sampling works on the
flattened map ``[B, K]`` and returns the drawn cells as coordinates of the
map, together with the probability of each drawn cell taken from the
(renormalised) map so that gradients flow back into the attention.

Without replacement the draws come out in the order of sequential sampling
(draw one, remove it, renormalise, draw the next): the estimator in
:mod:`ats_wsi.sampling.expectation` weights each draw by the mass left before
it, so the order is part of the sample, not an accident of the sort.
"""
from __future__ import annotations

import torch

from ..errors import SamplingError

__all__ = ["sample"]

# Unmasked cells of probability 0 get a key of GUMBEL - _ZERO_OFFSET: below any
# key log(p) + GUMBEL of a cell with p > 0 (log p >= log(smallest subnormal)
# > -746 and Gumbel noise lies in (-7, 37) for float32/float64 uniforms), yet
# finite, so they still rank above masked cells (-inf) and are drawn uniformly
# among themselves once the positive mass is exhausted.
_ZERO_OFFSET = 1.0e4

MAX_DRAWS = 1 << 24
"""Most cells drawn per map in one call (16.7 M): above it the draws' own
arrays (indices, positions, probabilities: ~40 bytes a draw) run to
gigabytes, and a caller asking for them has a bug, not a sample."""


def sample(
    attention: torch.Tensor,
    n: int,
    replace: bool = False,
    logits: bool = False,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` cells per map from an attention distribution.

    Args:
        attention: float ``[B, *spatial]`` (at least one spatial axis). With
            ``logits=False``, non-negative probabilities whose sum over each
            map is 1 (up to rounding); with ``logits=True``, unnormalised log
            probabilities (``-inf`` allowed: probability 0).
        n: number of cells to draw per map, ``n >= 1``.
        replace: draw with replacement (i.i.d. multinomial) or without
            (Gumbel-top-k in the order of sequential sampling).
        logits: whether ``attention`` holds logits rather than probabilities.
        mask: optional bool ``[B, *spatial]`` or ``[*spatial]``; True where a
            cell may be drawn. Masked cells are never drawn and the attention
            is renormalised over the unmasked cells.
        generator: optional ``torch.Generator`` on ``attention``'s device, for
            reproducible draws.
        deterministic: return the ``n`` most probable cells instead of a
            random draw (inference option; the cells are distinct and in
            descending probability whatever ``replace`` says).

    Returns:
        positions: int64 ``[B, n, len(spatial)]``, the drawn cells as indices
            into the map, ((row, col) for 2-D maps); without replacement in
            sequential-sampling order.
        sampled_attention: ``[B, n]``, dtype of ``attention``: the probability
            of each drawn cell under the renormalised map (the law actually
            sampled), differentiable w.r.t. ``attention``.

    Raises:
        SamplingError: ``n < 1``; NaN or +Inf (or, for probabilities, -Inf or
            negative) values; probability maps whose sums are off 1 by more
            than ``max(1e-4, sqrt(eps))`` of their dtype; a mask of the wrong
            shape or type; a map that is fully masked or has no probability on
            its unmasked cells; without replacement (or deterministic), more
            draws than unmasked cells; more than :data:`MAX_DRAWS` draws.

    Unmasked cells of probability exactly 0 are drawn without replacement only
    when a map has fewer than ``n`` cells of positive probability; they then
    come last, uniformly among themselves, with ``sampled_attention`` 0.
    """
    _check_n(n)
    spatial = _check_attention(attention, logits)
    batch = attention.shape[0]
    flat_mask = _flat_mask(mask, attention.shape, attention.device)
    probs = _renormalise(attention.reshape(batch, -1), logits, flat_mask)
    usable = torch.ones_like(probs, dtype=torch.bool) if flat_mask is None else flat_mask
    if deterministic or not replace:
        _check_enough_cells(usable, n)

    with torch.no_grad():
        if deterministic:
            index = _top_k(probs.detach(), usable, n)
        elif replace:
            index = torch.multinomial(probs.detach(), n, replacement=True, generator=generator)
        else:
            index = _gumbel_top_k(probs.detach(), usable, n, generator)

    sampled_attention = probs.gather(1, index)
    positions = torch.stack(torch.unravel_index(index, spatial), dim=-1)
    return positions, sampled_attention


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise SamplingError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise SamplingError(f"n must be at least 1, got {n}")
    if n > MAX_DRAWS:
        raise SamplingError(f"n = {n} draws per map is more than MAX_DRAWS ({MAX_DRAWS}); "
                            f"the draws alone would need {40 * n / 2**30:.3g} GiB")


def _check_attention(attention: torch.Tensor, logits: bool) -> tuple[int, ...]:
    """Validate the map; return its spatial shape."""
    if not isinstance(attention, torch.Tensor):
        raise SamplingError(f"attention must be a torch.Tensor, got {type(attention).__name__}")
    if not attention.is_floating_point():
        raise SamplingError(f"attention must be a floating-point tensor, got {attention.dtype}")
    if attention.dim() < 2:
        raise SamplingError(
            f"attention must be [B, *spatial] with at least one spatial axis, "
            f"got shape {tuple(attention.shape)}"
        )
    if attention.shape[0] == 0 or attention[0].numel() == 0:
        raise SamplingError(f"attention of shape {tuple(attention.shape)} is empty")
    values = attention.detach()
    if torch.isnan(values).any():
        raise SamplingError("attention contains NaN")
    if logits:
        if (values == float("inf")).any():
            raise SamplingError("attention logits contain +Inf")
        return tuple(attention.shape[1:])
    if torch.isinf(values).any():
        raise SamplingError("attention contains Inf (pass logits=True for log probabilities)")
    if (values < 0).any():
        raise SamplingError(
            f"attention contains negative probabilities (min {values.min().item():.3g}); "
            f"pass logits=True for log probabilities"
        )
    sums = values.reshape(values.shape[0], -1).sum(dim=1, dtype=torch.float64)
    tolerance = max(1e-4, torch.finfo(values.dtype).eps ** 0.5)
    worst = (sums - 1).abs().max().item()
    if worst > tolerance:
        row = int((sums - 1).abs().argmax())
        raise SamplingError(
            f"attention map {row} sums to {sums[row].item():.6g}, not 1 "
            f"(tolerance {tolerance:.1g}); normalise it or pass logits=True"
        )
    return tuple(attention.shape[1:])


def _flat_mask(mask, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """The mask as bool ``[B, K]``, or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise SamplingError(
            f"mask must be a bool tensor, got "
            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}"
        )
    if tuple(mask.shape) == tuple(shape[1:]):
        mask = mask.expand(shape)
    elif tuple(mask.shape) != tuple(shape):
        raise SamplingError(
            f"mask of shape {tuple(mask.shape)} does not match attention of shape "
            f"{tuple(shape)} (expected {tuple(shape)} or {tuple(shape[1:])})"
        )
    flat = mask.to(device).reshape(shape[0], -1)
    empty = ~flat.any(dim=1)
    if empty.any():
        raise SamplingError(f"attention map {int(empty.nonzero()[0])} is fully masked")
    return flat


def _renormalise(flat: torch.Tensor, logits: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """Probabilities ``[B, K]`` over the unmasked cells, differentiable.

    Probability maps are divided by their (unmasked) sum even without a mask:
    this only corrects rounding, and it makes the law sampled an explicit
    function of ``attention`` so that gradients are right for any
    parametrisation of it.
    """
    if logits:
        if mask is not None:
            flat = flat.masked_fill(~mask, float("-inf"))
        if (flat.detach() == float("-inf")).all(dim=1).any():
            raise SamplingError("an attention map has no unmasked cell with finite logit")
        return torch.softmax(flat, dim=1)
    if mask is not None:
        flat = flat.masked_fill(~mask, 0.0)
    total = flat.sum(dim=1, keepdim=True)
    if (total.detach() <= 0).any():
        raise SamplingError("an attention map has no probability mass on its unmasked cells")
    return flat / total


def _check_enough_cells(usable: torch.Tensor, n: int) -> None:
    """Without replacement every draw needs its own unmasked cell."""
    counts = usable.sum(dim=1)
    fewest = int(counts.min())
    if n > fewest:
        row = int(counts.argmin())
        raise SamplingError(
            f"cannot draw {n} distinct cells: attention map {row} has only "
            f"{fewest} unmasked cells (use replace=True or a smaller n)"
        )


def _top_k(probs: torch.Tensor, usable: torch.Tensor, n: int) -> torch.Tensor:
    """Indices ``[B, n]`` of the ``n`` largest probabilities, descending."""
    ranked = probs.masked_fill(~usable, -1.0)
    return ranked.topk(n, dim=1, sorted=True).indices


def _gumbel_top_k(
    probs: torch.Tensor, usable: torch.Tensor, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices ``[B, n]`` drawn without replacement, in sequential order.

    The top-k of log(p) + Gumbel noise, sorted by decreasing key, has the law
    of drawing one cell from p, removing it, renormalising and repeating.
    """
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(probs.dtype).tiny)))
    positive = probs > 0
    keys = torch.where(positive, torch.log(probs.where(positive, 1.0)) + gumbel, gumbel - _ZERO_OFFSET)
    keys = keys.masked_fill(~usable, float("-inf"))
    return keys.topk(n, dim=1, sorted=True).indices
