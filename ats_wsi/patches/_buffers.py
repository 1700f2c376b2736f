"""Batch buffers handed out again once nothing uses them.

A batch of 200 patches of 256² is 39 MB: more than glibc's largest mmap
threshold (32 MB), so every fresh batch of that size is mapped anew and the
kernel zeroes and faults in every page on the first write (measured: 4.3 ms of
a 76 ms batch read, 6 %). Smaller batches come back from the C heap anyway.

:class:`Recycler` keeps the last few buffers it handed out and gives one out
again only when its reference count says that nothing else holds it: no
tensor, view, numpy array or memoryview made from it is alive (each of them
holds a reference to the buffer, so the count cannot be fooled by a live
view). A batch the caller still holds is never overwritten.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from ..errors import RegionError

__all__ = ["MAX_READ_BYTES", "Recycler", "check_read_bytes"]

MAX_READ_BYTES = 1 << 33
"""Most bytes one patch read may hold (the batch, plus its regions on the µm/px
path), checked before anything is allocated: 10^6 patches of 256² (183 GiB) are
a typed error, not a ``MemoryError``."""


def check_read_bytes(path, n: int, patch_wh: tuple[int, int] | None, region_wh: tuple[int, int] | None,
                     level: int) -> None:
    """Refuse ``n`` patches of ``patch_wh`` (None: the caller's buffer) and regions of
    ``region_wh`` (None: none) over :data:`MAX_READ_BYTES`, with a :class:`RegionError`."""
    need = sum(n * w * h * 3 for w, h in filter(None, (patch_wh, region_wh)))
    if need <= MAX_READ_BYTES:
        return
    size = patch_wh or region_wh
    regions = f" (regions of {region_wh[0]} x {region_wh[1]} px at level {level})" if region_wh else ""
    raise RegionError(path, f"reading {n:,} patches of {size[0]} x {size[1]} px{regions} needs {need / 2**30:.1f} "
                            f"GiB, over the {MAX_READ_BYTES / 2**30:g} GiB one read may hold; read them in "
                            f"smaller batches")


class Recycler:
    """Up to ``keep`` uint8 buffers, reused for arrays that fit in them.

    Args:
        keep: how many buffers to remember (two cover a batch in use while
            the next one is read ahead).
    """

    def __init__(self, keep: int = 2):
        self.keep = int(keep)
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised uint8 array of ``shape``, on a free kept buffer when one is big enough."""
        nbytes = int(np.prod(shape, dtype=np.int64))
        with self._lock:  # take and hand out under the lock: two threads never get the same buffer
            for k in range(len(self._buffers)):
                # 2 = the list's reference + getrefcount's argument: nothing else holds it
                if self._buffers[k].nbytes >= nbytes and sys.getrefcount(self._buffers[k]) == 2:
                    return self._buffers[k][:nbytes].reshape(shape)
            buffer = np.empty(nbytes, np.uint8)
            if len(self._buffers) >= self.keep:
                self._buffers.pop(0)
            self._buffers.append(buffer)
            return buffer.reshape(shape)

    def clear(self) -> None:
        """Forget every kept buffer (those still in use stay valid for their holders)."""
        with self._lock:
            self._buffers.clear()
