"""openslide-python's surface beyond levels and pixels, side by side with openslide on real files:
associated images, get_thumbnail, color_profile (+ the opt-in sRGB conversion), detect_format.

Files: tifffile- and libvips-written SVS and generic TIFF, with label, macro and thumbnail
images, with ICC profiles, single-level ones (see ``COMPAT_SLIDES`` in test_compat.py).
DICOM WSI is not among them: no DICOM writer is installed in the test environment.
"""
from __future__ import annotations

import pickle

import numpy as np
import openslide
import pytest
from test_compat import COMPAT_SLIDES

from ats_wsi import open_slide
from ats_wsi.slide import detect_format

LOSSLESS_ASSOCIATED = {"label"}  # LZW in the fixtures; thumbnails and macros are JPEG


@pytest.fixture(params=COMPAT_SLIDES)
def pair(request):
    """(SlideFile, openslide.OpenSlide, ats_wsi Slide opened with backend auto)."""
    sf = request.getfixturevalue(request.param)
    osr = openslide.OpenSlide(sf.path)
    slide = open_slide(sf.path)
    yield sf, osr, slide
    slide.close()
    osr.close()


def test_associated_images_match_openslide(pair):
    sf, osr, slide = pair
    ours, theirs = slide.associated_images, osr.associated_images
    assert set(ours) == set(theirs)
    assert len(ours) == len(theirs)
    for name in theirs:
        a, b = ours[name], theirs[name]
        assert (a.mode, a.size) == (b.mode, b.size) == ("RGBA", b.size), name
        assert a.info.get("icc_profile") == b.info.get("icc_profile"), name
        pa, pb = np.asarray(a).astype(int), np.asarray(b).astype(int)
        if name in LOSSLESS_ASSOCIATED:
            np.testing.assert_array_equal(pa, pb, err_msg=f"{sf.name} {name}")
        else:  # two JPEG decoders: equal up to rounding
            assert np.abs(pa - pb).mean() < 1.0 and np.abs(pa - pb).max() <= 8, name


def test_svs_files_list_thumbnail_label_and_macro(svs_jpeg, svs_icc):
    for sf in (svs_jpeg, svs_icc):
        with open_slide(sf.path) as slide:
            assert sorted(slide.associated_images) == ["label", "macro", "thumbnail"]
            assert slide.associated_images["label"].size == (
                int(slide.properties["openslide.associated.label.width"]),
                int(slide.properties["openslide.associated.label.height"]))
            with pytest.raises(KeyError):
                slide.associated_images["nope"]


@pytest.mark.parametrize("size", [(256, 256), (300, 100), (100, 300), (1000, 1000), (64, 64), (7000, 7000)])
def test_get_thumbnail_has_openslides_size_and_pixels(pair, size):
    sf, osr, slide = pair
    a, b = slide.get_thumbnail(size), osr.get_thumbnail(size)
    assert (a.mode, a.size) == (b.mode, b.size) == ("RGB", b.size)
    assert a.info.get("icc_profile") == b.info.get("icc_profile")
    diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
    assert diff.mean() < 6.0, f"{sf.name} {size}: mean difference {diff.mean():.2f}"  # LANCZOS from another level


def test_get_thumbnail_of_a_single_level_slide_reads_a_computed_level(tiff_flat, monkeypatch):
    """openslide reads a single-level slide whole for a thumbnail; ats-wsi reads a computed level."""
    with open_slide(tiff_flat.path) as slide:
        read = []
        original = slide.read_level
        monkeypatch.setattr(slide, "read_level", lambda level, *a: read.append(level) or original(level, *a))
        thumb = slide.get_thumbnail((200, 200))
        assert thumb.size == (200, 130)
        assert read and read[0] > 0 and slide.pyramid[read[0]].computed


def test_color_profile_matches_openslide(pair):
    sf, osr, slide = pair
    ours, theirs = slide.color_profile, osr.color_profile
    assert (ours is None) == (theirs is None)
    if theirs is not None:
        assert ours.tobytes() == theirs.tobytes() == sf.extra["icc"]
        assert slide.properties["openslide.icc-size"] == str(len(sf.extra["icc"]))


def test_reads_are_as_stored_unless_srgb_is_asked_for(tiff_icc):
    from PIL import Image, ImageCms

    with open_slide(tiff_icc.path) as stored, open_slide(tiff_icc.path, srgb=True) as srgb:
        assert not stored.srgb and srgb.srgb
        raw = stored.read_region((100, 50), 0, (300, 200))
        np.testing.assert_array_equal(raw, tiff_icc.levels[0][50:250, 100:400])
        expected = np.asarray(ImageCms.profileToProfile(
            Image.fromarray(raw), stored.color_profile, ImageCms.createProfile("sRGB"), outputMode="RGB"))
        converted = srgb.read_region((100, 50), 0, (300, 200))
        assert np.abs(converted.astype(int) - expected.astype(int)).max() <= 1
        assert np.abs(converted.astype(int) - raw.astype(int)).mean() > 5  # red and green swapped back
        # every path through the slide converts: tiles, whole levels, lower levels, pickles
        np.testing.assert_array_equal(srgb.read_tile(0, 0, 0), srgb.read_region((0, 0), 0, (256, 256)))
        assert np.abs(srgb.read_level(2).astype(int) - stored.read_level(2).astype(int)).mean() > 5
        again = pickle.loads(pickle.dumps(srgb))
        assert again.srgb
        np.testing.assert_array_equal(again.read_region((100, 50), 0, (300, 200)), converted)
        again.close()


def test_srgb_on_a_slide_without_a_profile_reads_as_stored(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path, srgb=True) as slide:
        assert slide.color_profile is None and not slide.srgb
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (64, 32)),
                                      tiff_pyramid_deflate.levels[0][:32, :64])


def test_detect_format_matches_openslide(pair):
    sf, osr, slide = pair
    expected = openslide.OpenSlide.detect_format(sf.path)
    assert detect_format(sf.path) == slide.detect_format(sf.path) == type(slide).detect_format(sf.path) == expected
    assert slide.properties["openslide.vendor"] == expected


@pytest.mark.parametrize("name, expected", [("tiff_strips", "generic-tiff"), ("ome_zarr_v04", "ome-zarr"),
                                            ("zarr_levels", "zarr")])
def test_detect_format_names_what_only_ats_wsi_reads(slide_file, name, expected):
    assert detect_format(slide_file(name).path) == expected


def test_detect_format_is_none_for_what_no_backend_reads(bad_inputs):
    for key in ("missing", "text_file", "png_file", "zero_bytes", "empty_dir"):
        assert detect_format(bad_inputs[key]) is None, key


def test_zarr_slides_have_no_associated_images_and_no_profile(ome_zarr_v04):
    with open_slide(ome_zarr_v04.path) as slide:
        assert dict(slide.associated_images) == {} and slide.color_profile is None
        assert slide.get_thumbnail((100, 100)).size == (100, 67)
