"""Drop-in compatibility: the same calls on openslide and on ats_wsi give the same answers."""
from __future__ import annotations

import math

import numpy as np
import openslide
import pytest
from slide_reference import OPENSLIDE_SLIDES

from ats_wsi import open_slide

# properties openslide computes from things we do not reproduce
NOT_COMPARED = {"openslide.quickhash-1"}


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except ValueError:
        return False


@pytest.fixture(params=OPENSLIDE_SLIDES)
def pair(request):
    """(SlideFile, openslide.OpenSlide, ats_wsi Slide opened with backend auto)."""
    sf = request.getfixturevalue(request.param)
    osr = openslide.OpenSlide(sf.path)
    slide = open_slide(sf.path)
    yield sf, osr, slide
    slide.close()
    osr.close()


def _shared_levels(sf, osr) -> int:
    return osr.level_count if sf.openslide_levels is None else sf.openslide_levels


def test_levels_match_openslide(pair):
    sf, osr, slide = pair
    n = _shared_levels(sf, osr)
    assert slide.dimensions == osr.dimensions
    if sf.openslide_levels is None and len(sf.levels) > 1:
        assert slide.level_count == osr.level_count
    assert slide.level_count >= n
    assert slide.level_dimensions[:n] == osr.level_dimensions[:n]
    np.testing.assert_allclose(slide.level_downsamples[:n], osr.level_downsamples[:n], rtol=1e-12)


@pytest.mark.parametrize("name", ["tiff_pyramid_deflate", "svs_jpeg", "vips_jpeg", "vips_deflate"])
def test_best_level_for_downsample_matches_openslide(slide_file, name):
    path = slide_file(name).path
    osr, slide = openslide.OpenSlide(path), open_slide(path)
    assert slide.level_count == osr.level_count
    for ds in [0.5, 1, 1.5, 1.999, 2, 2.0001, 3, 4, 7.99, 8, 8.02, 15, 16, 17, 33, 64, 1000]:
        assert slide.get_best_level_for_downsample(ds) == osr.get_best_level_for_downsample(ds), ds


def test_mpp_matches_openslide_where_openslide_knows_it(pair):
    sf, osr, slide = pair
    if "openslide.mpp-x" not in osr.properties:
        assert slide.mpp == pytest.approx(sf.mpp) if sf.mpp else slide.mpp is None
        return
    assert slide.mpp_xy == pytest.approx((float(osr.properties["openslide.mpp-x"]),
                                          float(osr.properties["openslide.mpp-y"])), rel=1e-9)
    assert slide.mpp == pytest.approx(sf.mpp, rel=1e-6)


def test_properties_match_openslide(pair):
    sf, osr, slide = pair
    ours, theirs = slide.properties, dict(osr.properties)
    n = _shared_levels(sf, osr)
    for key, value in theirs.items():
        if key in NOT_COMPARED:
            continue
        if key.startswith("openslide.level") and not any(key.startswith(f"openslide.level[{i}]") for i in range(n)):
            continue
        if key == "openslide.level-count" and slide.level_count != osr.level_count:
            continue
        if key == "openslide.vendor" and slide.format != value:
            continue  # e.g. OME-TIFF, which openslide reads as generic-tiff
        assert key in ours, f"missing {key}"
        assert _same_value(ours[key], value), f"{key}: {ours[key]!r} != {value!r}"


def test_properties_always_describe_every_level(pair):
    _, _, slide = pair
    props = slide.properties
    assert int(props["openslide.level-count"]) == slide.level_count
    for i, ((w, h), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
        assert int(props[f"openslide.level[{i}].width"]) == w
        assert int(props[f"openslide.level[{i}].height"]) == h
        assert float(props[f"openslide.level[{i}].downsample"]) == pytest.approx(ds)
        assert (int(props[f"openslide.level[{i}].tile-width"]),
                int(props[f"openslide.level[{i}].tile-height"])) == slide.tile_size(i)
    assert props["openslide.vendor"] == slide.format


def test_aperio_metadata(svs_jpeg):
    with open_slide(svs_jpeg.path) as slide:
        props = slide.properties
        assert slide.format == "aperio"
        assert props["aperio.AppMag"] == "20"
        assert props["aperio.MPP"] == "0.499"
        assert props["openslide.objective-power"] == "20"
        assert slide.mpp == pytest.approx(0.499)
        assert props["openslide.comment"].startswith("Aperio Image Library")


def test_openslide_backend_reports_openslides_own_properties(vips_jpeg):
    osr = openslide.OpenSlide(vips_jpeg.path)
    with open_slide(vips_jpeg.path, backend="openslide") as slide:
        assert slide.properties == dict(osr.properties)
        assert slide.level_downsamples == osr.level_downsamples
        assert slide.format == osr.properties["openslide.vendor"]
    osr.close()


@pytest.mark.parametrize("name, mpp", [("ome_tiff_lzw", 0.5), ("tiff_strips", 254.0), ("ome_zarr_v04", 0.5),
                                       ("ome_zarr_v05", 0.5), ("zarr_levels", None), ("tiff_flat", None)])
def test_mpp_from_each_metadata_source(slide_file, name, mpp):
    """OME PhysicalSize, TIFF resolution in inches, OME-Zarr scale in micrometer; None when absent."""
    with open_slide(slide_file(name).path) as slide:
        if mpp is None:
            assert slide.mpp is None and slide.mpp_xy is None
            assert "openslide.mpp-x" not in slide.properties
        else:
            assert slide.mpp == pytest.approx(mpp, rel=1e-6)
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)
