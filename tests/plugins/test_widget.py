"""The "Attention sampling" widget, docked through napari's plugin menu.

Every run here is the real thing: the widget's job calls the real
``ats_wsi.classifier.load_model`` and ``SlideClassifier.predict`` on a real
checkpoint (the ``darkness`` fixture, conftest.py: a tiny model whose weights
are set so its attention is the darkness of the slide, and whose
probabilities are fixed), over the real slide fixtures. What the widget owns
(the worker thread, the layers it adds and where it puts them, the labels,
the error notifications) is checked against the numbers of the
``SlidePrediction`` it received. test_widget_with_real_checkpoint.py runs the
same widget on a trained checkpoint.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager

from _napari_plugin import PLUGIN, assert_inferno_fading_in, has_display
from ats_wsi.outputs import ATTENTION_SCALE_MAX, attention_scale
from ats_wsi.classifier import SlideClassifier, SlidePrediction
from ats_wsi.errors import CheckpointError
from napari_ats_wsi._widget import AttentionSamplingWidget

WIDGET = "Attention sampling"


@pytest.fixture
def checkpoint(darkness):
    return darkness.checkpoint


@pytest.fixture
def notifications():
    """Notifications napari receives during the test, as (severity, message)."""
    start = len(notification_manager.records)

    def new():
        return [(n.severity, str(n.message)) for n in notification_manager.records[start:]]

    return new


def dock_widget(viewer) -> AttentionSamplingWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, AttentionSamplingWidget)
    return widget


def run_and_wait(qtbot, widget, *, timeout=60_000):
    widget._run.native.click()  # what the user does
    assert widget.worker is not None, "Run did not start a worker"
    qtbot.waitUntil(lambda: widget.worker.is_running is False and widget._run.enabled, timeout=timeout)


def assert_boxes_are_the_predictions(boxes, pred: SlidePrediction, mpp: float) -> None:
    """The Shapes layer holds exactly the prediction's level-0 boxes, shown in µm."""
    expected = pred.boxes_xywh
    assert boxes.nshapes == len(expected) and set(boxes.shape_type) == {"rectangle"}
    for verts, (bx, by, bw, bh) in zip(boxes.data, expected):
        (y0, x0), (y1, x1) = verts.min(axis=0), verts.max(axis=0)
        np.testing.assert_allclose((x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0), (bx, by, bw, bh))
        np.testing.assert_allclose(boxes.data_to_world((y0, x0)), ((by - 0.5) * mpp, (bx - 0.5) * mpp))
    np.testing.assert_allclose(boxes.features["attention"], pred.box_attention)


# --------------------------------------------------------------------------- tests


def test_widget_lists_only_slide_layers(make_napari_viewer, lesion_slide, tmp_path):
    from ats_wsi.outputs import write_attention_zarr

    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    assert widget.slide_layers == ()
    [slide_layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    heat = write_attention_zarr(tmp_path / "m.zarr", np.ones((2, 2), np.float32), cell_size_xy=(8, 8))
    viewer.open(str(heat), plugin=PLUGIN)
    viewer.add_points([[0, 0]])
    assert widget.slide_layers == (slide_layer,)
    assert widget._slide.value is slide_layer
    viewer.layers.remove(slide_layer)
    assert widget.slide_layers == ()


def test_opening_a_slide_after_closing_the_widget_is_harmless(make_napari_viewer, qtbot, lesion_slide):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.wait(50)
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)  # the layer-list events reach no dead widget
    assert len(viewer.layers) == 1


