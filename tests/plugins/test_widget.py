"""The "Attention sampling" widget, docked through napari's plugin menu.

Most tests replace ``ats_wsi.run.load_checkpoint`` / ``predict_slide`` (the
contract the widget is built on, docs/contracts.md) with a stand-in whose
"attention" is the darkness of the slide's lowest level, computed from the
real slide file. That pins down everything the widget owns — the worker
thread, the layers it adds and where it puts them, the prediction label, the
error notifications — exactly and in well under a second per run.
test_widget_with_trained_checkpoint.py runs the same widget on a real
checkpoint.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

import ats_wsi.run
from _napari_plugin import PLUGIN, assert_inferno_fading_in, has_display
from ats_wsi.errors import CheckpointError
from ats_wsi.run.predict import SlidePrediction
from ats_wsi.slide import open_slide
from napari_ats_wsi._widget import AttentionSamplingWidget

WIDGET = "Attention sampling"
CHECKPOINT_MAGIC = b"stand-in checkpoint"
PATCH = 128


def stand_in_load_checkpoint(path, device="cpu"):
    with open(path, "rb") as fh:
        if fh.read(len(CHECKPOINT_MAGIC)) != CHECKPOINT_MAGIC:
            raise CheckpointError(path, "not an ats-wsi checkpoint")
    return object(), {"class_names": ["normal", "tumour"]}


def stand_in_predict_slide(model, slide, *, n_patches=None, samples=1, device="cpu", seed=0, **_):
    """Attention = darkness of 8 × 8-pixel cells of the lowest level; boxes on the top cells."""
    level = slide.level_count - 1
    downsample = slide.level_downsamples[level]
    low = slide.read_level(level).astype(np.float64)
    k = 8
    rows, cols = low.shape[0] // k, low.shape[1] // k
    dark = 255.0 - low[: rows * k, : cols * k].mean(axis=-1).reshape(rows, k, cols, k).mean(axis=(1, 3))
    attention = dark**4 / (dark**4).sum()
    cell = k * downsample  # level-0 pixels per cell
    top = np.argsort(attention.ravel())[::-1][:n_patches]
    r, c = np.unravel_index(top, attention.shape)
    x0 = np.round(c * cell + cell / 2 - PATCH / 2).astype(np.int64)
    y0 = np.round(r * cell + cell / 2 - PATCH / 2).astype(np.int64)
    boxes = np.stack([x0, y0, np.full_like(x0, PATCH), np.full_like(x0, PATCH)], axis=1)
    w0, h0 = slide.dimensions
    return SlidePrediction(
        slide=str(slide.path), probabilities=np.array([0.2, 0.8]), predicted=1,
        attention=attention.astype(np.float32), cell_size_xy=(cell, cell), origin_xy=(0.0, 0.0),
        boxes_xywh=boxes, box_attention=attention.ravel()[top], seconds=0.01, patches_read=len(top),
        pixels_read=len(top) * PATCH * PATCH, slide_pixels=w0 * h0, mpp=slide.mpp,
        low_downsample=float(downsample),
    )


@pytest.fixture
def stand_in_run(monkeypatch):
    monkeypatch.setattr(ats_wsi.run, "load_checkpoint", stand_in_load_checkpoint, raising=False)
    monkeypatch.setattr(ats_wsi.run, "predict_slide", stand_in_predict_slide, raising=False)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(CHECKPOINT_MAGIC + b"\0" * 64)
    return path


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


def run_and_wait(qtbot, widget, *, timeout=30_000):
    widget._run.native.click()  # what the user does
    assert widget.worker is not None, "Run did not start a worker"
    qtbot.waitUntil(lambda: widget.worker.is_running is False and widget._run.enabled, timeout=timeout)


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
    make_napari_viewer, qtbot, lesion_slide, checkpoint, stand_in_run, notifications
):
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = checkpoint
    widget._n_patches.value = 4  # the lesion covers 2 × 2 cells
    run_and_wait(qtbot, widget)

    assert [layer.name for layer in viewer.layers] == ["lesion.svs", "lesion.svs attention", "lesion.svs patches"]
    heat, boxes = viewer.layers[1], viewer.layers[2]
    mpp = lesion_slide.mpp
    x, y, w, h = lesion_slide.lesion_xywh

    # the heatmap's max, through the layer's scale/translate, lands on the lesion
    row, col = np.unravel_index(np.argmax(heat.data), heat.data.shape)
    world_y, world_x = heat.data_to_world((row, col))
    level0_x, level0_y = world_x / mpp + 0.5, world_y / mpp + 0.5  # pixel centres are at index × mpp
    assert x <= level0_x < x + w and y <= level0_y < y + h
    assert_inferno_fading_in(heat)
    assert tuple(heat.contrast_limits) == pytest.approx((float(heat.data.min()), float(heat.data.max())))
    # cell (r, c) covers level-0 pixels c·128 .. c·128 + 127: its top-left edge is at (c·128 - 0.5) · mpp
    corner = heat.data_to_world((row - 0.5, col - 0.5))
    np.testing.assert_allclose(corner, ((row * 128 - 0.5) * mpp, (col * 128 - 0.5) * mpp))

    # n_patches boxes, in level-0 pixel coordinates, shown in µm, each on the lesion
    assert boxes.nshapes == 4 and set(boxes.shape_type) == {"rectangle"}
    with open_slide(lesion_slide.path) as slide:
        expected = stand_in_predict_slide(None, slide, n_patches=4).boxes_xywh
    for verts, (bx, by, bw, bh) in zip(boxes.data, expected):
        (y0, x0), (y1, x1) = verts.min(axis=0), verts.max(axis=0)
        np.testing.assert_allclose((x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0), (bx, by, bw, bh))
        np.testing.assert_allclose(boxes.data_to_world((y0, x0)), ((by - 0.5) * mpp, (bx - 0.5) * mpp))
        cx, cy = bx + bw / 2, by + bh / 2
        assert x <= cx < x + w and y <= cy < y + h
    np.testing.assert_allclose(boxes.scale, slide_layer.scale)
    # edge colour follows attention: the most attended box is the brightest
    luminance = boxes.edge_color[:, :3] @ [0.2126, 0.7152, 0.0722]
    assert np.argmax(luminance) == np.argmax(boxes.features["attention"])

    assert "tumour" in widget._result.value and "0.800" in widget._result.value
    infos = [m for s, m in notifications() if s == NotificationSeverity.INFO]
    assert any("Predicted: tumour" in m for m in infos), infos
    assert not [m for s, m in notifications() if s == NotificationSeverity.ERROR]


def test_prediction_runs_in_a_worker_while_the_ui_stays_responsive(
    make_napari_viewer, qtbot, lesion_slide, checkpoint, stand_in_run, monkeypatch
):
    import threading

    release = threading.Event()
    threads = []

    def slow_predict(*args, **kwargs):
        threads.append(threading.current_thread())
        assert release.wait(timeout=20), "the UI thread never released the prediction"
        return stand_in_predict_slide(*args, **kwargs)

    monkeypatch.setattr(ats_wsi.run, "predict_slide", slow_predict, raising=False)
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = checkpoint
    widget._n_patches.value = 4
    widget._run.native.click()
    first = widget.worker
    qtbot.waitUntil(lambda: widget._status.value == "sampling attention", timeout=10_000)
    # the event loop runs (the status label updated), Run is disabled and a second click starts nothing
    assert widget.running and not widget._run.enabled
    widget._run.native.click()
    assert widget.worker is first
    release.set()
    qtbot.waitUntil(lambda: not widget.running and widget._run.enabled, timeout=10_000)
    assert threads and threads[0] is not threading.main_thread()
    assert len(viewer.layers) == 3


def test_wrong_checkpoint_is_an_error_notification(
    make_napari_viewer, qtbot, lesion_slide, tmp_path, stand_in_run, notifications
):
    bad = tmp_path / "not-a-model.pt"
    bad.write_bytes(b"\x00garbage" * 32)
    viewer = make_napari_viewer()
    viewer.open(str(lesion_slide.path), plugin=PLUGIN)
    widget = dock_widget(viewer)
    widget._checkpoint.value = bad
    run_and_wait(qtbot, widget)
    errors = [m for s, m in notifications() if s == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "not-a-model.pt" in errors[0] and "not an ats-wsi checkpoint" in errors[0]
    assert len(viewer.layers) == 1
    assert widget._run.enabled


def test_unreadable_slide_is_an_error_notification(
    make_napari_viewer, qtbot, lesion_slide, tmp_path, checkpoint, stand_in_run, notifications
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
    make_napari_viewer, qtbot, lesion_slide, checkpoint, stand_in_run, tmp_path
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
    after = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    for layer in viewer.layers[1:]:
        layer.visible = False
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
    np.testing.assert_allclose(_centroid(heat), _centroid(lesion), atol=4)
