"""A two-stage (zoom) SlideClassifier: its config rules, checkpoints, one pass, prediction; one-stage unchanged."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, SlideInput, build_model, load_model, save_checkpoint
from ats_wsi.classifier.network import Normalize
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import CheckpointError, ConfigError
from ats_wsi.model import AttentionSampler
from ats_wsi.zoom import ZoomResult, ZoomSampler

ZOOM = dict(patch_mpp=0.5, patch_size=32, n_patches=3, feature_dim=8, low_downsample=16.0,
            zoom_mpp=2.0, zoom_regions=2, zoom_size=128.0)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoomcls") / "s.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=1, seed=3, lesion_size_um=(60.0, 120.0))  # 0.5 µm/px
    return path


@pytest.mark.parametrize("change, words", [
    (dict(zoom_regions=None), ["'zoom_regions' (--zoom-regions)", "missing"]),
    (dict(zoom_mpp=None, zoom_size=None), ["'zoom_mpp' (--zoom-mpp)", "'zoom_size' (--zoom-size)", "missing"]),
    (dict(zoom_mpp=0.0), ["'zoom_mpp' (--zoom-mpp) must be µm/px"]),
    (dict(zoom_mpp=float("nan")), ["'zoom_mpp' (--zoom-mpp) must be µm/px"]),
    (dict(zoom_regions=0), ["'zoom_regions' (--zoom-regions) must be an integer in 1..65536", "got 0"]),
    (dict(zoom_regions=2.5), ["'zoom_regions' (--zoom-regions) must be an integer"]),
    (dict(zoom_regions=300, n_patches=300), ["300 x 300 patches per slide"]),
    (dict(zoom_size=-1.0), ["'zoom_size' (--zoom-size) must be a region's side in µm > 0, got -1.0"]),
    (dict(zoom_size=40000.0), ["is a region of 20000 px a side; it must be 1..16384 px"]),
    (dict(patch_mpp=None), ["set 'patch_mpp' (--patch-mpp)"]),
    (dict(tile_aligned=True), ["does not take tile-aligned patches"]),
    (dict(sampler="uniform"), ["'sampler' must be 'attention', got 'uniform'"]),
])
def test_the_zoom_keys_are_checked_by_the_config_itself(change, words):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**ZOOM, **change})
    assert all(w in str(err.value) for w in words), str(err.value)
    # a person's --config JSON and a checkpoint refuse it too, naming the file and the key
    probe = (re.findall(r"'\w+'", words[0]) or [words[0]])[0]
    with pytest.raises(ConfigError) as user:
        ModelConfig.from_user({**ZOOM, **change}, source="cfg.json")
    assert "cfg.json" in str(user.value) and probe in str(user.value)
    with pytest.raises(CheckpointError) as ckpt:
        ModelConfig.from_dict({**ZOOM, **change}, path="m.pt")
    assert "m.pt" in str(ckpt.value) and words[0] in str(ckpt.value)


def test_a_one_stage_config_has_no_zoom_and_an_old_dict_loads():
    one = ModelConfig()
    assert (one.zoom_mpp, one.zoom_regions, one.zoom_size, one.zoom) == (None, None, None, False)
    old = {k: v for k, v in one.to_dict().items() if not k.startswith("zoom")}  # a checkpoint made before the zoom
    assert ModelConfig.from_dict(old) == one
    two = ModelConfig(**ZOOM)
    assert two.zoom and ModelConfig.from_dict(two.to_dict()) == two


def test_the_zoom_model_normalises_the_input_of_all_three_nets():
    cfg = ModelConfig(**ZOOM, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    model = build_model(cfg)
    assert isinstance(model.sampler, ZoomSampler)
    nets = (model.sampler.stage1.attention_net, model.sampler.stage2.attention_net, model.sampler.feature_net)
    for net in nets:
        norm = net[0]
        assert isinstance(norm, Normalize)
        assert norm.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
        assert norm.std.flatten().tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert model.sampler.n_regions == 2 and model.sampler.n_patches == 3


def test_one_pass_uint8_and_float_views_give_the_same_zoom_and_a_checkpoint_round_trips(slide, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**ZOOM)).eval()
    with SlideInput(slide, model.config) as item:
        x_low, mask = item.low_inputs()
        assert x_low.dtype == torch.uint8
        source = item.source()
        with torch.no_grad():
            gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
            logits_u8, r_u8 = model(x_low, source, mask, generator=gen())
            logits_f, r_f = model(x_low.float() / 255, source, mask, generator=gen())
    assert isinstance(r_u8, ZoomResult)
    assert r_u8.patch_features.shape == (1, 2, 3, 8)
    assert torch.equal(r_u8.patch_xy0, r_f.patch_xy0)  # the same draws: the same normalised pixels
    torch.testing.assert_close(logits_u8, logits_f, rtol=1e-5, atol=1e-6)

    save_checkpoint(tmp_path / "z.pt", model)
    again = load_model(tmp_path / "z.pt")
    assert again.config == model.config
    a = model.predict(slide, samples=2, seed=4)
    b = again.predict(slide, samples=2, seed=4)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.boxes_xywh, b.boxes_xywh)


def test_predict_reports_the_zoom_draws_and_averages_the_samplings(slide):
    torch.manual_seed(1)
    model = build_model(ModelConfig(**ZOOM)).eval()
    pred = model.predict(slide, samples=2, seed=3)
    assert pred.zoom is not None and len(pred.zoom) == 2
    assert pred.boxes_xywh.shape == (2 * 2 * 3, 4) and pred.patches_read == 12
    assert (pred.boxes_xywh[:, 2:] == 32).all()  # 32 px at 0.5 µm/px of a 0.5 µm/px slide
    assert pred.attention.sum() == pytest.approx(1.0, abs=1e-5)
    for s, record in enumerate(pred.zoom):
        rows = pred.boxes_xywh[s * 6:(s + 1) * 6].reshape(2, 3, 4)
        np.testing.assert_array_equal(rows, record.patch_boxes)
        # each patch is centred on a cell of its region; each probability is a1 · a2 of its draw
        for k in range(2):
            x, y, w, h = record.region_boxes[k]
            cx, cy = rows[k, :, 0] + rows[k, :, 2] / 2, rows[k, :, 1] + rows[k, :, 3] / 2
            assert ((cx >= x) & (cx <= x + w) & (cy >= y) & (cy <= y + h)).all()
        joint = record.region_probability[:, None] * record.patch_probability
        np.testing.assert_allclose(pred.box_attention[s * 6:(s + 1) * 6], joint.reshape(-1), rtol=1e-6)
    # pixels read: the patches and the regions, in level-0 pixels (64 px regions at 2 µm/px = 256 level-0 px)
    assert pred.pixels_read == 2 * (6 * 32 * 32 + 2 * 256 * 256)
    # the probabilities are the mean over the samplings of the head's softmax of each one's embedding
    with torch.no_grad():
        each = torch.softmax(model.head(torch.from_numpy(pred.embeddings)), dim=-1)
    np.testing.assert_allclose(pred.probabilities, each.mean(0).numpy(), rtol=1e-6)
    assert not np.allclose(pred.embeddings[0], pred.embeddings[1])  # two draws, not one twice
    one = model.predict(slide, samples=1, seed=3)  # the first sampling is the one-sampling draw of that seed
    assert one.zoom[0].patch_boxes.tolist() == pred.zoom[0].patch_boxes.tolist()


def test_the_streamed_stage_1_map_gives_the_draws_of_the_held_view(slide, monkeypatch):
    """Prediction reads the low view tile by tile for stage 1 (memory: the map, not the view); the
    draws equal those of the whole view held, the probabilities up to float rounding."""
    from ats_wsi.classifier import inputs

    torch.manual_seed(1)
    model = build_model(ModelConfig(**ZOOM)).eval()
    held = model.predict(slide, samples=2, seed=6, stream=False)
    views = []
    monkeypatch.setattr(inputs, "read_low_view", lambda *a, **k: views.append(a) or pytest.fail("view read whole"))
    streamed = model.predict(slide, samples=2, seed=6)
    assert not views
    np.testing.assert_array_equal(streamed.boxes_xywh, held.boxes_xywh)
    np.testing.assert_allclose(streamed.attention, held.attention, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(streamed.probabilities, held.probabilities, rtol=1e-5)
    for a, b in zip(streamed.zoom, held.zoom):
        np.testing.assert_array_equal(a.region_boxes, b.region_boxes)


def test_uniform_draws_ablate_both_stages_of_a_trained_zoom_and_are_restored(slide):
    """``predict(sampler="uniform")``: regions uniform over the stage-1 map's tissue cells, patches
    uniform over each region's cells; the model draws by attention again after the call."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(**ZOOM)).eval()
    with torch.no_grad():  # a stage-2 net far from uniform, so that uniform draws differ visibly
        for p in model.sampler.stage2.attention_net.parameters():
            p.normal_(0, 2)
    pred = model.predict(slide, samples=2, seed=8, sampler="uniform")
    assert model.sampler.sampler_kind == "attention"
    assert model.sampler.stage1.sampler_kind == model.sampler.stage2.sampler_kind == "attention"
    cells = int((pred.attention > 0).sum())
    np.testing.assert_allclose(pred.attention[pred.attention > 0], 1.0 / cells, rtol=1e-5)
    for record in pred.zoom:
        np.testing.assert_allclose(record.region_probability, 1.0 / cells, rtol=1e-5)
        a2 = record.zoom_attention
        for k in range(len(a2)):
            inside = a2[k][a2[k] > 0]
            np.testing.assert_allclose(inside, 1.0 / inside.size, rtol=1e-5)
    own = model.predict(slide, samples=2, seed=8)
    assert not np.allclose(own.zoom[0].zoom_attention, pred.zoom[0].zoom_attention)
    with pytest.raises(Exception, match="sampler must be one of"):
        model.sampler.set_sampler("random")


