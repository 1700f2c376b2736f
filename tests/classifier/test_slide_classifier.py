"""SlideClassifier.predict: the one slide → prediction path, on real synthetic slide files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ats_wsi
from ats_wsi.classifier import (
    ModelConfig,
    SlideInput,
    SlidePrediction,
    build_model,
    load_model,
    save_checkpoint,
    slide_seed,
)
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import CheckpointError
from ats_wsi.slide import open_slide

TINY = dict(n_patches=5, patch_size=64, feature_dim=8, low_downsample=16.0, class_names=["benign", "tumour"])


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "wide.svs"
    write_synthetic_slide(path, 2560, 1536, n_lesions=1, seed=3)  # not square: x and y cannot be swapped
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY)).eval()


def test_predict_returns_a_complete_prediction(model, slide):
    pred = model.predict(slide, seed=1)
    assert isinstance(pred, SlidePrediction)
    assert pred.slide == str(slide)
    assert pred.class_names == ("benign", "tumour")
    assert pred.probabilities.shape == (2,) and pred.probabilities.sum() == pytest.approx(1, abs=1e-6)
    assert pred.predicted == int(np.argmax(pred.probabilities))
    assert pred.predicted_name == pred.class_names[pred.predicted]
    assert pred.attention.dtype == np.float32 and pred.attention.sum() == pytest.approx(1, abs=1e-4)
    assert pred.boxes_xywh.shape == (5, 4) and pred.boxes_xywh.dtype == np.int64
    assert (pred.boxes_xywh[:, 2:] == 64).all()
    assert pred.patches_read == 5 and pred.pixels_read == 5 * 64 * 64
    assert pred.slide_pixels == 2560 * 1536
    assert pred.fraction_read == pytest.approx(5 * 64 * 64 / (2560 * 1536))
    assert pred.seconds > 0


def test_boxes_lie_on_the_cells_they_were_drawn_from(model, slide):
    pred = model.predict(slide, seed=2)
    cw, ch = pred.cell_size_xy
    rows, cols = pred.attention.shape
    # the map covers the slide: (cols · cell width, rows · cell height) = level-0 (w, h)
    assert cols * cw == pytest.approx(2560, rel=0.02) and rows * ch == pytest.approx(1536, rel=0.02)
    centres = pred.boxes_xywh[:, :2] + pred.boxes_xywh[:, 2:] / 2
    cell_cols = np.floor((centres[:, 0] - pred.origin_xy[0]) / cw).astype(int)
    cell_rows = np.floor((centres[:, 1] - pred.origin_xy[1]) / ch).astype(int)
    np.testing.assert_allclose(pred.attention[cell_rows, cell_cols], pred.box_attention, rtol=1e-6)


def test_boxes_are_the_pixels_the_model_saw(model, slide):
    with SlideInput(slide, model.config) as item:
        x_low, mask = item.low_inputs()
        source = item.source()
        gen = torch.Generator().manual_seed(slide_seed(slide, 4))
        with torch.no_grad():
            _, result = model(x_low, source, mask, generator=gen)
        seen = (result.patches[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pred = model.predict(item, seed=4)
        for (x, y, w, h), patch in zip(pred.boxes_xywh, seen):
            np.testing.assert_array_equal(item.slide.read_region((int(x), int(y)), 0, (int(w), int(h))), patch)


def test_path_open_slide_and_slide_input_give_the_same_prediction(model, slide):
    a = model.predict(slide, seed=7)
    with open_slide(slide) as s:
        b = model.predict(s, seed=7)
        assert s.read_region((0, 0), 0, (4, 4)).shape == (4, 4, 3)  # left open for the caller
    with SlideInput(slide, model.config) as item:
        c = model.predict(item, seed=7)
    for other in (b, c):
        np.testing.assert_array_equal(a.probabilities, other.probabilities)
        np.testing.assert_array_equal(a.boxes_xywh, other.boxes_xywh)
        np.testing.assert_array_equal(a.attention, other.attention)


def test_n_patches_applies_to_one_call_only(model, slide):
    pred = model.predict(slide, n_patches=3)
    assert pred.boxes_xywh.shape == (3, 4) and pred.patches_read == 3
    assert model.sampler.n_patches == 5
    assert model.predict(slide).boxes_xywh.shape == (5, 4)


def test_samples_compute_the_attention_map_once_and_average_k_draws(model, slide):
    calls = []
    hook = model.sampler.attention_net.register_forward_hook(lambda *_: calls.append(1))
    try:
        pred = model.predict(slide, samples=3, seed=5)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert pred.boxes_xywh.shape == (15, 4) and pred.patches_read == 15
    # the K draws are the first K draws of the slide's generator: their mean is the prediction
    with SlideInput(slide, model.config) as item:
        x_low, mask = item.low_inputs()
        source = item.source()
        gen = torch.Generator().manual_seed(slide_seed(slide, 5))
        probs = []
        with torch.no_grad():
            for _ in range(3):
                logits, result = model(x_low, source, mask, generator=gen)
                probs.append(torch.softmax(logits, -1)[0])
    np.testing.assert_allclose(pred.probabilities, torch.stack(probs).mean(0).numpy(), rtol=1e-6)


def test_deterministic_draws_the_top_cells(model, slide):
    pred = model.predict(slide, deterministic=True, seed=0)
    again = model.predict(slide, deterministic=True, seed=99)
    np.testing.assert_array_equal(pred.boxes_xywh, again.boxes_xywh)
    top = np.sort(pred.attention.ravel())[::-1][:5]
    np.testing.assert_allclose(np.sort(pred.box_attention)[::-1], top, rtol=1e-6)


def test_load_model_round_trip(model, slide, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = ats_wsi.load_model(path)
    assert not loaded.training and loaded.class_names == ("benign", "tumour")
    a, b = model.predict(slide, seed=3), loaded.predict(slide, seed=3)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_load_model_names_a_bad_file(tmp_path):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not-a-checkpoint.pt"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_class_names_default_to_numbered_classes():
    model = build_model(ModelConfig(n_classes=3, n_patches=2, patch_size=32, feature_dim=4))
    assert model.class_names == ("class 0", "class 1", "class 2")


def test_predict_patches_sets_the_draws_of_a_prediction_and_an_older_checkpoint_keeps_n_patches(slide, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, "predict_patches": 9})).eval()
    assert model.predict(slide, seed=1).boxes_xywh.shape == (9, 4)
    assert model.predict(slide, seed=1, n_patches=3).boxes_xywh.shape == (3, 4)  # the call's own wins
    path = tmp_path / "old.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=False)
    assert payload["config"]["predict_patches"] == 9
    del payload["config"]["predict_patches"]  # as written before the key existed
    torch.save(payload, path)
    old = load_model(path)
    assert old.config.predict_patches is None
    assert old.predict(slide, seed=1).boxes_xywh.shape == (5, 4)
