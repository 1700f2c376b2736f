"""Where pixels come from: patch sources for :class:`ats_wsi.AttentionSampler`.

- :class:`PatchSource`: the protocol (``scale`` and ``extract``).
- :class:`TensorSource`: patches from an in-memory batch ``[B, C, H, W]``.
"""
from .base import PatchSource
from .tensor import TensorSource

__all__ = ["PatchSource", "TensorSource"]
