"""The lazy tile pyramid: ``open_slide`` and ``Slide``, and what is read from it.

- :func:`open_slide` (:mod:`._open`) -> :class:`Slide` (:mod:`.slide`, the
  whole public surface of a slide; openslide's associated images, colour
  profile and thumbnail in :mod:`._surface`); :func:`detect_format`;
- :data:`SLIDE_SUFFIXES`, :func:`is_slide_path`, :func:`find_slides`
  (:mod:`.formats`): which names are slides;
- :func:`tissue_mask` (:mod:`._tissue`): the one tissue mask;
- :class:`LowView`, :func:`read_low_view` (:mod:`.lowview`): the slide at
  the resolution the attention network sees;
- :class:`TileCache` (:mod:`._cache`): the one LRU of decoded tiles.

This package never imports torch.
"""
from ._cache import TileCache
from ._levels import level_origin
from ._open import detect_format, open_slide
from ._tissue import tissue_mask
from .formats import SLIDE_SUFFIXES, find_slides, is_slide_path
from .lowview import LowView, read_low_view
from .slide import FILL_VALUE, MAX_READ_PIXELS, TISSUE_DOWNSAMPLE, Slide

__all__ = [
    "FILL_VALUE", "MAX_READ_PIXELS", "TISSUE_DOWNSAMPLE", "Slide", "detect_format", "level_origin", "open_slide",
    "SLIDE_SUFFIXES", "find_slides", "is_slide_path", "tissue_mask", "LowView", "read_low_view", "TileCache",
]
