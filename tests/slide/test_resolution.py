"""Physical resolution of a slide (issue 16): the level that serves a µm/px, and magnification."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ats_wsi.errors import ResolutionError
from ats_wsi.slide import open_slide
from ats_wsi.slide.resolution import (
    format_magnification, magnification_to_mpp, mpp_to_magnification, objective_power, resolution_plan,
)


def test_magnification_follows_tridents_rule():
    assert magnification_to_mpp(20) == 0.5 and magnification_to_mpp(40) == 0.25
    assert mpp_to_magnification(0.25) == 40 and mpp_to_magnification(0.5) == 20
    with pytest.raises(ValueError):
        magnification_to_mpp(0)


@pytest.mark.parametrize("value, estimated, text", [
    (40.0, False, "40x"), (20, False, "20x"), (2.5, False, "2.5x"), (39.99, True, "40x (est.)"),
    (19.79, True, "19.8x (est.)"), (None, True, "-"),
])
def test_magnification_is_written_like_40x(value, estimated, text):
    assert format_magnification(value, estimated) == text


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_objective_power_comes_from_aperio_appmag_when_stored(svs_jpeg, backend):
    with open_slide(svs_jpeg.path, backend=backend) as slide:
        assert objective_power(slide) == (20.0, False)  # AppMag = 20 (its MPP = 0.499 would say 20.04)


def test_objective_power_is_estimated_from_mpp_otherwise(tiff_pyramid_deflate, tiff_flat):
    with open_slide(tiff_pyramid_deflate.path) as slide:  # 0.25 µm/px, no objective power stored
        assert objective_power(slide) == (40.0, True)
        assert format_magnification(*objective_power(slide)) == "40x (est.)"
    with open_slide(tiff_flat.path) as slide:
        assert objective_power(slide) == (None, True)
        slide.mpp = 0.5
        assert format_magnification(*objective_power(slide)) == "20x (est.)"


def test_the_coarsest_stored_level_at_least_as_fine_serves_a_resolution(svs_jpeg):
    # levels at 1, 4, 16 of 0.499 µm/px: 1.996 and 7.984 µm/px (the tolerance absorbs 0.499 vs 0.5)
    with open_slide(svs_jpeg.path) as slide:
        expect = {0.5: (0, 1), 1.0: (0, 2), 1.5: (0, 3), 2.0: (1, 1), 4.0: (1, 2), 6.0: (1, 3), 8.0: (2, 1),
                  16.0: (2, 2)}
        for mpp, (level, factor) in expect.items():
            plan = resolution_plan(slide, mpp)
            assert (plan.level, plan.factor) == (level, factor), mpp
            assert plan.read_mpp == pytest.approx(mpp, rel=0.05)
        plan = resolution_plan(slide, 0.75)  # 1.503 from level 0: no integer within 5 %
        assert plan.level == 0 and plan.factor == pytest.approx(0.75 / 0.499) and not plan.integer
        with pytest.raises(ResolutionError, match=r"0\.3 µm/px are finer than the slide's level 0 \(0\.499 µm/px"):
            resolution_plan(slide, 0.3)
        assert resolution_plan(slide, 0.3, upsample=True).factor == pytest.approx(0.3 / 0.499)


def test_info_shows_mpp_and_magnification_and_takes_mpp_for_slides_without(svs_jpeg, tiff_flat, vips_jpeg):
    cmd = [sys.executable, "-m", "ats_wsi.cli", "info"]
    out = subprocess.run([*cmd, svs_jpeg.path, vips_jpeg.path, tiff_flat.path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()[2:]}
    assert "magnification" in out.stdout.splitlines()[0]
    assert " 0.499 " in lines[svs_jpeg.path] and " 20x " in lines[svs_jpeg.path]
    assert " 0.25 " in lines[vips_jpeg.path] and " 40x (est.) " in lines[vips_jpeg.path]
    assert lines[tiff_flat.path].split()[-3:-1] == ["-", "-"]  # mpp, magnification unknown
    given = subprocess.run([*cmd, "--mpp", "0.5", tiff_flat.path], capture_output=True, text=True)
    assert given.returncode == 0, given.stderr
    assert "0.5 (given)" in given.stdout and "20x (est.)" in given.stdout
    bad = subprocess.run([*cmd, "--mpp", "-1", tiff_flat.path], capture_output=True, text=True)
    assert bad.returncode == 2 and "--mpp must be a number > 0" in bad.stderr


def test_a_given_mpp_shows_in_properties_and_survives_pickling(tiff_flat):
    import pickle

    with open_slide(tiff_flat.path, mpp=0.25) as slide:
        assert slide.mpp_xy == (0.25, 0.25) and slide.properties["openslide.mpp-y"] == "0.25"
        back = pickle.loads(pickle.dumps(slide))
        assert back.mpp == 0.25 and back.mpp_given
        np.testing.assert_array_equal(back.read_region((5, 5), 0, (8, 8)), slide.read_region((5, 5), 0, (8, 8)))
        back.close()
    with pytest.raises(ResolutionError, match="mpp must be a number > 0"):
        open_slide(tiff_flat.path, mpp=0)


def test_an_absurd_mpp_in_metadata_is_not_believed_and_reads_say_which_tag(tmp_path):
    import tifffile

    from ats_wsi.errors import ResolutionError
    from ats_wsi.patches import PatchReader

    img = np.full((256, 384, 3), 200, np.uint8)
    path = tmp_path / "tiny-mpp.svs"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb",
                     description="Aperio Image Library v12.0.0\r\n384x256 [0,0 384x256] (128x128)|MPP = 1e-7")
    with open_slide(path, backend="tifffile") as slide:
        assert slide.mpp is None and slide.mpp_rejected == (1e-7, "Aperio ImageDescription 'MPP'")
        with pytest.raises(ResolutionError, match=r"Aperio ImageDescription 'MPP' says 1e-07 µm/px, outside the "
                                                  r"plausible 0.01–1000 µm/px.*open_slide\(path, mpp=\.\.\.\)"):
            PatchReader(slide, patch_size=64, mpp=0.5)
        slide.mpp = 0.25  # the fix the message names
        assert slide.mpp == 0.25 and slide.mpp_rejected is None
    for bad in (1e-6, 1e-300, 5000.0):
        with pytest.raises(ResolutionError, match="outside the plausible"):
            open_slide(path, mpp=bad)
