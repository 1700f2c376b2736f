"""The patch-source protocol: where the high-resolution pixels come from.

A patch source hands :class:`~ats_wsi.model.AttentionSampler` the pixels of
the sampled boxes and nothing else. It knows its own high-resolution frame;
the sampler only needs the ratio of that frame to the low image (``scale``)
to place the boxes (see :func:`ats_wsi.geometry.cell_to_xy`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class PatchSource(Protocol):
    """Anything that extracts patches at given boxes of a high-resolution frame."""

    def scale(self, low_shape: tuple[int, int]) -> tuple[float, float]:
        """High-resolution pixels per low-resolution pixel.

        Args:
            low_shape: ``(rows, cols)`` of the low image the attention net sees.

        Returns:
            ``(sy, sx)``.
        """
        ...

    def extract(self, xy: Tensor, size_wh: int | tuple[int, int]) -> Tensor:
        """Patches whose top-left corners are ``xy``.

        Args:
            xy: long ``[B, n, 2]``, ``(x, y)`` top-left of each box in the
                source's own high-resolution pixels. Boxes may start at
                negative offsets or run past the image; pixels outside the
                image are zeros.
            size_wh: ``(w, h)`` of a patch, or one int for a square.

        Returns:
            ``[B, n, C, h, w]``, the source's dtype (uint8 for slides).
        """
        ...
