"""What openslide derives from a TIFF besides its levels: ``openslide.quickhash-1``,
the ICC profile, and Aperio's associated images (thumbnail, label, macro).

Each follows openslide's own source (``openslide-decode-tifflike.c``,
``openslide-vendor-aperio.c``, ``openslide-vendor-generic-tiff.c``):

- quickhash-1 is the SHA-256 of the raw (compressed) bytes of every tile or
  strip of the smallest level, then, for each of nine string tags of the
  first directory, its property name and its value (each with its C string
  terminator; an absent tag hashes as the empty string). When the smallest
  level holds more than 5 MiB openslide gives no hash at all, and neither
  do we.
- the ICC profile is tag 34675 (InterColorProfile) of level 0.
- Aperio associated images are the untiled directories: the second one is
  the thumbnail, others are the label (NewSubfileType 1) and the macro (9).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np


QUICKHASH_MAX_BYTES = 5 << 20
"""openslide hashes the smallest level only when its tiles hold at most this many bytes."""

HASHED_TAGS = (
    ("tiff.ImageDescription", 270), ("tiff.Make", 271), ("tiff.Model", 272), ("tiff.Software", 305),
    ("tiff.DateTime", 306), ("tiff.Artist", 315), ("tiff.HostComputer", 316), ("tiff.Copyright", 33432),
    ("tiff.DocumentName", 269),
)
"""The string tags openslide hashes, in its order, with the property names it hashes with them."""

ICC_TAG = 34675


def _page(tif, index: int):
    page = tif.pages[index]
    return page if hasattr(page, "tags") and hasattr(page, "is_tiled") else page.aspage()


def _pages(tif) -> list:
    """The directories of the main IFD chain (not SubIFDs), as openslide walks them."""
    return [_page(tif, i) for i in range(len(tif.pages))]


def aperio_levels(tif) -> list:
    """The pages openslide reads as an Aperio slide's levels: every tiled page of the main chain."""
    return [p for p in _pages(tif) if p.is_tiled]


def _raw_string(fh, tag) -> bytes:
    """A string tag's bytes as C sees them: up to the first NUL."""
    fh.seek(tag.valueoffset)
    return fh.read(tag.count).split(b"\0", 1)[0]


def openslide_smallest_level(tif, vendor: str):
    """The page openslide hashes: the narrowest tiled level (generic TIFF: page 0
    or a reduced-resolution page; Aperio: any tiled page), else page 0."""
    pages = _pages(tif)
    if vendor == "aperio":
        levels = [p for p in pages if p.is_tiled]
    else:
        levels = [p for i, p in enumerate(pages) if p.is_tiled and (i == 0 or int(p.subfiletype) & 1)]
    if not levels:
        return pages[0]
    return min(levels, key=lambda p: p.imagewidth)


def quickhash1(path: str, tif, vendor: str) -> str | None:
    """openslide's ``openslide.quickhash-1`` of a TIFF, or None where openslide gives none.

    Args:
        path: the file (read with plain positional reads).
        tif: its open ``tifffile.TiffFile``.
        vendor: ``"aperio"`` or ``"generic-tiff"`` (which pages count as levels).
    """
    level = openslide_smallest_level(tif, vendor)
    offsets, counts = list(level.dataoffsets), list(level.databytecounts)
    if not offsets or len(offsets) != len(counts) or sum(int(c) for c in counts) > QUICKHASH_MAX_BYTES:
        return None
    digest = hashlib.sha256()
    first = _page(tif, 0)
    with open(path, "rb") as fh:
        for offset, count in zip(offsets, counts):
            fh.seek(int(offset))
            digest.update(fh.read(int(count)))
        for name, code in HASHED_TAGS:
            tag = first.tags.get(code)
            value = _raw_string(fh, tag) if tag is not None and tag.dtype == 2 else b""
            digest.update(name.encode() + b"\0")
            digest.update(value + b"\0")
    return digest.hexdigest()


def icc_profile(page) -> bytes | None:
    """The ICC profile stored in a page (tag 34675), or None."""
    tag = page.tags.get(ICC_TAG)
    if tag is None:
        return None
    value = tag.value
    return bytes(value) if len(value) else None


def _aperio_field(description: str, key: str) -> str | None:
    for item in (description or "").split("|")[1:]:
        name, _, value = item.partition("=")
        if name.strip() == key:
            return value.strip()
    return None


def aperio_associated(tif) -> dict[str, tuple[int, bytes | None]]:
    """Aperio's associated images: name -> (page index, ICC profile or None), by openslide's rule."""
    pages = _pages(tif)
    main_icc = icc_profile(pages[0])
    main_icc_name = _aperio_field(pages[0].description, "ICC Profile")
    out = {}
    for index, page in enumerate(pages):
        if page.is_tiled:
            continue
        icc = icc_profile(page)
        if index == 1:
            name = "thumbnail"
            if main_icc_name is not None and _aperio_field(page.description, "ICC Profile") == main_icc_name:
                icc = main_icc
        else:
            name = {1: "label", 9: "macro"}.get(int(page.subfiletype))
        if name is not None and name not in out:
            out[name] = (index, icc)
    return out


def associated_properties(tif, associated: dict) -> dict[str, str]:
    """``openslide.associated.NAME.width/height/icc-size`` of :func:`aperio_associated`'s images."""
    props = {}
    for name, (index, icc) in associated.items():
        page = _page(tif, index)
        props[f"openslide.associated.{name}.width"] = str(page.imagewidth)
        props[f"openslide.associated.{name}.height"] = str(page.imagelength)
        if icc:
            props[f"openslide.associated.{name}.icc-size"] = str(len(icc))
    return props


def rgba_image(pixels: np.ndarray, icc: bytes | None = None):
    """PIL ``RGBA`` image (alpha 255) of uint8 (rows, cols), (rows, cols, 3) or (rows, cols, 4)."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    rgba = np.full((*pixels.shape[:2], 4), 255, np.uint8)
    rgba[:, :, :3] = pixels[:, :, :3]
    image = Image.fromarray(rgba, "RGBA")
    if icc:
        image.info["icc_profile"] = icc
    return image


def read_page(path: str, index: int):
    """uint8 pixels of one page, decoded by tifffile ((rows, cols) or (rows, cols, samples))."""
    import tifffile

    with tifffile.TiffFile(os.fspath(path)) as tif:
        return _page(tif, index).asarray()


def openslide_extras(path: str, tif, fmt: str, page0, props: dict):
    """Add openslide's quickhash-1, icc-size and associated-image properties to
    ``props``; return (associated images, level 0's ICC profile)."""
    vendor = "aperio" if fmt == "aperio" else "generic-tiff"  # openslide reads OME-TIFF as generic
    props["openslide.vendor"] = vendor
    quickhash = quickhash1(path, tif, vendor)
    if quickhash is not None:
        props["openslide.quickhash-1"] = quickhash
    icc = icc_profile(page0)
    if icc is not None:
        props["openslide.icc-size"] = str(len(icc))
    associated = aperio_associated(tif) if vendor == "aperio" else {}
    props.update(associated_properties(tif, associated))
    return associated, icc
