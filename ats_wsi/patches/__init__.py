"""Where pixels come from: patch sources for :class:`ats_wsi.AttentionSampler`.

- :class:`PatchSource`: the protocol (``scale`` and ``extract``).
- :class:`TensorSource`: patches from an in-memory batch ``[B, C, H, W]``.
- :class:`PatchReader`: patches of one slide level, each needed tile decoded once.
- :class:`SlideSource`: slide files as the patch source (one PatchReader per slide).
"""
from .base import PatchSource
from .reader import PatchReader
from .slide_source import SlideSource
from .tensor import TensorSource

__all__ = ["PatchSource", "TensorSource", "PatchReader", "SlideSource"]
