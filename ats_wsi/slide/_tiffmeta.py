"""TIFF metadata -> openslide-named properties and µm per pixel.

Aperio descriptions, OME-XML physical sizes and TIFF resolution tags, read the
way openslide reads them so that both backends report the same values.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np

from ._levels import format_double

# TIFF tags openslide copies into tiff.* properties
_TIFF_STRING_TAGS = {
    269: "DocumentName",
    270: "ImageDescription",
    271: "Make",
    272: "Model",
    305: "Software",
    306: "DateTime",
    315: "Artist",
    316: "HostComputer",
    33432: "Copyright",
}
_RESOLUTION_UNITS = {1: "none", 2: "inch", 3: "centimeter"}
_UM_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 10000.0}
_UM_PER_OME_UNIT = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0,
    "mm": 1e3, "cm": 1e4, "m": 1e6,
}


def aperio_properties(description: str) -> dict[str, str]:
    """``aperio.*`` properties from an Aperio ImageDescription.

    The description is ``header|key = value|key = value...``; the header is
    skipped, like openslide does.
    """
    props = {}
    for item in description.split("|")[1:]:
        name, sep, value = item.partition("=")
        name = name.strip()
        if name:
            props[f"aperio.{name}"] = value.strip() if sep else ""
    return props


def _positive_float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and np.isfinite(value) else None


def aperio_mpp(props: dict[str, str]) -> tuple[float, float] | None:
    """(mpp_x, mpp_y) from ``aperio.MPP``, or None."""
    mpp = _positive_float(props.get("aperio.MPP"))
    return None if mpp is None else (mpp, mpp)


def ome_mpp(xml: str) -> tuple[float, float] | None:
    """(mpp_x, mpp_y) from the first Image's Pixels PhysicalSizeX/Y (unit default µm)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        size = _positive_float(pixels.get(f"PhysicalSize{axis}"))
        scale = _UM_PER_OME_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or scale is None:
            return None
        sizes.append(size * scale)
    return (sizes[0], sizes[1])


def _rational(value) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
        return num / den if den else None
    return _positive_float(value)


def resolution_mpp(page) -> tuple[float, float] | None:
    """(mpp_x, mpp_y) from X/YResolution when ResolutionUnit is inch or centimetre."""
    unit = page.tags.valueof(296)
    xres, yres = _rational(page.tags.valueof(282)), _rational(page.tags.valueof(283))
    scale = None if unit is None else _UM_PER_RESOLUTION_UNIT.get(int(unit))
    if scale is None or not xres or not yres:
        return None
    # libtiff holds resolutions as float32: round the same way openslide does
    return (scale / float(np.float32(xres)), scale / float(np.float32(yres)))


def tiff_properties(page) -> dict[str, str]:
    """``tiff.*`` and ``openslide.comment`` properties from the first page."""
    props = {}
    for code, name in _TIFF_STRING_TAGS.items():
        value = page.tags.valueof(code)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value:
            props[f"tiff.{name}"] = value.rstrip("\x00")
    unit = page.tags.valueof(296)
    if unit is not None:
        props["tiff.ResolutionUnit"] = _RESOLUTION_UNITS.get(int(unit), str(int(unit)))
    for code, name in ((282, "XResolution"), (283, "YResolution")):
        res = _rational(page.tags.valueof(code))
        if res is not None:
            props[f"tiff.{name}"] = format_double(np.float32(res))
    if "tiff.ImageDescription" in props:
        props["openslide.comment"] = props["tiff.ImageDescription"]
    return props


def tiff_metadata(tif, page0) -> tuple[str, dict, tuple[float, float] | None, str]:
    """``(format, properties, (mpp_x, mpp_y) or None, the tag the µm/px came from)`` of a TIFF."""
    props = tiff_properties(page0)
    mpp_xy, source = None, "the slide's metadata"
    if tif.is_svs:
        fmt = "aperio"
        props.update(aperio_properties(page0.description))
        mpp_xy, source = aperio_mpp(props), "Aperio ImageDescription 'MPP'"
        mag = props.get("aperio.AppMag")
        try:
            props["openslide.objective-power"] = str(int(float(mag)))
        except (TypeError, ValueError, OverflowError):  # AppMag = 1e400 is inf: no objective power
            pass
    elif tif.is_ome:
        fmt = "ome-tiff"
        mpp_xy, source = ome_mpp(tif.ome_metadata or ""), "OME-XML PhysicalSizeX/Y"
    else:
        fmt = "generic-tiff"
    if mpp_xy is None:
        mpp_xy, source = resolution_mpp(page0), "TIFF XResolution/YResolution"
    return fmt, props, mpp_xy, source
