"""The reference library's entry point, ``attention_sampling``, under its names."""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .model import AttentionSampler

__all__ = ["attention_sampling"]


def attention_sampling(
    attention: nn.Module,
    feature: nn.Module,
    patch_size: int | tuple[int, int] | None = None,
    n_patches: int = 10,
    replace: bool = False,
    attention_regularizer: float | Callable[[Tensor], Tensor] | None = None,
    receptive_field: int | tuple[int, int] = 0,
) -> AttentionSampler:
    """The reference library's entry point, under its names.

    ``attention_sampling(attention, feature, ...)(x_low, x_high)`` returns an
    :class:`AttentionResult` whose first two fields are the reference's
    ``expected_features`` and ``attention``; the patches are ``.patches``.

    Args:
        attention: the attention net (logits, or probabilities if it ends in
            a ``SampleSoftmax`` as in the reference's examples).
        feature: the feature net, ``[N, C, ph, pw] -> [N, D]``.
        patch_size: ``(w, h)`` or one int; ``None`` uses the low view's size.
        n_patches: patches per image.
        replace: sample with replacement.
        attention_regularizer: a number is the entropy strength (the
            reference's ``multinomial_entropy(strength)``); a callable maps
            the attention ``[B, h', w']`` to a scalar loss term.
        receptive_field: the attention net's receptive field if its
            convolutions are "valid", 0 for "same" padding.

    Returns:
        An :class:`AttentionSampler`.
    """
    strength, regularizer = 0.0, None
    if callable(attention_regularizer):
        regularizer = attention_regularizer
    elif attention_regularizer is not None:
        strength = float(attention_regularizer)
    return AttentionSampler(attention, feature, n_patches=n_patches, patch_size=patch_size,
                            replace=replace, receptive_field=receptive_field, entropy=strength,
                            attention_regularizer=regularizer)
