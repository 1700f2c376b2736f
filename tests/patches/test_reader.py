"""PatchReader: read_region's pixels, each tile decoded once per batch, bounded memory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ats_wsi import open_slide
from ats_wsi.errors import CorruptSlideError, LevelError, RegionError
from ats_wsi.patches import PatchReader
from ats_wsi.patches.reader import TileCache, plan_tiles
from ats_wsi.slide import FILL_VALUE

# (fixture, writer, compression); all read by the tifffile backend
SLIDES = [
    ("vips_jpeg", "libvips", "jpeg"),  # 5000 x 3000, 256 tiles
    ("vips_deflate", "libvips", "deflate"),  # 2500 x 1700, 512 tiles
    ("svs_jpeg", "tifffile", "jpeg"),  # 4000 x 2400, 240 tiles, levels 1, 4, 16
    ("tiff_pyramid_deflate", "tifffile", "deflate"),  # 2999 x 1999, 256 tiles
]
PATCH_WH = (300, 170)  # (w, h): not square, not a tile multiple


def as_hwc(batch: torch.Tensor) -> np.ndarray:
    """uint8 [n, C, h, w] -> [n, h, w, C] numpy (what read_region returns per patch)."""
    return batch.permute(0, 2, 3, 1).numpy()


def reference(slide, xy0, level, patch_wh) -> np.ndarray:
    return np.stack([slide.read_region(tuple(int(v) for v in p), level, patch_wh) for p in xy0])


# ------------------------------------------------------------------ pixels


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name, writer, compression", SLIDES)
def test_patches_equal_read_region_across_tile_and_slide_edges(slide_file, patch_helpers, name, writer,
                                                               compression, level):
    sf = slide_file(name)
    rng = np.random.default_rng(hash((name, level)) % 2**32)
    with open_slide(sf.path) as slide:
        ds = slide.level_downsamples[level]
        origin = patch_helpers.edge_boxes(rng, slide.level_dimensions[level], slide.tile_size(level), PATCH_WH)
        xy0 = patch_helpers.to_level0(origin, ds)
        with PatchReader(slide, level, PATCH_WH, workers=3, cache_bytes=0) as reader:
            got = reader.read(xy0)
        assert got.shape == (len(xy0), 3, PATCH_WH[1], PATCH_WH[0]) and got.dtype == torch.uint8
        expected = reference(slide, xy0, level, PATCH_WH)
    np.testing.assert_array_equal(as_hwc(got), expected)
    assert (expected[11:14] == FILL_VALUE).all(), "boxes fully outside must be pure fill"


@pytest.mark.parametrize("name, backend", [("vips_deflate", "openslide"), ("ome_zarr_v05", "zarr"),
                                           ("tiff_flat", "tifffile")])
def test_other_backends_and_computed_levels_equal_read_region(slide_file, patch_helpers, name, backend):
    """openslide (tile-aligned block reads), zarr (200 x 300 chunks), a level computed from level 0."""
    sf = slide_file(name)
    rng = np.random.default_rng(5)
    with open_slide(sf.path, backend=backend) as slide:
        for level in (0, len(slide.pyramid) - 2):  # tiff_flat: a computed level (Slide.pyramid)
            lv = slide.pyramid[level]
            origin = patch_helpers.edge_boxes(rng, (lv.width, lv.height), slide.tile_size(level),
                                              PATCH_WH, n_random=6)
            xy0 = patch_helpers.to_level0(origin, lv.downsample)
            with PatchReader(slide, level, PATCH_WH, workers=2) as reader:
                got = reader.read(xy0)
            np.testing.assert_array_equal(as_hwc(got), reference(slide, xy0, level, PATCH_WH))


def test_openslide_jpeg_patches_match_read_region_up_to_partial_tile_decoding(vips_jpeg, patch_helpers):
    """openslide decodes only the needed part of a JPEG tile for an unaligned read_region, which
    changes chroma upsampling at the crop's border by a few levels; PatchReader decodes whole
    tiles (tile-aligned blocks), so on openslide + JPEG it equals read_region only approximately,
    and exactly where read_region is tile-aligned."""
    rng = np.random.default_rng(5)
    with open_slide(vips_jpeg.path, backend="openslide") as slide:
        origin = patch_helpers.edge_boxes(rng, slide.dimensions, slide.tile_size(0), PATCH_WH, n_random=6)
        with PatchReader(slide, 0, PATCH_WH, workers=2) as reader:
            got = as_hwc(reader.read(origin)).astype(int)
            diff = np.abs(got - reference(slide, origin, 0, PATCH_WH))
            assert diff.mean() < 0.5 and diff.max() <= 24
            aligned = np.array([[256, 512], [1024, 0]])
            np.testing.assert_array_equal(as_hwc(reader.read(aligned)), reference(slide, aligned, 0, PATCH_WH))


def test_level0_coordinates_round_to_the_nearest_level_pixel(tiff_pyramid_deflate):
    """Arbitrary level-0 corners (not multiples of the downsample) read like read_region."""
    rng = np.random.default_rng(1)
    with open_slide(tiff_pyramid_deflate.path) as slide:
        xy0 = np.stack([rng.integers(-50, 3000, 40), rng.integers(-50, 2000, 40)], axis=1)
        for level in (1, 3):
            with PatchReader(slide, level, 33, workers=1) as reader:
                np.testing.assert_array_equal(as_hwc(reader.read(xy0)), reference(slide, xy0, level, (33, 33)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-40, 140), st.integers(-40, 100)), min_size=0, max_size=12),
    st.tuples(st.integers(1, 60), st.integers(1, 60)),
    st.tuples(st.integers(1, 50), st.integers(1, 50)),
)
def test_plan_pastes_every_box_exactly(origins, patch_wh, tile_wh):
    """Executing the plan on an in-memory level gives each box cropped with zero padding."""
    lw, lh = 113, 71
    level = np.random.default_rng(0).integers(1, 255, (lh, lw), dtype=np.uint8)
    origin = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    plan = plan_tiles(origin, patch_wh, tile_wh, (lw, lh))
    (pw, ph), (tw, th) = patch_wh, tile_wh
    out = np.zeros((len(origin), ph, pw), np.uint8)
    seen = set()
    for k, (col, row) in enumerate(plan.tiles.tolist()):
        assert (col, row) not in seen
        seen.add((col, row))
        tile = level[row * th:(row + 1) * th, col * tw:(col + 1) * tw]
        for i, py0, py1, px0, px1, ty0, tx0 in plan.pairs[plan.starts[k]:plan.starts[k + 1]].tolist():
            assert not out[i, py0:py1, px0:px1].any(), "two tiles paste the same pixels"
            out[i, py0:py1, px0:px1] = tile[ty0:ty0 + py1 - py0, tx0:tx0 + px1 - px0]
    padded = np.zeros((lh + 2 * 200, lw + 2 * 200), np.uint8)
    padded[200:200 + lh, 200:200 + lw] = level
    for i, (x, y) in enumerate(origin.tolist()):
        np.testing.assert_array_equal(out[i], padded[200 + y:200 + y + ph, 200 + x:200 + x + pw])
    inside = [(x >= 0 and y >= 0 and x + pw <= lw and y + ph <= lh) for x, y in origin.tolist()]
    assert set(plan.partial.tolist()) == {i for i, ok in enumerate(inside) if not ok}


def test_output_is_a_channels_last_view_of_one_buffer(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide, PatchReader(slide, 0, (64, 48)) as reader:
        batch = reader.read([[100, 200], [4000, 10]])
        assert batch.shape == (2, 3, 48, 64)
        assert batch.is_contiguous(memory_format=torch.channels_last)
        assert batch.permute(0, 2, 3, 1).is_contiguous()
        torch.testing.assert_close(batch.contiguous(), batch, rtol=0, atol=0)
        assert batch.float().is_contiguous(memory_format=torch.channels_last)  # conv input stays NHWC
        empty = reader.read(np.zeros((0, 2), np.int64))
        assert empty.shape == (0, 3, 48, 64)


def test_bad_level_and_patch_size_are_typed_errors(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        with pytest.raises(LevelError):
            PatchReader(slide, slide.level_count, 32)
        with pytest.raises(LevelError):
            PatchReader(slide, -1, 32)
        with pytest.raises(RegionError):
            PatchReader(slide, 0, (32, 0))


# ------------------------------------------------------------------ decode once


@pytest.mark.parametrize("workers", [1, 4])
def test_each_needed_tile_is_decoded_exactly_once_per_batch(vips_jpeg, patch_helpers, workers):
    """Overlapping boxes share tiles; without a cache each tile is still read once per batch."""
    rng = np.random.default_rng(2)
    with open_slide(vips_jpeg.path) as slide:
        counter = patch_helpers.TileCounter(slide)
        for level in (0, 1):
            origin = patch_helpers.edge_boxes(rng, slide.level_dimensions[level], slide.tile_size(level), PATCH_WH)
            # many boxes in one small area: most tiles are wanted by several boxes
            origin = np.concatenate([origin, rng.integers(300, 700, (40, 2))])
            with PatchReader(slide, level, PATCH_WH, workers=workers, cache_bytes=0) as reader:
                for _ in range(2):
                    counter.reset()
                    reader.read(patch_helpers.to_level0(origin, slide.level_downsamples[level]))
                    needed = patch_helpers.tiles_under(origin, PATCH_WH, slide.tile_size(level),
                                                       slide.level_dimensions[level])
                    assert set(counter.calls) == {(level, c, r) for c, r in needed}
                    assert max(counter.calls.values()) == 1
                assert reader.stats.tiles_decoded == 2 * len(needed) and reader.stats.cache_hits == 0


def test_a_repeated_draw_is_served_by_the_cache(vips_jpeg, patch_helpers):
    rng = np.random.default_rng(3)
    xy0 = np.stack([rng.integers(0, 4700, 16), rng.integers(0, 2700, 16)], axis=1)
    with open_slide(vips_jpeg.path) as slide:
        counter = patch_helpers.TileCounter(slide)
        with PatchReader(slide, 0, 256, workers=2, cache_bytes=64 * 2**20) as reader:
            first = reader.read(xy0)
            decoded = counter.total
            assert decoded == len(patch_helpers.tiles_under(xy0, (256, 256), (256, 256), slide.dimensions))
            again = reader.read(xy0[::-1].copy())
            assert counter.total == decoded, "a repeated draw decoded tiles again"
            assert reader.stats.cache_hits == decoded
            torch.testing.assert_close(again, first.flip(0), rtol=0, atol=0)


def test_the_cache_never_holds_more_than_its_byte_bound(vips_jpeg, patch_helpers):
    tile_bytes = 256 * 256 * 3
    bound = 5 * tile_bytes + 100
    rng = np.random.default_rng(4)
    with open_slide(vips_jpeg.path) as slide:
        counter = patch_helpers.TileCounter(slide)
        with PatchReader(slide, 0, 256, workers=2, cache_bytes=bound) as reader:
            for _ in range(4):
                xy0 = np.stack([rng.integers(0, 4700, 12), rng.integers(0, 2700, 12)], axis=1)
                reader.read(xy0)
                assert reader.cache.nbytes <= bound and len(reader.cache) <= 5
            assert len(reader.cache) == 5 and counter.total > 20


def test_tile_cache_is_lru_and_charges_the_buffer_a_view_keeps_alive():
    cache = TileCache(3 * 100)
    tiles = {k: np.full((10, 10), k, np.uint8) for k in range(4)}
    for k in range(3):
        cache.put((0, k, 0), tiles[k])
    assert cache.get((0, 0, 0)) is tiles[0]  # now most recently used
    cache.put((0, 3, 0), tiles[3])  # evicts tile 1, the least recently used
    assert (0, 1, 0) not in cache and (0, 0, 0) in cache and cache.nbytes == 300
    cache.put((9, 9, 9), np.zeros(301, np.uint8))  # larger than the bound: not kept
    assert (9, 9, 9) not in cache and cache.nbytes == 300
    big = np.zeros((20, 20), np.uint8)
    cache.put((1, 0, 0), big[:5, :5])  # a 25-byte view of a 400-byte buffer
    assert (1, 0, 0) not in cache
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and TileCache(0).get((0, 0, 0)) is None


# ------------------------------------------------------------------ tile-aligned


@pytest.mark.parametrize("block", [1, 2])
def test_tile_aligned_patches_decode_exactly_their_own_tiles(vips_jpeg, patch_helpers, block):
    """Boxes on the tile grid, one tile (or a 2 x 2 block of tiles) each."""
    rng = np.random.default_rng(6)
    with open_slide(vips_jpeg.path) as slide:
        tw, th = slide.tile_size(0)
        cols, rows = slide.tile_grid(0)
        picks = rng.choice((cols - 2) * (rows - 2), 10, replace=False)
        cr = np.stack([picks % (cols - 2), picks // (cols - 2)], axis=1)
        xy0 = cr * (tw, th)
        counter = patch_helpers.TileCounter(slide)
        patch = (block * tw, block * th)
        with PatchReader(slide, 0, patch, workers=2, cache_bytes=0) as reader:
            got = reader.read(xy0)
        own = {(0, c + i, r + j) for c, r in cr.tolist() for i in range(block) for j in range(block)}
        assert set(counter.calls) == own and counter.total == len(own)
        np.testing.assert_array_equal(as_hwc(got), reference(slide, xy0, 0, patch))
        assert got.permute(0, 2, 3, 1).is_contiguous()  # one paste into the buffer, no transpose copy


# ------------------------------------------------------------------ threads and async


def test_eight_threads_sharing_one_reader_and_eight_readers_agree(svs_jpeg):
    rng = np.random.default_rng(7)
    batches = [np.stack([rng.integers(-100, 4000, 24), rng.integers(-100, 2400, 24)], axis=1) for _ in range(8)]
    with open_slide(svs_jpeg.path) as slide:
        with PatchReader(slide, 0, 200, workers=1, cache_bytes=0) as reader:
            expected = [reader.read(xy) for xy in batches]
    with open_slide(svs_jpeg.path) as slide:  # a fresh handle: nothing cached by the pass above
        start = threading.Barrier(8)
        shared = PatchReader(slide, 0, 200, workers=3, cache_bytes=2 * 2**20)
        own = [PatchReader(slide, 0, 200, workers=2, cache_bytes=2**20) for _ in range(8)]

        def work(t):
            start.wait()
            return shared.read(batches[t]), own[t].read(batches[t]), shared.read(batches[(t + 1) % 8])

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for reader in [shared, *own]:
            reader.close()
    for t, (a, b, c) in enumerate(results):
        torch.testing.assert_close(a, expected[t], rtol=0, atol=0)
        torch.testing.assert_close(b, expected[t], rtol=0, atol=0)
        torch.testing.assert_close(c, expected[(t + 1) % 8], rtol=0, atol=0)


def test_read_async_returns_what_read_returns(vips_deflate):
    rng = np.random.default_rng(8)
    xy = np.stack([rng.integers(-50, 2500, 20), rng.integers(-50, 1700, 20)], axis=1)
    with open_slide(vips_deflate.path) as slide, PatchReader(slide, 0, 96, workers=2) as reader:
        future = reader.read_async(xy)
        xy[:] = 0  # the caller may reuse its array at once
        got = future.result(timeout=60)
        futures = [reader.read_async(torch.as_tensor(b)) for b in (np.zeros((3, 2)), np.full((2, 2), 999))]
        assert [tuple(f.result().shape) for f in futures] == [(3, 3, 96, 96), (2, 3, 96, 96)]
        rng = np.random.default_rng(8)
        xy = np.stack([rng.integers(-50, 2500, 20), rng.integers(-50, 1700, 20)], axis=1)
        torch.testing.assert_close(got, reader.read(xy), rtol=0, atol=0)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("workers", [1, 3])
def test_a_slide_truncated_after_opening_raises_its_typed_error(tmp_path, tiff_pyramid_deflate, workers):
    path = tmp_path / "cut.tif"
    shutil.copy(tiff_pyramid_deflate.path, path)
    with open_slide(path) as slide:
        os.truncate(path, os.path.getsize(path) // 2)  # level 0's last tile rows are gone
        w, h = slide.dimensions
        xy = [[0, 0], [w - 300, h - 300], [w // 2, h - 200]]
        with PatchReader(slide, 0, 256, workers=workers, cache_bytes=0) as reader:
            with pytest.raises(CorruptSlideError, match="truncated") as info:
                reader.read(xy)
            assert info.value.path == str(path)
            assert reader.read([[0, 0]]).shape == (1, 3, 256, 256)  # intact tiles still read


def test_a_garbled_tile_raises_from_read_and_read_async(bad_inputs):
    with open_slide(bad_inputs["garbled_tile"]) as slide, PatchReader(slide, 0, 64, workers=2) as reader:
        with pytest.raises(CorruptSlideError):
            reader.read([[5 * 256 + 10, 10]])
        with pytest.raises(CorruptSlideError):
            reader.read_async([[5 * 256 + 100, 100], [0, 0]]).result(timeout=60)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_come_from_pinned_memory(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide, PatchReader(slide, 0, 64, device="cuda", decoder="native") as reader:
        xy = [[10, 10], [300, 700]]
        got = reader.read(xy)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), PatchReader(slide, 0, 64).read(xy), rtol=0, atol=0)


# ------------------------------------------------------------------ memory


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import torch
    from ats_wsi.slide import open_slide
    from ats_wsi.patches import PatchReader

    slide = open_slide(sys.argv[1])
    w, h = slide.dimensions
    rng = np.random.default_rng(0)
    with PatchReader(slide, 0, 256, workers=2) as reader:
        reader.read([[0, 0]])  # threads and decoder started
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(2):
            xy = np.stack([rng.integers(0, w - 256, 64), rng.integers(0, h - 256, 64)], axis=1)
            batch = reader.read(xy)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(w * h * 3, (after - before) * 1024, reader.stats.tiles_decoded, int(batch.sum() > 0))
""")


def test_reading_patches_from_a_large_slide_keeps_peak_memory_small(large_synthetic_slide):
    """2 x 64 random 256² patches of a 20k x 20k slide (level 0: 1.2 GB of RGB) in a fresh process."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, large_synthetic_slide], capture_output=True,
                          text=True, timeout=300, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    level0_bytes, grown, decoded, nonzero = (int(v) for v in done.stdout.split())
    assert level0_bytes > 1_000_000_000
    assert nonzero and 2 * 64 <= decoded <= 2 * 64 * 4
    assert grown < 200 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB reading 128 patches"
