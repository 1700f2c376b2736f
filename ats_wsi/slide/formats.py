"""Which names are slides: the one list of slide suffixes, and finding slides.

The CLI, the napari plugin (``napari.yaml`` lists the same patterns, a test
checks it) and ``open_slide``'s error messages all use :data:`SLIDE_SUFFIXES`.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SLIDE_SUFFIXES", "find_slides", "is_slide_path"]

SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".btf", ".qptiff",  # TIFF: tifffile (or openslide)
    ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm",  # openslide's vendors
    ".zarr",  # OME-Zarr / zarr-group directories
)
"""Suffixes (lower case, with the dot) of the slides the backends open:
TIFF, BigTIFF, SVS, OME-TIFF and QPTIFF; what openslide reads (Hamamatsu
NDPI/VMS/VMU, Leica SCN, MIRAX, Ventana BIF, Sakura SVSLIDE, DICOM); zarr
directories."""


def is_slide_path(path: str | os.PathLike) -> bool:
    """True if ``path``'s suffix (any case) is one of :data:`SLIDE_SUFFIXES`.

    Only the name is looked at: whether it exists, or is a file or a folder,
    is for whoever opens it.
    """
    return Path(path).suffix.lower() in SLIDE_SUFFIXES


def find_slides(items: list[str]) -> list[Path]:
    """Files, folders (their slides, sorted) and glob patterns -> slide paths.

    Args:
        items: paths as a user gives them: a file (kept as given, whatever
            its suffix), a folder that is not ``*.zarr`` (its entries named
            like slides, :func:`is_slide_path`, sorted, dot-files skipped;
            not recursive), a ``*.zarr`` folder (kept: it is one slide), or
            a glob pattern (``*``, ``?`` or ``[``; ``**`` recurses), whose
            matches are kept sorted.

    Returns:
        the paths in the order given, each once. A path that does not
        exist is kept, so that it is reported as an error by whoever opens
        it instead of silently vanishing.
    """
    import glob

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(item, recursive=True)))
        elif path.is_dir() and path.suffix.lower() != ".zarr":
            out.extend(sorted(p for p in path.iterdir() if is_slide_path(p) and not p.name.startswith(".")))
        else:
            out.append(path)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]
