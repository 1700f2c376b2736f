"""The widget's "Save GeoJSON": refused before a prediction; afterwards the file names the slide
the prediction is of (the widget's ``_result_slide``, born in ``__init__`` as None)."""
from __future__ import annotations

import json

import pytest
from _napari_plugin import PLUGIN

from napari_ats_wsi._widget import AttentionSamplingWidget


def test_save_geojson_is_refused_before_a_run_and_names_the_slide_after(make_napari_viewer, lesion_slide, darkness,
                                                                       tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention sampling")
    assert isinstance(widget, AttentionSamplingWidget)
    with pytest.raises(RuntimeError, match="run a prediction before saving it"):
        widget.save_geojson(tmp_path / "none.geojson")
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget.set_checkpoint(darkness.checkpoint)
    widget._n_patches.value = 3
    pred = widget.run_blocking()
    data = json.loads(widget.save_geojson(tmp_path / "boxes.geojson").read_text())
    assert data["properties"]["slide"] == str(lesion_slide.path)
    assert sum(f["properties"].get("name", "").startswith("patch") for f in data["features"]) == len(pred.boxes_xywh)
