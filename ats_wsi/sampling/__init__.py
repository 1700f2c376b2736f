"""The attention-sampling math: torch only, no I/O.

- :func:`sample`: draw cells from an attention map, with or without
  replacement (Gumbel-top-k in sequential-sampling order).
- :func:`expectation`: the unbiased estimate of the attention-weighted
  feature average, with unbiased gradients (custom autograd).
- :func:`multinomial_entropy`, :func:`entropy_regularizer`: keep the
  attention from collapsing.
- :class:`SampleSoftmax`: conv logits to a spatial probability map.
- :mod:`geometry`: attention cells to patch boxes and back.
"""
from .distribution import sample
from .expectation import expectation
from .regularizers import entropy_regularizer, multinomial_entropy
from .softmax import SampleSoftmax

try:  # written in parallel by the geometry owner; keep the math importable without it
    from . import geometry
except ModuleNotFoundError as error:  # pragma: no cover - only while geometry.py is missing
    if error.name != f"{__name__}.geometry":
        raise  # a missing dependency inside geometry must not be hidden
    geometry = None

__all__ = [
    "sample",
    "expectation",
    "multinomial_entropy",
    "entropy_regularizer",
    "SampleSoftmax",
    "geometry",
]
