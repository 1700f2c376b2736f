"""The one cache of decoded tiles: a thread-safe LRU bounded in bytes.

Used by a Slide for the tiles of its computed levels and by
:class:`ats_wsi.patches.PatchReader` for the tiles it decoded. numpy only.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

__all__ = ["TileCache", "held_bytes", "reset_after_fork"]

_fork_children: weakref.WeakSet = weakref.WeakSet()


def reset_after_fork(obj) -> None:
    """Call ``obj._after_fork()`` in every child forked while ``obj`` lives.

    A forked child inherits each lock in the state it had at the fork: one
    held by another thread of the parent (a tile being cached, a read in
    flight) stays held for ever in the child, whose next read then hangs
    (DataLoader workers of a dataset of open slides). ``_after_fork`` makes
    such locks new.
    """
    _fork_children.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_fork_children):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def held_bytes(tile: np.ndarray) -> int:
    """Bytes a cached ``tile`` keeps alive.

    A view (a clipped edge tile cut from a whole decoded tile, channels
    sliced off an RGBA decode) keeps its whole base array alive, so it is
    charged ``base.nbytes`` when that is larger than its own (numpy points a
    view of a view at the array that owns the memory, so that is counted
    once per tile, whole). An array that owns its memory, or whose base is
    not an ndarray (a decoder's bytes object), is charged its own
    ``nbytes``. Charging the base bounds the memory actually held, which is
    what ``max_bytes`` promises; charging only the view (``tile.nbytes``)
    would let a cache of clipped edge tiles hold far more than its bound.
    """
    base = tile.base
    return max(tile.nbytes, base.nbytes) if isinstance(base, np.ndarray) else tile.nbytes


class TileCache:
    """A thread-safe LRU cache of decoded tiles, bounded in bytes.

    Args:
        max_bytes: the most bytes of tiles held at once (see
            :func:`held_bytes`: a view is charged the buffer it keeps alive);
            a tile larger than that is not kept. 0 keeps nothing.

    Keys are any hashable, by convention ``(level, col, row)``. Tiles are
    shared with every caller of :meth:`get`: treat them as read-only.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        """The tile stored under ``key`` (and mark it recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple, tile: np.ndarray) -> None:
        """Keep ``tile`` under ``key`` (replacing what was there), evicting the
        least recently used tiles until the bound holds."""
        size = held_bytes(tile)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (tile, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    @property
    def nbytes(self) -> int:
        """Bytes held now (never above ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def clear(self) -> None:
        """Drop every tile."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
