"""The lazy tile pyramid: ``open_slide`` and ``Slide``.

See :mod:`ats_wsi.slide.slide` for the whole public surface. This package
never imports torch.
"""
from .slide import FILL_VALUE, MAX_READ_PIXELS, TISSUE_DOWNSAMPLE, Slide, level_origin, open_slide

__all__ = ["FILL_VALUE", "MAX_READ_PIXELS", "TISSUE_DOWNSAMPLE", "Slide", "level_origin", "open_slide"]