def test_run_puts_heatmap_peak_and_boxes_on_the_lesion(
    make_napari_viewer, qtbot, lesion_slide, darkness, notifications
):
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = darkness.checkpoint
    widget._n_patches.value = 4  # the lesion covers 2 × 2 cells
    run_and_wait(qtbot, widget)

    assert [layer.name for layer in viewer.layers] == ["lesion.svs", "lesion.svs attention", "lesion.svs patches"]
    heat, boxes = viewer.layers[1], viewer.layers[2]
    pred = widget.last_outcome.prediction
    assert isinstance(pred, SlidePrediction) and widget.last_outcome.error is None
    mpp = lesion_slide.mpp
    x, y, w, h = lesion_slide.lesion_xywh

    # the heatmap is the prediction's map; its max, through the layer's scale/translate, lands on the lesion
    np.testing.assert_allclose(heat.data, attention_scale(pred.attention))  # the absolute scale: x cells
    row, col = np.unravel_index(np.argmax(heat.data), heat.data.shape)
    world_y, world_x = heat.data_to_world((row, col))
    level0_x, level0_y = world_x / mpp + 0.5, world_y / mpp + 0.5  # pixel centres are at index × mpp
    assert x <= level0_x < x + w and y <= level0_y < y + h
    assert_inferno_fading_in(heat)
    assert tuple(heat.contrast_limits) == pytest.approx((0.0, ATTENTION_SCALE_MAX))  # fixed, not per slide
    assert heat.colorbar.visible
    assert viewer.text_overlay.visible and "tumour" in viewer.text_overlay.text
    # cell (r, c) covers level-0 pixels origin + c·cw .. + cw - 1: its top-left edge is at (that - 0.5) · mpp
    (cw, ch), (ox, oy) = pred.cell_size_xy, pred.origin_xy
    assert (cw, ch) == (darkness.cell_size, darkness.cell_size)
    corner = heat.data_to_world((row - 0.5, col - 0.5))
    np.testing.assert_allclose(corner, ((oy + row * ch - 0.5) * mpp, (ox + col * cw - 0.5) * mpp))

    # n_patches boxes: the prediction's, in level-0 pixel coordinates, shown in µm, each on the lesion
    assert len(pred.boxes_xywh) == 4
    assert_boxes_are_the_predictions(boxes, pred, mpp)
    for bx, by, bw, bh in pred.boxes_xywh:
        assert bw == bh == darkness.patch_size
        cx, cy = bx + bw / 2, by + bh / 2
        assert x <= cx < x + w and y <= cy < y + h
    np.testing.assert_allclose(boxes.scale, slide_layer.scale)
    # edge colour follows attention: the most attended box is the brightest
    luminance = boxes.edge_color[:, :3] @ [0.2126, 0.7152, 0.0722]
    assert np.argmax(luminance) == np.argmax(boxes.features["attention"])

    assert pred.class_names == darkness.class_names == ("normal", "tumour") and pred.predicted_name == "tumour"
    np.testing.assert_allclose(pred.probabilities, darkness.probabilities, atol=1e-6)
    assert widget._result.value == "Predicted: tumour (p = 0.800)\nnormal: 0.200, tumour: 0.800"
    assert widget._status.value == f"4 patches in {pred.seconds:.1f} s"
    infos = [m for s, m in notifications() if s == NotificationSeverity.INFO]
    assert any("Predicted: tumour" in m for m in infos), infos
    assert not [m for s, m in notifications() if s == NotificationSeverity.ERROR]


def test_prediction_runs_in_a_worker_while_the_ui_stays_responsive(
    make_napari_viewer, qtbot, lesion_slide, checkpoint, monkeypatch
):
    import threading

    release = threading.Event()
    threads = []
    real_predict = SlideClassifier.predict

    def slow_predict(self, slide, **kwargs):
        threads.append(threading.current_thread())
        assert release.wait(timeout=20), "the UI thread never released the prediction"
        return real_predict(self, slide, **kwargs)

    # raising=True: were SlideClassifier.predict renamed, this test fails instead of passing vacuously
    monkeypatch.setattr(SlideClassifier, "predict", slow_predict, raising=True)
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = checkpoint
    widget._n_patches.value = 4
    widget._run.native.click()
    first = widget.worker
    qtbot.waitUntil(lambda: widget._status.value == "sampling attention", timeout=30_000)
    # the event loop runs (the status label updated), Run is disabled and a second click starts nothing
    assert widget.running and not widget._run.enabled
    widget._run.native.click()
    assert widget.worker is first
    release.set()
    qtbot.waitUntil(lambda: not widget.running and widget._run.enabled, timeout=30_000)
    assert threads and threads[0] is not threading.main_thread()
    assert len(threads) == 1
    assert len(viewer.layers) == 3
    assert isinstance(widget.last_outcome.prediction, SlidePrediction)


