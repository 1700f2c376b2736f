"""OME-Zarr attention maps and overlays (ats_wsi.outputs); the atomic writers are in test_atomic.py."""
import json

import numpy as np
import pytest
import zarr

from ats_wsi.outputs import (
    colorize,
    read_attention_zarr,
    render_overlay,
    write_attention_zarr,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_attention_zarr_round_trip_and_layout(tmp_path, version):
    rng = np.random.default_rng(0)
    att = rng.random((7, 11)).astype(np.float32)  # non-square on purpose
    path = write_attention_zarr(
        tmp_path / "m.zarr", att, cell_size_xy=(64, 48), origin_xy=(32, 16), mpp=0.5,
        ngff_version=version, metadata={"slide": "s.svs"},
    )
    if version == "0.4":
        attrs = json.loads((path / ".zattrs").read_text())
        ms = attrs["multiscales"][0]
        assert ms["version"] == "0.4"
        assert (path / "0" / ".zarray").exists()
    else:
        meta = json.loads((path / "zarr.json").read_text())
        ms = meta["attributes"]["ome"]["multiscales"][0]
        assert meta["attributes"]["ome"]["version"] == "0.5"
        assert zarr.open_array(str(path / "0"), mode="r").metadata.dimension_names == ("y", "x")
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert all(a["unit"] == "micrometer" for a in ms["axes"])
    back = read_attention_zarr(path)
    np.testing.assert_array_equal(back.data, att)
    assert back.scale == (24.0, 32.0)  # (48 px, 64 px) * 0.5 µm/px
    # centre of cell (0, 0) is level-0 (32 + 32, 16 + 24) minus half a pixel, in µm
    assert back.translation == ((16 + 24 - 0.5) * 0.5, (32 + 32 - 0.5) * 0.5)
    assert back.metadata == {"slide": "s.svs"}
    assert back.unit == "micrometer"


def test_attention_cells_land_on_their_level0_region(tmp_path):
    """World coordinates of a cell centre equal those of the level-0 pixels it covers."""
    mpp = 0.25
    back = read_attention_zarr(
        write_attention_zarr(tmp_path / "m.zarr", np.zeros((5, 9)), cell_size_xy=(64, 64), origin_xy=(32, 32), mpp=mpp)
    )
    row, col = 2, 3
    world_y = back.translation[0] + row * back.scale[0]
    world_x = back.translation[1] + col * back.scale[1]
    # the cell covers level-0 x in [32 + 3*64, 32 + 4*64): its two middle pixels
    # are 255 and 256, whose centres in napari's world are 255*mpp and 256*mpp.
    assert world_x == pytest.approx((255 + 256) / 2 * mpp)
    assert world_y == pytest.approx((191 + 192) / 2 * mpp)
    assert back.cell_center_xy(row, col) == (256.0, 192.0)


def test_attention_zarr_without_mpp_uses_pixels(tmp_path):
    back = read_attention_zarr(write_attention_zarr(tmp_path / "m.zarr", np.ones((2, 3)), cell_size_xy=(10, 20)))
    assert back.unit is None and back.scale == (20.0, 10.0) and back.mpp is None


def test_bad_version_and_shape_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ngff_version"):
        write_attention_zarr(tmp_path / "a.zarr", np.ones((2, 2)), cell_size_xy=(1, 1), ngff_version="0.3")
    with pytest.raises(ValueError, match="2-D"):
        write_attention_zarr(tmp_path / "a.zarr", np.ones((2, 2, 2)), cell_size_xy=(1, 1))
    assert _leftovers(tmp_path) == [] and not (tmp_path / "a.zarr").exists()


def test_colorize_is_ordered_dark_to_bright():
    rgb = colorize(np.linspace(0, 1, 50)[None])
    luminance = rgb[0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luminance) >= -1e-6)
    assert tuple(rgb[0, 0]) == (0, 0, 4) and tuple(rgb[0, -1]) == (252, 255, 164)


def test_overlay_puts_the_hot_cell_where_it_belongs():
    thumb = np.full((100, 200, 3), 255, np.uint8)  # level 0 is 800 x 400 at downsample 4
    att = np.zeros((4, 8), np.float32)
    att[1, 6] = 1.0  # level-0 x in [600, 700), y in [100, 200)
    img = np.asarray(render_overlay(thumb, 4.0, att, cell_size_xy=(100, 100), alpha=1.0,
                                    boxes_xywh=np.array([[0, 0, 40, 40]])))
    hot = img[37, 162]  # thumbnail pixel in the middle of that cell
    cold = img[80, 20]
    assert hot.tolist() == [252, 255, 164]  # full opacity, brightest colour
    assert cold.tolist() == [255, 255, 255]  # zero attention: the slide shows
    assert img[0, 5].tolist() == [0, 255, 255]  # the box's top edge
