"""ZoomSource on real slide files: regions around drawn cells at zoom_mpp, patches of
stage-2 cells at patch_mpp, each tile decoded once per read, exact pixels (lossless files)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ats_wsi.errors import RegionError, SamplingError
from ats_wsi.geometry import cell_grid_level0
from ats_wsi.patches.zoom_source import ZoomSource
from ats_wsi.slide import open_slide

from conftest import TileCounter, tiles_under

ZOOM_MPP = 1.0  # a stored level of both slides: 4x of the 0.25 tifffile one, 2x of the 0.5 libvips one
ZOOM_UM = 128.0  # regions of 128 px at 1 µm/px
PATCH = 48


def _cells(map_shape):
    """Adjacent cells (overlapping regions), a corner cell and a far-corner cell (regions shifted
    onto the slide) as long [1, n1, 2] (row, col)."""
    rows, cols = map_shape
    return torch.tensor([[[rows // 2, cols // 2], [rows // 2, cols // 2 + 1], [0, 0], [rows - 1, cols - 1],
                          [rows // 3, 1]]])


@pytest.fixture(params=["tiff_pyramid_deflate", "vips_deflate"])
def lossless(request):
    return request.getfixturevalue(request.param)


def _source(slide, low_downsample, **kwargs):
    return ZoomSource([slide], low_downsample=low_downsample, zoom_mpp=ZOOM_MPP, zoom_size=ZOOM_UM,
                      patch_mpp=slide.mpp, patch_size=PATCH, workers=2, cache_bytes=0, **kwargs)


def test_regions_are_exact_shifted_onto_the_slide_and_each_tile_is_decoded_once(lossless):
    with open_slide(lossless.path) as slide:
        counter = TileCounter(slide)
        low_ds = 32.0
        w, h = slide.dimensions
        low_shape = (h // 32, w // 32)
        map_shape = (low_shape[0] // 4, low_shape[1] // 4)
        source = _source(slide, low_ds)
        reader = source.region_readers[0]
        assert reader.factor == 1 and source.region_wh == (128, 128)
        side0 = 128 * reader.downsample
        cells = _cells(map_shape)
        corners = source.region_corners(cells, low_shape=low_shape, map_shape=map_shape)
        # each region holds its cell's centre and lies on the slide
        (cw, ch), (ox, oy) = cell_grid_level0(low_shape=low_shape, map_shape=map_shape, low_downsample=low_ds)
        centres = np.stack([ox + (cells[0, :, 1].numpy() + 0.5) * cw, oy + (cells[0, :, 0].numpy() + 0.5) * ch], 1)
        xy = corners[0].numpy()
        assert (xy >= 0).all() and (xy[:, 0] + side0 <= w).all() and (xy[:, 1] + side0 <= h).all()
        assert ((centres >= xy) & (centres <= xy + side0)).all()
        inner = np.abs(centres[:2] - (xy[:2] + side0 / 2)).max()
        assert inner <= 0.5  # away from the borders: centred (round half up)
        assert tuple(xy[2]) == (0, 0)

        counter.reset()
        regions = source.read_regions(corners)
        assert regions.shape == (1, 5, 3, 128, 128) and regions.dtype == torch.uint8
        origins = reader.level_origin(xy)
        needed = tiles_under(origins, reader.region_wh, reader.tile_wh, reader.level_wh)
        assert set(k[1:] for k in counter.calls) == needed and max(counter.calls.values()) == 1
        assert reader.stats.tiles_decoded == len(needed) and reader.stats.batches == 1
        # the overlapping regions share tiles: fewer decodes than reading each region alone
        alone = sum(len(tiles_under(origins[i:i + 1], reader.region_wh, reader.tile_wh, reader.level_wh))
                    for i in range(5))
        assert len(needed) < alone
        for i, (x, y) in enumerate(xy.tolist()):
            expected = slide.read_region((x, y), reader.level, (128, 128))
            assert np.array_equal(regions[0, i].permute(1, 2, 0).numpy(), expected)
        assert source.region_inside(corners) is None
        source.close()


def test_patches_of_stage_2_cells_lie_in_their_region_and_are_exact(lossless):
    with open_slide(lossless.path) as slide:
        source = _source(slide, 32.0)
        corners = torch.tensor([[[1000, 600], [1064, 600]]])  # two overlapping regions
        map2 = (8, 8)  # 16 region pixels (16 µm) per stage-2 cell
        grid = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).reshape(1, 1, 64, 2)
        cells = grid.expand(1, 2, 64, 2)
        xy0 = source.patch_corners(cells, corners, map_shape=map2)
        assert xy0.shape == (1, 2, 64, 2)
        zoom_ds, patch_ds = source.zoom_downsample(0), source.patch_downsample(0)
        step0 = 16 * zoom_ds  # one stage-2 cell in level-0 pixels
        half0 = PATCH * patch_ds / 2
        centre = xy0.double() + half0
        expected = corners[:, :, None].double() + (cells.flip(-1).double() + 0.5) * step0
        assert (centre - expected).abs().max() <= 0.5 * patch_ds + 1e-9  # each box centred on its cell
        patches = source.read_patches(xy0[:, :, :5])
        assert patches.shape == (1, 2, 5, 3, PATCH, PATCH)
        for r in range(2):
            for s in range(5):
                x, y = xy0[0, r, s].tolist()
                ref = slide.read_region((x, y), source.patch_readers[0].level, (PATCH, PATCH))
                assert np.array_equal(patches[0, r, s].permute(1, 2, 0).numpy(), ref)
        boxes = source.boxes_level0(xy0, "patch")
        assert boxes.shape == (1, 2, 64, 4) and (boxes[..., 2:] == round(PATCH * patch_ds)).all()
        assert (source.boxes_level0(corners, "region")[..., 2:] == round(128 * zoom_ds)).all()
        source.close()


def test_a_slide_smaller_than_a_region_masks_the_outside(tiff_pyramid_deflate):
    """Regions of 4 mm on a 0.75 x 0.5 mm slide: the region starts at (0, 0) and the pixels past
    the slide are fill, and False in region_inside."""
    with open_slide(tiff_pyramid_deflate.path) as slide:
        source = ZoomSource([slide], low_downsample=32.0, zoom_mpp=2.0, zoom_size=4000.0, patch_mpp=0.25,
                            patch_size=32, cache_bytes=0)
        corners = source.region_corners(torch.tensor([[[3, 5]]]), low_shape=(62, 93), map_shape=(15, 23))
        assert corners.tolist() == [[[0, 0]]]
        inside = source.region_inside(corners)
        w, h = slide.dimensions  # 2999 x 1999 at 0.25 µm/px: 374.9 x 249.9 px at 2 µm/px
        assert inside.shape == (1, 1, 2000, 2000)
        assert inside[0, 0, :249, :374].all() and not inside[0, 0, 250:].any() and not inside[0, 0, :, 375:].any()
        regions = source.read_regions(corners)
        assert (regions[0, 0, :, 260:] == 0).all()


def test_bad_zoom_settings_are_typed_errors(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        with pytest.raises(SamplingError, match="zoom_size"):
            ZoomSource([slide], low_downsample=32.0, zoom_mpp=1.0, zoom_size=-5, patch_mpp=0.25, patch_size=32)
        with pytest.raises(SamplingError, match="lower zoom_size"):
            ZoomSource([slide], low_downsample=32.0, zoom_mpp=0.25, zoom_size=1e6, patch_mpp=0.25, patch_size=32)
        with pytest.raises(SamplingError, match="low_downsample"):
            ZoomSource([slide], low_downsample=[32.0, 8.0], zoom_mpp=1.0, zoom_size=64, patch_mpp=0.25, patch_size=32)
        source = _source(slide, 32.0)
        with pytest.raises(SamplingError, match="region corners"):
            source.read_regions(torch.zeros(2, 3, 2, dtype=torch.long))
        source.close()


def test_region_reads_are_bounded_before_allocation(tiff_pyramid_deflate):
    with open_slide(tiff_pyramid_deflate.path) as slide:
        source = ZoomSource([slide], low_downsample=32.0, zoom_mpp=0.25, zoom_size=4096.0, patch_mpp=0.25,
                            patch_size=32)
        with pytest.raises(RegionError, match="needs"):
            source.read_regions(torch.zeros(1, 200, 2, dtype=torch.long))  # 200 x 16384² x 3 = 150 GiB
        source.close()


def test_two_slides_of_different_mpp_read_the_same_physical_regions(tiff_pyramid_deflate, vips_deflate):
    """0.25 and 0.5 µm/px slides in one batch: regions of the same µm size and pixel count, each
    read from its own level, each slide's boxes in its own level-0 pixels."""
    with open_slide(tiff_pyramid_deflate.path) as fine, open_slide(vips_deflate.path) as coarse:
        source = ZoomSource([fine, coarse], low_downsample=[64.0, 32.0], zoom_mpp=ZOOM_MPP, zoom_size=ZOOM_UM,
                            patch_mpp=0.5, patch_size=PATCH, cache_bytes=0)
        assert (source.zoom_downsample(0), source.zoom_downsample(1)) == (pytest.approx(4.0, rel=1e-3), 2.0)
        assert (source.patch_downsample(0), source.patch_downsample(1)) == (pytest.approx(2.0, rel=1e-3), 1.0)
        cells = torch.tensor([[[5, 7], [10, 20]], [[5, 7], [10, 20]]])  # 16 µm cells on both: same places in µm
        corners = source.region_corners(cells, low_shape=(31, 46), map_shape=(31, 46))
        # cell centre in µm: (7.5 · 16, 5.5 · 16) = (120, 88) µm -> region corner (56, 24) µm
        assert corners[0, 0].tolist() == [224, 96] and corners[1, 0].tolist() == [112, 48]
        regions = source.read_regions(corners)
        assert regions.shape == (2, 2, 3, 128, 128)
        for b, slide in enumerate((fine, coarse)):
            reader = source.region_readers[b]
            for i, (x, y) in enumerate(corners[b].tolist()):
                ref = slide.read_region((x, y), reader.level, (128, 128))
                assert np.array_equal(regions[b, i].permute(1, 2, 0).numpy(), ref)
        sizes = source.boxes_level0(corners, "region")[..., 2:]
        assert sizes[0].unique().tolist() == [512] and sizes[1].unique().tolist() == [256]
        source.close()
