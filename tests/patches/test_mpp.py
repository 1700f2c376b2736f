"""PatchReader at a physical resolution (issue 16): patches in µm/px from any slide.

The same tissue is written by independent writers: at 0.25 µm/px with levels
at 1, 4 and 16 only (tifffile, X/YResolution in pixels per centimetre: no
level at 0.5 µm/px), and as its 2 x 2 box shrink at 0.5 µm/px (libvips
``shrink``, ``xres`` in pixels per millimetre). Patches at 0.5 µm/px must
agree within JPEG tolerance; on a lossless (deflate) slide they must equal
the 2 x 2 mean of level 0 exactly.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from ats_wsi.errors import ResolutionError, SlideError
from ats_wsi.patches import PatchReader, SlideSource
from ats_wsi.slide import open_slide
from ats_wsi.slide.resolution import resolution_plan

W0, H0 = 3200, 2400  # level 0 at 0.25 µm/px: not square, so x and y cannot be swapped
# JPEG tolerance (grey levels, per channel). The test tissue carries +-7 grey levels of
# per-pixel noise and 6-px nuclei, which JPEG Q90 does not keep. Measured at 0.5 µm/px:
# the 0.25 slide's 2 x 2 means are 2.26 (mean |error|) from the exact mean of the written
# array, the libvips slide's level 0 is 1.92 from it, and the two differ by 2.58 on average
# (99th percentile 15, worst pixel 47). At 1 and 2 µm/px each side reads a coarser pyramid
# level its own writer made and JPEG-encoded (1.8-4.3 from the truth; they differ by 3.3-5.0).
JPEG_TOLERANCE = {  # mpp: (mean |a - b|, 99th percentile |a - b|, worst pixel, mean |each - truth|)
    0.5: (3.5, 24, 64, 3.0),
    1.0: (4.5, 40, 110, 4.0),
    2.0: (6.5, 56, 130, 5.5),
}


def box_mean(img: np.ndarray, f: int) -> np.ndarray:
    """Exact f x f block mean, rounded half up (the oracle; an odd remainder dropped)."""
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    s = img[:h, :w].astype(np.uint32).reshape(h // f, f, w // f, f, 3).sum(axis=(1, 3))
    return ((s + f * f // 2) // (f * f)).astype(np.uint8)


def area_oracle(region: np.ndarray, out_wh, factor: float, upsample: int) -> np.ndarray:
    """Area resampling by brute force: repeat each pixel ``upsample`` times (so that
    ``factor * upsample`` is an integer), then take the exact block mean."""
    k = int(round(factor * upsample))
    assert abs(k - factor * upsample) < 1e-9
    w, h = out_wh
    big = np.repeat(np.repeat(region.astype(np.float64), upsample, 0), upsample, 1)[:h * k, :w * k]
    return np.floor(big.reshape(h, k, w, k, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def tissue(base_image) -> np.ndarray:
    return np.ascontiguousarray(base_image[0][:H0, :W0])


def _write_tifffile(path, tissue, mpp, compression, extra=None):
    import tifffile

    levels = [tissue, box_mean(tissue, 4), box_mean(tissue, 16)]
    ppcm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tw:
        for k, lv in enumerate(levels):
            tw.write(lv, tile=(256, 256), compression=compression, photometric="rgb", metadata=None,
                     subfiletype=1 if k else 0, resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                     **(extra or {}))
    return str(path)


@pytest.fixture(scope="module")
def at_025_jpeg(tissue, tmp_path_factory) -> str:
    """tifffile, JPEG Q90, 0.25 µm/px, levels 1/4/16 (no 0.5 µm/px level)."""
    return _write_tifffile(tmp_path_factory.mktemp("mpp") / "t025.tif", tissue, 0.25, "jpeg",
                           {"compressionargs": {"level": 90}})


@pytest.fixture(scope="module")
def at_025_deflate(tissue, tmp_path_factory) -> str:
    """tifffile, deflate (lossless), 0.25 µm/px, levels 1/4/16."""
    return _write_tifffile(tmp_path_factory.mktemp("mpp") / "t025_deflate.tif", tissue, 0.25, "deflate")


@pytest.fixture(scope="module")
def at_050_vips(tissue, tmp_path_factory) -> str:
    """libvips: the 2 x 2 box shrink of the same tissue, JPEG Q90 pyramid, 0.5 µm/px = 2000 px/mm."""
    import pyvips

    path = str(tmp_path_factory.mktemp("mpp") / "v050.tif")
    image = pyvips.Image.new_from_array(tissue, interpretation="srgb").shrink(2, 2)
    image.tiffsave(path, tile=True, pyramid=True, compression="jpeg", Q=90, tile_width=256, tile_height=256,
                   xres=2000.0, yres=2000.0, resunit="cm")
    return path


def _corners(rng, n, w0, h0, size0, step=2):
    """n level-0 top-left corners (multiples of ``step``) of boxes of ``size0`` inside the slide."""
    xs = rng.integers(0, (w0 - size0) // step, n) * step
    ys = rng.integers(0, (h0 - size0) // step, n) * step
    return np.stack([xs, ys], axis=1)


def _nhwc(batch) -> np.ndarray:
    return batch.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------ independent writers agree


@pytest.mark.parametrize("mpp, patch", [(0.5, 96), (1.0, 64), (2.0, 48)])
def test_the_same_tissue_at_025_and_050_gives_the_same_patches(at_025_jpeg, at_050_vips, tissue, mpp, patch):
    with open_slide(at_025_jpeg) as s25, open_slide(at_050_vips) as s50:
        assert (s25.mpp, s50.mpp) == (pytest.approx(0.25), pytest.approx(0.5))
        assert s25.dimensions == (W0, H0) and s50.dimensions == (W0 // 2, H0 // 2)
        r25 = PatchReader(s25, patch_size=patch, mpp=mpp, workers=2)
        r50 = PatchReader(s50, patch_size=patch, mpp=mpp, workers=2)
        assert r25.downsample == pytest.approx(mpp / 0.25) and r50.downsample == pytest.approx(mpp / 0.5)
        if mpp == 0.5:  # no 0.5 level at 0.25: the 2 x 2 mean of level 0; at 0.5: level 0 as it is
            assert (r25.level, r25.factor, r50.level, r50.factor) == (0, 2, 0, 1)
        xy25 = _corners(np.random.default_rng(int(mpp * 10)), 24, W0, H0, int(patch * mpp / 0.25), step=4)
        a = _nhwc(r25.read(xy25)).astype(np.int16)
        b = _nhwc(r50.read(xy25 // 2)).astype(np.int16)  # the same places in the other slide's level 0
        diff = np.abs(a - b)
        mean_tol, p99_tol, max_tol, truth_tol = JPEG_TOLERANCE[mpp]
        assert diff.mean() < mean_tol, diff.mean()
        assert np.percentile(diff, 99) <= p99_tol and diff.max() <= max_tol, (np.percentile(diff, 99), diff.max())
        # and both are the tissue: against the exact mean of the written array
        f = int(round(mpp / 0.25))
        truth = np.stack([box_mean(tissue[y:y + patch * f, x:x + patch * f], f) for x, y in xy25.tolist()])
        assert np.abs(a - truth).mean() < truth_tol
        assert np.abs(b - truth).mean() < truth_tol
        r25.close(), r50.close()


# ------------------------------------------------------------------ exact on a lossless slide


def test_on_a_lossless_slide_05_is_exactly_the_2x2_mean_of_level_0(at_025_deflate, tissue, patch_helpers):
    patch = 224
    with open_slide(at_025_deflate) as slide:
        reader = PatchReader(slide, patch_size=patch, mpp=0.5, workers=3)
        assert (reader.level, reader.factor, reader.region_wh) == (0, 2, (448, 448))
        counter = patch_helpers.TileCounter(slide)
        rng = np.random.default_rng(5)
        xy = np.concatenate([
            _corners(rng, 12, W0, H0, 2 * patch, step=1),  # odd corners too
            [[0, 0], [W0 - 2 * patch, H0 - 2 * patch], [-101, 37], [W0 - 300, H0 - 77], [W0 + 5, 0]],
        ])
        got = _nhwc(reader.read(xy))
        padded = np.zeros((H0 + 4000, W0 + 4000, 3), np.uint8)  # outside the slide: FILL_VALUE 0
        padded[2000:2000 + H0, 2000:2000 + W0] = tissue
        for (x, y), patch_px in zip(xy.tolist(), got):
            region = padded[2000 + y:2000 + y + 2 * patch, 2000 + x:2000 + x + 2 * patch]
            np.testing.assert_array_equal(patch_px, box_mean(region, 2), err_msg=f"patch at {(x, y)}")
        # each tile under the boxes decoded exactly once, all at level 0; pixels counted there
        need = patch_helpers.tiles_under(xy[:-1], (448, 448), (256, 256), (W0, H0))  # the last is outside
        assert set(counter.calls) == {(0, c, r) for c, r in need}
        assert set(counter.calls.values()) == {1}
        assert reader.stats.tiles_decoded == len(need)
        sizes = [min(256, W0 - 256 * c) * min(256, H0 - 256 * r) for c, r in need]
        assert reader.stats.pixels_read == sum(sizes)
        reader.close()


@pytest.mark.parametrize("mpp, level, factor, upsample", [
    (0.3125, 0, 1.25, 4),  # between levels 0 and 1: area filter with fractional weights
    (0.4, 0, 1.6, 5),
    (1.5, 1, 1.5, 2),  # from level 1 (1.0 µm/px)
    (6.0, 2, 1.5, 2),  # from level 2 (4.0 µm/px)
    (3.0, 1, 3, 1),  # an integer factor from level 1: exact 3 x 3 mean
])
def test_other_ratios_are_the_exact_area_mean_of_the_finer_level(at_025_deflate, mpp, level, factor, upsample):
    patch = 40
    with open_slide(at_025_deflate) as slide:
        reader = PatchReader(slide, patch_size=(patch, patch + 8), mpp=mpp, workers=2)
        assert (reader.level, reader.factor) == (level, pytest.approx(factor))
        ds = slide.level_downsamples[level]
        xy = _corners(np.random.default_rng(1), 6, W0, H0, int(patch * mpp / 0.25) + 64, step=int(ds))
        got = _nhwc(reader.read(xy))
        assert got.shape == (6, patch + 8, patch, 3)
        for (x, y), patch_px in zip(xy.tolist(), got):
            region = slide.read_region((x, y), level, reader.region_wh)
            np.testing.assert_array_equal(patch_px, area_oracle(region, (patch, patch + 8), factor, upsample))


# ------------------------------------------------------------------ tolerance and errors


def _slide_at(tmp_path, tissue, mpp, name="s.tif"):
    return _write_tifffile(tmp_path / name, np.ascontiguousarray(tissue[:800, :1200]), mpp, "deflate")


def test_within_the_tolerance_a_level_is_read_as_it_is_and_a_ratio_snaps(tmp_path, tissue):
    with open_slide(_slide_at(tmp_path, tissue, 0.2527)) as slide:
        assert slide.mpp == pytest.approx(0.2527)
        at_025 = PatchReader(slide, patch_size=64, mpp=0.25)
        assert (at_025.level, at_025.factor) == (0, 1)  # 0.2527 is read as 0.25: no resampling
        xy = np.array([[10, 20], [333, 101]])
        for (x, y), p in zip(xy.tolist(), _nhwc(at_025.read(xy))):
            np.testing.assert_array_equal(p, slide.read_region((x, y), 0, (64, 64)))
        at_05 = PatchReader(slide, patch_size=64, mpp=0.5)
        assert (at_05.level, at_05.factor, at_05.downsample) == (0, 2, 2)  # the exact 2 x 2 mean
        assert at_05.resolution.read_mpp == pytest.approx(0.5054)
        strict = PatchReader(slide, patch_size=64, mpp=0.5, mpp_tolerance=0.001)
        assert strict.factor == pytest.approx(0.5 / 0.2527)  # no snapping: area filter
        coarse = PatchReader(slide, patch_size=32, mpp=1.0)
        assert (coarse.level, coarse.factor) == (1, 1)  # level 1 is at 1.0108 µm/px: within 5 %


def test_a_target_finer_than_level_0_is_a_typed_error_unless_upsampling(tmp_path, tissue):
    path = _slide_at(tmp_path, tissue, 0.5)
    with open_slide(path) as slide:
        with pytest.raises(ResolutionError) as info:
            PatchReader(slide, patch_size=64, mpp=0.25)
        message = str(info.value)
        assert path in message and "0.25 µm/px" in message and "0.5 µm/px" in message
        assert isinstance(info.value, SlideError) and isinstance(info.value, ValueError)
        assert info.value.path == path
        PatchReader(slide, patch_size=64, mpp=0.48)  # within 5 %: level 0 as it is
        up = PatchReader(slide, patch_size=64, mpp=0.25, upsample=True)
        assert (up.level, up.factor, up.region_wh) == (0, 0.5, (32, 32))
        got = _nhwc(up.read([[100, 40]]))[0]
        region = slide.read_region((100, 40), 0, (32, 32))
        np.testing.assert_array_equal(got, np.repeat(np.repeat(region, 2, 0), 2, 1))  # pixels repeated
        with pytest.raises(TypeError, match="level or an mpp"):
            PatchReader(slide, 1, 64, mpp=0.5)
        for bad in (0, -1.0, float("nan"), "x"):
            with pytest.raises(ResolutionError, match="must be a number > 0"):
                PatchReader(slide, patch_size=64, mpp=bad)
        with pytest.raises(ResolutionError, match="tolerance"):
            PatchReader(slide, patch_size=64, mpp=0.5, mpp_tolerance=1.5)


def test_a_slide_without_mpp_needs_one_given_and_keeps_it(tmp_path, tissue):
    import tifffile

    path = str(tmp_path / "nompp.tif")
    tifffile.imwrite(path, np.ascontiguousarray(tissue[:512, :768]), tile=(256, 256), photometric="rgb",
                     metadata=None, compression="deflate")
    with open_slide(path) as slide:
        assert slide.mpp is None and not slide.mpp_given
        with pytest.raises(ResolutionError) as info:
            PatchReader(slide, patch_size=64, mpp=0.5)
        assert path in str(info.value) and "no µm/px" in str(info.value) and "mpp" in str(info.value)
        slide.mpp = 0.25  # the setter
        assert slide.mpp == 0.25 and slide.mpp_given and slide.properties["openslide.mpp-x"] == "0.25"
        reader = PatchReader(slide, patch_size=64, mpp=0.5)
        assert (reader.level, reader.factor) == (0, 2)
        back = pickle.loads(pickle.dumps(slide))  # a given mpp travels to workers
        assert back.mpp == 0.25 and back.mpp_given
        back.close()
        with pytest.raises(ResolutionError):
            slide.mpp = -1
    with open_slide(path, mpp=0.5) as slide:  # open_slide's override
        assert slide.mpp == 0.5 and slide.mpp_given
        assert PatchReader(slide, patch_size=64, mpp=1.0).factor == 2
    with open_slide(path) as slide:  # pickling without a given mpp is unchanged
        assert len(pickle.dumps(slide)) < 1000 and pickle.loads(pickle.dumps(slide)).mpp is None


def test_a_level_is_never_computed_when_only_level_0_is_stored(tmp_path, tissue):
    import tifffile

    path = str(tmp_path / "flat.tif")
    img = np.ascontiguousarray(tissue[:600, :1000])
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", metadata=None, compression="deflate",
                     resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert any(lv.computed for lv in slide._levels)  # computed levels exist...
        plan = resolution_plan(slide, 1.0)
        assert (plan.level, plan.factor) == (0, 4)  # ...but the read reduces stored level 0 once
        got = _nhwc(PatchReader(slide, patch_size=32, mpp=1.0).read([[40, 80]]))[0]
        np.testing.assert_array_equal(got, box_mean(img[80:80 + 128, 40:40 + 128], 4))


# ------------------------------------------------------------------ the SlideSource frame


def test_a_slide_source_at_mpp_reads_the_level0_boxes_it_reports(at_025_deflate, at_050_vips):
    import torch

    with open_slide(at_025_deflate) as s25, open_slide(at_050_vips) as s50:
        source = SlideSource([s25, s50], low_downsample=[32.0, 16.0], mpp=0.5)
        assert source.levels == [0, 0]
        assert [source.level_downsample(b) for b in (0, 1)] == [2.0, 1.0]
        assert source.scale((10, 10)) == (16.0, 16.0)  # low pixels are 8 µm, patch pixels 0.5 µm
        xy = torch.tensor([[[10, 20], [500, 300]], [[10, 20], [500, 300]]])
        boxes = source.boxes_level0(xy, 64)
        np.testing.assert_array_equal(boxes[0].numpy(), [[20, 40, 128, 128], [1000, 600, 128, 128]])
        np.testing.assert_array_equal(boxes[1].numpy(), [[10, 20, 64, 64], [500, 300, 64, 64]])
        patches = source.extract(xy, 64).permute(0, 1, 3, 4, 2).numpy()
        for i, (x, y, w, h) in enumerate(boxes[0].tolist()):
            np.testing.assert_array_equal(patches[0, i], box_mean(s25.read_region((x, y), 0, (w, h)), 2))
        for i, (x, y, w, h) in enumerate(boxes[1].tolist()):
            np.testing.assert_array_equal(patches[1, i], s50.read_region((x, y), 0, (w, h)))
        source.close()


def test_the_level_path_is_unchanged(at_025_deflate):
    with open_slide(at_025_deflate) as slide:
        reader = PatchReader(slide, 1, 64)
        assert (reader.mpp, reader.resolution, reader.factor, reader.region_wh) == (None, None, 1.0, (64, 64))
        assert reader.downsample == reader.level_downsample == slide.level_downsamples[1]
        got = _nhwc(reader.read([[400, 800]]))[0]
        np.testing.assert_array_equal(got, slide.read_region((400, 800), 1, (64, 64)))
