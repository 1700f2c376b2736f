"""Slides of a manifest as a torch Dataset: low views, tissue masks, labels, slide refs.

Each item is what the attention network needs (the slide's low view at one
downsample or µm/px, and its tissue mask) plus what the patch reading needs
later: a :class:`SlideRef`, the slide's path and backend. No open slide is
ever part of an item or of the dataset's pickled state, so the dataset works
with ``DataLoader(num_workers > 0)`` under fork and spawn alike: each worker
process opens the slides it reads itself, lazily, and keeps a few open.

    dataset = SlideDataset("slides.csv", low_downsample=32)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_slides)
    for batch in loader:
        slides = [ref.open() for ref in batch["slide"]]   # in the training process
        source = SlideSource(slides, level=0, low_downsample=batch["downsample"].tolist())
        ...
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ManifestError
from .lowview import read_low_view
from .manifest import ManifestRow, read_manifest

__all__ = ["SlideDataset", "SlideRef", "collate_slides"]


@dataclass(frozen=True)
class SlideRef:
    """A slide by path and backend: picklable, cheap, opened where it is used.

    Attributes:
        path: the slide file (absolute).
        backend: ``"auto"`` or the backend the dataset read it with.
    """

    path: str
    backend: str = "auto"

    def open(self):
        """A new open :class:`ats_wsi.slide.Slide` (the caller closes it)."""
        from ..slide import open_slide

        return open_slide(self.path, backend=self.backend)


class SlideDataset(torch.utils.data.Dataset):
    """The slides of a ``path,label[,split]`` manifest, seen at low resolution.

    Args:
        manifest: the CSV (see :func:`ats_wsi.data.manifest.read_manifest`);
            relative slide paths are resolved against its folder.
        low_downsample: level-0 pixels per low-view pixel, or
        low_mpp: µm per low-view pixel (needs each slide's mpp).
        split: keep only the rows of this split (None: all rows).
        backend: slide backend (``"auto"``, ``"tifffile"``, ``"openslide"``, ``"zarr"``).
        max_open: slides each process keeps open (least recently used closed first).

    The low view comes from the level nearest the wanted downsample, area-
    resampled to exactly that downsample when the nearest level is off by more
    than 1 % (:func:`ats_wsi.data.lowview.read_low_view`).

    Item ``i`` is a dict:

    - ``"low"``: uint8 ``[3, h, w]``, the low view;
    - ``"mask"``: bool ``[h, w]``, its tissue mask (Otsu on HSV saturation);
    - ``"label"``: int;
    - ``"path"``: str, the slide's absolute path; ``"backend"``: str;
    - ``"slide"``: :class:`SlideRef` (open it where patches are read);
    - ``"downsample"``: float, level-0 pixels per low pixel of this view;
    - ``"level"``: int, the pyramid level the view was read (or resampled) from.

    Raises:
        ManifestError: missing file or columns, bad rows, slides that do not exist.
        TypeError: not exactly one of ``low_downsample`` and ``low_mpp``.
    """

    def __init__(self, manifest: str | os.PathLike, low_downsample: float | None = None,
                 low_mpp: float | None = None, *, split: str | None = None, backend: str = "auto",
                 max_open: int = 4):
        if (low_downsample is None) == (low_mpp is None):
            raise TypeError("SlideDataset takes exactly one of low_downsample= or low_mpp=")
        for name, value in (("low_downsample", low_downsample), ("low_mpp", low_mpp)):
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.manifest = Path(manifest)
        self.rows: list[ManifestRow] = read_manifest(self.manifest, split)
        missing = [str(r.path) for r in self.rows if not r.path.exists()]
        if missing:
            raise ManifestError(f"{self.manifest}: {len(missing)} slide(s) do not exist, e.g. {missing[0]}")
        self.low_downsample = None if low_downsample is None else float(low_downsample)
        self.low_mpp = None if low_mpp is None else float(low_mpp)
        self.backend = backend
        self.max_open = max(1, int(max_open))
        self._open: OrderedDict[str, object] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        """The label of every row, in order."""
        return [r.label for r in self.rows]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        slide = self._slide(str(row.path))
        if self.low_mpp is not None:
            view = read_low_view(slide, mpp=self.low_mpp)
        else:
            view = read_low_view(slide, downsample=self.low_downsample)
        low = torch.from_numpy(np.ascontiguousarray(view.image.transpose(2, 0, 1)))  # a writable copy
        return {
            "low": low,
            "mask": torch.from_numpy(np.array(view.mask, dtype=bool)),
            "label": int(row.label),
            "path": str(row.path),
            "backend": slide.backend,
            "slide": SlideRef(str(row.path), slide.backend),
            "downsample": float(view.downsample),
            "level": int(view.level),
        }

    def close(self) -> None:
        """Close the slides this process opened."""
        while self._open:
            self._open.popitem(last=False)[1].close()

    # the open slides stay behind: every process opens its own
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _slide(self, path: str):
        from ..slide import open_slide

        if self._pid != os.getpid():  # a forked worker inherited the parent's slides: never use them
            self._open = OrderedDict()
            self._pid = os.getpid()
        slide = self._open.get(path)
        if slide is None:
            slide = open_slide(path, backend=self.backend)
            self._open[path] = slide
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(path)
        return slide


def collate_slides(batch: list[dict]) -> dict:
    """Stack :class:`SlideDataset` items whose low views differ in size.

    Low views are padded at the bottom and right to the batch's largest
    ``(h, w)`` with :data:`ats_wsi.slide.FILL_VALUE`; the mask is False on the
    padding, so no cell there is ever sampled.

    Returns:
        dict with ``"low"`` uint8 ``[B, 3, H, W]``, ``"mask"`` bool ``[B, H, W]``,
        ``"shape"`` long ``[B, 2]`` (each view's own ``(h, w)``), ``"label"``
        long ``[B]``, ``"downsample"`` float64 ``[B]``, ``"level"`` long ``[B]``,
        and lists ``"path"``, ``"backend"``, ``"slide"`` (SlideRefs).
    """
    from ..slide import FILL_VALUE

    if not batch:
        raise ValueError("collate_slides needs at least one item")
    shapes = torch.tensor([tuple(item["low"].shape[-2:]) for item in batch], dtype=torch.long)
    height, width = (int(v) for v in shapes.max(dim=0).values)
    low = torch.full((len(batch), 3, height, width), FILL_VALUE, dtype=torch.uint8)
    mask = torch.zeros((len(batch), height, width), dtype=torch.bool)
    for b, item in enumerate(batch):
        h, w = item["low"].shape[-2:]
        low[b, :, :h, :w] = item["low"]
        mask[b, :h, :w] = item["mask"]
    return {
        "low": low,
        "mask": mask,
        "shape": shapes,
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "downsample": torch.tensor([item["downsample"] for item in batch], dtype=torch.float64),
        "level": torch.tensor([item["level"] for item in batch], dtype=torch.long),
        "path": [item["path"] for item in batch],
        "backend": [item["backend"] for item in batch],
        "slide": [item["slide"] for item in batch],
    }
