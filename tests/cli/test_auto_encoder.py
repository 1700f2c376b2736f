"""`ats-wsi train`'s default encoder: pretrained on the training slides (SimCLR) into OUT/encoder, then frozen."""
from __future__ import annotations

import json

import pytest
from cli_helpers import PREDICT_ARGS, TRAIN_ENV, cli, explain, read_csv

from ats_wsi.cli import build_parser
from ats_wsi.cli._auto_encoder import wanted

# The default model (no feature-net flag), made small: 4 patches of the default 128 px at 0.5 µm/px.
SMALL = ["--n-patches", "4", "--low-downsample", "16", "--batch-size", "2", "--seed", "0", "--no-progress",
         "--explore-epochs", "0", "--pretrain-steps", "2", "--pretrain-patches", "12"]


@pytest.fixture(scope="module")
def default_run(slide_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "run"
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "1", *SMALL, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    return out, proc


def test_the_default_pretrains_on_the_training_slides_and_trains_frozen(default_run, slide_set):
    out, proc = default_run
    assert "pretraining a patch encoder" in proc.stdout and "--no-pretrain" in proc.stdout
    record = json.loads((out / "encoder" / "pretrain.json").read_text())
    train_rows = [r for r in read_csv(slide_set.manifest) if r["split"] == "train"]
    assert record["slides"] == [r["path"] for r in train_rows]  # the val slide is never read
    assert record["settings"]["n_patches"] == 12 and record["training"]["steps"] == 2
    assert record["settings"]["mpp"] == 0.5 and record["settings"]["patch_px"] == 128
    weights = (out / "encoder" / "encoder.pt2").resolve()
    assert record["encoder"] == str(weights)
    assert json.loads((out / "encoder" / "spec.json").read_text())["weights"] == str(weights)
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["feature_frozen"] is True and model["feature_net"] == "encoder:simclr"
    assert model["feature_spec"]["weights"] == str(weights) and model["patch_mpp"] == 0.5
    assert any((out / "encoder" / "cache").rglob("*")), "the frozen features are cached beside the encoder"
    assert not list(out.glob(".ats.tmp-*"))


def test_the_default_runs_model_predicts(default_run, slide_set, tmp_path):
    out, _ = default_run
    proc = cli("predict", out / "best.pt", slide_set.slides[0], "--out", tmp_path / "pred", *PREDICT_ARGS)
    assert proc.returncode == 0, explain(proc)
    row, = read_csv(tmp_path / "pred" / "predictions.csv")
    assert 0 <= float(row["p1"]) <= 1


def test_a_second_run_into_the_folder_is_refused_before_pretraining(default_run, slide_set):
    out, _ = default_run
    before = (out / "encoder" / "encoder.pt2").stat().st_mtime_ns
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "1", *SMALL)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and "pretraining" not in proc.stdout
    assert (out / "encoder" / "encoder.pt2").stat().st_mtime_ns == before


def test_a_leftover_encoder_is_kept_unless_overwrite(default_run, slide_set, tmp_path):
    out = tmp_path / "run"
    (out / "encoder").mkdir(parents=True)
    (out / "encoder" / "mine.txt").write_text("x")
    proc = cli("train", slide_set.manifest, "--out", out, "--epochs", "1", *SMALL)
    assert proc.returncode != 0 and "encoder" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "encoder" / "mine.txt").is_file()


def _args(*flags):
    return build_parser().parse_args(["train", "m.csv", "--out", "o", *flags])


@pytest.mark.parametrize("flags, want", [
    ([], True),
    (["--no-pretrain"], False),
    (["--feature-dim", "8"], False),
    (["--feature-net", "feature-medium"], False),
    (["--feature-spec", "uni"], False),
    (["--feature-kwargs", "{}"], False),
    (["--resume"], False),
])
def test_when_the_default_pretrains(flags, want, capsys):
    assert wanted(_args(*flags)) == (want, None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flags, why", [
    (["--folds", "3"], "cross-validation"),
    (["--fold", "1"], "cross-validation"),
    (["--patch-level", "0"], "--patch-level"),
])
def test_flags_that_rule_it_out_say_so_or_refuse_pretrain(flags, why, capsys):
    assert wanted(_args(*flags)) == (False, None)
    err = capsys.readouterr().err
    assert err.startswith("note:") and why in err and err.count("\n") == 1
    go, refused = wanted(_args("--pretrain", *flags))
    assert not go and refused.startswith("--pretrain:") and why in refused


def test_torchrun_turns_it_off(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wanted(_args()) == (False, None)
    assert "torchrun" in capsys.readouterr().err


def test_pretrain_with_a_named_net_is_refused():
    go, refused = wanted(_args("--pretrain", "--feature-dim", "8"))
    assert not go and "drop" in refused


def test_a_config_naming_a_net_turns_it_off(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"feature_net": "feature-medium"}}))
    assert wanted(_args("--config", str(config))) == (False, None)
    config.write_text(json.dumps({"n_patches": 8}))
    assert wanted(_args("--config", str(config))) == (True, None)
