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
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic, write_json_atomic

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
    read from the folder, each such feature counted once).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, memory_bytes: int = 256 * 2**20):
        self.directory = None if directory is None else Path(directory)
        self.memory_bytes = int(memory_bytes)
        self._lru: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._index: dict[str, dict[tuple, str]] = {}  # group -> box -> shard file
        self._specs: set[str] = set()
        self.hits = self.misses = self.disk_hits = 0
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
            write_json_atomic(target, {"digest": spec_digest, "spec": spec})
        self._specs.add(spec_digest)

    def get(self, group: str, boxes: np.ndarray) -> list[np.ndarray | None]:
        """The cached feature of each box of ``boxes`` int ``[n, 4]`` (None where there is none)."""
        out: list[np.ndarray | None] = []
        index = self._disk_index(group)
        for box in map(tuple, np.asarray(boxes, dtype=np.int64).tolist()):
            key = (group, box)
            value = self._lru.get(key)
            if value is None and box in index:
                self._load_shard(group, index[box])
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
        write_bytes_atomic(self.directory / group / name, buf.getvalue())
        index = self._disk_index(group)
        for box in map(tuple, boxes.tolist()):
            index[box] = name

    def take_stats(self) -> dict[str, int]:
        """``{"hits", "misses", "disk_hits"}`` since the last call, and reset them."""
        stats = {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits}
        self.hits = self.misses = self.disk_hits = 0
        return stats

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
                try:
                    with np.load(shard) as data:
                        boxes = data["boxes"]
                except (OSError, ValueError, KeyError):  # a foreign or broken file: ignored, never trusted
                    continue
                for box in map(tuple, boxes.tolist()):
                    index[box] = shard.name
        self._index[group] = index
        return index

    def _load_shard(self, group: str, name: str) -> None:
        try:
            with np.load(self.directory / group / name) as data:
                boxes, features = data["boxes"], data["features"]
        except (OSError, ValueError, KeyError):
            return
        for box, row in zip(map(tuple, boxes.tolist()), features):
            self._remember((group, box), np.array(row, dtype=np.float32))
            self._from_disk.add((group, box))

    def _merge(self, folder: Path, shards: list[Path]) -> list[Path]:
        """Many small shards -> one (written atomically; only the shards read are removed)."""
        boxes, features, read = [], [], []
        for shard in shards:
            try:
                with np.load(shard) as data:
                    boxes.append(data["boxes"])
                    features.append(data["features"])
                read.append(shard)
            except (OSError, ValueError, KeyError):
                continue
        if not read:
            return shards
        buf = io.BytesIO()
        np.savez(buf, boxes=np.concatenate(boxes), features=np.concatenate(features))
        merged = write_bytes_atomic(folder / f"{uuid.uuid4().hex}.npz", buf.getvalue())
        for shard in read:
            shard.unlink(missing_ok=True)
        return [merged] + [s for s in shards if s not in read]
