"""Where pixels come from: patch sources for :class:`ats_wsi.AttentionSampler`.

- :class:`PatchSource`: the protocol (``scale`` and ``extract``);
  :class:`SlidePatchSource` adds what a source over slide files answers
  (``geometry``, ``boxes``, ``extract_slide``) with the typed values
  :class:`ReadGeometry` and :class:`PatchBoxes`.
- :func:`plain_features`: the default feature step (every patch read and embedded).
- :class:`TensorSource`: patches from an in-memory batch ``[B, C, H, W]``.
- :class:`PatchReader`: patches of one slide level, each needed tile decoded once.
- :class:`SlideSource`: slide files as the patch source (one PatchReader per slide).
"""
from .base import PatchBoxes, PatchSource, ReadGeometry, SlidePatchSource
from .features import as_float, plain_features
from .reader import PatchReader
from .slide_source import SlideSource
from .tensor import TensorSource

__all__ = ["PatchBoxes", "PatchSource", "ReadGeometry", "SlidePatchSource", "TensorSource", "PatchReader",
           "SlideSource", "as_float", "plain_features"]
