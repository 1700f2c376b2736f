"""Feature cache: a frozen encoder's embedding of each patch box, computed once.

With a frozen encoder every attention cell maps to a fixed box of a fixed
slide, so its feature never changes: later epochs, ``--samples K`` and later
runs need to compute features only for boxes never drawn before.

The key of one feature is (encoder spec digest, slide fingerprint, patch
geometry, box):

- the spec digest (:meth:`EncoderSpec.digest`) covers the architecture, the
  weights' sha256, resolution, sizes, mean/std, dtype and pooling: another
  encoder or contract never meets these features;
- the slide fingerprint (:func:`slide_fingerprint`) hashes the file's size,
  its first and last MiB and 16 blocks of 64 KiB spread between them: about
  3 MiB read per slide whatever its size, unchanged by a copy to another
  disk or folder (no path, no mtime in it), changed by any rewrite that
  moves the TIFF directory, the header or the size. A rewrite that keeps
  all of these and alters only tile bytes between the sampled blocks would
  go unseen: clear the cache after editing slides in place;
- the geometry: patch size, the µm/px asked for (or level) and how the
  reader serves it (level decoded, downsample);
- the box: ``(x0, y0, w0, h0)`` in level-0 pixels (what the cell reads),
  so two configs that read the same box share its feature.

Memory: a bounded LRU (``memory_bytes``). Disk (optional): one folder per
(spec, slide, geometry) under ``DIR/<spec>/``, holding ``.npz`` shards
(``boxes`` int64 ``[m, 4]``, ``features`` float32 ``[m, D]``), each
written atomically (:mod:`ats_wsi.atomic`), so a killed run never leaves a
half shard; several processes may share a folder (each writes its own
shards). ``DIR/<spec>/spec.json`` records the spec the features belong to.
Features are stored as computed: a cached feature is bitwise the one the
encoder gave when its box was first drawn (device and batch may change the
last bits of a recompute).

A shard that cannot be trusted is a miss, never an error and never a wait:
anything but a regular file (a FIFO named ``*.npz`` is never opened: its
mode is checked with ``lstat`` before, and ``fstat`` after, a non-blocking
open), a file numpy cannot read (empty, truncated, byte-flipped), arrays of
another shape, dtype or width than the encoder's ``D``, or NaN/inf
features. Its boxes are encoded again and written to a new shard; a broken
regular file is removed, and ``broken`` counts every such shard. A folder
that cannot be written (a full disk, read-only) is an
:class:`~ats_wsi.errors.OutputError` naming the cache folder.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_json_atomic
from ..errors import OutputError

__all__ = ["FeatureCache", "slide_fingerprint", "geometry_digest"]

_BLOCK = 1 << 20
_SAMPLE = 1 << 16
_SAMPLES = 16
_FINGERPRINTS: dict[tuple, str] = {}
MERGE_SHARDS = 32


def slide_fingerprint(path: str | os.PathLike) -> str:
    """A content hash of a slide file from about 3 MiB of it (see the module docstring).

    Remembered per (path, size, mtime) in this process.
    """
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo in _FINGERPRINTS:
        return _FINGERPRINTS[memo]
    size = st.st_size
    h = hashlib.blake2b(digest_size=20)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_BLOCK))
        if size > 2 * _BLOCK:
            span = size - 2 * _BLOCK - _SAMPLE
            for k in range(_SAMPLES):
                fh.seek(_BLOCK + span * k // max(_SAMPLES - 1, 1))
                h.update(fh.read(_SAMPLE))
        fh.seek(max(size - _BLOCK, 0))
        h.update(fh.read(_BLOCK))
    _FINGERPRINTS[memo] = h.hexdigest()
    return _FINGERPRINTS[memo]


def geometry_digest(**geometry) -> str:
    """A short hash of the patch geometry (plain values)."""
    return hashlib.sha256(json.dumps(geometry, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureCache:
    """Encoder features per box: a bounded in-memory LRU over an optional on-disk store.

    Args:
        directory: where features are kept across runs (``None``: memory only).
        memory_bytes: bound of the in-memory LRU.

    ``hits`` / ``misses`` count boxes looked up since the last
    :meth:`take_stats` (``disk_hits``: hits served by a feature this process
    read from the folder, each such feature counted once; ``broken``: shards
    that could not be trusted, see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, memory_bytes: int = 256 * 2**20):
        self.directory = None if directory is None else Path(directory)
        self.memory_bytes = int(memory_bytes)
        self._lru: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._index: dict[str, dict[tuple, str]] = {}  # group -> box -> shard file
        self._specs: set[str] = set()
        self.hits = self.misses = self.disk_hits = self.broken = 0
        self._from_disk: set[tuple] = set()  # keys read from the folder and not served yet

    def __repr__(self) -> str:
        return (f"FeatureCache(directory={self.directory}, memory={self._bytes}/{self.memory_bytes} bytes, "
                f"{len(self._lru)} features)")

    @staticmethod
    def group(spec_digest: str, slide: str, geometry: str) -> str:
        """The name of one (spec, slide, geometry) group: ``<spec>/<slide>-<geometry>``."""
        return f"{spec_digest[:16]}/{slide[:20]}-{geometry[:16]}"

    def record_spec(self, spec_digest: str, spec: dict) -> None:
        """Write ``DIR/<spec>/spec.json`` once: the spec these features belong to."""
        if self.directory is None or spec_digest in self._specs:
            return
        target = self.directory / spec_digest[:16] / "spec.json"
        if not target.is_file():
            try:
                write_json_atomic(target, {"digest": spec_digest, "spec": spec})
            except OSError as exc:
                raise self._write_error(exc) from None
        self._specs.add(spec_digest)

    def get(self, group: str, boxes: np.ndarray, dim: int | None = None) -> list[np.ndarray | None]:
        """The cached feature of each box of ``boxes`` int ``[n, 4]`` (None where there is none).

        ``dim``: the encoder's D; a shard of another width is not trusted (a miss).
        """
        out: list[np.ndarray | None] = []
        index = self._disk_index(group)
        for box in map(tuple, np.asarray(boxes, dtype=np.int64).tolist()):
            key = (group, box)
            value = self._lru.get(key)
            if value is None and box in index:
                self._load_shard(group, index[box], dim)
                value = self._lru.get(key)
            if value is None:
                self.misses += 1
            else:
                self._lru.move_to_end(key)
                self.hits += 1
                if key in self._from_disk:
                    self._from_disk.discard(key)
                    self.disk_hits += 1
            out.append(value)
        return out

    def holds(self, group: str, boxes: np.ndarray) -> list[bool]:
        """Whether each box of ``boxes`` int ``[n, 4]`` is held, in memory or in a folder index already
        read: no count, no read, no reordering (one dict lookup a box, safe in a thread beside the
        one that gets and puts). An answer may be out of date by the time :meth:`get` is asked."""
        index = self._index.get(group) or {}
        return [(group, box) in self._lru or box in index
                for box in map(tuple, np.asarray(boxes, dtype=np.int64).reshape(-1, 4).tolist())]

    def put(self, group: str, boxes: np.ndarray, features: np.ndarray) -> None:
        """Keep ``features`` float32 ``[m, D]`` of ``boxes`` ``[m, 4]`` (in memory, and on disk if any)."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        features = np.ascontiguousarray(features, dtype=np.float32)
        if len(boxes) == 0:
            return
        for box, row in zip(map(tuple, boxes.tolist()), features):
            self._remember((group, box), row.copy())
        if self.directory is None:
            return
        name = f"{uuid.uuid4().hex}.npz"
        buf = io.BytesIO()
        np.savez(buf, boxes=boxes, features=features)
        try:
            write_bytes_atomic(self.directory / group / name, buf.getvalue())
        except OSError as exc:
            raise self._write_error(exc) from None
        index = self._disk_index(group)
        for box in map(tuple, boxes.tolist()):
            index[box] = name

    def take_stats(self) -> dict[str, int]:
        """``{"hits", "misses", "disk_hits", "broken"}`` since the last call, and reset them."""
        stats = {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits, "broken": self.broken}
        self.hits = self.misses = self.disk_hits = self.broken = 0
        return stats

    def _write_error(self, exc: OSError) -> OutputError:
        """A write into the cache folder failed: say so, naming the folder (not ``--out``)."""
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            what = "no space left on the device (or the disk quota is used up)"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            what = f"cannot write ({exc.strerror or 'permission denied'})"
        else:
            what = f"cannot write ({exc.strerror or type(exc).__name__})"
        return OutputError(self.directory, f"feature cache folder: {what}; free space there, or give "
                                           f"--feature-cache another folder (or leave it out)")

    # -- inside ------------------------------------------------------------

    def _remember(self, key: tuple, value: np.ndarray) -> None:
        old = self._lru.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._lru[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.memory_bytes and len(self._lru) > 1:
            _, dropped = self._lru.popitem(last=False)
            self._bytes -= dropped.nbytes

    def _disk_index(self, group: str) -> dict[tuple, str]:
        index = self._index.get(group)
        if index is not None:
            return index
        index = {}
        folder = None if self.directory is None else self.directory / group
        if folder is not None and folder.is_dir():
            shards = sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))
            if len(shards) > MERGE_SHARDS:
                shards = self._merge(folder, shards)
            for shard in shards:
                boxes = self._read(shard, "boxes")
                for box in map(tuple, boxes.tolist()):
                    index[box] = shard.name
        self._index[group] = index
        return index

    def _load_shard(self, group: str, name: str, dim: int | None = None) -> None:
        shard = self.directory / group / name
        read = self._read(shard, "boxes", "features", dim=dim)
        if not len(read[0]):  # not to be trusted: its boxes are misses from now on
            index = self._index.get(group, {})
            for box in [b for b, n in index.items() if n == name]:
                del index[box]
            return
        boxes, features = read
        for box, row in zip(map(tuple, boxes.tolist()), features):
            self._remember((group, box), np.array(row, dtype=np.float32))
            self._from_disk.add((group, box))

    def _read(self, shard: Path, *keys: str, dim: int | None = None):
        """The arrays ``keys`` of a shard, checked; empty arrays when it cannot be trusted.

        Returns ``boxes`` int64 ``[m, 4]`` for one key, ``(boxes, features
        float32 [m, D])`` for two. A shard that is not a regular file is
        never opened; a broken regular one is removed and counted.
        """
        empty = (np.zeros((0, 4), np.int64), np.zeros((0, dim or 0), np.float32))
        untrusted = empty if len(keys) > 1 else empty[0]
        try:
            if not stat.S_ISREG(os.lstat(shard).st_mode):  # a FIFO, device, link, folder: never opened
                self.broken += 1
                return untrusted
            fd = os.open(shard, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone (merged by another process) or unreadable: a miss
            return untrusted
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped for another kind meanwhile
                    self.broken += 1
                    return untrusted
                with np.load(fh, allow_pickle=False) as data:
                    arrays = _checked([np.asarray(data[k]) for k in keys], dim)
        except Exception:  # noqa: BLE001 - zipfile, numpy and the OS raise many types for a bad file
            arrays = None
        if arrays is None:  # a regular file of ours that is broken: recomputed and written anew
            self.broken += 1
            try:
                shard.unlink()
            except OSError:
                pass
            return untrusted
        return arrays[0] if len(keys) == 1 else tuple(arrays)

    def _merge(self, folder: Path, shards: list[Path]) -> list[Path]:
        """Many small shards -> one (written atomically; only the shards read are removed)."""
        boxes, features, read = [], [], []
        for shard in shards:
            b, f = self._read(shard, "boxes", "features")
            if len(b):
                boxes.append(b)
                features.append(f)
                read.append(shard)
        widths = {f.shape[1] for f in features}
        if len(widths) > 1:  # shards of two widths in one group: leave them to the readers' checks
            return shards
        if not read:
            return shards
        buf = io.BytesIO()
        np.savez(buf, boxes=np.concatenate(boxes), features=np.concatenate(features))
        try:
            merged = write_bytes_atomic(folder / f"{uuid.uuid4().hex}.npz", buf.getvalue())
        except OSError as exc:
            raise self._write_error(exc) from None
        for shard in read:
            shard.unlink(missing_ok=True)
        return [merged] + [s for s in shards if s not in read]


def _checked(arrays: list[np.ndarray], dim: int | None) -> list[np.ndarray] | None:
    """``[boxes]`` or ``[boxes, features]`` as int64 ``[m, 4]`` / float32 ``[m, D]``, or None
    when they are not that (other shapes, dtypes, width ``!= dim``, NaN/inf features)."""
    boxes = arrays[0]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "iu":
        return None
    out = [boxes.astype(np.int64, copy=False)]
    if len(arrays) > 1:
        features = arrays[1]
        if (features.ndim != 2 or len(features) != len(boxes) or features.dtype.kind != "f"
                or (dim is not None and features.shape[1] != dim) or not np.isfinite(features).all()):
            return None
        out.append(features.astype(np.float32, copy=False))
    return out
