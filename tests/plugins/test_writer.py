"""The attention-layer writer: napari layer -> OME-Zarr, placement preserved."""
from __future__ import annotations

import numpy as np
import pytest

from _napari_plugin import PLUGIN
from ats_wsi.outputs import read_attention_zarr, write_attention_zarr
from napari_ats_wsi._writer import placement_from_transform


def test_placement_inverts_the_ngff_transform():
    from ats_wsi.outputs import _transforms

    for mpp in (0.25, None):
        scale, translate = _transforms((96, 64), (40, 24), mpp)
        cell_size_xy, origin_xy = placement_from_transform(scale, translate, mpp)
        assert cell_size_xy == pytest.approx((96, 64))
        assert origin_xy == pytest.approx((40, 24))


@pytest.mark.parametrize("mpp", [0.5, None])
def test_saved_attention_layer_reads_back_in_the_same_place(make_napari_viewer, tmp_path, mpp):
    rng = np.random.default_rng(1)
    att = rng.random((5, 9)).astype(np.float32)
    src = write_attention_zarr(
        tmp_path / "in.zarr", att, cell_size_xy=(96, 64), origin_xy=(40, 24), mpp=mpp, metadata={"slide": "a.svs"}
    )
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(src), plugin=PLUGIN)
    written = viewer.layers.save(str(tmp_path / "out.zarr"), plugin=PLUGIN)
    assert written == [str(tmp_path / "out.zarr")]
    back = read_attention_zarr(tmp_path / "out.zarr")
    np.testing.assert_allclose(back.data, att, rtol=1e-6)  # shown x cells, stored as attention again
    assert back.cell_size_xy == pytest.approx((96, 64))
    assert back.origin_xy == pytest.approx((40, 24))
    assert back.mpp == mpp
    assert back.metadata.get("slide") == "a.svs"
    [again] = viewer.open(str(tmp_path / "out.zarr"), plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, layer.scale)
    np.testing.assert_allclose(again.translate, layer.translate)


def test_moved_layer_is_written_where_it_is_shown(make_napari_viewer, tmp_path):
    att = np.arange(12, dtype=np.float32).reshape(3, 4)
    src = write_attention_zarr(tmp_path / "in.zarr", att, cell_size_xy=(100, 100), mpp=0.5)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(src), plugin=PLUGIN)
    layer.translate = np.asarray(layer.translate) + (50.0, 25.0)  # µm: 100 px down, 50 px right
    viewer.layers.save(str(tmp_path / "moved.zarr"), plugin=PLUGIN)
    assert read_attention_zarr(tmp_path / "moved.zarr").origin_xy == pytest.approx((50, 100))


def test_writer_refuses_a_slide_layer(make_napari_viewer, tmp_path, lesion_slide):
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    with pytest.raises(TypeError, match="multiscale or RGB"):
        viewer.layers.save(str(tmp_path / "slide.zarr"), plugin=PLUGIN)
    assert not (tmp_path / "slide.zarr").exists()
