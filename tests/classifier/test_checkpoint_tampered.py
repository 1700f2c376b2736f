"""Checkpoints and configs that were tampered with (issue 26): every one is a typed error
naming the file and what is wrong, on load as on ``train --resume``; never NaN predictions."""
from __future__ import annotations

import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model, load_model, save_checkpoint
from ats_wsi.classifier.checkpoint import load_weights, read_checkpoint
from ats_wsi.errors import CheckpointError, ConfigError

TINY = dict(n_patches=4, patch_size=32, feature_dim=8, low_downsample=8.0)


@pytest.fixture
def saved(tmp_path):
    """A checkpoint with an AdamW state after one step, and its model."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    optimizer = torch.optim.AdamW(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    return save_checkpoint(tmp_path / "last.pt", model, epoch=1, optimizer=optimizer), model


def _tampered(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def test_a_nan_tensor_is_refused_naming_it(saved):
    path, _ = saved

    def nan(p):
        p["state_dict"]["head.bias"] = torch.tensor([0.0, float("nan")])

    with pytest.raises(CheckpointError, match=r"tensor 'head.bias' holds 1 NaN or inf value\(s\) of 2"):
        load_model(_tampered(path, nan))


def test_a_nan_in_the_optimizer_state_is_refused_too(saved):
    path, _ = saved

    def nan(p):
        p["optimizer"]["state"][0]["exp_avg"].fill_(float("inf"))

    with pytest.raises(CheckpointError, match="optimizer state 0"):
        read_checkpoint(_tampered(path, nan))


def test_an_optimizer_state_of_another_shape_is_refused_on_resume(saved):
    path, model = saved

    def reshape(p):
        p["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)

    payload = read_checkpoint(_tampered(path, reshape))
    with pytest.raises(CheckpointError, match=r"optimizer state 'exp_avg' is shaped \(3,\)"):
        load_weights(path, model, payload, torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("change, words", [
    ({"mean": [0.5]}, "'mean' must be 3 finite numbers"),
    ({"std": [0.25, 0.0, 0.25]}, "'std' must be 3 numbers > 0"),
    ({"class_names": ["only"]}, "'class_names' has 1 names but 'n_classes' is 2"),
    ({"low_downsample": 1e-9}, "'low_downsample' must be a finite number >= 1"),
    ({"patch_size": 65536}, "'patch_size' must be in 1..4096"),
    ({"low_downsample": None, "low_mpp": 1e-300}, "'low_mpp' must be µm/px in 0.01..1000"),
])
def test_a_config_out_of_range_is_refused_in_a_checkpoint_and_from_a_user(saved, change, words):
    path, _ = saved
    with pytest.raises(CheckpointError, match="out of range") as info:
        load_model(_tampered(path, lambda p: p["config"].update(change)))
    assert words in str(info.value) and str(path) in str(info.value)
    key = next(iter(change)) if len(change) == 1 else "low_mpp"
    with pytest.raises(ConfigError) as info:  # --config JSON with the same value
        ModelConfig.from_user({**TINY, "n_classes": 2, **change}, source="config.json")
    assert str(info.value).startswith("config.json: ") and f"'{key}'" in str(info.value)
