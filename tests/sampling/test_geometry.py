"""Attention cells ↔ patch boxes (ats_wsi.sampling.geometry)."""
import numpy as np
import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.patches import TensorSource
from ats_wsi.sampling import geometry
from ats_wsi.sampling.geometry import (
    box_to_cell,
    cell_steps,
    cell_to_level0_box,
    cell_to_xy,
    level0_to_cell,
    level0_to_level,
    level_to_level0,
    point_to_cell,
    rowcol_to_xy,
    xy_to_rowcol,
)


def all_cells(map_shape):
    rows, cols = map_shape
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)  # [rows·cols, 2] (row, col)


# -- (x, y) <-> (row, col) ---------------------------------------------------

def test_rowcol_to_xy_swaps_the_last_axis_for_tensors_and_arrays():
    rowcol = torch.tensor([[[3, 7]], [[0, 5]]])  # [2, 1, 2]
    assert rowcol_to_xy(rowcol).tolist() == [[[7, 3]], [[5, 0]]]
    assert torch.equal(xy_to_rowcol(rowcol_to_xy(rowcol)), rowcol)
    arr = np.array([[3, 7], [1, 2]])
    assert rowcol_to_xy(arr).tolist() == [[7, 3], [2, 1]]
    assert xy_to_rowcol(arr).flags["C_CONTIGUOUS"]


def test_coordinate_conversion_rejects_a_last_axis_other_than_two():
    with pytest.raises(SamplingError, match=r"\[\.\.\., 2\]"):
        rowcol_to_xy(torch.zeros(4, 3))


# -- hand-worked examples ----------------------------------------------------

def test_same_padding_map_places_each_patch_on_its_pixel_block():
    # low 10 x 20, map 10 x 20, scale 4: steps = 4 on both axes.
    # cell (2, 5): y = 2·4 + 4/2 − 8/2 = 6; x = 5·4 + 2 − 4 = 18.
    kw = dict(low_shape=(10, 20), map_shape=(10, 20), scale=4, patch_size=8)
    assert cell_steps((10, 20), (10, 20), 4) == (4.0, 4.0)
    assert cell_to_xy(torch.tensor([2, 5]), **kw).tolist() == [18, 6]


def test_receptive_field_shift_and_rounding_on_non_square_axes():
    # low 13 x 21, map 5 x 9, rf 3, scale (sy, sx) = (2, 3), patch (ph, pw) = (6, 4):
    # steps_y = (13 − 3)·2/5 = 4, steps_x = (21 − 3)·3/9 = 6.
    # cell (1, 2): y = 1.5·2 + 1·4 + 2 − 3 = 6
    #              x = 1.5·3 + 2·6 + 3 − 2 = 17.5 -> 18 (round half up).
    kw = dict(low_shape=(13, 21), map_shape=(5, 9), scale=(2, 3), patch_size=(6, 4),
              receptive_field=3)
    assert cell_steps((13, 21), (5, 9), (2, 3), 3) == (4.0, 6.0)
    assert cell_to_xy(torch.tensor([[1, 2]]), **kw).tolist() == [[18, 6]]


def test_map_stride_is_derived_from_the_shapes():
    # A net that pools by 4: low 40 x 24 -> map 10 x 6; scale 2: steps = 8.
    # cell (3, 1): y = 3·8 + 4 − 8 = 20; x = 1·8 + 4 − 8 = 4.
    xy = cell_to_xy(torch.tensor([3, 1]), low_shape=(40, 24), map_shape=(10, 6), scale=2,
                    patch_size=16)
    assert xy.tolist() == [4, 20]


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
    # the centre of the box stays the centre of the cell's block
    assert box_to_cell(cell_to_xy(cells, **kw), **kw).tolist() == cells.tolist()


# -- round trips -------------------------------------------------------------

ROUND_TRIPS = [
    # low_shape, map_shape, scale, patch, receptive field
    ((37, 53), (37, 53), (4.0, 4.0), (32, 32), 0),  # "same" padding, odd, non-square
    ((37, 53), (9, 13), (7.5, 6.25), (21, 17), 0),  # pooled map, non-integer scales
    ((61, 45), (29, 21), (3.0, 5.0), (16, 40), 3),  # receptive field, odd maps
    ((101, 77), (33, 25), (2.5, 2.5), (9, 31), (5, 2)),  # per-axis receptive field
    ((15, 9), (15, 9), (16.0, 16.0), (256, 128), 0),  # patches much larger than cells
]


@pytest.mark.parametrize("low_shape, map_shape, scale, patch, rf", ROUND_TRIPS)
def test_cell_to_box_to_cell_round_trips_every_cell(low_shape, map_shape, scale, patch, rf):
    kw = dict(low_shape=low_shape, map_shape=map_shape, scale=scale, receptive_field=rf)
    cells = all_cells(map_shape)
    xy = cell_to_xy(cells, patch_size=patch, **kw)
    assert xy.dtype == torch.long and xy.shape == cells.shape
    assert torch.equal(box_to_cell(xy, patch_size=patch, **kw), cells)


