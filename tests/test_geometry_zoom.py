"""Zoom coordinates (ats_wsi.geometry): stage-1 cell centre -> region on the slide -> stage-2 cell -> patch box."""
import numpy as np
import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.geometry import cell_centre_level0, cell_to_xy, region_xy0, zoom_cell_to_xy0


def test_cell_centre_is_the_centre_of_the_box_cell_to_xy_places():
    """Non-square low view and map, a receptive field: the centre of an even patch box
    at scale = low_downsample is the cell centre, up to the box's rounding."""
    low_shape, map_shape, ds, rf = (40, 70), (9, 16), 8.0, (6, 4)  # rf = (rx, ry)
    cells = torch.tensor([[0, 0], [8, 15], [3, 11]])
    centres = cell_centre_level0(cells, low_shape=low_shape, map_shape=map_shape, low_downsample=ds,
                                 receptive_field=rf)
    boxes = cell_to_xy(cells, low_shape=low_shape, map_shape=map_shape, scale=ds, patch_size=(64, 32),
                       receptive_field=rf)
    assert ((boxes.double() + torch.tensor([32.0, 16.0]) - centres).abs() <= 0.5).all()
    # by hand, cell (8, 15): x = rx/2·ds + (15 + 1/2)·(70 − 6)·8/16, y = ry/2·ds + (8 + 1/2)·(40 − 4)·8/9
    assert centres[1].tolist() == pytest.approx([24 + 15.5 * 32.0, 16 + 8.5 * 32.0])


def test_region_is_centred_then_shifted_onto_the_slide_keeping_its_size():
    slide_wh = (1000, 600)  # not square: x and y cannot be swapped
    centres = np.array([[500.0, 300.0], [10.0, 590.0], [995.0, 5.0], [300.2, 200.7]])
    xy = region_xy0(centres, 200.0, slide_wh)
    assert xy.dtype == np.int64
    assert xy.tolist() == [[400, 200], [0, 400], [800, 0], [200, 101]]
    # and a slide narrower than the region: it starts at 0 on that axis only
    assert region_xy0(np.array([[50.0, 300.0]]), 200.0, (120, 600)).tolist() == [[0, 200]]


def test_numpy_and_torch_agree():
    centres = np.array([[123.4, 56.5], [7.0, 880.0]])
    assert region_xy0(torch.from_numpy(centres), 100.0, (900, 900)).tolist() == \
        region_xy0(centres, 100.0, (900, 900)).tolist()
    cells = np.array([[[0, 1], [3, 2]]])
    kwargs = dict(region_shape=(96, 128), map_shape=(6, 8), zoom_downsample=4.0, patch_downsample=1.0,
                  patch_size=32)
    a = zoom_cell_to_xy0(cells, region_xy0=np.array([[[1000, 2000]]]), **kwargs)
    b = zoom_cell_to_xy0(torch.from_numpy(cells), region_xy0=torch.tensor([[[1000, 2000]]]), **kwargs)
    assert a.tolist() == b.tolist()


def test_zoom_cell_box_by_hand():
    """Region 128 x 96 px at 4 level-0 px each (level-0 corner (1000, 2000)); an 8 x 6 map: a cell is
    16 region px = 64 level-0 px; patches of 32 px at 1 level-0 px are centred on the cells."""
    cells = np.array([[0, 0], [5, 7], [2, 3]])  # (row, col)
    xy = zoom_cell_to_xy0(cells, region_xy0=np.array([1000, 2000]), region_shape=(96, 128), map_shape=(6, 8),
                          zoom_downsample=4.0, patch_downsample=1.0, patch_size=32)
    expected = [[1000 + 32 - 16, 2000 + 32 - 16], [1000 + 7 * 64 + 16, 2000 + 5 * 64 + 16],
                [1000 + 3 * 64 + 16, 2000 + 2 * 64 + 16]]
    assert xy.tolist() == expected
    # patches at 0.5x level 0 (patch_downsample 2): a 32 px patch covers 64 level-0 px, still centred
    xy2 = zoom_cell_to_xy0(cells, region_xy0=np.array([1000, 2000]), region_shape=(96, 128), map_shape=(6, 8),
                           zoom_downsample=4.0, patch_downsample=2.0, patch_size=32)
    assert xy2.tolist() == [[1000, 2000], [1000 + 7 * 64, 2000 + 5 * 64], [1000 + 3 * 64, 2000 + 2 * 64]]


def test_bad_sizes_are_refused():
    with pytest.raises(SamplingError, match="side0"):
        region_xy0(np.zeros((1, 2)), 0.0, (10, 10))
    with pytest.raises(SamplingError, match="patch_downsample"):
        zoom_cell_to_xy0(np.zeros((1, 2)), region_xy0=np.zeros(2), region_shape=(8, 8), map_shape=(2, 2),
                         zoom_downsample=2.0, patch_downsample=0, patch_size=4)
