"""Atomic writes: a result appears under its final name complete, or not at all.

Every writer here writes under a temporary name in the destination folder,
makes it durable (``fsync`` of the file, or of every file and folder of a
directory such as a zarr store), renames it into place (``os.replace``,
atomic on one file system) and then makes the rename durable (``fsync`` of
the folder). If writing fails, the temporary is removed and whatever was under
the final name before is left untouched; an interrupted process leaves at most
a temporary, whose name has one exact form::

    .ats.tmp-OWNER-TOKEN        (a file or folder being written)
    .ats.old-OWNER-TOKEN        (a folder moved aside to be replaced)

``OWNER`` is 12 hex digits: the run that wrote it (:func:`owned_by`, e.g. a
``predict`` run id) or, outside a run, this process's id; ``TOKEN`` is 8
random hex digits. The name holds nothing of the final name, so a long final
name never makes the temporary's too long, and no final name carries a
suffix-less ``.ats.`` form: :func:`is_temporary` matches temporaries only,
never a result (a slide named ``.x.tmp-1.svs`` is not one).

CSV cells are written spreadsheet-safe (:func:`spreadsheet_safe`).

Test-only: the environment variable ``ATS_WSI_FAULT_AT=POINT:GLOB`` kills this
process with SIGKILL at the first rename point ``POINT`` (``before-rename``,
``after-aside``, ``after-rename``; ``after-unlink`` from callers that use
:func:`fault_point`) whose final path matches ``GLOB`` (matched against
``folder/name`` and against ``name``); with ``ATS_WSI_FAULT_SIGNAL=STOP`` it
stops there (SIGSTOP, holding what it holds) until sent SIGCONT. The CLI fault
tests use them to stop a real run at each rename point; nothing else may set them.

This is the lowest floor of the package: it imports only the standard library.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import errno
import fnmatch
import json
import os
import re
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "json_safe",
    "atomic_path",
    "fault_point",
    "fsync_dir",
    "is_temporary",
    "new_owner",
    "owned_by",
    "spreadsheet_safe",
    "temporary_owner",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMPORARY = re.compile(r"\.ats\.(?:tmp|old)-([0-9a-f]{12})-[0-9a-f]{8}")
_OWNER = re.compile(r"[0-9a-f]{12}")
_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("ats_wsi_temporary_owner", default=None)


def new_owner() -> str:
    """A fresh owner id (12 hex digits) for :func:`owned_by`."""
    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def owned_by(owner: str) -> Iterator[str]:
    """Temporaries made in this block (this thread / task) carry ``owner`` in their name."""
    if not _OWNER.fullmatch(owner or ""):
        raise ValueError(f"an owner is 12 lowercase hex digits, got {owner!r}")
    token = _owner.set(owner)
    try:
        yield owner
    finally:
        _owner.reset(token)


def is_temporary(name: str) -> bool:
    """True for the exact name of a temporary of this module (see the module's doc)."""
    return TEMPORARY.fullmatch(name) is not None


def temporary_owner(name: str) -> str | None:
    """The owner id in a temporary's name, or None if ``name`` is not one."""
    m = TEMPORARY.fullmatch(name)
    return m.group(1) if m else None


def _temp_name(kind: str) -> str:
    owner = _owner.get() or f"{os.getpid():012x}"[-12:]
    return f".ats.{kind}-{owner}-{uuid.uuid4().hex[:8]}"


def fault_point(point: str, path: str | os.PathLike) -> None:
    """Test-only fault hook (``ATS_WSI_FAULT_AT``, see the module's doc): SIGKILL here if asked."""
    spec = os.environ.get("ATS_WSI_FAULT_AT")
    if not spec or ":" not in spec:
        return
    want, pattern = spec.split(":", 1)
    p = Path(path)
    if want == point and (fnmatch.fnmatchcase(f"{p.parent.name}/{p.name}", pattern)
                          or fnmatch.fnmatchcase(p.name, pattern)):
        stop = os.environ.get("ATS_WSI_FAULT_SIGNAL") == "STOP"
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)


def _fsync_fd_of(path: str | os.PathLike, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder; the data is still safe
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EACCES):
            raise
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` durable (renames, unlinks in it)."""
    _fsync_fd_of(path, directory=True)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (a zarr store)."""
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            for f in files:
                _fsync_fd_of(os.path.join(root, f), directory=False)
            fsync_dir(root)
    elif path.exists():
        _fsync_fd_of(path, directory=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success make it durable and move it onto ``path``.

    Works for files and folders (a zarr store). The parent folder is created.
    The temporary's name is ``.ats.tmp-OWNER-TOKEN`` (see the module's doc).
    Before the rename the content is fsynced (each file of a folder too), after
    it the parent folder. If the body raises, the temporary is removed and
    ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / _temp_name("tmp")
    try:
        yield tmp
        _fsync_tree(tmp)
        fault_point("before-rename", final)
        if tmp.is_dir():
            # A folder cannot replace a non-empty folder in one rename: move the
            # old one aside first, then drop it once the new one is in place.
            old = None
            if final.exists():
                old = final.parent / _temp_name("old")
                os.replace(final, old)
                fault_point("after-aside", final)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            if old is not None:
                _remove(old)
        else:
            os.replace(tmp, final)
            fsync_dir(final.parent)
        fault_point("after-rename", final)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)", re.IGNORECASE)


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    A text cell starting with ``= + - @``, a tab or a carriage return gets a
    leading single quote (the OWASP rule against CSV injection), unless it is a
    plain number (``-0.5``, ``1e-3``, ``-inf``). Other values are returned as
    they are. A program reading the CSV back gets the quote too: strip one
    leading ``'`` from a cell whose next character is one of those.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv_atomic(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]
) -> Path:
    """Write dict rows as a CSV with a header, atomically (keys not in ``fieldnames`` are ignored).

    Cells are written :func:`spreadsheet_safe` (every CSV of the package is
    written here), so a slide named ``=HYPERLINK(...)`` is text in a spreadsheet.
    """
    fieldnames = list(fieldnames)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: spreadsheet_safe(v) for k, v in row.items() if k in fieldnames})
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (keys sorted, trailing newline), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def json_safe(obj):
    """``obj`` with every NaN float as None (JSON has no NaN: an AUC of one class, a C-index of no pair)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
