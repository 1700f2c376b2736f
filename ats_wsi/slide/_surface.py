"""Openslide's surface beyond levels and pixels: associated images, the colour
profile (and the opt-in conversion to sRGB), ``get_thumbnail`` and
``detect_format``.

:class:`OpenSlideSurface` is a base of :class:`~ats_wsi.slide.Slide`; the
backends supply three hooks (``_associated_names``, ``_read_associated``,
``_icc_bytes``). What each returns is what openslide-python returns, so
code written for openslide keeps working; ``tests/slide/test_openslide_surface.py``
compares both on real files.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

__all__ = ["AssociatedImages", "OpenSlideSurface", "detect_format", "thumbnail_size"]


def thumbnail_size(width: int, height: int, size) -> tuple[int, int]:
    """The size PIL's ``Image.thumbnail(size)`` gives a ``width x height`` image
    (what openslide's ``get_thumbnail`` returns): the aspect ratio kept, each
    side the floor or the ceiling whichever keeps it best, never enlarged."""
    x, y = (math.floor(v) for v in size)
    if x >= width and y >= height:
        return (width, height)
    aspect = width / height

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return (x, y)


class AssociatedImages(Mapping):
    """``slide.associated_images``: name -> PIL ``RGBA`` image, decoded when asked for.

    Like openslide-python's mapping: iterating lists the names without
    decoding anything; ``images[name]`` decodes that image (each access
    decodes again, as openslide's does), with its ICC profile in
    ``image.info["icc_profile"]`` when it has one.
    """

    def __init__(self, slide):
        self._slide = slide
        self._names = tuple(slide._associated_names())

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        self._slide._check_open()
        return self._slide._read_associated(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<AssociatedImages {list(self._names)!r}>"


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


def srgb_transform(icc: bytes):
    """A PIL ImageCms transform from the ``icc`` profile to sRGB (RGB -> RGB, perceptual)."""
    from io import BytesIO

    from PIL import ImageCms

    source = ImageCms.getOpenProfile(BytesIO(icc))
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), "RGB", "RGB")


def to_srgb(transform, pixels: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols, 3) pixels through ``transform`` (see :func:`srgb_transform`)."""
    from PIL import Image, ImageCms

    if pixels.size == 0:
        return pixels
    out = np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(pixels)), transform))
    return out if out.flags.writeable else out.copy()


def detect_format(path) -> str | None:
    """The format name of a slide file, or None when no backend reads it.

    For every file openslide reads this is openslide's own answer
    (``OpenSlide.detect_format``: ``"aperio"``, ``"generic-tiff"`` (also for
    OME-TIFF), ``"hamamatsu"``, ...); for what only ats-wsi reads, the name
    :attr:`Slide.format` would say (``"generic-tiff"`` for stripped TIFFs,
    ``"ome-zarr"``, ``"zarr"``). Nothing is decoded; it never raises for an
    unreadable path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from ._zarr import ZarrSlide, is_zarr_dir

        if not is_zarr_dir(path):
            return None
        try:
            with ZarrSlide(path) as slide:
                return slide.format
        except Exception:  # not a slide: detection never raises
            return None
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(path)
    except Exception:  # openslide missing, unreadable file
        vendor = None
    if vendor is not None:
        return vendor
    try:
        from ._tifffile import inspect_tiff

        fmt = inspect_tiff(path, fast_only=False).format
    except Exception:  # not a TIFF this package reads
        return None
    return "generic-tiff" if fmt == "ome-tiff" else fmt


class OpenSlideSurface:
    """The part of :class:`~ats_wsi.slide.Slide` that mirrors openslide-python
    beyond levels and pixels (associated images, colour profile, thumbnail,
    format detection)."""

    @classmethod
    def detect_format(cls, path) -> str | None:
        """The slide's format name, or None (see :func:`ats_wsi.slide.detect_format`)."""
        return detect_format(path)

    @property
    def associated_images(self) -> AssociatedImages:
        """The label, macro, thumbnail, ... stored beside the pyramid, as openslide lists them.

        A lazy mapping name -> PIL ``RGBA`` image (decoded on access); empty
        for formats without any. Their sizes are also in ``properties`` as
        ``openslide.associated.NAME.width/height``.
        """
        return AssociatedImages(self)

    @property
    def color_profile(self):
        """The slide's ICC colour profile as a PIL ``ImageCms.ImageCmsProfile``, or None.

        Pixels are returned as stored (like openslide); ``open_slide(path,
        srgb=True)`` converts every read to sRGB through this profile.
        """
        icc = self._icc_bytes()
        if icc is None:
            return None
        from io import BytesIO

        from PIL import ImageCms

        return ImageCms.getOpenProfile(BytesIO(icc))

    @property
    def srgb(self) -> bool:
        """True when reads are converted to sRGB (``open_slide(srgb=True)`` on a slide with a profile)."""
        return self._srgb is not None

    def _convert_to_srgb(self) -> None:
        """Convert every read from the slide's ICC profile to sRGB (a no-op without a profile)."""
        icc = self._icc_bytes()
        if icc is not None and self._srgb is None:
            self._srgb = srgb_transform(icc)
            self._computed.cache.clear()

    def _colour(self, pixels: np.ndarray) -> np.ndarray:
        """Stored pixels as the user asked for them: as stored, or in sRGB."""
        return pixels if self._srgb is None else to_srgb(self._srgb, pixels)

    def get_thumbnail(self, size):
        """An RGB PIL image of the whole slide fitting in ``size`` = (width, height).

        The size openslide's ``get_thumbnail`` gives: that of PIL's
        ``thumbnail(size)`` applied to the stored level openslide would read
        (``get_best_level_for_downsample`` of the larger ratio). The pixels
        come from the smallest :attr:`pyramid` level at least that large
        (computed levels included, so a single-level slide is not read
        whole), LANCZOS-resampled, over openslide's background colour; the
        ICC profile rides along in ``info["icc_profile"]``.
        """
        from PIL import Image

        downsample = max(dim / thumb for dim, thumb in zip(self.dimensions, size))
        level = self.get_best_level_for_downsample(downsample)
        out_w, out_h = thumbnail_size(*self.level_dimensions[level], size)
        source = max(i for i, lv in enumerate(self.pyramid) if lv.width >= out_w and lv.height >= out_h)
        pixels = self.read_level(source)
        thumb = Image.fromarray(pixels, "RGB")
        if thumb.size != (out_w, out_h):
            thumb = thumb.resize((out_w, out_h), Image.Resampling.LANCZOS)
        icc = self._icc_bytes()
        if icc is not None and self._srgb is None:
            thumb.info["icc_profile"] = icc
        return thumb

    # ------------------------------------------------------------ backend hooks

    def _associated_names(self) -> tuple[str, ...]:
        """Names of the associated images (none by default)."""
        return ()

    def _read_associated(self, name: str):
        """PIL ``RGBA`` image of one associated image."""
        raise KeyError(name)

    def _icc_bytes(self) -> bytes | None:
        """The slide's ICC profile (bytes), or None."""
        return None