def test_a_one_stage_checkpoint_without_zoom_keys_loads_and_predicts_as_the_model_it_saved(slide, tmp_path):
    torch.manual_seed(2)
    model = build_model(ModelConfig(patch_size=32, n_patches=4, feature_dim=8, low_downsample=16.0)).eval()
    assert isinstance(model.sampler, AttentionSampler)
    keys = set(model.state_dict())
    assert not any("stage" in k for k in keys)  # the one-stage state dict has the names it always had
    path = save_checkpoint(tmp_path / "one.pt", model)
    payload = torch.load(path, weights_only=False)
    payload["config"] = {k: v for k, v in payload["config"].items() if not k.startswith("zoom")}  # as saved before
    torch.save(payload, path)
    again = load_model(path)
    assert again.config == model.config and set(again.state_dict()) == keys
    a = model.predict(slide, samples=2, seed=9)
    b = again.predict(slide, samples=2, seed=9)
    assert b.zoom is None
    for f in dataclasses.fields(a):
        if f.name in ("seconds",):
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=f.name)
        else:
            assert va == vb, f.name


def test_the_top_readout_reads_the_least_negative_patch_of_every_region(slide):
    torch.manual_seed(2)
    model = build_model(ModelConfig(**ZOOM, instance_head=True, readout="top", n_classes=2))
    with torch.no_grad():
        model.instance_head.weight.normal_(0, 3)
    pred = model.predict(slide, seed=5)
    with torch.no_grad():  # every drawn patch of both stages, n1 · n2 of them
        inst = torch.softmax(model.instance_head(torch.from_numpy(pred.patch_features)), -1)
    assert inst.shape[0] == ZOOM["zoom_regions"] * ZOOM["n_patches"]
    assert pred.probabilities == pytest.approx(inst[int(inst[:, 0].argmin())].double().numpy(), abs=1e-6)
