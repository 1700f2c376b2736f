"""A zoom prediction's stage-2 maps in napari: one heatmap per drawn region, placed where the region lies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _napari_plugin import PLUGIN
from ats_wsi.outputs import ATTENTION_SCALE_MAX
from ats_wsi.zoom import ZoomRecord
from napari_ats_wsi._widget import AttentionSamplingWidget
from napari_ats_wsi._zoom import zoom_layer_data


def _record() -> ZoomRecord:
    a2 = np.array([[[0.1, 0.2, 0.1], [0.3, 0.2, 0.1]], [[0.5, 0.0, 0.0], [0.0, 0.25, 0.25]]])
    return ZoomRecord(region_boxes=np.array([[96.0, 196.0, 40.0, 40.0], [400.0, 10.0, 40.0, 40.0]]),
                      region_probability=np.array([0.4, 0.1]), stage1_cells=12, zoom_attention=a2,
                      zoom_cell_size_xy=(8.0, 6.0), zoom_origin_xy=np.array([[100.0, 200.0], [404.0, 14.0]]),
                      patch_boxes=np.zeros((2, 1, 4)), patch_probability=np.full((2, 1), 1.0))


def test_each_region_map_is_a_heatmap_at_its_place_on_the_slide_and_its_own_scale():
    record = _record()
    layers = zoom_layer_data([record], name="s.svs", scale_yx=(0.5, 0.25), translate_yx=(10.0, 20.0),
                             units_um=True, slide="/x/s.svs")
    assert [kw["name"] for _, kw, _ in layers] == ["s.svs zoom region 1", "s.svs zoom region 2"]
    for k, (data, kw, kind) in enumerate(layers):
        assert kind == "image"
        np.testing.assert_allclose(data, record.zoom_attention[k] * 6)  # x its own 6 cells: 1 = uniform
        ox, oy = record.zoom_origin_xy[k]
        # by hand: a cell of 8 x 6 level-0 px; cell (0, 0)'s centre at level-0 (ox + 4 - 0.5, oy + 3 - 0.5)
        assert kw["scale"] == pytest.approx((6 * 0.5, 8 * 0.25))
        assert kw["translate"] == pytest.approx((10.0 + (oy + 2.5) * 0.5, 20.0 + (ox + 3.5) * 0.25))
        assert kw["contrast_limits"] == (0.0, ATTENTION_SCALE_MAX) and kw["units"] == ("micrometer", "micrometer")
        assert kw["metadata"]["map_metadata"] == {"slide": "/x/s.svs", "zoom_region": k + 1, "sampling": 1}
    two = zoom_layer_data([record, record], name="s", scale_yx=(1, 1), translate_yx=(0, 0), units_um=False)
    assert [kw["name"] for _, kw, _ in two][2] == "s zoom region 1 (sampling 2)"
    assert zoom_layer_data(None, name="s", scale_yx=(1, 1), translate_yx=(0, 0), units_um=False) == []


def test_the_widget_shows_a_zoom_predictions_region_maps_over_the_slide(make_napari_viewer, lesion_slide):
    from ats_wsi.classifier import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(patch_mpp=0.5, patch_size=32, n_patches=2, feature_dim=4, low_downsample=16.0,
                                    zoom_mpp=2.0, zoom_regions=3, zoom_size=128.0,
                                    attention_kwargs={"hidden": 2, "layers": 1, "pool": 4}))
    pred = model.predict(str(lesion_slide.path), samples=1, seed=0)
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = AttentionSamplingWidget(viewer)
    for _ in range(2):  # a second run replaces the layers, never piles them up
        widget.add_prediction_layers(pred, slide_layer)
        names = [layer.name for layer in viewer.layers]
        assert names == ["lesion.svs", "lesion.svs attention", *[f"lesion.svs zoom region {k}" for k in (1, 2, 3)],
                         "lesion.svs patches"]
    record = pred.zoom[0]
    mpp = float(slide_layer.scale[-1])
    for k in range(3):  # the map's corner in the world (µm) is its region's level-0 corner x mpp
        layer = viewer.layers[f"lesion.svs zoom region {k + 1}"]
        corner = np.asarray(layer.data_to_world((-0.5, -0.5)))[-2:]
        ox, oy = record.zoom_origin_xy[k]
        np.testing.assert_allclose(corner, (oy * mpp - 0.5 * mpp + slide_layer.translate[-2],
                                            ox * mpp - 0.5 * mpp + slide_layer.translate[-1]), atol=1e-6)


def test_view_results_shows_the_written_region_maps_where_the_regions_lie(make_napari_viewer, lesion_slide,
                                                                         tmp_path):
    from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
    from ats_wsi.cli.view import open_viewer
    from ats_wsi.outputs import read_zoom_maps
    from ats_wsi.run.predict import PredictSettings, predict_one

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "zoom.pt", build_model(ModelConfig(
        patch_mpp=0.5, patch_size=32, n_patches=2, feature_dim=4, low_downsample=16.0, zoom_mpp=2.0, zoom_regions=3,
        zoom_size=128.0, attention_kwargs={"hidden": 2, "layers": 1, "pool": 4})))
    results = tmp_path / "results"
    pred = predict_one(str(lesion_slide.path), "lesion", PredictSettings(
        checkpoint=str(checkpoint), out_dir=str(results), samples=2, seed=1)).prediction
    viewer = open_viewer(lesion_slide.path, results, widget=False, viewer=make_napari_viewer())
    regions = [f"lesion.zarr zoom region {k} (sampling {s})" for s in (1, 2) for k in (1, 2, 3)]
    assert [layer.name for layer in viewer.layers] == ["lesion.svs", "lesion.zarr", *regions, "lesion.zarr patches"]
    slide_layer = viewer.layers["lesion.svs"]
    mpp = lesion_slide.mpp
    np.testing.assert_allclose(slide_layer.scale, (mpp, mpp))
    written = read_zoom_maps(results / "maps" / "lesion.zarr")
    # the widget's layers of the same prediction, made in memory: the view shows the same ones
    shown = zoom_layer_data(pred.zoom, name="lesion.zarr", scale_yx=tuple(slide_layer.scale),
                            translate_yx=tuple(slide_layer.translate), units_um=True, slide=str(lesion_slide.path))
    for k, name in enumerate(regions):
        s, r = divmod(k, 3)
        layer, record = viewer.layers[name], pred.zoom[s]
        # values: the written map on the absolute scale (attention x its own cells), that map the prediction's
        np.testing.assert_array_equal(written[k].data, record.zoom_attention[r].astype(np.float32))
        np.testing.assert_array_equal(layer.data, written[k].data * np.float32(written[k].data.size))
        np.testing.assert_array_equal(layer.data, shown[k][0])
        # placement, by hand: a cell of (cw, ch) level-0 px from the region's origin, in µm on the slide
        cw, ch = record.zoom_cell_size_xy
        ox, oy = record.zoom_origin_xy[r]
        np.testing.assert_allclose(layer.scale, (ch * mpp, cw * mpp), rtol=1e-12)
        np.testing.assert_allclose(layer.translate, ((oy + ch / 2 - 0.5) * mpp, (ox + cw / 2 - 0.5) * mpp), rtol=1e-12)
        np.testing.assert_allclose(layer.scale, shown[k][1]["scale"], rtol=1e-12)
        np.testing.assert_allclose(layer.translate, shown[k][1]["translate"], rtol=1e-12)
        corner = np.asarray(layer.data_to_world((-0.5, -0.5)))[-2:]  # the map's top-left edge: the region's origin
        np.testing.assert_allclose(corner, (oy * mpp - 0.5 * mpp, ox * mpp - 0.5 * mpp), atol=1e-9)
        assert tuple(layer.contrast_limits) == (0.0, ATTENTION_SCALE_MAX)
        assert layer.metadata["map_metadata"]["slide"] == str(lesion_slide.path)
