"""The zoom sheet: a two-stage prediction's drawn regions, each with its stage-2 map and patches, on a real
slide and a ZoomRecord built by hand (its geometry known exactly)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ats_wsi import open_slide
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import SheetError
from ats_wsi.outputs import draw_colorbar
from ats_wsi.zoom import ZoomRecord
from ats_wsi.zoom_sheet import (CAPTION_BAND, COLORBAR_BAND, GAP, MAX_SHEET_SIDE, MIN_TILE, TITLE_BAND, region_tile,
                                render_zoom_sheet, zoom_sheet_layout)

CYAN = (0, 255, 255)
TILE = 160  # a 256 px region drawn at 160 px: 0.625 sheet px a level-0 px
SIDE = 256.0
# three regions: inside the slide, inside the slide (with a hot stage-2 cell), over the slide's corner
BOXES = np.array([[100, 100, SIDE, SIDE], [700, 300, SIDE, SIDE], [1400, 900, SIDE, SIDE]])
PATCH_OFFSETS = np.array([[64.0, 64.0], [160.0, 160.0]])  # two 64 px patches in each region, apart
HOT = (1, 2)  # (row, col) of region 2's hot cell: level-0 x 128..192, y 64..128 of the region


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoomsheet") / "s.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=1, seed=3, lesion_size_um=(60.0, 120.0))
    with open_slide(path) as opened:
        yield opened


def _record(hot: bool) -> ZoomRecord:
    """4 x 4 stage-2 cells of 64 level-0 px over each region; region 2's map uniform or with one hot cell."""
    a2 = np.full((3, 4, 4), 1 / 16)
    if hot:
        a2[1] = 0.01
        a2[1][HOT] = 1 - 15 * 0.01  # 13.6 x uniform
    patches = np.concatenate([BOXES[:, None, :2] + PATCH_OFFSETS, np.full((3, 2, 2), 64.0)], axis=-1)
    return ZoomRecord(region_boxes=BOXES, region_probability=np.array([0.5, 0.3, 0.2]), stage1_cells=96,
                      zoom_attention=a2, zoom_cell_size_xy=(64.0, 64.0), zoom_origin_xy=BOXES[:, :2].copy(),
                      patch_boxes=patches, patch_probability=np.full((3, 2), 0.5))


def _tile(sheet, k: int, layout) -> np.ndarray:
    x, y = layout.tile_xy(k)
    return np.asarray(sheet)[y:y + layout.tile, x:x + layout.tile].astype(np.int16)


def _away_from_patches(k: int) -> np.ndarray:
    """Tile pixels 2 px or more away from region k's patch outlines."""
    keep = np.ones((TILE, TILE), bool)
    side = int(64 * TILE / SIDE)
    for ox, oy in PATCH_OFFSETS * TILE / SIDE:
        x0, y0 = int(ox), int(oy)
        keep[max(0, y0 - 2):y0 + side + 2, max(0, x0 - 2):x0 + side + 2] = False
    return keep


def test_the_sheet_is_columns_by_rows_of_tiles_with_its_bands(slide):
    sheet = render_zoom_sheet(slide, _record(hot=False), tile=TILE, columns=2, title="tumor  p = 0.93")
    # 2 columns x 2 rows of 160 px tiles, 4 px gaps, a caption under each tile, the title and colour-bar bands
    assert sheet.mode == "RGB"
    assert sheet.size == (2 * TILE + 3 * GAP, TITLE_BAND + 2 * (TILE + CAPTION_BAND) + 3 * GAP + COLORBAR_BAND)
    assert sheet.size == (332, 440)
    # no title, one row: no title band; a sheet never narrower than the colour bar needs
    one_row = render_zoom_sheet(slide, _record(hot=False), tile=TILE, columns=3)
    assert one_row.size == (3 * TILE + 4 * GAP, TILE + CAPTION_BAND + 2 * GAP + COLORBAR_BAND)
    small = render_zoom_sheet(slide, _record(hot=False), tile=40, columns=4)
    assert small.size == (320, 40 + CAPTION_BAND + 2 * GAP + COLORBAR_BAND)
    # the caption is written under each tile; the bottom band holds the colour bar, below the grid
    caption = np.asarray(sheet)[TITLE_BAND + GAP + TILE:TITLE_BAND + GAP + TILE + CAPTION_BAND, GAP:GAP + TILE]
    assert (caption.max(axis=-1) < 80).sum() > 50  # dark text on white
    for width in (320, 4096):  # the bar's box, drawn at its largest, lies inside the band
        top = draw_colorbar(ImageDraw.Draw(Image.new("RGB", (1, 1))), width, 1000)  # (its bar at its tallest)
        assert 1000 - top <= COLORBAR_BAND


def test_a_uniform_map_leaves_the_region_almost_as_read(slide):
    record = _record(hot=False)
    layout = zoom_sheet_layout(3, tile=TILE, columns=2)
    plain = render_zoom_sheet(slide, record, tile=TILE, columns=2, alpha=0.0)
    painted = render_zoom_sheet(slide, record, tile=TILE, columns=2)
    for k in (0, 1):
        # the region read on its own: level 0 is the largest downsample <= 256 / 160, resized with PIL's BOX
        x, y, w, h = (int(v) for v in BOXES[k])
        expected = np.asarray(Image.fromarray(slide.read_region((x, y), 0, (w, h))).resize((TILE, TILE),
                                                                                         Image.Resampling.BOX))
        keep = _away_from_patches(k)
        np.testing.assert_array_equal(_tile(plain, k, layout)[keep], expected[keep])  # no map: the pixels as read
        # uniform = 1/16 of the scale's top: opacity round(0.5 / 16 * 255) = 8/255, so a channel moves by at
        # most 8 (+1 rounding) towards the heat colour (dark purple there: ~7 on this light tissue)
        diff = np.abs(_tile(painted, k, layout) - expected.astype(np.int16))[keep]
        assert diff.max() <= 9