@pytest.mark.parametrize("low_shape, map_shape, scale, patch, rf", ROUND_TRIPS)
def test_boxes_follow_the_reference_formula_per_axis(low_shape, map_shape, scale, patch, rf):
    rf_rc = (rf, rf) if isinstance(rf, int) else rf
    cells = all_cells(map_shape)
    xy = cell_to_xy(cells, low_shape=low_shape, map_shape=map_shape, scale=scale,
                    patch_size=patch, receptive_field=rf)
    for axis, xy_axis in ((0, 1), (1, 0)):  # row axis is y, col axis is x
        steps = (low_shape[axis] - rf_rc[axis]) * scale[axis] / map_shape[axis]
        exact = (rf_rc[axis] / 2 * scale[axis] + cells[:, axis].double() * steps + steps / 2
                 - patch[axis] / 2)
        assert torch.equal(xy[:, xy_axis], torch.floor(exact + 0.5).long())


def test_rows_and_cols_are_not_confused_on_a_non_square_map():
    # a map of 3 rows and 11 cols over a low image of 3 x 11, scale 10
    kw = dict(low_shape=(3, 11), map_shape=(3, 11), scale=10, patch_size=10)
    x, y = cell_to_xy(torch.tensor([2, 10]), **kw).tolist()
    assert (x, y) == (100, 20)
    assert point_to_cell(torch.tensor([105.0, 25.0]), low_shape=(3, 11), map_shape=(3, 11),
                         scale=10).tolist() == [2, 10]


def test_point_to_cell_finds_the_block_and_clamps_outside_points():
    kw = dict(low_shape=(13, 21), map_shape=(5, 9), scale=(2, 3), receptive_field=3)
    # blocks start at (rf/2)·scale = (3, 4.5) and are (4, 6) wide: cell (1, 2)
    # spans y in [7, 11), x in [16.5, 22.5)
    points = torch.tensor([[16.5, 7.0], [22.4, 10.9], [22.5, 11.0], [-50.0, -50.0], [1e6, 1e6]])
    assert point_to_cell(points, **kw).tolist() == [[1, 2], [1, 2], [2, 3], [0, 0], [4, 8]]


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
])
def test_impossible_geometry_raises(bad):
    kw = {**dict(low_shape=(8, 8), map_shape=(4, 4), scale=2, patch_size=4), **bad}
    with pytest.raises(SamplingError):
        cell_to_xy(torch.zeros(1, 2, dtype=torch.long), **kw)


# -- slides: level-0 boxes -----------------------------------------------------

def test_level0_box_of_a_cell_by_hand():
    # low level downsample 16, patches at downsample 4: scale 4 (as in the
    # same-padding example: cell (2, 5) -> level-4 xy (18, 6)), then ·4.
    box = cell_to_level0_box(torch.tensor([2, 5]), low_shape=(10, 20), map_shape=(10, 20),
                             low_downsample=16.0, high_downsample=4.0, patch_size=8)
    assert box.tolist() == [72, 24, 32, 32]  # (x0, y0, w0, h0)


def test_level0_rounding_with_non_integer_downsamples():
    xy = torch.tensor([[10, 3], [-3, 7]])
    assert level_to_level0(xy, 4.0001).tolist() == [[40, 12], [-12, 28]]
    assert level_to_level0(torch.tensor([[1, 3]]), 2.5).tolist() == [[3, 8]]  # 2.5 -> 3, 7.5 -> 8
    assert torch.allclose(level0_to_level(torch.tensor([[40, 12]]), 4.0),
                          torch.tensor([[10.0, 3.0]], dtype=torch.float64))


@pytest.mark.parametrize("d_low, d_high", [(32.0, 1.0), (16.0, 4.0), (64.00032, 4.00002)])
def test_level0_box_centre_maps_back_to_its_cell(d_low, d_high):
    low_shape, map_shape = (47, 63), (47, 63)  # a non-square low level
    cells = all_cells(map_shape)
    boxes = cell_to_level0_box(cells, low_shape=low_shape, map_shape=map_shape,
                               low_downsample=d_low, high_downsample=d_high, patch_size=(24, 40))
    centres = boxes[:, :2].double() + boxes[:, 2:].double() / 2  # (x, y) level 0
    back = level0_to_cell(centres, low_shape=low_shape, map_shape=map_shape, low_downsample=d_low)
    assert torch.equal(back, cells)
    # sizes are (w0, h0) = round((pw, ph) · d_high)
    assert boxes[0, 2:].tolist() == [round(40 * d_high), round(24 * d_high)]


def test_module_exports_its_public_names():
    for name in geometry.__all__:
        assert callable(getattr(geometry, name))
