"""`ats-wsi train` / `predict` with an encoder file, its spec, frozen, with a feature cache."""
from __future__ import annotations

import csv
import json

import pytest
from encoder_helpers import spec_dict, write_spec

from ats_wsi.classifier import read_checkpoint
from ats_wsi.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _spec_file(tmp_path, tiny_files):
    data = spec_dict("export", "unused")
    del data["weights"]
    return write_spec(tmp_path / "tiny.json", data)


def test_train_and_predict_with_a_frozen_encoder_file_and_a_feature_cache(tiny_files, slides, tmp_path, capsys):
    spec = _spec_file(tmp_path, tiny_files)
    run, cache = tmp_path / "run", tmp_path / "cache"
    status = main(["train", str(slides["manifest"]), "--out", str(run), "--epochs", "2", "--batch-size", "2",
                   "--n-patches", "4", "--predict-patches", "4", "--feature-net", tiny_files["export"],
                   "--feature-spec", spec,
                   "--freeze-features", "--feature-cache", str(cache), "--feature-dim", "16",
                   "--attention-kwargs", '{"pool": 4, "hidden": 4, "layers": 1}', "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cache " in out and "hits" in out  # per-epoch hits / lookups
    config = read_checkpoint(run / "last.pt")["config"]
    assert config["patch_mpp"] == 1.0 and config["patch_size"] == 32 and config["feature_frozen"] is True
    assert config["feature_spec"]["source"] == "export" and config["feature_dim"] == 16
    assert read_checkpoint(run / "last.pt")["train_config"]["instance_memory"] == 1024  # on for frozen features
    assert list(cache.glob("*/spec.json"))
    rows = []
    for name in ("pred", "again"):  # the second run finds every feature in the cache
        status = main(["predict", str(run / "last.pt"), str(slides["paths"][2]), "--out", str(tmp_path / name),
                       "--feature-cache", str(cache), "--samples", "3", "--no-progress"])
        out = capsys.readouterr().out
        assert status == 0, out
        with open(tmp_path / name / "predictions.csv", newline="") as fh:
            rows.append(next(csv.DictReader(fh)))
        hits, misses = int(rows[-1]["feature_hits"]), int(rows[-1]["feature_misses"])
        assert hits + misses == 3 * 4, rows[-1]  # 3 draws of 4 patches, each looked up once
        assert f"feature cache: {hits} of 12 patch features served by the cache" in out
    # the second run's features come from this process's memory here (from disk: test_frozen_and_cache)
    assert int(rows[1]["feature_misses"]) == 0, rows[1]
    assert rows[0]["p0"] == rows[1]["p0"]


@pytest.mark.parametrize("flags, words", [
    (["--feature-dim", "8"], "--feature-dim 8 contradicts encoder 'tiny'"),
    (["--patch-mpp", "0.5"], "--patch-mpp 0.5 contradicts encoder 'tiny'"),
    (["--patch-level", "1"], "--patch-level: encoder 'tiny' reads patches at 1 µm/px"),
])
def test_flags_that_contradict_the_spec_are_refused(tiny_files, slides, tmp_path, capsys, flags, words):
    spec = _spec_file(tmp_path, tiny_files)
    status = main(["train", str(slides["manifest"]), "--out", str(tmp_path / "run"), "--epochs", "1",
                   "--feature-net", tiny_files["export"], "--feature-spec", spec, *flags])
    assert status != 0 and words in capsys.readouterr().err


def test_an_encoder_file_without_a_spec_asks_for_one(tiny_files, slides, tmp_path, capsys):
    status = main(["train", str(slides["manifest"]), "--out", str(tmp_path / "run"),
                   "--feature-net", tiny_files["export"]])
    assert status != 0 and "needs --feature-spec" in capsys.readouterr().err


def test_missing_weights_name_where_they_were_looked_for(slides, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    status = main(["train", str(slides["manifest"]), "--out", str(tmp_path / "run"), "--feature-spec", "uni",
                   "--feature-weights", str(tmp_path / "uni.safetensors")])
    err = capsys.readouterr().err
    assert status != 0 and "uni.safetensors (no such file)" in err and "models--MahmoodLab--UNI" in err
    assert json.dumps  # (spec files are JSON; see test_spec.py)
