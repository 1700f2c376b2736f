"""What a person expects of any command line: defaults in --help, every --config key a
flag, config errors that name the key, one line for a missing device, quiet closed pipes."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess

import pytest
import torch
from cli_helpers import ATS_WSI, TRAIN_ARGS, TRAIN_ENV, cli, explain

from ats_wsi.classifier import ModelConfig
from ats_wsi.cli import build_parser
from ats_wsi.cli import train as train_cli


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["info", "demo", "train", "predict"])
def test_every_option_of_every_command_shows_its_default(command):
    sub = _subparsers()[command]
    formatter = sub._get_formatter()
    missing = []
    for action in sub._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.required:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.help:  # argparse prints no default for an option without help
            missing.append(action.option_strings[0])
            continue
        text = formatter._get_help_string(action) or ""
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.default is None:
            continue  # a switch, or an option that is off unless given
        if "default" not in text:
            missing.append(action.option_strings[0])
    assert not missing, f"ats-wsi {command}: options without a default in --help: {missing}"
    assert "(default: None)" not in sub.format_help()


def test_every_model_config_key_is_also_a_train_flag():
    flags = {s for a in _subparsers()["train"]._actions for s in a.option_strings}
    for f in dataclasses.fields(ModelConfig):
        flag = train_cli.FLAG_OF_KEY.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in flags, f"ModelConfig.{f.name} has no flag ({flag})"


@pytest.mark.parametrize("config, words", [
    ({"n_patch": 4}, ["unknown key 'n_patch'", "did you mean 'n_patches'?"]),
    ({"n_patches": "four"}, ["key 'n_patches': expected an integer, got 'four'"]),
    ({"low_mpp": 8, "low_downsample": 16}, ["'low_mpp' and 'low_downsample' are alternatives"]),
    ([1, 2], ["must be a JSON object"]),
])
def test_config_errors_name_the_key_and_why(config, words, slide_set, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    # No model flags: they would override the config's keys.
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", "--config", path, "--epochs", "1",
               "--no-progress")
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr and "newer ats-wsi" not in proc.stderr
    assert str(path) in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not (tmp_path / "run").exists()


def test_low_mpp_in_a_config_replaces_the_default_downsample(slide_set, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"low_mpp": 8, "min_tissue": 0.0}))
    args = [a for a in TRAIN_ARGS]
    i = args.index("--low-downsample")
    del args[i:i + 2]
    proc = cli("train", slide_set.manifest, "--out", tmp_path / "run", "--config", path, "--epochs", "1", *args,
               env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert model["low_mpp"] == 8 and model["low_downsample"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_device_that_is_not_there_is_one_line(command, tmp_path):
    args = ["m.csv"] if command == "train" else ["m.pt", "s.svs"]
    proc = cli(command, *args, "--out", tmp_path / "r", "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert f"ats-wsi {command}: --device cuda asked for, but this torch" in proc.stderr


def test_a_closed_pipe_is_no_traceback(slide_set):
    cmd = " ".join([*ATS_WSI, "info", str(slide_set.folder / "set")]) + " | head -n 1"
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("slide")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_a_file_that_is_not_a_checkpoint_gets_one_short_line(predict_input, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(os.urandom(3000))
    proc = cli("predict", bad, predict_input.good[0], "--out", tmp_path / "r", "--no-progress")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not a readable checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_library_warnings_go_to_the_results_log_not_the_terminal(checkpoint, predict_input, tmp_path):
    out = tmp_path / "r"
    proc = cli("predict", checkpoint, *predict_input.good[:1], "--out", out, "--no-progress")
    assert proc.returncode == 0, explain(proc)
    assert "Warning" not in proc.stderr
    log = out / "predict.log"
    if log.exists():  # what the run met, one record a line; the terminal says where
        assert f"logged to {log}" in proc.stderr
