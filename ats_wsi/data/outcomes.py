"""The outcome columns of a manifest for survival and regression, and fold numbers.

Survival needs a follow-up time and an event indicator per slide, regression a
numeric target. Their columns are found by name (without regard to case,
spaces or dashes), the first present wins, unless named with
``time_column=`` / ``event_column=`` / ``target_column=`` (``--time-column``,
``--event-column``, ``--target-column``):

======  ===================================================================
role    accepted headers
======  ===================================================================
time    ``time``, ``OS.time``, ``OS_time``, ``survival_months``, ``survival_time``,
        ``OS_months``, ``OS_days``, ``PFS.time``, ``DSS.time``, ``months``, ``days``
event   ``event``, ``OS``, ``status``, ``OS_status``, ``vital_status``, ``PFS``, ``DSS``,
        ``dead``, ``death``; ``censorship`` and ``censored`` (CLAM's) are read inverted
target  ``target``, ``value``, ``score``, ``y``, then the label column's
======  ===================================================================

Times are numbers >= 0 (the unit is the manifest's: months or days). Events
are ``1`` (the event was observed: death, progression) or ``0`` (censored),
also written ``1.0``, ``true``/``false``, ``dead``/``alive``,
``deceased``/``living`` or cBioPortal's ``1:DECEASED``/``0:LIVING``. Every bad
cell is one line ``FILE:LINE: what is wrong`` of one
:class:`~ats_wsi.errors.ManifestError`, as for labels.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import ManifestError

__all__ = ["OutcomeColumns", "outcome_columns", "read_outcome", "fold_number",
           "TIME_COLUMNS", "EVENT_COLUMNS", "INVERTED_EVENT_COLUMNS", "TARGET_COLUMNS"]

TIME_COLUMNS = ("time", "os.time", "os_time", "survival_months", "survival_time", "os_months", "os_days",
                "pfs.time", "pfs_time", "dss.time", "dss_time", "months", "days")
EVENT_COLUMNS = ("event", "os", "status", "os_status", "vital_status", "pfs", "dss", "dead", "death")
INVERTED_EVENT_COLUMNS = ("censorship", "censored")
TARGET_COLUMNS = ("target", "value", "score", "y")
_EVENT_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "dead": 1, "alive": 0, "deceased": 1,
                "living": 0, "died": 1, "event": 1, "censored": 0}


def _key(name: str) -> str:
    return (name or "").strip().lower().replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class OutcomeColumns:
    """The file's headers of the outcome columns of one task (None: not used)."""

    task: str
    time: str | None = None
    event: str | None = None
    event_inverted: bool = False
    """The event column is a censoring indicator (``censorship``: 1 = censored)."""
    target: str | None = None


def _find(present: dict[str, str], given: str | None, aliases: Sequence[str]) -> str | None:
    if given is not None:
        return present.get(_key(given))
    return next((present[a] for a in aliases if a in present), None)


def outcome_columns(path, fieldnames: Sequence[str] | None, task: str, *, time_column: str | None = None,
                    event_column: str | None = None, target_column: str | None = None,
                    label_header: str | None = None, required: bool = True) -> OutcomeColumns:
    """The outcome columns ``task`` needs in a manifest with these headers (``required=False``, a
    prediction manifest: those missing are None, and its slides have no outcome).

    Raises:
        ManifestError: a needed column is missing (the message lists the names
            looked for, the file's headers and the flag that names it).
    """
    if task == "classification":
        return OutcomeColumns(task)
    present: dict[str, str] = {}
    for name in fieldnames or []:
        present.setdefault(_key(name), name)
    found = list(fieldnames or [])
    if task == "regression":
        target = _find(present, target_column, TARGET_COLUMNS) or (label_header if target_column is None else None)
        if target is None and required:
            wanted = repr(target_column) if target_column else "/".join(TARGET_COLUMNS + ("label",))
            raise ManifestError(f"{path}: no target column ({wanted}) for --task regression; found {found}; "
                                f"name it with --target-column")
        return OutcomeColumns(task, target=target)
    if task != "survival":
        raise ValueError(f"task must be classification, survival or regression, got {task!r}")
    time = _find(present, time_column, TIME_COLUMNS)
    event = _find(present, event_column, EVENT_COLUMNS)
    inverted = False
    if event is None and event_column is None:
        event = _find(present, None, INVERTED_EVENT_COLUMNS)
        inverted = event is not None
    elif event_column is not None and _key(event_column) in INVERTED_EVENT_COLUMNS:
        inverted = True
    missing = []
    if time is None:
        missing.append(f"a time column ({repr(time_column) if time_column else '/'.join(TIME_COLUMNS)}; "
                       f"--time-column)")
    if event is None:
        names = repr(event_column) if event_column else "/".join(EVENT_COLUMNS + INVERTED_EVENT_COLUMNS)
        missing.append(f"an event column ({names}; --event-column)")
    if missing and (required or (time is None) != (event is None)):
        raise ManifestError(f"{path}: --task survival needs {' and '.join(missing)}; found {found}")
    return OutcomeColumns(task, time=time, event=event, event_inverted=inverted)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _event(text: str) -> int | None:
    word = text.strip().lower()
    if ":" in word:  # cBioPortal: "1:DECEASED"
        word = word.split(":", 1)[0].strip()
    if word in _EVENT_WORDS:
        return _EVENT_WORDS[word]
    value = _number(word)
    return int(value) if value in (0.0, 1.0) else None


def read_outcome(cols: OutcomeColumns, record: dict, where: str, required: bool = True
                 ) -> tuple[float | None, int | None, float | None, list[str]]:
    """``(time, event, target, problems)`` of one manifest record; ``where`` is ``FILE:LINE``.
    ``required=False`` (prediction): empty cells are None, not problems."""
    def cell(header):
        value = record.get(header) if header is not None else None
        return value.strip() if isinstance(value, str) else ""

    problems: list[str] = []
    time = event = target = None
    if cols.task == "survival":
        text = cell(cols.time)
        time = _number(text) if text else None
        if not text and required:
            problems.append(f"{where}: empty time ({cols.time}): every slide needs a follow-up time")
        elif text and (time is None or time < 0):
            problems.append(f"{where}: time {text[:50]!r} ({cols.time}) is not a number >= 0 of months or days")
            time = None
        text = cell(cols.event)
        event = _event(text) if text else None
        if not text and required:
            problems.append(f"{where}: empty event ({cols.event}): write 1 (event observed) or 0 (censored)")
        elif text and event is None:
            problems.append(f"{where}: event {text[:50]!r} ({cols.event}) is not 1 (event observed) or 0 (censored)")
        elif event is not None and cols.event_inverted:
            event = 1 - event
    elif cols.task == "regression":
        text = cell(cols.target)
        target = _number(text) if text else None
        if not text and required:
            problems.append(f"{where}: empty target ({cols.target}): every training slide needs a value")
        elif text and target is None:
            problems.append(f"{where}: target {text[:50]!r} ({cols.target}) is not a finite number")
    return time, event, target, problems


_FOLD = re.compile(r"^\d{1,6}$")


def fold_number(cell: str) -> int | None:
    """The fold a split cell names (``"0"``, ``"3"``: CLAM-style fold columns), or None for a split name."""
    text = (cell or "").strip()
    return int(text) if _FOLD.match(text) else None