def test_a_hot_cell_is_heat_coloured_where_the_cell_lies(slide):
    layout = zoom_sheet_layout(3, tile=TILE, columns=2)
    plain = _tile(render_zoom_sheet(slide, _record(hot=False), tile=TILE, columns=2, alpha=0.0), 1, layout)
    uniform = _tile(render_zoom_sheet(slide, _record(hot=False), tile=TILE, columns=2), 1, layout)
    hot = _tile(render_zoom_sheet(slide, _record(hot=True), tile=TILE, columns=2), 1, layout)
    row, col = HOT  # the cell's level-0 box in its region, in tile pixels (0.625 per px): x 80..120, y 40..80
    cell = (slice(row * 40 + 2, row * 40 + 38), slice(col * 40 + 2, col * 40 + 38))
    moved_hot = np.abs(hot[cell] - plain[cell]).mean()
    moved_uniform = np.abs(uniform[cell] - plain[cell]).mean()
    assert moved_hot > 30 > 9 >= moved_uniform
    # placed by zoom_origin_xy and zoom_cell_size_xy: the heat starts and stops at the cell's edges
    moved = np.abs(hot - plain).mean(axis=-1)
    assert moved[50:70, 80].mean() > 30 and moved[50:70, 119].mean() > 30 and moved[50:70, 120].mean() <= 9
    assert moved[40, 90:110].mean() > 30 and moved[79, 90:110].mean() > 30 and moved[80, 90:110].mean() <= 9
    # heat is warm: at 13.6 x uniform the colour is orange-yellow, so red rises over blue there
    assert (hot[cell][..., 0] - hot[cell][..., 2]).mean() > (plain[cell][..., 0] - plain[cell][..., 2]).mean() + 20
    # elsewhere the hot map's other cells (0.16 x uniform) paint less than the uniform map
    away = np.ones((TILE, TILE), bool)
    away[row * 40:row * 40 + 40, col * 40:col * 40 + 40] = False
    away &= _away_from_patches(1)
    assert np.abs(hot - plain)[away].mean() < np.abs(uniform - plain)[away].mean()


def test_patches_are_cyan_outlines_at_their_boxes(slide):
    layout = zoom_sheet_layout(3, tile=TILE, columns=2)
    tiles = [_tile(render_zoom_sheet(slide, _record(hot=True), tile=TILE, columns=2), k, layout) for k in range(3)]
    for k, tile in enumerate(tiles):
        for ox, oy in PATCH_OFFSETS * TILE / SIDE:  # a 64 px patch is 40 tile px: outline from x0 to x0 + 39
            x0, y0 = int(ox), int(oy)
            x1, y1 = x0 + 39, y0 + 39
            for x, y in [(x0, y0 + 20), (x1, y0 + 20), (x0 + 20, y0), (x0 + 20, y1), (x0, y0), (x1, y1)]:
                assert tuple(tile[y, x]) == CYAN, (k, x, y)
            for x, y in [(x0 - 1, y0 + 20), (x1 + 1, y0 + 20), (x0 + 20, y0 + 20), (x0 + 20, y0 - 1)]:
                assert tuple(tile[y, x]) != CYAN, (k, x, y)


def test_a_region_over_the_slides_edge_is_white_outside_it(slide):
    x, y, w, h = BOXES[2]  # 1400..1656 x 900..1156 on a 1536 x 1024 slide
    tile = region_tile(slide, BOXES[2], TILE)
    inside_w, inside_h = (1536 - x) * TILE / w, (1024 - y) * TILE / h  # 85 x 77.5 tile px
    assert (tile[int(inside_h) + 2:, :] == 255).all() and (tile[:, int(inside_w) + 2:] == 255).all()
    assert (tile[:int(inside_h) - 2, :int(inside_w) - 2] < 250).any()  # the slide's own pixels inside


def test_a_coarser_level_is_read_for_a_small_tile(slide):
    # 256 / 48 = 5.3: level 1 (downsample 4) is the largest not above it
    x, y, w, h = (int(v) for v in BOXES[1])
    expected = np.asarray(Image.fromarray(slide.read_region((x, y), 1, (w // 4, h // 4))).resize(
        (48, 48), Image.Resampling.BOX))
    np.testing.assert_array_equal(region_tile(slide, BOXES[1], 48), expected)


def test_a_sheet_too_large_gets_smaller_tiles_then_is_refused():
    fits = zoom_sheet_layout(300, tile=192, columns=4, title=True)  # 75 rows: tiles shrink to fit 4096 px
    assert MIN_TILE <= fits.tile < 192 and fits.height <= MAX_SHEET_SIDE and fits.width <= MAX_SHEET_SIDE
    assert zoom_sheet_layout(300, tile=192, columns=18).tile == 192  # the same regions in a square grid
    with pytest.raises(SheetError, match="do not fit"):
        zoom_sheet_layout(400, tile=192, columns=4)  # 100 rows would need tiles under MIN_TILE


@pytest.mark.parametrize("kwargs", [{"tile": 0}, {"columns": 0}, {"alpha": 1.5}, {"tile": 2.5}])
def test_bad_arguments_are_typed_errors(slide, kwargs):
    with pytest.raises(SheetError):
        render_zoom_sheet(slide, _record(hot=False), **kwargs)
