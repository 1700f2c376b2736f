"""Training with the learning aids (exploration, per-patch losses) and the uniform sampler,
from the library and from `ats-wsi train` / `ats-wsi predict`, on the tiny real slide set."""
from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import TRAIN_ARGS, TRAIN_ENV, cli, explain, read_csv

from ats_wsi.classifier import ModelConfig, load_model, read_checkpoint
from ats_wsi.cli.train import MODEL_DEFAULTS
from ats_wsi.run.train import TrainSettings, train

TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0)


def test_exploration_and_per_patch_losses_reach_every_part_of_the_model(slide_set, tmp_path):
    seen = []  # (epoch, smoothing, patches drawn, sampled_logits given)

    def on_slide(epoch, row, item, logits, result):
        seen.append((epoch, model_smoothing[0], result.positions.shape[1], result.sampled_logits is not None))

    model_smoothing = [None]
    config = ModelConfig(instance_head=True, smoothing=0.05, **TINY)
    settings = TrainSettings(epochs=3, batch_size=2, explore=1.0, explore_epochs=2, explore_patches=6,
                             instance_weight=1.0, distill_weight=1.0)

    import ats_wsi.run.train as train_module

    original = train_module.set_exploration

    def spy(model, s, epoch):
        original(model, s, epoch)
        model_smoothing[0] = model.sampler.softmax.smoothing

    train_module.set_exploration = spy
    try:
        train(slide_set.manifest, tmp_path / "run", config, settings, progress=False, on_slide=on_slide)
    finally:
        train_module.set_exploration = original
    by_epoch = {e: (s, n) for e, s, n, _ in seen}
    assert by_epoch[0] == (pytest.approx(1.0), 6)  # uniform over tissue, more draws
    assert by_epoch[1] == (pytest.approx(0.525), 6)
    assert by_epoch[2] == (pytest.approx(0.05), 4)  # the model's own from then on
    assert all(given for *_, given in seen)

    first = read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-001.pt")["state_dict"]
    last = load_model(tmp_path / "run" / "last.pt")
    assert last.instance_head is not None and last.sampler.n_patches == 4
    assert last.sampler.softmax.smoothing == pytest.approx(0.05)  # what prediction uses
    # the instance head and the attention net were trained
    assert not torch.equal(first["instance_head.weight"], last.state_dict()["instance_head.weight"])
    payload = read_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["train_config"]["instance_weight"] == 1.0


def test_validation_draws_predict_patches_and_training_keeps_its_own(slide_set, tmp_path):
    import ats_wsi.run.train as train_module

    seen = []  # (training?, patches drawn) of every slide through the model
    original = train_module.forward_slide

    def spy(net, item, generator, device, prepared=None):
        logits, result = original(net, item, generator, device, prepared)
        seen.append((net.training, result.positions.shape[1]))
        return logits, result

    train_module.forward_slide = spy
    try:
        train(slide_set.manifest, tmp_path / "run", ModelConfig(predict_patches=7, **TINY),
              TrainSettings(epochs=2, batch_size=2), progress=False)
    finally:
        train_module.forward_slide = original
    assert {n for training, n in seen if training} == {4}
    assert {n for training, n in seen if not training} == {7}
    assert sum(not training for training, _ in seen) == 2  # the one validation slide, each epoch
    last = load_model(tmp_path / "run" / "last.pt")
    assert last.sampler.n_patches == 4 and last.config.predict_patches == 7


def test_select_last_makes_best_pt_the_last_epoch_with_its_threshold(slide_set, tmp_path):
    hist = train(slide_set.manifest, tmp_path / "run", ModelConfig(**TINY),
                 TrainSettings(epochs=3, batch_size=2, select="last"), progress=False)
    best, last = read_checkpoint(tmp_path / "run" / "best.pt"), read_checkpoint(tmp_path / "run" / "last.pt")
    assert best["epoch"] == last["epoch"] == 3
    for key, value in last["state_dict"].items():
        assert torch.equal(best["state_dict"][key], value), key
    assert best["metrics"]["val_threshold"] == pytest.approx(hist[-1].val_threshold, nan_ok=True)


