"""The low view the attention net sees (ats_wsi.slide.lowview) and its tissue mask."""
import numpy as np
import pytest
from PIL import Image

from ats_wsi.slide import lowview, read_low_view, tissue_mask
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import SlideError
from ats_wsi.slide import open_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("lowview") / "s.svs"
    write_synthetic_slide(path, 3072, 2048, n_lesions=1, seed=3, lesion_size_um=(100, 200))
    return path


def test_existing_level_is_read_as_is(slide_path):
    with open_slide(slide_path) as slide:
        view = read_low_view(slide, downsample=4)
        assert view.level == 1 and view.downsample == 4.0
        np.testing.assert_array_equal(view.image, slide.read_level(1))
        assert view.mask.shape == view.image.shape[:2] and view.mask.dtype == bool


def test_missing_level_is_area_resampled_block_by_block(slide_path, monkeypatch):
    monkeypatch.setattr(lowview, "RESAMPLE_BLOCK", 64)  # many blocks, odd last ones
    with open_slide(slide_path) as slide:
        view = read_low_view(slide, downsample=8)  # the pyramid has 1 and 4 only
        whole = np.asarray(Image.fromarray(slide.read_level(1)).resize((384, 256), Image.Resampling.BOX))
    assert view.level == 1 and view.downsample == 8.0
    assert view.image.shape == (256, 384, 3)
    np.testing.assert_array_equal(view.image, whole)


def test_mpp_selects_the_same_view_as_its_downsample(slide_path):
    with open_slide(slide_path) as slide:
        by_mpp = read_low_view(slide, mpp=4.0)  # 0.5 µm/px slide -> downsample 8
        by_ds = read_low_view(slide, downsample=8)
    np.testing.assert_array_equal(by_mpp.image, by_ds.image)


def test_mpp_needs_a_known_resolution(tmp_path):
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256))
    with open_slide(path) as slide, pytest.raises(SlideError, match="µm/px"):
        read_low_view(slide, mpp=8.0)
    with open_slide(path) as slide, pytest.raises(TypeError):
        read_low_view(slide)


def test_tissue_mask_finds_tissue_and_never_comes_back_empty():
    rgb = np.full((20, 30, 3), 245, np.uint8)
    rgb[5:10, 5:20] = (200, 100, 150)  # saturated "tissue"
    mask = tissue_mask(rgb, never_empty=True)
    assert mask[5:10, 5:20].all() and mask.sum() == 5 * 15
    assert tissue_mask(np.full((4, 4, 3), 250, np.uint8), never_empty=True).all()  # nothing stands out: keep all


@pytest.mark.parametrize("kw, words", [
    ({"downsample": 1e-9}, "downsample must be a finite number >= 1"),
    ({"downsample": 0.001}, "downsample must be a finite number >= 1"),
    ({"downsample": float("inf")}, "downsample must be a finite number >= 1"),
    ({"mpp": 0.1}, "finer than the slide's level 0 (0.5 µm/px)"),
    ({"mpp": -1.0}, "µm/px must be a finite number > 0"),
])
def test_a_view_finer_than_level_0_is_refused_before_anything_is_read(slide_path, kw, words):
    with open_slide(slide_path) as slide, pytest.raises(SlideError) as info:
        read_low_view(slide, **kw)
    assert words in str(info.value) and str(slide_path) in str(info.value)


def test_a_view_over_the_pixel_bound_says_the_least_downsample_that_fits(slide_path, monkeypatch):
    monkeypatch.setattr(lowview, "MAX_LOW_VIEW_PIXELS", 100 * 100)  # the 3072 x 2048 slide: ds >= 25.08
    with open_slide(slide_path) as slide:
        with pytest.raises(SlideError, match=r"3072 x 2048 pixels, over the 10,000 .* at least 25.1"):
            read_low_view(slide, downsample=1)
        with pytest.raises(SlideError, match=r"--low-mpp of at least 12.5"):
            lowview.LowViewReader(slide, mpp=0.5)
        assert read_low_view(slide, downsample=32).image.shape == (64, 96, 3)  # 6,144 pixels: fits
