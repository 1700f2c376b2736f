"""SlideSource: a batch of slides as AttentionSampler's patch source."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ats_wsi import AttentionSampler, open_slide
from ats_wsi.errors import SamplingError
from ats_wsi.nets import create_attention_net, create_feature_net
from ats_wsi.patches import PatchReader, PatchSource, SlideSource


def read_regions(slides, levels, xy0, size) -> torch.Tensor:
    """uint8 [B, n, 3, h, w] by read_region at level-0 corners xy0 [B, n, 2], size = (w, h)."""
    return torch.stack([
        torch.stack([torch.from_numpy(s.read_region(tuple(p), lv, tuple(size))).permute(2, 0, 1)
                     for p in xy.tolist()])
        for s, lv, xy in zip(slides, levels, xy0)])


@pytest.fixture
def two_slides(vips_jpeg, tiff_pyramid_deflate):
    """A JPEG slide by libvips (5000 x 3000) and a lossless one by tifffile (2999 x 1999):
    their level 1 downsamples differ a little (2.0 vs 1.99917)."""
    slides = [open_slide(vips_jpeg.path), open_slide(tiff_pyramid_deflate.path)]
    yield slides
    for s in slides:
        s.close()


@pytest.mark.parametrize("level", [0, 1])
def test_extract_equals_read_region_at_the_level0_corners_of_two_slides(two_slides, level):
    rng = np.random.default_rng(level)
    size = (90, 130)  # (w, h)
    lw, lh = two_slides[1].level_dimensions[level]
    xy = torch.stack([torch.from_numpy(rng.integers(-100, lw, (2, 24))),
                      torch.from_numpy(rng.integers(-100, lh, (2, 24)))], dim=-1)  # [B, n, 2]
    source = SlideSource(two_slides, level, low_downsample=16.0, workers=2)
    assert isinstance(source, PatchSource)
    got = source.extract(xy, size)
    assert got.shape == (2, 24, 3, 130, 90) and got.dtype == torch.uint8
    xy0 = source.level0_xy(source.level_xy(xy, size))
    torch.testing.assert_close(got, read_regions(two_slides, [level] * 2, xy0, size), rtol=0, atol=0)
    boxes = source.boxes_level0(xy, size)
    assert boxes.dtype == torch.int64 and boxes.shape == (2, 24, 4)
    assert torch.equal(boxes[..., :2], xy0)
    for b, slide in enumerate(two_slides):
        ds = slide.level_downsamples[level]
        assert boxes[b, 0, 2:].tolist() == [int(90 * ds + 0.5), int(130 * ds + 0.5)]  # (w0, h0)
    assert source.patches_read == 48
    source.close()


def test_extract_slide_gives_that_slides_rows_of_extract(two_slides):
    """Level 1: slide 1's ratio differs from slide 0's, so its boxes move; extract_slide
    moves them alike, and counts only what it read."""
    rng = np.random.default_rng(5)
    size = (48, 40)
    xy = torch.from_numpy(np.stack([rng.integers(1100, 1450, (2, 9)), rng.integers(-20, 950, (2, 9))], -1))
    source = SlideSource(two_slides, 1, low_downsample=16.0, workers=1)
    whole = source.extract(xy, size)
    assert not torch.equal(source.level_xy(xy, size)[1], xy[1])  # the scales do differ
    for b in (0, 1):
        before = source.patches_read
        some = source.extract_slide(b, xy[b, [7, 2, 5]], size)
        assert some.shape == (3, 3, 40, 48) and source.patches_read == before + 3
        assert torch.equal(some, whole[b, [7, 2, 5]])
    with pytest.raises(SamplingError, match="extract_slide"):
        source.extract_slide(2, xy[0], size)
    source.close()


def test_scale_is_low_downsample_over_level_downsample(two_slides):
    for level in (0, 1, 2):
        source = SlideSource(two_slides, level, low_downsample=16.0)
        ds = two_slides[0].level_downsamples[level]
        assert source.scale((100, 150)) == (16.0 / ds, 16.0 / ds)
        assert source.ratio(1) == pytest.approx(16.0 / two_slides[1].level_downsamples[level])
    per_slide = SlideSource(two_slides, [0, 1], low_downsample=[16.0, 16.1])
    assert per_slide.scale((10, 10)) == (16.0, 16.0)
    assert per_slide.ratio(1) == pytest.approx(16.1 / two_slides[1].level_downsamples[1])


def test_boxes_follow_each_slides_own_scale(two_slides):
    """Slide 1's ratio differs from slide 0's: its box centres move by the ratio of ratios."""
    source = SlideSource(two_slides, 1, low_downsample=16.0)
    size = (64, 64)
    xy = torch.tensor([[[0, 0], [1000, 600], [-32, 1400]]] * 2)
    moved = source.level_xy(xy, size)
    torch.testing.assert_close(moved[0], xy[0])  # slide 0 is the reference
    factor = source.ratio(1) / source.ratio(0)
    centre = (xy[1].double() + 32) * factor
    torch.testing.assert_close((moved[1] + 32).double(), centre, atol=0.5, rtol=0)
    same = SlideSource([two_slides[0], two_slides[0]], 1, low_downsample=16.0)
    torch.testing.assert_close(same.level_xy(xy, size), xy)


def test_readers_given_to_the_source_are_reused_with_their_cache(two_slides):
    slide = two_slides[0]
    reader = PatchReader(slide, 0, (48, 48), workers=1)
    source = SlideSource([slide], 0, low_downsample=8.0, readers=[reader])
    xy = torch.tensor([[[10, 20], [300, 400]]])
    first = source.extract(xy, 48)
    decoded = reader.stats.tiles_decoded
    again = source.extract(xy, (48, 48))
    assert reader.stats.tiles_decoded == decoded and reader.stats.cache_hits >= decoded > 0
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    source.close()
    assert reader.read([[0, 0]]).shape == (1, 3, 48, 48)  # not closed by the source
    reader.close()


def test_batch_size_mismatch_is_a_sampling_error(two_slides):
    source = SlideSource(two_slides, 0, low_downsample=16.0)
    with pytest.raises(SamplingError):
        source.extract(torch.zeros(3, 4, 2, dtype=torch.long), 32)
    with pytest.raises(SamplingError):
        SlideSource(two_slides, [0], low_downsample=16.0)


def test_attention_sampler_reads_its_patches_from_slides(two_slides):
    """End to end: low level -> attention -> sample -> SlideSource -> features; the patches are
    the slides' pixels at the returned boxes."""
    torch.manual_seed(0)
    low_level = 2
    views = [torch.from_numpy(s.read_region((0, 0), low_level, two_slides[0].level_dimensions[low_level]))
             for s in two_slides]
    x_low = torch.stack(views).permute(0, 3, 1, 2).float() / 255  # [2, 3, 750, 1250], slide 1 padded
    sampler = AttentionSampler(create_attention_net("attention-small", pool=8),
                               create_feature_net("feature-small", out_features=8), n_patches=6,
                               patch_size=(64, 40))
    low_ds = two_slides[0].level_downsamples[low_level]
    source = SlideSource(two_slides, 0, low_downsample=[low_ds, two_slides[1].level_downsamples[low_level]])
    result = sampler(x_low, source)
    assert result.features.shape == (2, 8) and result.patches.shape == (2, 6, 3, 40, 64)
    boxes = source.boxes_level0(result.xy, sampler.patch_size)  # [B, n, 4] (x0, y0, w0, h0)
    assert (boxes[..., 2:] == torch.tensor([64, 40])).all()  # level 0: (w0, h0) = (w, h)
    expected = read_regions(two_slides, [0, 0], boxes[..., :2], (64, 40)).float() / 255
    torch.testing.assert_close(result.patches, expected, rtol=0, atol=0)
    source.close()


def test_readers_made_for_a_resolution_are_made_once_and_closed_with_the_source(two_slides):
    slide = two_slides[1]
    slide.mpp = 0.25
    source = SlideSource([slide], low_downsample=8.0, mpp=0.5, workers=2)
    xy = torch.tensor([[[10, 20], [300, 400]]])
    first = source.extract(xy, 32)
    reader = source.reader(0, (32, 32))
    assert source.reader(0, (32, 32)) is reader  # before issue 26: a new reader (and pool) per call
    decoded = reader.stats.tiles_decoded
    again = source.extract(xy, 32)
    assert reader.stats.tiles_decoded == decoded and reader.stats.cache_hits > 0
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    source.close()
    assert reader._pool._shutdown and not source._owned
