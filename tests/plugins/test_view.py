"""`ats-wsi view` and the plugin README's example, run as a user would (under Xvfb).

The README example is executed as written (only ``napari.run()`` does not block);
`ats-wsi view SLIDE --results DIR` must show the slide in µm (computed levels for a
single-level file), the predict folder's heatmap on the absolute scale with its colour
bar, the boxes numbered in draw order, the predicted class, and the docked widget.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import napari
import numpy as np
import pytest

from _napari_plugin import MANIFEST_PATH, PLUGIN, has_display
from ats_wsi.cli import main
from ats_wsi.cli.view import open_viewer, results_map
from ats_wsi.outputs import ATTENTION_SCALE_MAX
from ats_wsi.run.predict import PredictSettings, predict_one

README = MANIFEST_PATH.parent / "README.md"


def _predict(slide: Path, checkpoint: Path, results: Path) -> dict:
    """The real batch path: maps/NAME.zarr, overlays/NAME.png, .done/NAME.json."""
    return predict_one(str(slide), slide.stem, PredictSettings(checkpoint=str(checkpoint), out_dir=str(results),
                                                               n_patches=4)).row


@pytest.fixture
def predicted(lesion_slide, darkness, tmp_path):
    """(slide, results folder, done row) of one prediction of the darkness model."""
    slide = Path(shutil.copyfile(lesion_slide.path, tmp_path / "slide.svs"))
    results = tmp_path / "results"
    return slide, results, _predict(slide, darkness.checkpoint, results)


def test_readme_example_runs_as_written(predicted, darkness, tmp_path, monkeypatch, make_napari_viewer):
    slide, results, row = predicted
    (tmp_path / "run").mkdir()
    shutil.copyfile(darkness.checkpoint, tmp_path / "run" / "best.pt")
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert 'plugin="napari-ats-wsi"' in code and "add_plugin_dock_widget(\"napari-ats-wsi\"" in code
    assert PLUGIN == "napari-ats-wsi"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    monkeypatch.setattr(napari, "Viewer", make_napari_viewer)  # napari's test viewer, closed by the fixture
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # as written
    viewer = namespace["viewer"]
    names = [layer.name for layer in viewer.layers]
    # the widget's Run replaced the heatmap and boxes read from the results with its own
    assert len(viewer.layers) == 3 and names[:1] == ["slide.svs"]
    pred = namespace["prediction"]
    assert pred.predicted_name == "tumour"
    assert namespace["widget"].result is pred
    geo = json.loads((tmp_path / "slide.geojson").read_text())
    boxes = [f for f in geo["features"] if f["properties"]["name"].startswith("patch ")]
    assert [f["geometry"]["coordinates"][0][0] for f in boxes] == [[x, y] for x, y, _, _ in pred.boxes_xywh]


def test_view_shows_slide_map_numbered_boxes_class_and_widget(predicted, darkness, lesion_slide,
                                                              make_napari_viewer):
    slide, results, row = predicted
    viewer = open_viewer(slide, results, checkpoint=darkness.checkpoint, viewer=make_napari_viewer())
    slide_layer, heat, boxes = viewer.layers
    assert slide_layer.multiscale and slide_layer.rgb
    np.testing.assert_allclose(slide_layer.scale, (lesion_slide.mpp, lesion_slide.mpp))  # µm
    assert tuple(heat.contrast_limits) == pytest.approx((0.0, ATTENTION_SCALE_MAX))
    assert heat.colorbar.visible
    assert heat.data.mean() == pytest.approx(1.0, rel=1e-4)  # attention x cells: 1 on average
    assert boxes.metadata["boxes_xywh"] == row["boxes_xywh"]
    assert list(boxes.features["draw_order"]) == list(range(1, len(row["boxes_xywh"]) + 1))
    assert boxes.text.string.format == "{draw_order}"
    np.testing.assert_allclose(boxes.scale, slide_layer.scale)
    assert viewer.text_overlay.visible and viewer.text_overlay.text.startswith("tumour  p = 0.80")
    docked = [w for w in viewer.window.dock_widgets]
    assert any("Attention sampling" in name for name in docked), docked
    widget = viewer.window.dock_widgets[next(n for n in docked if "Attention sampling" in n)]
    assert widget.checkpoint == Path(darkness.checkpoint) and widget.slide_layer is slide_layer


def test_view_of_a_single_level_slide_offers_the_computed_levels(tiff_flat, make_napari_viewer):
    from ats_wsi import open_slide

    viewer = open_viewer(tiff_flat.path, widget=False, viewer=make_napari_viewer())
    [layer] = viewer.layers
    with open_slide(tiff_flat.path) as s:
        assert s.level_count == 1
        assert [tuple(d.shape[:2]) for d in layer.data] == [(lv.height, lv.width) for lv in s.pyramid]
    assert len(layer.data) == 5


def test_ats_wsi_view_command_opens_napari_and_returns(predicted, monkeypatch, make_napari_viewer):
    slide, results, _ = predicted
    opened = []

    def fake_run(*a, **k):  # instead of blocking: look at what the user would see
        opened.append([layer.name for layer in napari.current_viewer().layers])

    monkeypatch.setattr(napari, "run", fake_run)
    monkeypatch.setattr(napari, "Viewer", make_napari_viewer)
    assert main(["view", str(slide), "--results", str(results)]) == 0
    assert opened == [["slide.svs", "slide.zarr", "slide.zarr patches"]]


def test_ats_wsi_view_says_what_is_missing(predicted, tmp_path, capsys):
    slide, results, _ = predicted
    assert main(["view", str(tmp_path / "nope.svs")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["view", str(slide), "--results", str(tmp_path / "empty")]) == 2
    assert "no attention map" in capsys.readouterr().err
    assert results_map(results, slide) == results / "maps" / "slide.zarr"


def test_view_opens_fitted_with_a_scale_bar_and_run_replaces_its_layers(predicted, darkness, lesion_slide,
                                                                      make_napari_viewer):
    slide, results, _ = predicted
    viewer = open_viewer(slide, results, viewer=make_napari_viewer())  # no --checkpoint: the results' one
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    assert (getattr(overlays, "scale_bar", None) or viewer.scale_bar).visible
    assert all(str(u) == "micrometer" for u in viewer.layers[0].units)  # the bar's unit comes from the layers
    width_um, height_um = (n * lesion_slide.mpp for n in (2048, 1536))
    np.testing.assert_allclose(viewer.camera.center[-2:], (height_um / 2, width_um / 2), rtol=0.05)
    assert viewer.text_overlay.text.endswith("heatmap: attention x cells (1 = uniform)")
    docked = viewer.window.dock_widgets
    widget = docked[next(n for n in docked if "Attention sampling" in n)]
    assert widget.checkpoint == Path(darkness.checkpoint)
    widget.n_patches = 4
    for _ in range(2):
        widget.run_blocking()
        kinds = [layer.metadata.get("ats_wsi") for layer in viewer.layers]
        assert kinds == ["slide", "attention", "patches"], [layer.name for layer in viewer.layers]


@pytest.mark.gui
def test_view_screenshot_shows_the_scale_bar(predicted, make_napari_viewer):
    if not has_display():
        pytest.skip("no display: run under Xvfb (./scripts/test does) to render napari's canvas")
    slide, results, _ = predicted
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 800)
    open_viewer(slide, results, widget=False, viewer=viewer)
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar
    with_bar = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    bar.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert without.any(), "the canvas rendered nothing (no OpenGL context?)"
    changed = np.argwhere(np.abs(with_bar - without).sum(-1) > 30)
    rows, cols = with_bar.shape[:2]
    assert len(changed) > 50 and changed[:, 0].min() > rows / 2 and changed[:, 1].min() > cols / 2  # bottom right


def test_the_heatmap_is_transparent_below_uniform_attention():
    from napari_ats_wsi._reader import heatmap_colormap

    alpha = heatmap_colormap().map(np.array([0.0, 0.3, 0.9, 1.1, 2.0, 16.0]) / ATTENTION_SCALE_MAX)[:, 3]
    assert alpha[:3].tolist() == [0.0, 0.0, 0.0] and 0 < alpha[3] < alpha[4] < alpha[5] == pytest.approx(1.0)


def test_view_puts_the_slide_on_the_mpp_its_map_was_made_with(lesion_slide, darkness, tmp_path,
                                                               make_napari_viewer, capsys):
    """After `predict --mpp`, the map is in the given µm/px: `view` without --mpp draws the slide
    there and says so; with the same --mpp it is silent (issue 25)."""
    slide = Path(shutil.copyfile(lesion_slide.path, tmp_path / "slide.svs"))
    given = lesion_slide.mpp * 2
    results = tmp_path / "results"
    predict_one(str(slide), slide.stem, PredictSettings(checkpoint=str(darkness.checkpoint), out_dir=str(results),
                                                        n_patches=4, mpp=given))
    warned = []
    viewer = open_viewer(slide, results, widget=False, viewer=make_napari_viewer(), on_warning=warned.append)
    slide_layer, heat, boxes = viewer.layers
    np.testing.assert_allclose(slide_layer.scale, (given, given))
    np.testing.assert_allclose(boxes.scale, slide_layer.scale)
    assert warned == [f"{slide}: the slide has {lesion_slide.mpp:g} µm/px and its attention map was made at "
                      f"{given:g} µm/px (predict --mpp); drawn at the map's (pass --mpp to choose)"]
    warned.clear()
    viewer = open_viewer(slide, results, widget=False, viewer=make_napari_viewer(), mpp=given,
                         on_warning=warned.append)
    np.testing.assert_allclose(viewer.layers[0].scale, (given, given))
    assert warned == []
    assert main(["view", str(slide), "--mpp", "0"]) == 2
    assert "--mpp must be a number > 0" in capsys.readouterr().err
