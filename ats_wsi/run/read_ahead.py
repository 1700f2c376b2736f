"""A bounded read-ahead: one background thread prepares the next items while the caller finishes the current one.

``ats-wsi predict --read-ahead N`` runs the prepare stage of a slide (open,
attention map, draws, patch reads: :func:`ats_wsi.classifier.stages.prepare_slide`)
for the next N slides here, while the main thread runs the encoder on the
current slide and writes its outputs. Memory stays bounded: at most N items
are prepared (or being prepared) and not yet handed out, beside the one the
caller holds.

Order is kept: items come out in input order. An item whose prepare raised
comes out with its exception as the value (the caller records it and goes on).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..errors import ConfigError

__all__ = ["MAX_READ_AHEAD", "ReadAhead", "check_read_ahead"]

T = TypeVar("T")

MAX_READ_AHEAD = 8
"""Most items prepared ahead: each holds a slide open and its drawn patches in memory."""


def check_read_ahead(depth) -> int:
    """``depth`` as an int in ``0..MAX_READ_AHEAD``.

    Raises:
        ConfigError: anything else (a bool, a float, a negative or larger number).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_READ_AHEAD:
        raise ConfigError(None, f"read_ahead must be a whole number of slides in 0..{MAX_READ_AHEAD} (0: no "
                                f"read-ahead; each slide read ahead holds its patches in memory), got {depth!r}")
    return depth


class ReadAhead:
    """Iterate ``(item, prepare(item) or its exception)`` in input order, preparing up to ``depth`` items ahead.

    Args:
        items: what to prepare, in order.
        prepare: ``item -> prepared``; runs in one background thread (in the
            caller's thread when ``depth`` is 0).
        depth: items prepared ahead, ``0..MAX_READ_AHEAD`` (0: serial, each
            item prepared when it is asked for).
        discard: called with each prepared value that is never handed out (the
            caller stopped early), to release what it holds.

    Attributes:
        peak: the most items that were prepared or being prepared and not yet
            handed out, at once (never above ``depth``).

    Use as a context manager: leaving the block stops the thread, waits for
    the item it is preparing, and discards what was not handed out.
    """

    def __init__(self, items: Iterable[T], prepare: Callable[[T], Any], depth: int,
                 discard: Callable[[Any], None] | None = None):
        self.items = list(items)
        self.prepare = prepare
        self.depth = check_read_ahead(depth)
        self.discard = discard
        self.peak = 0
        self._results: queue.Queue = queue.Queue()
        self._permits = threading.Semaphore(max(self.depth, 1))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ahead = 0
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[tuple[T, Any]]:
        if self.depth == 0:
            for item in self.items:
                yield item, self._call(item)
            return
        self._thread = threading.Thread(target=self._produce, name="ats-read-ahead", daemon=True)
        self._thread.start()
        for _ in self.items:
            item, result = self._results.get()
            with self._lock:
                self._ahead -= 1
            self._permits.release()
            yield item, result

    def _produce(self) -> None:
        for item in self.items:
            while not self._permits.acquire(timeout=0.05):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            with self._lock:
                self._ahead += 1
                self.peak = max(self.peak, self._ahead)
            self._results.put((item, self._call(item)))

    def _call(self, item):
        try:
            return self.prepare(item)
        except BaseException as exc:  # handed out as the item's value: the caller records it and goes on
            if self.depth == 0 and not isinstance(exc, Exception):
                raise  # an interrupt in the caller's own thread stops the run
            return exc

    def close(self) -> None:
        """Stop the thread (after the item it prepares) and discard what was not handed out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while True:
            try:
                _, result = self._results.get_nowait()
            except queue.Empty:
                break
            if self.discard is not None and not isinstance(result, BaseException):
                self.discard(result)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
