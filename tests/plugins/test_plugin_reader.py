"""Slide and attention-map readers, through npe2 the way napari calls them."""
from __future__ import annotations

import gc
import os
import time

import dask.array as da
import numpy as np
import psutil
import pytest

from _napari_plugin import PLUGIN, assert_inferno_fading_in
from ats_wsi.outputs import write_attention_zarr
from napari_ats_wsi._reader import napari_get_attention_reader, napari_get_reader


@pytest.fixture
def attention_zarr(tmp_path):
    """A non-square map with non-square cells and an offset grid; its max at (row 2, col 5)."""
    att = np.full((4, 7), 0.01, np.float32)
    att[2, 5] = 1.0
    cell_size_xy, origin_xy = (96, 64), (40, 24)
    path = write_attention_zarr(
        tmp_path / "map.zarr", att, cell_size_xy=cell_size_xy, origin_xy=origin_xy, mpp=0.5,
        metadata={"slide": "lesion.svs"},
    )
    return path, att, cell_size_xy, origin_xy


# --------------------------------------------------------------------------- get_reader contract


def test_get_reader_refuses_what_is_not_its_own_and_never_raises(tmp_path, lesion_slide, attention_zarr):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG")
    plain_folder = tmp_path / "folder"
    plain_folder.mkdir()
    odd_inputs = [None, 3, [], [None], str(tmp_path / "missing.svs"), str(png), str(plain_folder)]
    for path in odd_inputs:
        assert napari_get_reader(path) is None
        assert napari_get_attention_reader(path) is None
    map_path = str(attention_zarr[0])
    assert napari_get_reader(map_path) is None, "attention maps belong to the attention reader"
    assert napari_get_attention_reader(str(lesion_slide.path)) is None
    assert callable(napari_get_reader(str(lesion_slide.path)))
    assert callable(napari_get_reader([str(lesion_slide.path)]))
    assert callable(napari_get_attention_reader(map_path))
    assert napari_get_reader([str(lesion_slide.path), map_path]) is None


def test_slide_layer_data_is_lazy_multiscale_rgb_in_micrometres(lesion_slide):
    [(levels, kwargs, layer_type)] = napari_get_reader(str(lesion_slide.path))(str(lesion_slide.path))
    assert layer_type == "image"
    assert all(isinstance(level, da.Array) for level in levels)
    assert [level.shape for level in levels] == [lesion_slide.level_shape(i) for i in range(3)]
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert tuple(kwargs["contrast_limits"]) == (0, 255)
    assert kwargs["scale"] == pytest.approx((lesion_slide.mpp, lesion_slide.mpp))
    meta = kwargs["metadata"]
    assert meta["path"] == str(lesion_slide.path)
    assert meta["mpp"] == pytest.approx(lesion_slide.mpp)
    assert meta["level_dimensions"][0] == [lesion_slide.width, lesion_slide.height]
    assert isinstance(meta["properties"], dict) and meta["properties"]


# --------------------------------------------------------------------------- through the viewer


def test_viewer_opens_slide_as_lazy_multiscale_layer(make_napari_viewer, lesion_slide):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    assert layer.multiscale and layer.rgb
    assert [tuple(level.shape) for level in layer.data] == [lesion_slide.level_shape(i) for i in range(3)]
    assert all(isinstance(level, da.Array) for level in layer.data)
    np.testing.assert_allclose(layer.scale, (lesion_slide.mpp, lesion_slide.mpp))
    assert tuple(layer.contrast_limits) == (0, 255)
    assert layer.metadata["path"] == str(lesion_slide.path)
    # level-0 pixel (x, y) is at world (y, x) * mpp: the lesion's corner lands where it should
    x, y = lesion_slide.lesion_xywh[:2]
    np.testing.assert_allclose(layer.data_to_world((y, x)), (y * lesion_slide.mpp, x * lesion_slide.mpp))


def test_opening_an_80k_slide_is_fast_and_reads_no_big_level(make_napari_viewer, huge_slide):
    viewer = make_napari_viewer()
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    [layer] = viewer.open(str(huge_slide.path), plugin=PLUGIN)
    seconds = time.perf_counter() - t0
    grown = psutil.Process().memory_info().rss - rss_before
    assert [tuple(level.shape) for level in layer.data] == [huge_slide.level_shape(i) for i in range(5)]
    assert all(isinstance(level, da.Array) for level in layer.data)
    assert seconds < 2.0, f"opening took {seconds:.2f} s"
    # level 0 alone is 19.2 GB; even level 2 is 75 MB
    assert grown < 150e6, f"opening grew RSS by {grown / 1e6:.0f} MB"


