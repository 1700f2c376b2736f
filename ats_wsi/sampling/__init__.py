"""The attention-sampling math: torch only, no I/O.

- :func:`sample`: draw cells from an attention map, with or without
  replacement (Gumbel-top-k in sequential-sampling order).
- :func:`expectation`: the unbiased estimate of the attention-weighted
  feature average, with unbiased gradients (custom autograd).
- :func:`nested_expectation`, :func:`sample_within`: two attention stages
  (regions, then cells inside each drawn region) and their unbiased
  estimator, built from the one-stage ones (:mod:`.nested`).
- :func:`multinomial_entropy`, :func:`entropy_regularizer`: keep the
  attention from collapsing.
- :class:`SampleSoftmax`: conv logits to a spatial probability map.
- :mod:`.receptive_field`: where an attention net's cells look (declared or probed).
- :mod:`.tiled`: the attention net over a large low view, tile by tile.

Attention cells become patch boxes in :mod:`ats_wsi.geometry`.
"""
from .distribution import sample
from .expectation import expectation
from .nested import nested_expectation, sample_within
from .regularizers import entropy_regularizer, multinomial_entropy
from .softmax import SampleSoftmax

__all__ = [
    "sample",
    "expectation",
    "nested_expectation",
    "sample_within",
    "multinomial_entropy",
    "entropy_regularizer",
    "SampleSoftmax",
]
