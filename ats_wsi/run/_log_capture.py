"""Library warnings collected per slide while slides are opened in threads.

tifffile logs a warning for a malformed tag; opened in a pool of threads
under a progress bar, those lines would interleave with the bar and lose the
slide they belong to. :func:`capture_warnings` keeps them, by the slide each
thread is on, for the caller to report.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

__all__ = ["PerThreadWarnings", "capture_warnings"]


class PerThreadWarnings(logging.Handler):
    """Collects library log records (tifffile's warnings) per thread while slides are checked.

    A thread says which slide it is on with :meth:`on` (``None``: none);
    ``records`` maps each slide to its messages, in order.
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.slide: dict[int, str] = {}
        self.records: dict[str, list[str]] = {}

    def on(self, slide: str | None) -> None:
        """Records of this thread go to ``slide`` from now on (``None``: dropped)."""
        if slide is None:
            self.slide.pop(threading.get_ident(), None)
        else:
            self.slide[threading.get_ident()] = slide

    def emit(self, record):
        key = self.slide.get(threading.get_ident())
        if key is not None:
            self.records.setdefault(key, []).append(record.getMessage())


@contextmanager
def capture_warnings(logger_names=("tifffile",)):
    """Within the block, ``logger_names``' warnings go to the yielded :class:`PerThreadWarnings`
    only (not to the terminal); afterwards the loggers are as they were."""
    handler = PerThreadWarnings()
    loggers = [logging.getLogger(n) for n in logger_names]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False  # not to the terminal, inside a progress bar
    try:
        yield handler
    finally:
        for lg, (propagate, _) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate
