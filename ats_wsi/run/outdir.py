"""The results folder of a batch run: one run at a time, its own temporaries, done markers
that pair with the files they vouch for, and a full or read-only disk as a typed error.

- **Lock**: a run holds ``OUT/.ats-wsi.lock`` (``fcntl.flock``, exclusive) from
  before it touches anything in ``OUT`` until it ends; the kernel drops it
  when the process dies, even by SIGKILL. A second run on the same folder is
  refused with :class:`~ats_wsi.errors.OutputLockedError`, naming the holder
  (pid, host, run id, start time: written into the lock file while it is
  held, emptied when the run ends). The lock belongs to the driver: dask
  workers write files under it but never take it.
- **Temporaries** carry the run id (:func:`ats_wsi.atomic.owned_by`). Once a
  run holds the lock, every temporary of another owner is stale (its run
  died, or is a killed driver's orphaned task) and is removed; names that only
  look like temporaries (a slide called ``.x.tmp-1.svs``) are never touched.
- **Done markers** (``.done/NAME.json``) are removed before a slide's outputs
  are rewritten and written last, holding the SHA-256 of each output
  (:func:`output_digests`); a marker is trusted only when every output still
  has its digest (:func:`outputs_match`), so a row is never paired with the
  map or overlay of another run.
- **Training runs** (:func:`prepare_run_folder`): a folder that holds a run is
  refused unless the run is resumed or overwritten; a run killed before its
  first ``last.pt`` resumes from its newest ``checkpoints/epoch-NNN.pt``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ..atomic import fault_point, fsync_dir, new_owner, temporary_owner
from ..errors import AtsError, OutputError, OutputLockedError, RunExistsError
from .results import ResultsFolder

__all__ = ["LOCK_NAME", "hold_results_folder", "holding_results_folder", "remove_stale_temporaries",
           "invalidate_marker", "output_digests", "outputs_match", "as_output_error", "RUN_FILES",
           "epoch_checkpoints", "holds_run", "prepare_run_folder"]

LOCK_NAME = ".ats-wsi.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host', '?')}, run {info.get('run', '?')}, "
            f"started {info.get('started', '?')}")


@contextlib.contextmanager
def hold_results_folder(out: str | os.PathLike, run_id: str) -> Iterator[Path]:
    """Create ``out`` and hold its lock for the block; :class:`OutputLockedError` if another run holds it.

    Raises :class:`OutputError` when the folder or the lock file cannot be made
    or written (read-only, immutable, full).
    """
    import fcntl

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os_error(out, exc) from None
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise OutputError.from_os_error(path, exc) from None
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            raise OutputLockedError(out, f"another ats-wsi run ({_holder(path)}) is writing this results "
                                         "folder; wait until it ends, or choose another --out") from None
        except OSError as exc:
            raise OutputError(path, f"cannot lock the results folder ({exc.strerror}); choose a folder "
                                    "on a file system with file locks") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run": run_id,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as exc:
            raise OutputError.from_os_error(out, exc) from None
        yield out
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # an idle folder's lock file is empty (and equal between runs)
        os.close(fd)  # releases the lock


def holding_results_folder(fn):
    """Decorate ``fn(slides, settings, **kw)`` (``settings`` a dataclass with ``out_dir`` and
    ``run_id``): run ``fn`` holding ``settings.out_dir``'s lock, with stale temporaries removed
    first, on a copy of ``settings`` whose ``run_id`` is set (a new one when empty); the
    caller's settings are left as they are."""
    @functools.wraps(fn)
    def run(slides, settings, *args, **kwargs):
        settings = dataclasses.replace(settings, run_id=settings.run_id or new_owner())
        out = Path(os.path.abspath(settings.out_dir))
        with hold_results_folder(out, settings.run_id):
            remove_stale_temporaries(out, settings.run_id)
            return fn(slides, settings, *args, **kwargs)
    return run


def remove_stale_temporaries(out: str | os.PathLike, run_id: str) -> list[str]:
    """Remove temporaries of other owners in ``out`` and its direct subfolders (hold the lock first).

    Only names of the exact form of :mod:`ats_wsi.atomic` temporaries are
    removed. Returns their paths relative to ``out``.
    """
    out = Path(out)
    removed = []
    try:
        folders = [out, *(p for p in out.iterdir()
                          if p.is_dir() and not p.is_symlink() and temporary_owner(p.name) is None)]
        for folder in folders:
            for p in folder.iterdir():
                owner = temporary_owner(p.name)
                if owner is not None and owner != run_id:
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p.relative_to(out).as_posix())
    except OSError as exc:
        raise OutputError.from_os_error(getattr(exc, "filename", None) or out, exc) from None
    return removed