def _not_a_torch_file(path):
    path.write_bytes(b"\x00garbage" * 32)
    return "not a readable checkpoint"


def _a_torch_file_of_something_else(path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return "not an ats-wsi checkpoint"


@pytest.mark.parametrize("write_bad", [_not_a_torch_file, _a_torch_file_of_something_else])
def test_wrong_checkpoint_is_an_error_notification(
    make_napari_viewer, qtbot, lesion_slide, tmp_path, notifications, write_bad
):
    bad = tmp_path / "not-a-model.pt"
    reason = write_bad(bad)
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = bad
    run_and_wait(qtbot, widget)
    errors = [m for s, m in notifications() if s == NotificationSeverity.ERROR]
    assert len(errors) == 1, errors
    assert "loading checkpoint failed: CheckpointError" in errors[0]
    assert "not-a-model.pt" in errors[0] and reason in errors[0]
    assert len(viewer.layers) == 1
    assert widget._run.enabled and widget._status.value == "failed"
    assert widget.last_outcome.prediction is None


def test_unreadable_slide_is_an_error_notification(
    make_napari_viewer, qtbot, lesion_slide, tmp_path, checkpoint, notifications
):
    copy = tmp_path / "soon-broken.svs"
    shutil.copy(lesion_slide.path, copy)
    viewer = make_napari_viewer()
    viewer.open(str(copy), plugin=PLUGIN)
    copy.write_bytes(b"no longer a slide" * 64)  # e.g. a network share that went away
    widget = dock_widget(viewer)
    widget._checkpoint.value = checkpoint
    run_and_wait(qtbot, widget)
    errors = [m for s, m in notifications() if s == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "soon-broken.svs" in errors[0] and "opening slide failed" in errors[0]
    assert len(viewer.layers) == 1


def test_run_without_slide_or_checkpoint_explains_what_is_missing(
    make_napari_viewer, lesion_slide, tmp_path, notifications
):
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    widget._run.native.click()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget._checkpoint.value = tmp_path / "missing.pt"
    widget._run.native.click()
    errors = [m for s, m in notifications() if s == NotificationSeverity.ERROR]
    assert len(errors) == 2 and "choose its layer" in errors[0] and "missing.pt" in errors[1]
    assert widget.worker is None


def test_a_script_runs_the_widget_blocking_and_gets_the_prediction(make_napari_viewer, lesion_slide, checkpoint):
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    with pytest.raises(ValueError, match="choose its layer"):
        widget.run_blocking()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget.set_checkpoint(checkpoint)
    widget._n_patches.value = 3
    widget._samples.value = 2  # the widget's settings reach predict: 2 samplings of 3 patches
    pred = widget.run_blocking()

    assert isinstance(pred, SlidePrediction) and widget.last_outcome.prediction is pred
    assert pred.slide == str(lesion_slide.path)
    assert pred.boxes_xywh.shape == (6, 4) and pred.patches_read == 6
    assert [layer.name for layer in viewer.layers] == ["lesion.svs", "lesion.svs attention", "lesion.svs patches"]
    np.testing.assert_allclose(viewer.layers[1].data, attention_scale(pred.attention))
    assert_boxes_are_the_predictions(viewer.layers[2], pred, lesion_slide.mpp)
    assert widget._result.value.startswith("Predicted: tumour (p = 0.800)")

    widget.set_checkpoint(lesion_slide.path)  # a file, but no checkpoint: the typed error, as raised
    with pytest.raises(CheckpointError, match="lesion.svs"):
        widget.run_blocking()
    assert len(viewer.layers) == 3


def test_class_names_default_to_numbered_classes(make_napari_viewer, lesion_slide, darkness, tmp_path):
    unnamed = darkness.write(tmp_path / "unnamed.pt", class_names=None)
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget.set_checkpoint(unnamed)
    pred = widget.run_blocking()
    assert pred.class_names == ("class 0", "class 1")
    assert widget._result.value == "Predicted: class 1 (p = 0.800)\nclass 0: 0.200, class 1: 0.800"


# --------------------------------------------------------------------------- rendering


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def _lesion_pixels(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g < 80) & (r > 50) & (b > 70)


def _slide_pink(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 190) & (g > 110) & (g < 185) & (b > 150) & (r - g > 30)


def _heat_bright(rgb: np.ndarray) -> np.ndarray:
    """Yellow: the bright end of inferno (also blended over the dark lesion)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 170) & (g > 140) & (g - b > 12)  # yellowish: unlike pink tissue (g < b) or grey glass


@pytest.mark.gui
def test_screenshot_shows_heat_over_the_lesion_on_pink_tissue(
    make_napari_viewer, qtbot, lesion_slide, checkpoint, tmp_path
):
    if not has_display():
        pytest.skip("no display: run under Xvfb (./scripts/test does) to render napari's canvas")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1100, 800)
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = checkpoint
    widget._n_patches.value = 4
    run_and_wait(qtbot, widget)
    viewer.reset_view()
    viewer.layers[1].colorbar.visible = False  # the bar's yellow end is not heat over the slide
    after = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    for layer in viewer.layers[1:]:
        layer.visible = False
    viewer.text_overlay.visible = False  # its grey anti-aliased letters are not the lesion
    before = viewer.screenshot(canvas_only=True, flash=False)[..., :3]  # the slide alone, same view
    from PIL import Image

    Image.fromarray(after).save(tmp_path / "napari-attention.png")
    assert before.any(), "the canvas rendered nothing (no OpenGL context?)"
    lesion = _lesion_pixels(before)
    assert lesion.sum() > 20, "the lesion is not visible on the slide layer"
    assert not _heat_bright(before).any()
    heat = _heat_bright(after)
    assert heat.sum() > 20, "no inferno-bright pixels in the screenshot"
    assert _slide_pink(after).sum() > 20 * heat.sum(), "the tissue is no longer visible under the heatmap"
    # the heat is drawn where the lesion is on screen
    # atol 6 px: on the absolute scale the cells across the lesion edge saturate too (not only the top cell)
    np.testing.assert_allclose(_centroid(heat), _centroid(lesion), atol=6)


def test_a_survival_or_regression_prediction_reads_as_its_risk_or_value():
    from napari_ats_wsi._widget import format_prediction

    def prediction(task, value):
        return SlidePrediction(slide="s.svs", probabilities=np.ones(1), predicted=0,
                               class_names=("risk",) if task == "survival" else ("value",),
                               attention=np.ones((2, 2), np.float32) / 4, cell_size_xy=(16.0, 16.0),
                               origin_xy=(0.0, 0.0), boxes_xywh=np.zeros((1, 4), np.int64),
                               box_attention=np.ones(1, np.float32), seconds=0.1, patches_read=1, pixels_read=1,
                               slide_pixels=4, mpp=0.5, low_downsample=16.0, task=task, value=value)

    assert format_prediction(prediction("survival", -1.2345)) == "Predicted: risk -1.234"
    assert prediction("regression", 0.25).title == "value 0.25"
    classes = SlidePrediction(**{**vars(prediction("survival", None)), "task": "classification",
                                 "class_names": ("tumour",), "value": None})
    assert classes.title == "tumour  p = 1.00"
