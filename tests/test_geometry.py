"""Coordinates: sizes, level ↔ level 0, attention cells → boxes (ats_wsi.geometry)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from ats_wsi import geometry
from ats_wsi.errors import SamplingError
from ats_wsi.geometry import (
    cell_grid_level0,
    cell_steps,
    cell_to_xy,
    cell_transform,
    level0_to_level,
    level_to_level0,
    rowcol_to_wh,
    size_wh,
    snap_to_grid,
    wh_to_rowcol,
)
from ats_wsi.patches import TensorSource


def all_cells(map_shape):
    rows, cols = map_shape
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)  # [rows·cols, 2] (row, col)


def test_importing_geometry_does_not_import_torch():
    code = "import sys, ats_wsi.geometry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- sizes -------------------------------------------------------------------

def test_size_wh_takes_an_int_or_a_width_height_pair():
    assert size_wh(5) == (5, 5)
    assert size_wh((7, 3)) == (7, 3)
    assert size_wh(np.array([7, 3])) == (7, 3)
    assert size_wh((np.int64(4), 6.0)) == (4, 6)
    assert size_wh(0, "halo", minimum=0) == (0, 0)


@pytest.mark.parametrize("bad", [0, -1, (3, 0), (3,), (1, 2, 3), 2.5, (2, 2.5), True, "ab", None])
def test_size_wh_refuses_what_is_not_a_positive_size(bad):
    with pytest.raises(SamplingError, match="patch_size"):
        size_wh(bad, "patch_size")


def test_sizes_and_array_shapes_swap_in_one_place():
    assert wh_to_rowcol((7, 3)) == (3, 7)
    assert rowcol_to_wh(torch.Size([2, 3, 40, 30])) == (30, 40)
    assert rowcol_to_wh(np.zeros((40, 30)).shape) == (30, 40)


# -- a level <-> level 0 ---------------------------------------------------------

def test_level_to_level0_rounds_half_up_with_non_integer_downsamples():
    xy = torch.tensor([[10, 3], [-3, 7]])
    assert level_to_level0(xy, 4.0001).tolist() == [[40, 12], [-12, 28]]
    assert level_to_level0(torch.tensor([[1, 3]]), 2.5).tolist() == [[3, 8]]  # 2.5 -> 3, 7.5 -> 8
    assert level_to_level0(xy, 4.0001).dtype == torch.int64


def test_level0_to_level_takes_the_nearest_level_pixel_and_maps_back():
    assert level0_to_level([[3, -3]], 2.0).tolist() == [[2, -1]]  # halves go up
    for ds in (1.0, 2.0, 4.00015, 3.99987, 16.0005):
        xy = np.array([[0, 0], [1, 2], [137, 999], [-5, 64]])
        xy0 = level_to_level0(xy, ds)
        assert np.array_equal(level0_to_level(xy0, ds), xy)


def test_level_conversions_give_tensors_for_tensors_and_arrays_for_arrays():
    xy = [[10, 3], [-3, 7]]
    for ds in (2.5, 4.0001):
        t = level_to_level0(torch.tensor(xy), ds)
        a = level_to_level0(np.array(xy), ds)
        assert isinstance(t, torch.Tensor) and isinstance(a, np.ndarray) and a.dtype == np.int64
        assert t.tolist() == a.tolist()
        assert level0_to_level(t, ds).tolist() == level0_to_level(a, ds).tolist()


@pytest.mark.parametrize("ds", [0, -2.0])
def test_level_conversions_refuse_a_non_positive_downsample(ds):
    with pytest.raises(SamplingError, match="downsample"):
        level_to_level0(np.zeros((1, 2)), ds)


# -- cells -> boxes: hand-worked examples ------------------------------------------

def test_same_padding_map_places_each_patch_on_its_pixel_block():
    # low 10 x 20, map 10 x 20, scale 4: steps = 4 on both axes.
    # cell (2, 5): y = 2·4 + 4/2 − 8/2 = 6; x = 5·4 + 2 − 4 = 18.
    kw = dict(low_shape=(10, 20), map_shape=(10, 20), scale=4, patch_size=8)
    assert cell_steps((10, 20), (10, 20), 4) == (4.0, 4.0)
    assert cell_to_xy(torch.tensor([2, 5]), **kw).tolist() == [18, 6]


def test_receptive_field_shift_and_rounding_on_non_square_axes():
    # low 13 x 21 (rows, cols), map 5 x 9, rf (w, h) = (3, 5), scale (sy, sx) = (2, 3),
    # patch (w, h) = (4, 6):
    # steps_y = (13 − 5)·2/5 = 3.2, steps_x = (21 − 3)·3/9 = 6.
    # cell (1, 2): y = 2.5·2 + 1·3.2 + 1.6 − 3 = 6.8 -> 7
    #              x = 1.5·3 + 2·6 + 3 − 2 = 17.5 -> 18 (round half up).
    kw = dict(low_shape=(13, 21), map_shape=(5, 9), scale=(2, 3), patch_size=(4, 6),
              receptive_field=(3, 5))
    assert cell_steps((13, 21), (5, 9), (2, 3), (3, 5)) == pytest.approx((3.2, 6.0))
    assert cell_to_xy(torch.tensor([[1, 2]]), **kw).tolist() == [[18, 7]]
    # a swapped patch (6, 4) or receptive field (5, 3) would move the box
    assert cell_to_xy(torch.tensor([[1, 2]]), **{**kw, "patch_size": (6, 4)}).tolist() != [[18, 7]]
    assert cell_to_xy(torch.tensor([[1, 2]]), **{**kw, "receptive_field": (5, 3)}).tolist() != [[18, 7]]


def test_map_stride_is_derived_from_the_shapes():
    # A net that pools by 4: low 40 x 24 -> map 10 x 6; scale 2: steps = 8.
    # cell (3, 1): y = 3·8 + 4 − 8 = 20; x = 1·8 + 4 − 8 = 4.
    xy = cell_to_xy(torch.tensor([3, 1]), low_shape=(40, 24), map_shape=(10, 6), scale=2,
                    patch_size=16)
    assert xy.tolist() == [4, 20]


def test_rows_and_cols_are_not_confused_on_a_non_square_map():
    # a map of 3 rows and 11 cols over a low image of 3 x 11, scale 10
    kw = dict(low_shape=(3, 11), map_shape=(3, 11), scale=10, patch_size=10)
    x, y = cell_to_xy(torch.tensor([2, 10]), **kw).tolist()
    assert (x, y) == (100, 20)


def test_border_boxes_start_outside_the_image_rather_than_shifting_in():
    kw = dict(low_shape=(10, 20), map_shape=(10, 20), scale=4, patch_size=8)
    assert cell_to_xy(torch.tensor([0, 0]), **kw).tolist() == [-2, -2]
    # the last cell's box [34, 42) x [74, 82) runs 2 px past the 40 x 80 image
    assert cell_to_xy(torch.tensor([9, 19]), **kw).tolist() == [74, 34]


def test_border_patch_is_zero_padded_outside_and_centred_on_its_cell():
    x_high = torch.arange(1, 40 * 80 + 1, dtype=torch.float32).view(1, 1, 40, 80)
    kw = dict(low_shape=(10, 20), map_shape=(10, 20), scale=4, patch_size=8)
    cells = torch.tensor([[[0, 0], [9, 19]]])  # [B=1, n=2, 2]
    patches = TensorSource(x_high).extract(cell_to_xy(cells, **kw), (8, 8))[0, :, 0]
    top_left, bottom_right = patches
    assert (top_left[:2] == 0).all() and (top_left[:, :2] == 0).all()
    assert torch.equal(top_left[2:, 2:], x_high[0, 0, :6, :6])
    assert (bottom_right[6:] == 0).all() and (bottom_right[:, 6:] == 0).all()
    assert torch.equal(bottom_right[:6, :6], x_high[0, 0, 34:, 74:])


# -- cells -> boxes: every cell ------------------------------------------------------

CASES = [
    # low_shape (rows, cols), map_shape, scale (sy, sx), patch (w, h), receptive field (w, h)
    ((37, 53), (37, 53), (4.0, 4.0), (32, 32), 0),  # "same" padding, odd, non-square
    ((37, 53), (9, 13), (7.5, 6.25), (21, 17), 0),  # pooled map, non-integer scales
    ((61, 45), (29, 21), (3.0, 5.0), (16, 40), 3),  # receptive field, odd maps
    ((101, 77), (33, 25), (2.5, 2.5), (9, 31), (5, 2)),  # per-axis receptive field
    ((15, 9), (15, 9), (16.0, 16.0), (256, 128), 0),  # patches much larger than cells
]


@pytest.mark.parametrize("low_shape, map_shape, scale, patch, rf", CASES)
def test_boxes_follow_the_reference_formula_per_axis(low_shape, map_shape, scale, patch, rf):
    rf_wh = (rf, rf) if isinstance(rf, int) else rf
    cells = all_cells(map_shape)
    xy = cell_to_xy(cells, low_shape=low_shape, map_shape=map_shape, scale=scale,
                    patch_size=patch, receptive_field=rf)
    assert xy.dtype == torch.long and xy.shape == cells.shape
    for axis, xy_axis in ((0, 1), (1, 0)):  # the row axis is y (height), the col axis x (width)
        steps = (low_shape[axis] - rf_wh[xy_axis]) * scale[axis] / map_shape[axis]
        exact = (rf_wh[xy_axis] / 2 * scale[axis] + cells[:, axis].double() * steps + steps / 2
                 - patch[xy_axis] / 2)
        assert torch.equal(xy[:, xy_axis], torch.floor(exact + 0.5).long())


@pytest.mark.parametrize("low_shape, map_shape, scale, patch, rf", CASES)
def test_numpy_cells_give_the_same_boxes_as_tensors(low_shape, map_shape, scale, patch, rf):
    kw = dict(low_shape=low_shape, map_shape=map_shape, scale=scale, patch_size=patch, receptive_field=rf)
    cells = all_cells(map_shape)
    from_array = cell_to_xy(cells.numpy(), **kw)
    assert isinstance(from_array, np.ndarray) and from_array.dtype == np.int64
    assert from_array.tolist() == cell_to_xy(cells, **kw).tolist()


@pytest.mark.parametrize("low_downsample", [16.0, 32.00016])
@pytest.mark.parametrize("patch, rf", [((24, 40), 0), ((40, 24), (6, 2))])
def test_box_centres_lie_in_their_cells_of_the_level0_grid(low_downsample, patch, rf):
    """On a slide whose patches come from level 0, each box's centre is its cell's centre
    on the grid that cell_grid_level0 gives the maps and overlays (within rounding)."""
    low_shape, map_shape = (47, 63), (23, 31)  # non-square, pooled by about 2
    cells = all_cells(map_shape)
    xy = cell_to_xy(cells, low_shape=low_shape, map_shape=map_shape, scale=low_downsample,
                    patch_size=patch, receptive_field=rf)
    (cw, ch), (ox, oy) = cell_grid_level0(low_shape=low_shape, map_shape=map_shape,
                                          low_downsample=low_downsample, receptive_field=rf)
    centre = xy.double() + torch.tensor(patch, dtype=torch.float64) / 2  # (x, y)
    grid_centre = torch.stack([ox + (cells[:, 1] + 0.5) * cw, oy + (cells[:, 0] + 0.5) * ch], dim=-1)
    assert (centre - grid_centre).abs().max() <= 0.5


def test_cell_grid_level0_by_hand():
    # low 10 x 20 at downsample 16, map 4 x 10, rf (w, h) = (4, 2):
    # cell (w, h) = ((20 − 4)·16 / 10, (10 − 2)·16 / 4) = (25.6, 32); origin = (4, 2)·16 / 2
    size, origin = cell_grid_level0(low_shape=(10, 20), map_shape=(4, 10), low_downsample=16.0,
                                    receptive_field=(4, 2))
    assert size == pytest.approx((25.6, 32.0)) and origin == (32.0, 16.0)
    size, origin = cell_grid_level0(low_shape=(10, 20), map_shape=(10, 20), low_downsample=8.0)
    assert size == (8.0, 8.0) and origin == (0.0, 0.0)


def test_geometry_keeps_the_cells_device_and_leading_shape():
    cells = torch.zeros(2, 3, 4, 2, dtype=torch.long)
    xy = cell_to_xy(cells, low_shape=(8, 8), map_shape=(8, 8), scale=2, patch_size=4)
    assert xy.shape == (2, 3, 4, 2) and xy.device == cells.device


@pytest.mark.parametrize("bad", [
    dict(receptive_field=8),  # nothing left of the low image
    dict(receptive_field=-1),
    dict(map_shape=(0, 4)),
    dict(scale=0),
    dict(scale=(1, 2, 3)),
    dict(patch_size=(4, 0)),
])
def test_impossible_geometry_raises(bad):
    kw = {**dict(low_shape=(8, 8), map_shape=(4, 4), scale=2, patch_size=4), **bad}
    with pytest.raises(SamplingError):
        cell_to_xy(torch.zeros(1, 2, dtype=torch.long), **kw)


# -- tile-aligned boxes ----------------------------------------------------------------

def test_snap_to_grid_takes_the_grid_box_holding_the_centre():
    xy = torch.tensor([[0, 0], [127, 128], [-64, 300], [-65, 383]])
    snapped = snap_to_grid(xy, (256, 256))  # centres: 128, (255, 256), (64, 428), (63, 511)
    assert snapped.tolist() == [[0, 0], [0, 256], [0, 256], [0, 256]]
    assert snap_to_grid(torch.tensor([[10, 10]]), (16, 32)).tolist() == [[16, 0]]  # (w, h)
    assert snap_to_grid(np.array([[10, 10]]), (16, 32)).tolist() == [[16, 0]]


# -- cells -> a viewer's space -------------------------------------------------------------

def test_cell_transform_puts_each_cell_centre_at_its_level0_centre():
    # napari: data index i of an axis lands at translate + i · scale; level-0 pixel x
    # (covering [x, x + 1)) sits at data coordinate x, so the continuous point x0 at x0 − 0.5.
    cell, origin = (96.0, 64.0), (40.0, 24.0)  # (w, h), (x, y)
    scale_yx, translate_yx = (0.25, 0.5), (100.0, -7.0)
    scale, translate = cell_transform(cell, origin, scale_yx, translate_yx)
    assert scale == (64.0 * 0.25, 96.0 * 0.5)
    for row, col in ((0, 0), (3, 5)):
        centre_x, centre_y = origin[0] + (col + 0.5) * cell[0], origin[1] + (row + 0.5) * cell[1]
        assert translate[0] + row * scale[0] == pytest.approx(translate_yx[0] + (centre_y - 0.5) * scale_yx[0])
        assert translate[1] + col * scale[1] == pytest.approx(translate_yx[1] + (centre_x - 0.5) * scale_yx[1])


def test_ngff_and_napari_transforms_are_the_same_function():
    from ats_wsi.outputs import _transforms

    scale, translate = _transforms((96, 64), (40, 24), 0.25)
    assert (tuple(scale), tuple(translate)) == cell_transform((96, 64), (40, 24), (0.25, 0.25))


def test_module_exports_its_public_names():
    for name in geometry.__all__:
        assert callable(getattr(geometry, name))