def invalidate_marker(out: str | os.PathLike, name: str) -> None:
    """Remove ``.done/NAME.json`` (durably) before NAME's outputs are rewritten."""
    marker = ResultsFolder(out).marker(name)
    try:
        if marker.exists():
            marker.unlink()
            fsync_dir(marker.parent)
            fault_point("after-unlink", marker)
    except OSError as exc:
        raise OutputError.from_os_error(marker, exc) from None


def _digest(path: Path) -> str | None:
    """SHA-256 of a file, or of a folder's files (relative names and bytes, sorted); None if absent."""
    h = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    else:
        return None
    for rel, p in files:
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(functools.partial(fh.read, 1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def output_digests(out: str | os.PathLike, rels: Sequence[str]) -> dict[str, str]:
    """``{relative path: sha256}`` of a slide's outputs, for its done marker."""
    out = Path(out)
    got = {}
    for rel in rels:
        d = _digest(out / rel)
        if d is None:
            raise OutputError(out / rel, "an output vanished before its done marker was written (another "
                                         "process is writing this results folder)")
        got[rel] = d
    return got


def outputs_match(out: str | os.PathLike, digests: Mapping[str, str] | None) -> bool:
    """True when every output a marker vouches for exists with its digest."""
    if not isinstance(digests, Mapping) or not digests:
        return False
    try:
        return all(_digest(Path(out) / rel) == d for rel, d in digests.items())
    except OSError:
        return False


_OUTPUT_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS}


def as_output_error(exc: BaseException, out: str | os.PathLike) -> OutputError | None:
    """``exc`` as an :class:`OutputError` if it is the results folder that failed, else None.

    A full disk or a read-only file system (whatever file the error names), or
    any other ``OSError`` naming a file under ``out`` (no permission, an
    immutable folder): every later slide would fail the same way.
    """
    if isinstance(exc, OutputError):
        return exc
    if not isinstance(exc, OSError) or isinstance(exc, AtsError):
        return None
    where = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    under = where is not None and os.path.abspath(os.fsdecode(where)).startswith(os.path.abspath(out) + os.sep)
    if exc.errno in _OUTPUT_ERRNOS or under:
        where = Path(os.fsdecode(where)) if where is not None else Path(out)
        for i, part in enumerate(where.parts):  # name the folder written to, not a temporary in it
            if temporary_owner(part) is not None:
                where = Path(*where.parts[:i])
                break
        return OutputError.from_os_error(where, exc)
    return None


# --------------------------------------------------------------------------- training run folders

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.json", "skipped.csv", "cohort.json", "cohort.txt",
             "train.log")
"""What ``ats-wsi train`` writes into a run folder, beside ``checkpoints/epoch-NNN.pt``."""
_EPOCH = re.compile(r"epoch-(\d+)\.pt")


def epoch_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, checkpoints/epoch-NNN.pt)]`` of a run folder, oldest first."""
    folder = Path(out) / "checkpoints"
    found = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else [])
             if (m := _EPOCH.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


def holds_run(out: str | os.PathLike) -> list[str]:
    """The files of a training run in ``out`` (relative names), empty when it holds none."""
    out = Path(out)
    found = [name for name in RUN_FILES[:4] if (out / name).is_file()]
    return found + [p.relative_to(out).as_posix() for _, p in epoch_checkpoints(out)]


def prepare_run_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> list[str]:
    """Make sure a new training run may write ``out``: refuse a folder that holds a run
    (:class:`~ats_wsi.errors.RunExistsError`) unless ``resume`` (kept) or ``overwrite`` (its run files
    are removed: :data:`RUN_FILES` and ``checkpoints/epoch-NNN.pt``; other files stay). Returns what was removed."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    out = Path(out)
    existing = holds_run(out)
    if resume or not existing:
        return []
    if not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise RunExistsError(out, f"holds a training run ({shown}); pass --resume to continue it, --overwrite "
                                  f"to replace it, or choose another --out")
    removed = []
    try:
        for name in RUN_FILES:
            if (out / name).is_file():
                (out / name).unlink()
                removed.append(name)
        for _, path in epoch_checkpoints(out):
            path.unlink()
            removed.append(path.relative_to(out).as_posix())
    except OSError as exc:
        raise OutputError.from_os_error(getattr(exc, "filename", None) or out, exc) from None
    return removed
