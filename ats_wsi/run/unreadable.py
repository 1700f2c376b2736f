"""Slides of a manifest that cannot be trained on, before training or in it.

- :class:`Unreadable`: a manifest row and why its slide cannot be used.
- :class:`UnreadableSlides`: the typed error naming all of them (line, path, reason).
- :func:`write_skipped`: ``skipped.csv``, the rows a run left out.
- :class:`MidRunFailures`: a slide that breaks during an epoch (a tile the
  check before training did not decode) stops the run or is skipped from then on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_csv_atomic
from ..data.manifest import MAX_LISTED, ManifestRow
from ..errors import ManifestError

__all__ = ["Unreadable", "UnreadableSlides", "MidRunFailures", "write_skipped", "reason_of", "SKIPPED_FIELDS"]

_log = logging.getLogger("ats_wsi.train")
SKIPPED_FIELDS = ["line", "path", "split", "label", "reason"]


@dataclass(frozen=True)
class Unreadable:
    """A manifest row whose slide could not be opened, and why."""

    row: ManifestRow
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.row.line, "path": str(self.row.path), "split": self.row.split,
                "label": self.row.class_name or self.row.label, "reason": self.reason}


class UnreadableSlides(ManifestError):
    """Slides of a manifest that cannot be read: all of them, each with its line and reason."""

    def __init__(self, manifest, bad: Sequence[Unreadable], total: int):
        self.manifest, self.bad, self.total = manifest, list(bad), total
        lines = [f"  line {u.row.line}: {u.row.path}: {u.reason}" for u in self.bad[:MAX_LISTED]]
        if len(self.bad) > MAX_LISTED:
            lines.append(f"  ... and {len(self.bad) - MAX_LISTED} more")
        what = "read" if not any("µm/px" in u.reason for u in self.bad) else "read or used"
        super().__init__(f"{manifest}: {len(self.bad)} of {total} slide(s) cannot be {what} "
                         f"(--skip-unreadable trains on the others):\n" + "\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.manifest, self.bad, self.total))


def reason_of(exc: BaseException) -> str:
    """``"ErrorType: reason"`` of a failure, on one line (a typed error's ``reason``, else its text)."""
    text = str(getattr(exc, "reason", None) or exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}"


def write_skipped(out: Path, bad: Sequence[Unreadable]) -> Path:
    """``out/skipped.csv``: line, path, split, label and reason of each skipped row."""
    return write_csv_atomic(Path(out) / "skipped.csv", [u.as_dict() for u in bad], SKIPPED_FIELDS)


class MidRunFailures:
    """Slides that fail while training (a broken tile the check before training did not decode).

    :meth:`record` stops the run naming the slide (:class:`UnreadableSlides`), or
    with ``skip_unreadable`` (one process only: under DDP every process must
    run the same slides) adds it to ``skipped.csv`` and leaves it out of later
    steps and epochs.
    """

    def __init__(self, manifest, out: Path, skipped: Sequence[Unreadable], total: int, *, skip: bool,
                 write: bool = True):
        self.manifest, self.out, self.total, self.skip, self.write = manifest, Path(out), total, skip, write
        self.skipped = list(skipped)
        self.failed: set[str] = set()

    def __contains__(self, row: ManifestRow) -> bool:
        return str(row.path) in self.failed

    def record(self, row: ManifestRow, exc: BaseException, epoch: int) -> None:
        """Skip ``row`` from now on, or raise :class:`UnreadableSlides` naming it."""
        bad = Unreadable(row, f"in epoch {epoch + 1}: {reason_of(exc)}")
        if not self.skip:
            raise UnreadableSlides(self.manifest, [bad], self.total) from None
        self.failed.add(str(row.path))
        self.skipped.append(bad)
        if self.write:
            write_skipped(self.out, self.skipped)
        _log.warning("skipped line %d: %s: %s", row.line, row.path, bad.reason)