@pytest.mark.parametrize("flags, want", [
    ([], 128),  # 4 x the default 32 (docs/training.md, "Patches at prediction")
    (["--n-patches", "10"], 40),
    (["--n-patches", "10", "--predict-patches", "12"], 12),
    (["--zoom-mpp", "2", "--zoom-regions", "4", "--zoom-size", "256"], None),  # a zoom model: n_patches a region
])
def test_the_cli_predicts_with_four_times_the_training_draws(flags, want):
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import model_config

    config = model_config(build_parser().parse_args(["train", "m.csv", "--out", "o", "--no-pretrain", *flags]))
    assert config.predict_patches == want


def test_per_patch_losses_without_an_instance_head_are_refused(slide_set, tmp_path):
    with pytest.raises(ValueError, match="instance head"):
        train(slide_set.manifest, tmp_path / "run", ModelConfig(**TINY),
              TrainSettings(epochs=1, instance_weight=1.0), progress=False)


def test_cli_uniform_sampler_trains_and_predicts_and_predict_can_ablate_the_attention(slide_set, tmp_path):
    out = tmp_path / "uniform"
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "1", "--sampler", "uniform",
               *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["sampler"] == "uniform"
    assert load_model(out / "last.pt").sampler.sampler_kind == "uniform"

    # A model trained with attention, predicted with --sampler uniform: the map is flat over tissue.
    attn = tmp_path / "attention"
    proc = cli("train", slide_set.manifest, "--out", attn, "--epochs", "1", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    model = load_model(attn / "last.pt")
    assert model.sampler.sampler_kind == "attention"
    flat = model.predict(slide_set.slides[0], sampler="uniform")
    own = model.predict(slide_set.slides[0])
    tissue = flat.attention > 0
    assert flat.attention[tissue] == pytest.approx(1 / tissue.sum())
    assert not (own.attention[tissue] == pytest.approx(1 / tissue.sum()))
    assert model.sampler.sampler_kind == "attention"  # restored after the call

    res = tmp_path / "res"
    proc = cli("predict", attn / "last.pt", slide_set.slides[0], "--out", res, "--sampler", "uniform",
               "--no-progress")
    assert proc.returncode == 0, explain(proc)
    assert len(read_csv(res / "predictions.csv")) == 1



def test_cli_negative_class_by_name_and_bad_values(slide_set, tmp_path):
    named = tmp_path / "named.csv"
    rows = read_csv(slide_set.manifest)
    named.write_text("path,label,split\n" + "".join(
        f"{r['path']},{'tumor' if r['label'] == '1' else 'normal'},{r['split']}\n" for r in rows))
    out = tmp_path / "run"
    proc = cli("train", named, "--out", out, "--epochs", "1", "--instance-head", "--instance-weight", "1",
               "--negative-class", "normal", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["negative_class"] == 0 and saved["model"]["negative_class"] == 0
    proc = cli("train", named, "--out", tmp_path / "bad", "--epochs", "1", "--negative-class", "benign",
               *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 2 and "--negative-class 'benign'" in proc.stderr  # a usage error
    assert "Traceback" not in proc.stderr


def test_the_commands_defaults_are_physical_and_use_the_aids(slide_set, tmp_path):
    out = tmp_path / "defaults"
    # the default encoder, pretrained small (docs/training.md, "The default encoder"; tests/cli/test_auto_encoder.py)
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "1", "--no-progress", "--pretrain-steps", "2",
               "--pretrain-patches", "12", env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    saved = json.loads((out / "config.json").read_text())
    model, settings = saved["model"], saved["train"]
    assert model["low_mpp"] == 8.0 and model["low_downsample"] is None and model["patch_mpp"] == 0.5
    assert model["patch_size"] == 128 and model["n_patches"] == 32 and model["instance_head"] is True
    assert model["predict_patches"] == 128  # 4 x the training draws (docs/training.md, "Patches at prediction")
    assert model["temperature"] == 0.25 and model["feature_net"] == "encoder:simclr" and model["feature_frozen"]
    assert model["readout"] == "top" and model["negative_class"] == 0
    assert model["attention_kwargs"] == MODEL_DEFAULTS["attention_kwargs"]
    assert model["entropy"] == 0.0  # no pull towards a flat map (docs/training.md, "The entropy term")
    assert settings["explore"] == 1.0 and settings["explore_patches"] == 64 and settings["distill"] == "rank"
    assert settings["instance_weight"] == 1.0 and settings["select"] == "last" and settings["schedule"] == "cosine"
    assert settings["instance_memory"] == 1024 and settings["distill_memory"] and settings["distill_temperature"] == 0.25
    assert load_model(out / "last.pt").instance_head is not None

    # The defaults read the instance head's top patch; --readout head reads the slide head of the same draws.
    model = load_model(out / "last.pt")
    assert model.config.readout == "top"
    for readout in ("top", "head"):
        res = tmp_path / f"readout-{readout}"
        proc = cli("predict", out / "last.pt", slide_set.slides[0], "--out", res, "--readout", readout,
                   "--no-progress")
        assert proc.returncode == 0, explain(proc)
        row = read_csv(res / "predictions.csv")[0]
        want = model.predict(slide_set.slides[0], readout=readout).probabilities
        assert [float(row["p0"]), float(row["p1"])] == pytest.approx(want, abs=1e-5)


def test_without_pretraining_the_built_in_net_trains_end_to_end_without_normalisation():
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import model_config

    config = model_config(build_parser().parse_args(["train", "m.csv", "--out", "o", "--no-pretrain"]))
    assert config.feature_net == "feature-small" and not config.feature_frozen
    assert config.feature_kwargs["norm"] == "none" and config.feature_dim == 32


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "0"], "temperature must be positive"),
    (["--smoothing", "1.5"], "smoothing must lie in [0, 1]"),
    (["--distill-temperature", "0"], "--distill-temperature 0 must be between 0.01 and 100"),
    (["--distill-temperature", "nan"], "--distill-temperature nan must be between 0.01 and 100"),
])
def test_bad_sampling_settings_are_one_line_before_any_training(slide_set, tmp_path, flags, words):
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", "--epochs", "1", *TRAIN_ARGS, *flags)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_config_with_an_unknown_sampler_is_refused(slide_set, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sampler": "random"}))
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", "--config", path, "--epochs", "1",
               "--no-progress")
    assert proc.returncode == 2 and "sampler must be one of ('attention', 'uniform')" in proc.stderr
    assert "pretraining" not in proc.stdout and not (tmp_path / "run" / "encoder").exists()  # refused before it


