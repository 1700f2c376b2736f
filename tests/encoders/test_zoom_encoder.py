"""A frozen pretrained encoder at stage 3 of a zoom model: trained with the per-patch aids through
`ats-wsi train`, predicted from its checkpoint, the feature cache exact, the resolution contract kept."""
from __future__ import annotations

import csv

import pytest
import torch
from encoder_helpers import spec_dict, write_spec

from ats_wsi.classifier import ModelConfig, build_model, load_model, read_checkpoint
from ats_wsi.classifier.features import ZoomEncoderFeatures
from ats_wsi.cli import main
from ats_wsi.encoders import FeatureCache, attach_feature_cache
from ats_wsi.errors import EncoderResolutionError
from ats_wsi.patches.zoom_source import ZoomSource
from ats_wsi.slide import open_slide

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# 2 regions of 128 µm at 2 µm/px (64 px), 2 patches of the encoder's 32 px at 1 µm/px in each
ZOOM_FLAGS = ["--zoom-mpp", "2", "--zoom-regions", "2", "--zoom-size", "128", "--n-patches", "2",
              "--low-downsample", "16", "--attention-kwargs", '{"pool": 4, "hidden": 4, "layers": 1}']


def test_train_a_zoom_model_on_a_frozen_encoder_with_the_aids_and_predict_from_its_checkpoint(
        tiny_files, slides, tmp_path, capsys):
    spec = write_spec(tmp_path / "tiny.json", {k: v for k, v in spec_dict("export", "x").items() if k != "weights"})
    run, cache = tmp_path / "run", tmp_path / "cache"
    status = main(["train", str(slides["manifest"]), "--out", str(run), "--epochs", "1", "--batch-size", "2",
                   "--feature-net", tiny_files["export"], "--feature-spec", spec, "--freeze-features",
                   "--feature-cache", str(cache), *ZOOM_FLAGS, "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "epoch   1" in out and "cache " in out
    payload = read_checkpoint(run / "last.pt")
    config, train = payload["config"], payload["train_config"]
    assert (config["zoom_regions"], config["n_patches"], config["patch_mpp"], config["patch_size"]) == (2, 2, 1.0, 32)
    assert config["instance_head"] is True and config["feature_frozen"] is True  # the CLI's defaults, now with zoom
    # the aids are on: instance loss with its memory (frozen features), rank distillation of both stages
    assert (train["instance_weight"], train["distill_weight"], train["distill"], train["instance_memory"]) == \
        (1.0, 1.0, "rank", 1024)
    assert train["history"][0]["feature_hits"] + train["history"][0]["feature_misses"] > 0
    assert not any(".backbone." in k for k in payload["state_dict"]), "a frozen encoder was saved"
    assert any(k.startswith("instance_head.") for k in payload["state_dict"])

    rows = []
    for name in ("pred", "again"):  # the second prediction finds every feature in the cache
        status = main(["predict", str(run / "last.pt"), str(slides["paths"][2]), "--out", str(tmp_path / name),
                       "--feature-cache", str(cache), "--samples", "2", "--seed", "3", "--no-progress"])
        assert status == 0, capsys.readouterr().out
        with open(tmp_path / name / "predictions.csv", newline="") as fh:
            rows.append(next(csv.DictReader(fh)))
    assert int(rows[0]["patches_read"]) == 2 * 2 * 2  # 2 samplings of 2 regions x 2 patches
    assert int(rows[0]["feature_hits"]) + int(rows[0]["feature_misses"]) == 8
    assert int(rows[1]["feature_misses"]) == 0 and rows[0]["p1"] == rows[1]["p1"]
    model = load_model(run / "last.pt")  # the library's predict of the checkpoint, without the cache
    pred = model.predict(slides["paths"][2], samples=2, seed=3)
    assert float(rows[0]["p1"]) == pytest.approx(float(pred.probabilities[1]), abs=1e-6)


def _zoom_config(spec: dict, **kw) -> ModelConfig:
    base = dict(n_patches=2, patch_size=spec["patch_px"], patch_mpp=spec["mpp"], low_downsample=16.0,
                feature_spec=spec, feature_frozen=True, feature_dim=spec["dim"], instance_head=True,
                attention_kwargs={"hidden": 4, "layers": 1, "pool": 4}, zoom_mpp=2.0, zoom_regions=2, zoom_size=128.0)
    return ModelConfig(**{**base, **kw})


def test_the_zoom_feature_cache_gives_what_a_recompute_gives_and_reads_only_what_it_lacks(tiny_files, slides):
    torch.manual_seed(0)
    model = build_model(_zoom_config(spec_dict("export", tiny_files["export"])))
    step = model.sampler.feature_step
    assert isinstance(step, ZoomEncoderFeatures)
    encoder = model.sampler.feature_net
    with open_slide(slides["paths"][1]) as slide:
        source = ZoomSource([slide], low_downsample=16.0, zoom_mpp=2.0, zoom_size=128.0, patch_mpp=1.0,
                            patch_size=32, cache_bytes=0)
        corners = torch.tensor([[[[100, 200], [900, 40]], [[100, 200], [1500, 1300]]]])  # [1, 2, 2, 2]: one twice
        like = torch.zeros(1)
        plain = step(encoder, source, corners, like)
        assert plain.shape == (1, 2, 2, 16)
        cache = attach_feature_cache(model, FeatureCache())
        first = step(encoder, source, corners, like)
        assert cache.take_stats()["misses"] == 4
        decoded = source.patch_readers[0].stats.tiles_decoded
        second = step(encoder, source, corners, like)
        assert cache.take_stats()["hits"] == 4
        assert source.patch_readers[0].stats.tiles_decoded == decoded  # nothing read again
        source.close()
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(first, second)
    torch.testing.assert_close(plain[0, 0, 0], plain[0, 1, 0])  # one box, one feature


def test_a_zoom_source_read_at_another_resolution_than_the_spec_is_refused(tiny_files, slides):
    model = build_model(_zoom_config(spec_dict("export", tiny_files["export"])))
    with open_slide(slides["paths"][0]) as slide:
        source = ZoomSource([slide], low_downsample=16.0, zoom_mpp=2.0, zoom_size=128.0, patch_mpp=0.5,
                            patch_size=32)
        with pytest.raises(EncoderResolutionError, match="0.5 µm/px.*set the model's patch_mpp to 1"):
            model.sampler.feature_step(model.sampler.feature_net, source, torch.zeros(1, 1, 1, 2, dtype=torch.long),
                                       torch.zeros(1))
        source.close()
