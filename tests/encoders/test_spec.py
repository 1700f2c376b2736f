"""Encoder specs: the registry as data, JSON user specs, digests, and configs old and new."""
from __future__ import annotations

import dataclasses
import json

import pytest

from ats_wsi.classifier import ModelConfig
from ats_wsi.encoders import REGISTRY, EncoderSpec, get_spec, list_specs, load_spec
from ats_wsi.errors import EncoderError

FIELDS = {f.name for f in dataclasses.fields(EncoderSpec)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_is_a_valid_spec_whose_unverified_fields_exist(name):
    spec = get_spec(name)
    assert spec.name == name and spec.dim > 0 and spec.mpp > 0 and spec.card
    assert set(spec.unverified) <= FIELDS, f"{name}: unverified names no field: {set(spec.unverified) - FIELDS}"
    assert EncoderSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # JSON round trip


def test_the_registry_holds_the_contracts_the_issue_names():
    assert list_specs() == sorted(["uni", "uni2-h", "conch", "virchow2", "h-optimus-0", "h-optimus-1",
                                   "prov-gigapath", "phikon", "ctranspath"])
    virchow = get_spec("virchow2")
    assert (virchow.pooling, virchow.dim, virchow.prefix_tokens) == ("cls+mean", 2560, 5)
    h0 = get_spec("h-optimus-0")
    assert h0.mean == (0.707223, 0.578729, 0.703617) and h0.std == (0.211883, 0.230117, 0.177517)
    assert (h0.patch_px, h0.mpp, h0.dtype, h0.dim) == (224, 0.5, "float16", 1536)
    assert get_spec("ctranspath").mpp == 1.0 and get_spec("conch").patch_px == 512
    assert (get_spec("uni").arch, get_spec("uni").dim) == ("vit_large_patch16_224", 1024)


def test_a_json_spec_may_start_from_a_registry_entry(tmp_path):
    path = tmp_path / "my-uni.json"
    path.write_text(json.dumps({"base": "uni", "weights": "/models/uni.safetensors", "dtype": "bfloat16"}))
    spec = load_spec(path)
    assert spec.name == "uni" and spec.dim == 1024 and spec.dtype == "bfloat16"
    assert spec.weights == "/models/uni.safetensors"
    assert load_spec("UNI") == get_spec("uni")


@pytest.mark.parametrize("data, words", [
    ({"name": "x", "source": "timm", "arch": "vit", "dim": 8, "pooling": "max"}, "pooling must be one of"),
    ({"name": "x", "source": "timm", "dim": 8}, "needs 'arch'"),
    ({"name": "x", "source": "export", "dim": 0}, "dim must be an integer in 1..65536, got 0"),
    ({"name": "x", "source": "export", "dim": 8, "mpp": -1}, "mpp must be a number of µm/px in 0.01..1000, got -1"),
    ({"name": "x", "source": "export", "dim": 8, "patch_px": 65536}, "patch_px must be an integer in 1..4096, got 65536"),
    ({"name": "x", "source": "export", "dim": 8, "input_px": 100000}, "input_px must be an integer in 1..4096"),
    ({"name": "x", "source": "export", "dim": 8, "std": [0.2, 0, 0.2]}, "std must be 3 numbers > 0"),
    ({"name": "x", "source": "export", "dim": 8, "mean": [0.5, 0.5]}, "mean must be 3 finite numbers"),
    ({"name": "x", "source": "export", "dim": 8, "colour": "red"}, "unknown encoder spec keys ['colour']"),
    ({"base": "nope"}, "'base': 'nope' is not a registered encoder"),
])
def test_bad_specs_are_refused_with_the_field_and_why(tmp_path, data, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EncoderError, match=None) as info:
        load_spec(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(EncoderError, match="registered: .*'uni'"):
        load_spec("not-an-encoder")


def test_the_digest_follows_what_decides_the_features_and_nothing_else():
    base = EncoderSpec(name="a", source="export", weights="/w.pt2", weights_sha256="ab" * 32, dim=8)
    assert base.digest() == base.replace(name="b", notes="x", card="y", weights="/elsewhere.pt2").digest()
    for change in (dict(mean=(0.1, 0.2, 0.3)), dict(weights_sha256="cd" * 32), dict(dtype="bfloat16"),
                   dict(mpp=1.0), dict(patch_px=256), dict(pooling="cls")):
        assert base.replace(**change).digest() != base.digest(), change


def test_old_configs_load_with_the_encoder_fields_defaulted_and_new_ones_round_trip():
    old = ModelConfig().to_dict()
    for key in ("feature_spec", "feature_frozen", "feature_adapter", "feature_mean", "feature_std"):
        old.pop(key)
    cfg = ModelConfig.from_dict(old)
    assert cfg.feature_spec is None and cfg.feature_frozen is False and cfg.feature_mean is None
    new = ModelConfig(feature_spec=get_spec("uni").to_dict(), feature_frozen=True, feature_mean=(0.1, 0.2, 0.3))
    again = ModelConfig.from_dict(json.loads(json.dumps(new.to_dict())))
    assert again == new and again.feature_mean == (0.1, 0.2, 0.3)
    ModelConfig.from_user(json.loads(json.dumps(new.to_dict())))  # a user's JSON with these keys passes the checks
