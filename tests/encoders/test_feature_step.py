"""The encoder's feature step reads a source's typed geometry: the same feature cache keys as
caches already on disk, and a source that does not answer is an error, never a silent miss."""
from __future__ import annotations

import pytest
import torch
from encoder_helpers import spec_dict

from ats_wsi import open_slide
from ats_wsi.classifier.features import EncoderFeatures, cache_group
from ats_wsi.encoders import FeatureCache, attach_feature_cache, build_encoder, slide_fingerprint
from ats_wsi.encoders.cache import geometry_digest
from ats_wsi.errors import EncoderError
from ats_wsi.patches import ReadGeometry, SlidePatchSource, SlideSource

# The geometry part of the cache group names, as the code before the typed ReadGeometry wrote them
# (PatchEncoder._group of commit af817d2) for a 3072 x 2560 slide at 0.5 µm/px: a feature cache
# written then must still be found.
WRITTEN_BEFORE = {
    (0, None, 0.05, 32): "de12fce168dd8a4f",
    (0, None, 0.05, (32, 24)): "d8787a3df5f99e38",
    (1, None, 0.05, 32): "247eda6e0c22e982",
    (0, 1.0, 0.05, 32): "b3dcdae7092101b7",
    (0, 1.3, 0.5, 32): "e8407e40af32aa1d",
}


@pytest.fixture(scope="module")
def encoder(tiny_files):
    return build_encoder(spec_dict("export", tiny_files["export"]), frozen=True)


@pytest.mark.parametrize("key", sorted(WRITTEN_BEFORE, key=str))
def test_cache_keys_are_those_a_cache_on_disk_was_written_with(key, encoder, slides):
    level, mpp, tolerance, patch = key
    with open_slide(slides["paths"][1]) as slide:
        source = SlideSource([slide], level, low_downsample=16.0, mpp=mpp, mpp_tolerance=tolerance, workers=1)
        group = cache_group(encoder, source.geometry(0), patch)
        wh = [patch, patch] if isinstance(patch, int) else list(patch)
        plan = None if mpp is None else source.resolutions[0]
        reference = geometry_digest(patch_wh=wh, mpp=mpp, level=source.levels[0],
                                    downsample=round(source.level_downsample(0), 9),
                                    factor=None if plan is None else round(plan.factor, 9))
        assert group == FeatureCache.group(encoder.spec.digest(), slide_fingerprint(slide.path), reference)
        assert group.rsplit("-", 1)[1] == WRITTEN_BEFORE[key]


def test_the_geometry_says_level_downsample_and_read_resolution(slides):
    with open_slide(slides["paths"][0]) as slide:
        by_level = SlideSource([slide], 1, low_downsample=16.0, workers=1).geometry(0)
        by_mpp = SlideSource([slide], 0, low_downsample=16.0, mpp=1.0, workers=1).geometry(0)
        ds = slide.level_downsamples[1]
        assert by_level == ReadGeometry(slide, str(slide.path), 1, ds, None, None, 0.5 * ds)
        assert (by_mpp.level, by_mpp.downsample, by_mpp.mpp, by_mpp.factor, by_mpp.read_mpp) == (0, 2.0, 1.0, 2.0, 1.0)


class _Renamed:
    """A slide source whose ``extract_slide`` (or ``geometry``) went by another name."""

    def __init__(self, inner: SlideSource, renamed: str):
        self.inner = inner
        for name in ("scale", "extract", "geometry", "boxes", "extract_slide"):
            setattr(self, name + "_old" if name == renamed else name, getattr(inner, name))


@pytest.mark.parametrize("renamed", ["extract_slide", "geometry", "boxes"])
@pytest.mark.parametrize("cached", [False, True])
def test_a_source_missing_a_method_is_an_error_not_a_silent_miss(renamed, cached, encoder, slides):
    with open_slide(slides["paths"][0]) as slide:
        source = SlideSource([slide], 0, low_downsample=16.0, mpp=1.0, workers=1)
        assert isinstance(source, SlidePatchSource)
        odd = _Renamed(source, renamed)
        assert not isinstance(odd, SlidePatchSource)
        attach_feature_cache(encoder, FeatureCache() if cached else None)
        xy = torch.tensor([[[0, 0], [64, 32]]])
        with pytest.raises(EncoderError, match=r"_Renamed is neither a SlidePatchSource .* implement SlidePatchSource"):
            EncoderFeatures()(encoder, odd, xy, 32, torch.zeros(1))
        attach_feature_cache(encoder, None)
