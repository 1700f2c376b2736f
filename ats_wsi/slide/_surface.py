"""The part of a Slide's public surface built on its reads.

Openslide's names beyond levels and pixels: associated images, the colour
profile (and the opt-in conversion to sRGB), ``get_thumbnail`` and
``detect_format``; and ats-wsi's own whole-slide calls on the
:attr:`~ats_wsi.slide.Slide.pyramid`: ``level_for``, ``level_array``,
``thumbnail``.

:class:`OpenSlideSurface` is a base of :class:`~ats_wsi.slide.Slide`; the
backends supply three hooks (``_associated_names``, ``_read_associated``,
``_icc_bytes``). What each returns is what openslide-python returns, so
code written for openslide keeps working; ``tests/slide/test_openslide_surface.py``
compares both on real files.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import RegionError
from ._checks import positive_number
from ._levels import nearest_level, thumbnail_geometry
from .resolution import mpp_to_downsample

__all__ = ["TISSUE_DOWNSAMPLE", "AssociatedImages", "OpenSlideSurface", "thumbnail_size"]

TISSUE_DOWNSAMPLE = 32.0
"""``tissue_mask(level=None)`` works at the level nearest to this downsample
(about 1.25x objective for a 40x scan)."""


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

    def __init__(self, names, read):
        """``names`` of the images; ``read(name)`` decodes one (the slide's)."""
        self._names = tuple(names)
        self._read = read

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<AssociatedImages {list(self._names)!r}>"


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


class OpenSlideSurface:
    """The part of :class:`~ats_wsi.slide.Slide` that mirrors openslide-python
    beyond levels and pixels (associated images, colour profile, thumbnail,
    format detection)."""

    _format_detector = None
    """``ats_wsi.slide.detect_format``, set by :mod:`._open` (this module must not import the backends)."""
    _srgb = None
    """An ImageCms transform to sRGB once ``open_slide(srgb=True)`` asked for it (``Slide.__init__`` sets it)."""

    @classmethod
    def detect_format(cls, path) -> str | None:
        """The slide's format name, or None (see :func:`ats_wsi.slide.detect_format`)."""
        return cls._format_detector(path)

    @property
    def associated_images(self) -> AssociatedImages:
        """The label, macro, thumbnail, ... stored beside the pyramid, as openslide lists them.

        A lazy mapping name -> PIL ``RGBA`` image (decoded on access); empty
        for formats without any. Their sizes are also in ``properties`` as
        ``openslide.associated.NAME.width/height``.
        """
        return AssociatedImages(self._associated_names(), self._associated_image)

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

    def convert_to_srgb(self) -> None:
        """Convert every later read from the slide's ICC profile to sRGB (a no-op without a
        profile, or when already converted); what ``open_slide(path, srgb=True)`` does."""
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

    def level_for(self, downsample: float | None = None, mpp: float | None = None) -> int:
        """The :attr:`pyramid` level nearest to a downsample or to a resolution.

        Args:
            downsample: wanted downsample w.r.t. level 0 (> 0), or
            mpp: wanted µm per pixel (> 0); needs ``self.mpp``.

        Returns:
            the level whose downsample is nearest on a log scale (the finer
            one on a tie).
        """
        if (downsample is None) == (mpp is None):
            raise TypeError("level_for takes exactly one of downsample= or mpp=")
        if mpp is not None:
            if self.mpp is None:
                from ..errors import ResolutionError  # (a SlideError)
                from .resolution import missing_mpp_reason

                raise ResolutionError(self.path, missing_mpp_reason(f"a level at {mpp!r} µm/px was asked for", self))
            downsample = mpp_to_downsample(positive_number(mpp, "mpp", self.path), self.mpp)
        return nearest_level(self._levels, positive_number(downsample, "downsample", self.path))

    def level_array(self, level: int):
        """A level as a lazy ``dask.array`` uint8 (height, width, 3), one chunk per tile.

        Nothing is read until computed; each chunk is one :meth:`read_tile`.
        The array pickles with the slide (it reopens by path in workers).
        """
        from ._array import level_array

        return level_array(self.path, self.backend, level, self._level(level), self._level_block)

    def _level_block(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """What a :meth:`level_array` chunk reads: a box inside ``level``; one whole tile
        is the tile itself (no copy)."""
        self._check_open()
        lv = self._levels[level]
        tw, th = lv.tile_width, lv.tile_height
        col, row = x // tw, y // th
        if x == col * tw and y == row * th and w == min(tw, lv.width - x) and h == min(th, lv.height - y):
            return self._tile(level, col, row)
        return self._read_box(level, x, y, w, h)

    def thumbnail(self, max_size: int | tuple[int, int] = 512) -> np.ndarray:
        """The whole slide, shrunk to fit in ``max_size``.

        Args:
            max_size: largest (width, height) in pixels, or one int for both.

        Returns:
            uint8 (rows, cols, 3), aspect ratio kept, never larger than level 0.
            Read from the coarsest level at least as large as the result (so
            never level 0 of a pyramid), then area-resampled.
        """
        try:
            level, (out_w, out_h) = thumbnail_geometry(self._levels, max_size)
        except (TypeError, ValueError, OverflowError):
            raise RegionError(self.path, f"max_size must be an int >= 1 or a (width, height) pair, "
                                         f"got {max_size!r}") from None
        img = self.read_level(level)
        if img.shape[:2] == (out_h, out_w):
            return img
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BOX))

    def tissue_mask(self, level: int | None = None) -> np.ndarray:
        """Foreground (tissue) mask by Otsu's threshold on HSV saturation.

        Args:
            level: level to threshold; None picks ``level_for(downsample=
                TISSUE_DOWNSAMPLE)`` (nearest to 32x, the coarsest level if the
                pyramid stops above it).

        Returns:
            bool (rows, cols) of that level: True where saturation is above
            the Otsu threshold. Black fill and white glass have saturation 0.
        """
        from ._tissue import tissue_mask

        if level is None:
            level = self.level_for(downsample=TISSUE_DOWNSAMPLE)
        return tissue_mask(self.read_level(level))

    # ------------------------------------------------------------ backend hooks

    def _associated_image(self, name: str):
        """One associated image, read now (SlideError once the slide is closed)."""
        self._check_open()
        return self._read_associated(name)

    def _associated_names(self) -> tuple[str, ...]:
        """Names of the associated images (none by default)."""
        return ()

    def _read_associated(self, name: str):
        """PIL ``RGBA`` image of one associated image."""
        raise KeyError(name)

    def _icc_bytes(self) -> bytes | None:
        """The slide's ICC profile (bytes), or None."""
        return None
