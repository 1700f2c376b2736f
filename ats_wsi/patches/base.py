"""The patch-source protocols: where the high-resolution pixels come from, and how.

A patch source hands :class:`~ats_wsi.model.AttentionSampler` the pixels of
the sampled boxes and nothing else. It knows its own high-resolution frame;
the sampler only needs the ratio of that frame to the low image (``scale``)
to place the boxes (see :func:`ats_wsi.geometry.cell_to_xy`).

A source over slide files answers more (:class:`SlidePatchSource`): the
level-0 boxes its patches cover and, per slide, how they are read
(:class:`ReadGeometry`: slide, level decoded, downsample, resample factor,
µm/px). A pretrained encoder's resolution check and the feature cache's keys
are computed from these typed values alone, never from a source's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["PatchBoxes", "PatchSource", "ReadGeometry", "SlidePatchSource"]


@dataclass(frozen=True)
class ReadGeometry:
    """How the patches of one slide are read.

    Attributes:
        slide: the open slide (its identity: two geometries of the same file
            opened twice are different reads).
        path: the slide's file.
        level: the pyramid level decoded.
        downsample: level-0 pixels per patch pixel as read (the level's own
            downsample, or ``mpp / slide.mpp`` snapped, when read in µm/px).
        mpp: the µm/px asked for (None: read by level).
        factor: the resampling factor from the level decoded to ``mpp``
            (None: read by level, no resampling).
        read_mpp: the µm/px the patches come at (None: the slide has no µm/px).
    """

    slide: Any = field(compare=False, repr=False)
    path: str
    level: int
    downsample: float
    mpp: float | None
    factor: float | None
    read_mpp: float | None

    def cache_geometry(self, patch_wh: tuple[int, int]) -> dict:
        """The plain values that key a feature cache group for patches of ``patch_wh`` = (w, h).

        These exact keys and roundings are what caches on disk were written
        with: changing any of them orphans every stored feature.
        """
        return dict(patch_wh=[int(v) for v in patch_wh], mpp=self.mpp, level=int(self.level),
                    downsample=round(float(self.downsample), 9),
                    factor=None if self.factor is None else round(float(self.factor), 9))


class PatchBoxes(NamedTuple):
    """The level-0 boxes of a batch of drawn patches and how each slide's are read.

    Attributes:
        xywh: int64 ``[B, n, 4]``, ``(x0, y0, w0, h0)`` in level-0 pixels of each slide.
        geometry: one :class:`ReadGeometry` per slide of the batch.
    """

    xywh: Tensor
    geometry: tuple[ReadGeometry, ...]


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


@runtime_checkable
class SlidePatchSource(PatchSource, Protocol):
    """A patch source over slide files: it owns its boxes and their read geometry."""

    def geometry(self, b: int) -> ReadGeometry:
        """How slide ``b``'s patches are read."""
        ...

    def boxes(self, xy: Tensor, size_wh: int | tuple[int, int]) -> PatchBoxes:
        """The level-0 boxes :meth:`extract` reads for ``xy`` ``[B, n, 2]``, with each slide's geometry."""
        ...

    def extract_slide(self, b: int, xy: Tensor, size_wh: int | tuple[int, int]) -> Tensor:
        """Patches of slide ``b`` alone: ``xy`` long ``[k, 2]`` -> ``[k, C, h, w]``."""
        ...
