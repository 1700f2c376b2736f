"""The widget on a real, trained checkpoint, through napari.

The checkpoint is the one ``ats-wsi demo`` trains (the session fixture
``demo_run``: 48 synthetic slides, a model that learns to find the one dark
spot per slide), run by the real ``ats_wsi.classifier.load_model`` /
``SlideClassifier.predict`` on a held-out positive slide. Where the heatmap and the boxes land is checked
against the prediction the widget received, exactly, through the layers'
scale and translate, and the heatmap's maximum must lie on the slide's
ground-truth lesion.
"""
from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from _napari_plugin import PLUGIN
from ats_wsi.classifier import SlidePrediction
from ats_wsi.outputs import attention_scale

N_PATCHES = 6


@pytest.fixture(scope="module")
def slide_and_checkpoint(demo_run):
    """The demo's best checkpoint and one of its held-out positive slides."""
    from ats_wsi.data.manifest import read_manifest

    out, _ = demo_run
    test = read_manifest(out / "slides" / "manifest.csv", "test")
    positive = next(row.path for row in test if row.label == 1)
    return positive, out / "run" / "best.pt"


def _run(qtbot, viewer, slide, checkpoint):
    viewer.open(str(slide), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention sampling")
    widget._checkpoint.value = checkpoint
    widget._n_patches.value = N_PATCHES
    widget._run.native.click()
    qtbot.waitUntil(lambda: not widget.running and widget._run.enabled, timeout=120_000)
    return widget


def test_widget_draws_the_prediction_of_a_real_checkpoint_in_place(make_napari_viewer, qtbot, slide_and_checkpoint):
    slide, checkpoint = slide_and_checkpoint
    viewer = make_napari_viewer()
    start = len(notification_manager.records)
    widget = _run(qtbot, viewer, slide, checkpoint)
    errors = [str(n.message) for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]
    assert not errors
    assert len(viewer.layers) == 3
    slide_layer, heat, boxes = viewer.layers
    pred = widget.last_outcome.prediction
    assert isinstance(pred, SlidePrediction)
    mpp = slide_layer.metadata["mpp"]

    np.testing.assert_allclose(heat.data, attention_scale(pred.attention))
    row, col = np.unravel_index(np.argmax(heat.data), heat.data.shape)
    (cw, ch), (ox, oy) = pred.cell_size_xy, pred.origin_xy
    centre_xy = (ox + (col + 0.5) * cw, oy + (row + 0.5) * ch)  # continuous level-0 coordinates
    np.testing.assert_allclose(
        heat.data_to_world((row, col)), ((centre_xy[1] - 0.5) * mpp, (centre_xy[0] - 0.5) * mpp), rtol=1e-9
    )

    expected = np.asarray(pred.boxes_xywh).reshape(-1, 4)
    assert boxes.nshapes == len(expected) == N_PATCHES
    for verts, (bx, by, bw, bh) in zip(boxes.data, expected):
        (y0, x0), (y1, x1) = verts.min(axis=0), verts.max(axis=0)
        np.testing.assert_allclose((x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0), (bx, by, bw, bh))
        np.testing.assert_allclose(boxes.data_to_world((y0 + 0.5, x0 + 0.5)), (by * mpp, bx * mpp))
    assert widget._result.value.startswith(f"Predicted: {pred.predicted_name} (p = ")
    assert pred.class_names == ("benign", "lesion")  # the demo's config names its classes

    # the trained model's attention peaks on the lesion (ground truth in level-0 pixels)
    from ats_wsi.data.synthetic import load_lesions

    cx, cy = centre_xy
    assert any(x <= cx <= x + w and y <= cy <= y + h for x, y, w, h in load_lesions(slide))
    assert pred.predicted == 1


def test_a_file_that_is_not_a_checkpoint_is_an_error_notification(
    make_napari_viewer, qtbot, slide_and_checkpoint, tmp_path
):
    slide, _ = slide_and_checkpoint
    bad = tmp_path / "holiday-photo.pt"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a torch file" * 16)
    viewer = make_napari_viewer()
    start = len(notification_manager.records)
    _run(qtbot, viewer, slide, bad)
    errors = [str(n.message) for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "holiday-photo.pt" in errors[0] and "CheckpointError" in errors[0]
    assert len(viewer.layers) == 1