def test_no_instance_head_turns_the_per_patch_losses_off_or_names_the_clash():
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import _aid_settings
    from ats_wsi.errors import ConfigError

    args = build_parser().parse_args(["train", "m.csv", "--out", "o", "--no-instance-head"])
    aids = _aid_settings(args, ["normal", "tumor"], 2, instance_head=False)
    assert (aids["instance_weight"], aids["distill_weight"]) == (0.0, 0.0)
    assert _aid_settings(args, ["normal", "tumor"], 2, instance_head=True)["instance_weight"] == 1.0
    args = build_parser().parse_args(["train", "m.csv", "--out", "o", "--no-instance-head", "--distill-weight", "2"])
    with pytest.raises(ConfigError, match="--distill-weight 2 needs the instance head"):
        _aid_settings(args, ["normal", "tumor"], 2, instance_head=False)


def test_the_instance_memory_is_on_for_frozen_features_and_refused_for_a_net_that_trains():
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import INSTANCE_MEMORY, _aid_settings
    from ats_wsi.errors import ConfigError

    parse = build_parser().parse_args
    args = parse(["train", "m.csv", "--out", "o"])
    assert _aid_settings(args, ["normal", "tumor"], 2, frozen=True)["instance_memory"] == INSTANCE_MEMORY
    assert _aid_settings(args, ["normal", "tumor"], 2, frozen=False)["instance_memory"] == 0
    assert _aid_settings(parse(["train", "m.csv", "--out", "o", "--instance-memory", "0"]),
                         ["normal", "tumor"], 2, frozen=True)["instance_memory"] == 0
    with pytest.raises(ConfigError, match="--instance-memory 64 needs a frozen feature net: add --freeze-features"):
        _aid_settings(parse(["train", "m.csv", "--out", "o", "--instance-memory", "64"]), ["normal", "tumor"], 2)
    with pytest.raises(ConfigError, match="--instance-memory -1 must be between 0 and"):
        _aid_settings(parse(["train", "m.csv", "--out", "o", "--instance-memory", "-1"]), ["normal", "tumor"], 2,
                      frozen=True)
    # frozen: the distillation runs over the memory at temperature 0.25; else over the draws at 1
    frozen = _aid_settings(args, ["normal", "tumor"], 2, frozen=True)
    assert frozen["distill_memory"] and frozen["distill_temperature"] == 0.25
    trains = _aid_settings(args, ["normal", "tumor"], 2, frozen=False)
    assert not trains["distill_memory"] and trains["distill_temperature"] == 1.0
    off = _aid_settings(parse(["train", "m.csv", "--out", "o", "--no-distill-memory"]), ["normal", "tumor"], 2,
                        frozen=True)
    assert not off["distill_memory"] and off["distill_temperature"] == 1.0 and off["instance_memory"] == INSTANCE_MEMORY
    given = _aid_settings(parse(["train", "m.csv", "--out", "o", "--distill-temperature", "0.5"]), ["normal", "tumor"],
                          2, frozen=True)
    assert given["distill_memory"] and given["distill_temperature"] == 0.5
    with pytest.raises(ConfigError, match="--distill-memory needs the instance memory"):
        _aid_settings(parse(["train", "m.csv", "--out", "o", "--distill-memory"]), ["normal", "tumor"], 2)
    # the library refuses it as plainly
    from types import SimpleNamespace

    from ats_wsi.run._aids import memory_for as _memory
    from ats_wsi.run.train import TrainSettings

    model = SimpleNamespace(instance_head=torch.nn.Linear(4, 2), config=SimpleNamespace(feature_frozen=False))
    with pytest.raises(ValueError, match="instance_memory needs a frozen feature net"):
        _memory(TrainSettings(instance_weight=1.0, instance_memory=8), model, 3)
    model.config.feature_frozen = True
    assert _memory(TrainSettings(instance_weight=1.0, instance_memory=8), model, 3).per_slide == 8


def test_the_flat_map_warning_fires_on_the_first_flat_epoch_after_exploring():
    from types import SimpleNamespace

    from ats_wsi.cli.train import flat_after_exploring
    from ats_wsi.run.settings import FLAT_ATTENTION

    def epoch(n, sd):
        return SimpleNamespace(epoch=n, attention_sd=sd)

    # exploring (epochs 1..6 of explore_epochs 6): a flat map is expected there, no warning
    assert not flat_after_exploring(epoch(6, 0.0), 6)
    # after exploring: flat below the threshold, at any later epoch (round six's maps died at epochs 9 and 11)
    assert flat_after_exploring(epoch(7, FLAT_ATTENTION / 2), 6)
    assert flat_after_exploring(epoch(11, 0.0), 6)
    assert not flat_after_exploring(epoch(11, FLAT_ATTENTION), 6)
    assert not flat_after_exploring(epoch(11, float("nan")), 6)  # uniform draws: no logits, no spread
    assert flat_after_exploring(epoch(2, 0.0), 0) and not flat_after_exploring(epoch(1, 0.0), 0)