def test_unreadable_slide_is_reported_with_its_name(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a TIFF" * 100)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.svs"):
        viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_attention_map_lies_over_its_level0_cells(make_napari_viewer, tmp_path, version):
    att = np.full((4, 7), 0.01, np.float32)
    att[2, 5] = 1.0
    cell_w, cell_h = 96, 64
    origin_x, origin_y = 40, 24
    mpp = 0.5
    path = write_attention_zarr(
        tmp_path / f"map{version}.zarr", att, cell_size_xy=(cell_w, cell_h), origin_xy=(origin_x, origin_y),
        mpp=mpp, ngff_version=version,
    )
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert not layer.multiscale and not layer.rgb
    assert_inferno_fading_in(layer)
    assert tuple(layer.contrast_limits) == pytest.approx((0.0, 16.0))  # the absolute scale, x 28 cells
    np.testing.assert_allclose(layer.data, att * att.size)
    row, col = np.unravel_index(np.argmax(np.asarray(layer.data)), layer.data.shape)
    # the max cell covers level-0 pixels x in [40 + 5·96, 40 + 6·96), y in [24 + 2·64, 24 + 3·64);
    # its centre, in the slide layer's world (pixel centres at index × mpp), is:
    centre_x = origin_x + (col + 0.5) * cell_w - 0.5
    centre_y = origin_y + (row + 0.5) * cell_h - 0.5
    np.testing.assert_allclose(layer.data_to_world((row, col)), (centre_y * mpp, centre_x * mpp))
    # and its corners are the level-0 cell corners
    np.testing.assert_allclose(
        layer.data_to_world((row - 0.5, col - 0.5)),
        ((origin_y + row * cell_h - 0.5) * mpp, (origin_x + col * cell_w - 0.5) * mpp),
    )


def test_attention_map_over_slide_layer_hits_the_same_world_point(make_napari_viewer, lesion_slide, tmp_path):
    """A map whose max cell covers the lesion is drawn over the lesion of the slide layer."""
    x, y, w, h = lesion_slide.lesion_xywh
    cell = 128
    att = np.zeros((lesion_slide.height // cell, lesion_slide.width // cell), np.float32)
    att[y // cell, x // cell] = 1.0
    path = write_attention_zarr(tmp_path / "m.zarr", att, cell_size_xy=(cell, cell), mpp=lesion_slide.mpp)
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    [heat] = viewer.open(str(path), plugin=PLUGIN)
    row, col = np.unravel_index(np.argmax(att), att.shape)
    world = heat.data_to_world((row, col))
    # the same world point, in level-0 pixels of the slide layer, is inside the lesion
    py, px = slide_layer.world_to_data(world)
    assert x <= px < x + w and y <= py < y + h
    rgb = np.asarray(slide_layer.data[0][int(round(py)), int(round(px))])
    assert rgb[1] < 100, f"slide pixel under the attention peak is not lesion-coloured: {rgb}"


def test_get_reader_is_cheap_on_a_zarr_folder_with_unrelated_attrs(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=2)
    root.attrs["something"] = 1
    assert napari_get_attention_reader(str(tmp_path / "other.zarr")) is None
    assert callable(napari_get_reader(str(tmp_path / "other.zarr")))
    assert os.path.isdir(tmp_path / "other.zarr")


def test_ome_zarr_slide_opens_as_a_slide_not_as_an_attention_map(make_napari_viewer, tmp_path):
    import zarr

    image = np.zeros((300, 500, 3), np.uint8)  # (rows, cols, 3), non-square
    image[..., 0] = 200
    image[100:140, 320:380] = (90, 30, 110)
    root = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w", zarr_format=2)
    datasets = []
    for i, d in enumerate((1, 2)):
        level = np.ascontiguousarray(image[::d, ::d].transpose(2, 0, 1))  # (c, y, x)
        root.create_array(str(i), shape=level.shape, chunks=(3, 128, 128), dtype="uint8")[...] = level
        scale = {"type": "scale", "scale": [1, 0.25 * d, 0.25 * d]}
        datasets.append({"path": str(i), "coordinateTransformations": [scale]})
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    path = str(tmp_path / "slide.ome.zarr")
    assert napari_get_attention_reader(path) is None

    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin=PLUGIN)
    assert layer.multiscale and layer.rgb and layer.metadata["ats_wsi"] == "slide"
    assert [tuple(level.shape) for level in layer.data] == [(300, 500, 3), (150, 250, 3)]
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(layer.data[0][120, 350]), (90, 30, 110))
