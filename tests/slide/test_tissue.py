"""The one tissue mask (ats_wsi.slide.tissue_mask), pinned bit for bit.

The pinned digests were computed with the code before the two masks became
one (``Slide.tissue_mask`` and the old low-view module's ``tissue_mask``): the
demo's predictions depend on the low view's mask, so it must not move by a
bit. The fixtures are lossless (tifffile, deflate or uncompressed).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ats_wsi.slide import _tissue, open_slide, read_low_view, tissue_mask


def digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, level, shape, count, pinned", [
    ("tiff_pyramid_deflate", None, (250, 375), 52241, "c5c47ce4ed24c270"),
    ("tiff_pyramid_deflate", 1, (1000, 1500), 835602, "72e40c3449337112"),
    ("tiff_flat", None, (162, 250), 20188, "319f266ae5f33736"),  # a computed level
])
def test_slide_tissue_mask_is_pinned(slide_file, name, level, shape, count, pinned):
    with open_slide(slide_file(name).path) as slide:
        mask = slide.tissue_mask(level=level)
        used = slide.level_for(downsample=32) if level is None else level
        np.testing.assert_array_equal(mask, tissue_mask(slide.read_level(used)))
    assert (mask.shape, int(mask.sum()), digest(mask)) == (shape, count, pinned)


@pytest.mark.parametrize("name, downsample, shape, count, pinned", [
    ("tiff_pyramid_deflate", 4, (500, 750), 208919, "af9a34d4ed8cb52f"),  # a stored level
    # area-resampled (ratio 1.5): re-pinned when the resample became the exact fractional-coverage
    # mean, the same for any region (issue 16: the low view is streamed tile by tile); was
    # 92413, "76e967a6dbeee767" with PIL's box filter per 512² block
    ("tiff_pyramid_deflate", 6, (333, 500), 92638, "bb844885322237ef"),
    ("tiff_pyramid_deflate", 8, (250, 375), 52241, "c5c47ce4ed24c270"),
    ("tiff_flat", 16, (162, 250), 20188, "319f266ae5f33736"),
])
def test_low_view_mask_is_pinned(slide_file, name, downsample, shape, count, pinned):
    with open_slide(slide_file(name).path) as slide:
        view = read_low_view(slide, downsample=downsample)
    np.testing.assert_array_equal(view.mask, tissue_mask(view.image, never_empty=True))
    assert (view.mask.shape, int(view.mask.sum()), digest(view.mask)) == (shape, count, pinned)


def test_blank_glass_is_empty_unless_never_empty_is_asked():
    glass = np.full((40, 30, 3), 240, np.uint8)
    assert not tissue_mask(glass).any()
    assert tissue_mask(glass, never_empty=True).all()


def test_row_blocks_give_the_mask_of_the_whole_image(monkeypatch):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (301, 77, 3), dtype=np.uint8)
    whole = _tissue.saturation(rgb)
    expected = whole > _tissue.otsu_threshold(whole)
    monkeypatch.setattr(_tissue, "SATURATION_ROWS", 7)  # many blocks, a short last one
    np.testing.assert_array_equal(tissue_mask(rgb), expected)
