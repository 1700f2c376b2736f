"""The nvImageCodec read path (``PatchReader(decoder="nvimgcodec")``): the default reader's
pixels within JPEG tolerance, on its CPU backend here and on the GPU where one is.

JPEG tolerance, stated once: per batch, max |a - b| <= MAX_ABS and mean |a - b| < MEAN_ABS
over every pixel and channel. On nvImageCodec's CPU backend (libjpeg-turbo, like the native
reader) the measured difference is 0; on the GPU nvJPEG's IDCT and chroma upsampling differ
from libjpeg-turbo's by a few levels, hence the looser GPU bound.

Tests that need nvImageCodec skip when it is not installed (``pip install 'ats-wsi[gpu]'``, or
``nvidia-nvimgcodec-cu12`` alone for the CPU backend); those that need CUDA skip without it.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ats_wsi import open_slide
from ats_wsi.errors import DecoderError, DecoderUnavailableError
from ats_wsi.patches import PatchReader, SlideSource
from ats_wsi.patches._nvimgcodec import device_area_resample, device_block_mean
from ats_wsi.patches.reader import plan_tiles
from ats_wsi.patches._resample import area_weights, block_mean, region_size, resample_area
from test_crop_decode import _abbreviate  # the JPEG tables splitter of the crop-decode tests

MAX_ABS, MEAN_ABS = 2, 0.1  # CPU backend (measured: 0 and 0)
GPU_MAX_ABS, GPU_MEAN_ABS = 16, 1.0  # nvJPEG against libjpeg-turbo
PATCH_WH = (96, 80)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def nv():
    return pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed (pip install "
                                                           "nvidia-nvimgcodec-cu12)")


@pytest.fixture(scope="module")
def aperio_tables(base_image, tmp_path_factory) -> str:
    """An Aperio-style SVS as Aperio writes it: photometric RGB (2), abbreviated JPEG tiles in RGB
    colour space without JFIF, one shared JPEGTables tag; 1000 x 700, 240 tiles, MPP 0.5."""
    import imagecodecs
    import tifffile

    img = np.ascontiguousarray(base_image[0][300:1000, 1200:2200])
    tile, tables, tiles = 240, None, []
    for r in range(0, img.shape[0], tile):
        for c in range(0, img.shape[1], tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = img[r:r + tile, c:c + tile]
            block[:part.shape[0], :part.shape[1]] = part
            t, body = _abbreviate(imagecodecs.jpeg8_encode(block, level=90, colorspace="RGB", outcolorspace="RGB"))
            tables = tables or t
            tiles.append(body)
    h, w = img.shape[:2]
    path = str(tmp_path_factory.mktemp("nv") / "aperio_tables.svs")
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter(tiles), shape=img.shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                  compression="jpeg", extratags=[(347, 7, len(tables), tables, True)], metadata=None,
                  description=f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                              "JPEG/RGB Q=90|AppMag = 20|MPP = 0.5")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # tifffile writes JPEG as YCbCr; Aperio says RGB
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(2)
    return path


def _slide_path(request, name: str) -> str:
    if name == "aperio_tables":
        return request.getfixturevalue("aperio_tables")
    return request.getfixturevalue(name).path


def _assert_close(got: torch.Tensor, want: torch.Tensor, max_abs=MAX_ABS, mean_abs=MEAN_ABS, what=""):
    assert got.shape == want.shape and got.dtype == want.dtype == torch.uint8, what
    diff = (got.cpu().int() - want.cpu().int()).abs()
    assert diff.max().item() <= max_abs and diff.float().mean().item() < mean_abs, \
        f"{what}: max {diff.max().item()}, mean {diff.float().mean().item():.3f}"


# ------------------------------------------------------------------ without nvImageCodec


def test_an_unknown_decoder_is_a_typed_error_naming_the_choices(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide, pytest.raises(DecoderError, match="nvimgcodec") as info:
        PatchReader(slide, 0, 64, decoder="nvjpeg")
    assert vips_jpeg.path in str(info.value) and "'nvjpeg'" in str(info.value)


def test_auto_on_cpu_is_the_native_reader_and_imports_nothing(vips_jpeg):
    code = ("import sys; from ats_wsi import open_slide; from ats_wsi.patches import PatchReader\n"
            f"r = PatchReader(open_slide({vips_jpeg.path!r}), 0, 64); r.read([[0, 0]])\n"
            "print(r.decoder, 'nvidia.nvimgcodec' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["native", "False"], done.stderr


def test_nvimgcodec_asked_for_but_missing_says_how_to_install(vips_jpeg, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # what Python does for a missing module
    with open_slide(vips_jpeg.path) as slide:
        with pytest.raises(DecoderUnavailableError, match=r"ats-wsi\[gpu\]"):
            PatchReader(slide, 0, 64, decoder="nvimgcodec")
        assert PatchReader(slide, 0, 64, decoder="auto", device="cpu").decoder == "native"


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_device_block_mean_is_the_cpu_block_mean_exactly(factor):
    rng = np.random.default_rng(factor)
    region = rng.integers(0, 256, (3, 7 * factor, 5 * factor, 3), dtype=np.uint8)
    want = np.empty((3, 7, 5, 3), np.uint8)
    block_mean(region, factor, want)
    got = device_block_mean(torch.from_numpy(region), factor)
    assert got.shape == (3, 3, 7, 5)
    np.testing.assert_array_equal(got.movedim(1, -1).numpy(), want)


@pytest.mark.parametrize("factor", [1.2, 2.4, 0.7])
def test_device_area_resample_is_the_cpu_area_filter_within_one_level(factor):
    rng = np.random.default_rng(int(factor * 10))
    w, h = 33, 21
    rw, rh = region_size((w, h), factor)
    region = rng.integers(0, 256, (2, rh, rw, 3), dtype=np.uint8)
    wx, wy = area_weights(w, factor), area_weights(h, factor)
    want = np.empty((2, h, w, 3), np.uint8)
    resample_area(region, wx, wy, want)
    got = device_area_resample(torch.from_numpy(region), wx, wy).movedim(1, -1).numpy()
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# ------------------------------------------------------------------ CPU backend


SLIDES = ["vips_jpeg", "svs_jpeg", "vips_svs", "svs_icc", "aperio_tables"]


def test_the_aperio_fixture_is_rgb_jpeg_with_tables_and_nvimgcodec_reads_it_as_openslide_does(nv, aperio_tables):
    import openslide
    import tifffile

    with tifffile.TiffFile(aperio_tables) as tif:
        page = tif.pages[0]
        assert (page.photometric, page.compression) == (2, 7) and page.jpegtables and not page.is_jfif
    xy = [[0, 0], [230, 230], [950, 650]]
    with open_slide(aperio_tables) as slide, PatchReader(slide, 0, 64, decoder="nvimgcodec") as reader:
        got = reader.read(xy)
    with openslide.OpenSlide(aperio_tables) as osr:
        want = np.stack([np.asarray(osr.read_region(p, 0, (64, 64)))[:, :, :3] for p in xy])
    inside = np.ones(want.shape[:3], bool)
    inside[2, 50:, :] = inside[2, :, 50:] = False  # openslide's transparent fill past the edge is not ours
    _assert_close(got.movedim(1, -1)[torch.from_numpy(inside)], torch.from_numpy(want[inside]), what="openslide")


@pytest.mark.parametrize("name", SLIDES)
def test_patches_equal_the_native_readers_at_every_stored_level(nv, request, name, patch_helpers):
    """Random boxes, boxes across tile edges and corners, slide borders, boxes outside, overlaps."""
    rng = np.random.default_rng(len(name))
    with open_slide(_slide_path(request, name)) as slide:
        for level in range(slide.level_count):
            ds = slide.level_downsamples[level]
            origin = patch_helpers.edge_boxes(rng, slide.level_dimensions[level], slide.tile_size(level), PATCH_WH)
            xy = patch_helpers.to_level0(origin, ds)
            native = PatchReader(slide, level, PATCH_WH, decoder="native")
            with PatchReader(slide, level, PATCH_WH, decoder="nvimgcodec") as reader:
                assert reader.decoder == "nvimgcodec"
                got, want = reader.read(xy), native.read(xy)
                assert got.stride() == want.stride()
                _assert_close(got, want, what=f"{name} level {level}")
                assert reader._nv.fallback_tiles == 0
                tiles = patch_helpers.tiles_under(origin, PATCH_WH, slide.tile_size(level),
                                                  slide.level_dimensions[level])
                assert reader.stats.tiles_decoded == len(tiles)  # each needed tile once per batch


@pytest.mark.parametrize("name, mpp", [("vips_jpeg", 0.5), ("vips_jpeg", 0.6), ("svs_jpeg", 1.0), ("svs_jpeg", 1.3)])
def test_patches_at_a_physical_resolution_equal_the_native_readers(nv, request, name, mpp, patch_helpers):
    """vips_jpeg (0.25 µm/px, levels 1, 2, 4, ...): 0.5 is level 1, 0.6 an area filter (factor 1.2) of it;
    svs_jpeg (0.499 µm/px, levels 1, 4, 16): 1.0 is a 2 x 2 block mean of level 0, 1.3 an area filter."""
    rng = np.random.default_rng(7)
    with open_slide(_slide_path(request, name)) as slide:
        xy = patch_helpers.edge_boxes(rng, slide.dimensions, (256, 256), (200, 200))
        native = PatchReader(slide, patch_size=PATCH_WH, mpp=mpp, decoder="native")
        with PatchReader(slide, patch_size=PATCH_WH, mpp=mpp, decoder="nvimgcodec") as reader:
            _assert_close(reader.read(xy), native.read(xy), what=f"mpp {mpp}")
            # the GPU path's own assembly and resampling, run here on host tensors
            origin = reader.level_origin(xy)
            plan = plan_tiles(origin, reader.region_wh, reader.tile_wh, reader.level_wh)
            batch, tiles, _ = reader._nv.read_batch(plan, len(origin), reader)
            _assert_close(batch, native.read(xy), max_abs=1, what=f"torch path, mpp {mpp}")
            assert batch.is_contiguous(memory_format=torch.channels_last) and tiles == len(plan)


def test_tiles_nvimgcodec_refuses_are_decoded_by_the_slide(nv, tmp_path, base_image):
    """tifffile labels RGB-colour-space JPEG tiles YCbCr 2x2; libtiff refuses them, the slide reads them."""
    import imagecodecs
    import tifffile

    img = np.ascontiguousarray(base_image[0][:300, :400])
    tiles = []
    for r in range(0, 300, 128):
        for c in range(0, 400, 128):
            block = np.zeros((128, 128, 3), np.uint8)
            part = img[r:r + 128, c:c + 128]
            block[:part.shape[0], :part.shape[1]] = part
            tiles.append(imagecodecs.jpeg8_encode(block, level=90, colorspace="RGB", outcolorspace="RGB"))
    path = str(tmp_path / "mislabelled.tif")
    tifffile.imwrite(path, iter(tiles), shape=img.shape, dtype=np.uint8, tile=(128, 128), photometric="rgb",
                     compression="jpeg", metadata=None)
    with open_slide(path) as slide, PatchReader(slide, 0, 100, decoder="nvimgcodec") as reader:
        xy = [[0, 0], [120, 100], [350, 250]]
        np.testing.assert_array_equal(reader.read(xy).numpy(), PatchReader(slide, 0, 100, decoder="native").read(xy))
        assert reader._nv.fallback_tiles == reader.stats.tiles_decoded > 0


def _read_in_child(reader, xy, queue):
    queue.put(reader.read(xy).numpy())


def test_a_reader_used_before_a_fork_reads_the_same_pixels_in_the_child(nv, vips_jpeg):
    """The child opens its own decoder and code stream. (On a 2-core machine the CPU backend runs
    one thread and would survive sharing too; with more cores its thread pool would not.)"""
    import multiprocessing

    xy = [[100, 200], [3000, 1500], [4900, 2900]]
    with open_slide(vips_jpeg.path) as slide, PatchReader(slide, 0, 64, workers=1, decoder="nvimgcodec") as reader:
        want = reader.read(xy).numpy()
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_read_in_child, args=(reader, xy, queue))
        child.start()
        got = queue.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["deflate", "computed level", "srgb", "openslide backend"])
def test_nvimgcodec_for_a_level_it_cannot_decode_is_a_typed_error_and_auto_falls_back(
        nv, case, tiff_pyramid_deflate, tiff_flat, svs_icc):
    path, level, kwargs = {"deflate": (tiff_pyramid_deflate.path, 0, {}),
                           "computed level": (tiff_flat.path, 1, {}),
                           "srgb": (svs_icc.path, 0, {"srgb": True}),
                           "openslide backend": (svs_icc.path, 0, {"backend": "openslide"})}[case]
    with open_slide(path, **kwargs) as slide:
        with pytest.raises(DecoderError, match="decoder='auto'") as info:
            PatchReader(slide, level, 64, decoder="nvimgcodec")
        assert path in str(info.value)
        assert PatchReader(slide, level, 64, decoder="auto", device="cpu").decoder == "native"


def test_slide_source_passes_the_decoder_to_its_readers(nv, vips_jpeg, svs_jpeg):
    with open_slide(vips_jpeg.path) as a, open_slide(svs_jpeg.path) as b:
        xy = torch.tensor([[[0, 0], [300, 200], [-20, 40]], [[5, 5], [700, 400], [1000, 600]]])
        sources = [SlideSource([a, b], 1, low_downsample=16, decoder=d) for d in ("nvimgcodec", "native")]
        got, want = (s.extract(xy, PATCH_WH) for s in sources)
        assert {r.decoder for r in sources[0]._owned} == {"nvimgcodec"}
        _assert_close(got, want, what="SlideSource")


# ------------------------------------------------------------------ CUDA


@cuda
@pytest.mark.parametrize("name", ["vips_jpeg", "svs_jpeg", "aperio_tables"])
def test_cuda_batches_are_decoded_on_the_gpu_and_match_the_cpu_reader(nv, request, name, patch_helpers):
    rng = np.random.default_rng(3)
    with open_slide(_slide_path(request, name)) as slide:
        xy = patch_helpers.edge_boxes(rng, slide.dimensions, slide.tile_size(0), PATCH_WH)
        with PatchReader(slide, 0, PATCH_WH, device="cuda") as reader:
            assert reader.decoder == "nvimgcodec"  # "auto" on CUDA
            got = reader.read(xy)
            assert got.device.type == "cuda" and got.is_contiguous(memory_format=torch.channels_last)
            _assert_close(got, PatchReader(slide, 0, PATCH_WH).read(xy), GPU_MAX_ABS, GPU_MEAN_ABS, name)


@cuda
@pytest.mark.parametrize("mpp", [0.5, 0.6])
def test_cuda_resampling_on_the_device_matches_the_cpu_reader(nv, vips_jpeg, mpp, patch_helpers):
    rng = np.random.default_rng(4)
    with open_slide(vips_jpeg.path) as slide:
        xy = patch_helpers.edge_boxes(rng, slide.dimensions, (256, 256), (200, 200))
        with PatchReader(slide, patch_size=PATCH_WH, mpp=mpp, device="cuda") as reader:
            got = reader.read(xy)
            assert got.device.type == "cuda"
            want = PatchReader(slide, patch_size=PATCH_WH, mpp=mpp).read(xy)
            _assert_close(got, want, GPU_MAX_ABS, GPU_MEAN_ABS, f"mpp {mpp}")


@cuda
def test_cuda_slide_source_mixes_gpu_decoded_and_pinned_slides(nv, vips_jpeg, tiff_pyramid_deflate):
    """A JPEG slide decodes on the GPU; a deflate one goes the CPU way (pinned, non_blocking)."""
    with open_slide(vips_jpeg.path) as a, open_slide(tiff_pyramid_deflate.path) as b:
        xy = torch.tensor([[[0, 0], [300, 200]], [[5, 5], [700, 400]]])
        source = SlideSource([a, b], 0, low_downsample=16, device="cuda")
        got = source.extract(xy, PATCH_WH)
        assert got.device.type == "cuda"
        assert [source.reader(k, PATCH_WH).decoder for k in range(2)] == ["nvimgcodec", "native"]
        want = SlideSource([a, b], 0, low_downsample=16).extract(xy, PATCH_WH)
        _assert_close(got, want, GPU_MAX_ABS, GPU_MEAN_ABS, "SlideSource on CUDA")


@cuda
def test_a_slide_input_for_a_cuda_model_decodes_on_the_gpu(nv, vips_jpeg, tiff_pyramid_deflate):
    from ats_wsi.classifier import ModelConfig
    from ats_wsi.classifier.inputs import SlideInput

    config = ModelConfig(patch_level=0, patch_size=64)
    with SlideInput(vips_jpeg.path, config, device="cuda") as a, SlideInput(tiff_pyramid_deflate.path, config,
                                                                           device="cuda") as b:
        assert (a.reader.decoder, b.reader.decoder) == ("nvimgcodec", "native")
        assert a.source("cuda").extract(torch.tensor([[[0, 0]]]), 64).device.type == "cuda"
