"""Drop-in compatibility: the same calls on openslide and on ats_wsi give the same answers.

The one documented difference: an OME-TIFF's SubIFD pyramid, which openslide
does not see (it reads the OME-TIFF as a one-level generic TIFF); there the
shared levels are compared. Associated images, thumbnails, colour profiles
and format detection are compared in ``test_openslide_surface.py``.
"""
from __future__ import annotations

import math

import numpy as np
import openslide
import pytest
from slide_reference import OPENSLIDE_SLIDES

from ats_wsi import open_slide

COMPAT_SLIDES = [*OPENSLIDE_SLIDES, "svs_icc", "tiff_icc", "vips_svs", "vips_flat_icc"]
"""Every slide file openslide reads: tifffile- and libvips-written SVS and generic TIFF, with label,
macro and thumbnail, with ICC profiles, single-level (tiff_flat, svs_jpeg2000, vips_flat_icc)."""


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except ValueError:
        return False


@pytest.fixture(params=COMPAT_SLIDES)
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
    if sf.openslide_levels is None:  # stored levels only: a single-level file says 1, as in openslide
        assert slide.level_count == osr.level_count
        assert slide.level_dimensions == osr.level_dimensions
    assert slide.level_count >= n
    assert slide.level_dimensions[:n] == osr.level_dimensions[:n]
    np.testing.assert_allclose(slide.level_downsamples[:n], osr.level_downsamples[:n], rtol=1e-12)


@pytest.mark.parametrize("name", ["tiff_pyramid_deflate", "svs_jpeg", "vips_jpeg", "vips_deflate", "tiff_flat",
                                  "vips_svs", "vips_flat_icc"])
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
    """Every key openslide reports, with its value (quickhash-1, icc-size, associated
    sizes, vendor included), and no key openslide lacks (but a µm/px it does not read)."""
    sf, osr, slide = pair
    ours, theirs = slide.properties, dict(osr.properties)
    n = _shared_levels(sf, osr)
    for key, value in theirs.items():
        if sf.openslide_levels is not None and key == "openslide.level-count":
            continue
        assert key in ours, f"missing {key}"
        assert _same_value(ours[key], value), f"{key}: {ours[key]!r} != {value!r}"
    extra = set(ours) - set(theirs)
    if sf.openslide_levels is not None:  # the SubIFD levels openslide does not see
        extra = {k for k in extra if not any(k.startswith(f"openslide.level[{i}]") for i in range(n, slide.level_count))}
    assert extra <= {"openslide.mpp-x", "openslide.mpp-y"}, extra


def test_quickhash_is_computed_as_openslide_does(pair):
    """openslide.quickhash-1: the same SHA-256 where openslide gives one, absent where it gives none."""
    sf, osr, slide = pair
    assert slide.properties.get("openslide.quickhash-1") == osr.properties.get("openslide.quickhash-1")
    if sf.name in ("tiff_pyramid_deflate", "svs_jpeg", "vips_jpeg", "svs_icc", "vips_svs"):
        assert len(slide.properties["openslide.quickhash-1"]) == 64  # a pyramid with a small top level


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
    assert props["openslide.vendor"] == slide.detect_format(slide.path)


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
