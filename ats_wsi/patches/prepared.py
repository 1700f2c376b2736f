"""A patch source whose patches were read ahead: what a read-ahead pipeline hands the feature step.

A pipeline reads the drawn boxes of the next slide in another thread while
the feature net encodes the current one (:mod:`ats_wsi.classifier.stages`).
The feature step then asks its source for those boxes as usual;
:class:`PreparedSource` answers with the pixels already read, so the step,
its resolution check and the feature cache need no other road.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ..geometry import size_wh as _size_wh

__all__ = ["PreparedSource"]


class PreparedSource:
    """The pixels of known boxes of ``source``, read before they are asked for.

    ``extract(xy, size)`` returns the pixels read ahead for exactly these
    ``xy`` and ``size`` (each read is served once, then let go), and reads
    ``source`` for anything else. Every other question (``scale``,
    ``geometry``, ``boxes``, ``boxes_level0``, ``extract_slide``,
    ``patches_read``) is the source's own, so a feature step sees a
    :class:`~ats_wsi.patches.SlidePatchSource` whose answers do not change.

    Args:
        source: the slide source the patches were read from.
        reads: ``[(xy long [B, n, 2], (w, h), patches uint8 [B, n, 3, h, w])]``,
            what was read ahead, in draw order.

    Attributes:
        served: reads answered with the pixels read ahead.
        read_seconds: wall seconds spent reading ``source`` on demand (what was not read ahead).
    """

    def __init__(self, source, reads: list[tuple[Tensor, tuple[int, int], Tensor]] | None = None):
        self.source = source
        self._reads = list(reads or [])
        self.served = 0
        self.read_seconds = 0.0

    @property
    def patches_read(self) -> int:
        """Patches the source read (ahead or on demand)."""
        return self.source.patches_read

    def scale(self, low_shape) -> tuple[float, float]:
        """The source's ``(sy, sx)``."""
        return self.source.scale(low_shape)

    def geometry(self, b: int):
        """How the source reads slide ``b``'s patches (:class:`~ats_wsi.patches.ReadGeometry`)."""
        return self.source.geometry(b)

    def boxes(self, xy: Tensor, size_wh):
        """The source's :class:`~ats_wsi.patches.PatchBoxes` of ``xy``."""
        return self.source.boxes(xy, size_wh)

    def boxes_level0(self, xy: Tensor, size_wh) -> Tensor:
        """The source's level-0 boxes ``int64 [B, n, 4]`` of ``xy``."""
        return self.source.boxes_level0(xy, size_wh)

    def extract_slide(self, b: int, xy: Tensor, size_wh) -> Tensor:
        """Slide ``b``'s patches at ``xy [k, 2]`` (a feature cache's misses): picked from a read ahead
        that holds every one of them, else read from the source."""
        wh = tuple(int(v) for v in _size_wh(size_wh, "patch size"))
        for i, (read_xy, read_wh, patches) in enumerate(self._reads):
            rows = _rows_of(read_xy[b], xy) if read_wh == wh else None
            if rows is not None:
                del self._reads[i]
                self.served += 1
                return patches[b, rows.to(patches.device)]
        start = time.perf_counter()
        try:
            return self.source.extract_slide(b, xy, size_wh)
        finally:
            self.read_seconds += time.perf_counter() - start

    def extract(self, xy: Tensor, size_wh) -> Tensor:
        """The patches at ``xy`` long ``[B, n, 2]``: the ones read ahead when they match, else read now."""
        wh = tuple(int(v) for v in _size_wh(size_wh, "patch size"))
        for i, (read_xy, read_wh, patches) in enumerate(self._reads):
            if read_wh == wh and _same(read_xy, xy):
                del self._reads[i]
                self.served += 1
                return patches
        start = time.perf_counter()
        try:
            return self.source.extract(xy, size_wh)
        finally:
            self.read_seconds += time.perf_counter() - start


def _rows_of(have: Tensor, want: Tensor) -> Tensor | None:
    """For each box of ``want`` long ``[k, 2]``, its row in ``have`` ``[m, 2]`` (None: one is missing)."""
    rows = {tuple(box): i for i, box in enumerate(have.detach().cpu().tolist())}
    found = [rows.get(tuple(box)) for box in want.detach().cpu().tolist()]
    return None if any(i is None for i in found) else torch.tensor(found, dtype=torch.long)


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether two box tensors hold the same boxes (the same object, or equal values and shape)."""
    if a is b:
        return True
    return a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu())
