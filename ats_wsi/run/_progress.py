"""Progress as a callback: run/ reports, the caller draws.

A run function takes ``progress``, a factory ``progress(total, desc, unit)``
that returns a bar (anything with ``update(n)``, ``set_postfix(**values)``
and ``close()``; a ``tqdm`` fits) or None. ``ats-wsi`` passes one that
draws tqdm bars on a terminal (:mod:`ats_wsi.cli._common`); library callers
pass their own, or nothing.
"""
from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["ProgressBar", "ProgressFactory", "open_bar"]


class ProgressBar(Protocol):
    """What a run function tells a progress bar."""

    def update(self, n: int = 1) -> object:
        """``n`` more units done."""
        ...

    def set_postfix(self, **values) -> object:
        """Running values shown beside the bar (loss, accuracy)."""
        ...

    def close(self) -> object:
        """The work is over."""
        ...


ProgressFactory = Callable[[int, str, str], "ProgressBar | None"]
"""``progress(total, desc, unit) -> ProgressBar | None``."""


def open_bar(progress: ProgressFactory | bool | None, total: int, desc: str, unit: str) -> ProgressBar | None:
    """The bar ``progress`` makes for ``total`` units, or None.

    ``progress`` True or False (the bool of earlier versions, when run/ drew
    its own bars) draws nothing: run/ never draws.
    """
    if progress is None or isinstance(progress, bool):
        return None
    return progress(int(total), desc, unit)
