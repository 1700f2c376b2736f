"""Encoders from files, offline: TorchScript and torch.export give the embedding of the module
they were saved from; missing weights say where they were looked for."""
from __future__ import annotations

import pytest
import torch
from encoder_helpers import save_export, save_torchscript, spec_dict, tiny_vit

from ats_wsi.encoders import EncoderSpec, build_encoder, find_weights
from ats_wsi.encoders.loaders import file_sha256
from ats_wsi.errors import EncoderError, WeightsNotFoundError


def _reference(module, pixels, spec):
    x = pixels.float() / 255
    mean, std = torch.tensor(spec["mean"]).view(1, 3, 1, 1), torch.tensor(spec["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return module((x - mean) / std)


@pytest.mark.parametrize("source", ["torchscript", "export"])
def test_a_file_encoder_gives_the_embedding_of_the_module_it_was_saved_from(tiny_files, source):
    spec = spec_dict(source, tiny_files[source])
    encoder = build_encoder(spec)
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = encoder(pixels)
    assert out.dtype == torch.float32 and out.shape == (5, 16)
    assert torch.equal(out, _reference(tiny_files["module"], pixels, spec))
    assert encoder.spec.weights_sha256 == file_sha256(tiny_files[source])  # recorded for the checkpoint


def test_patches_of_another_size_are_resized_to_the_input_size(tiny_files):
    encoder = build_encoder(spec_dict("export", tiny_files["export"], patch_px=64))
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    small = torch.nn.functional.interpolate(pixels.float() / 255, size=(32, 32), mode="bilinear",
                                            align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(encoder(pixels), encoder(small), atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "cls+mean", "mean"])
def test_token_pooling_leaves_the_prefix_tokens_out_of_the_mean(tmp_path, pooling):
    module = tiny_vit(tokens=True)
    path = save_export(module, tmp_path / "tokens.pt2")
    dim = 32 if pooling == "cls+mean" else 16
    spec = spec_dict("export", path, pooling=pooling, prefix_tokens=3, dim=dim)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tokens = _reference(module, pixels, spec)
    want = {"cls": tokens[:, 0], "mean": tokens[:, 3:].mean(1),
            "cls+mean": torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], -1)}[pooling]
    with torch.no_grad():
        assert torch.allclose(build_encoder(spec)(pixels), want, atol=1e-6)


def test_mixed_precision_runs_under_bf16_autocast_on_cpu_and_gives_float32(tiny_files):
    spec = spec_dict("torchscript", tiny_files["torchscript"])
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        full = build_encoder(spec)(pixels)
        half = build_encoder({**spec, "dtype": "bfloat16"})(pixels)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    assert torch.allclose(half, full, atol=0.1, rtol=0.05)


def test_a_wrong_dimension_is_an_error_naming_both(tiny_files):
    encoder = build_encoder(spec_dict("export", tiny_files["export"], dim=20))
    with pytest.raises(EncoderError, match=r"shape \(1, 16\) for 1 patches, its spec says \[N, 20\]"):
        encoder(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_missing_weights_say_every_place_looked_at(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HOME", raising=False)
    spec = EncoderSpec(name="uni-like", source="timm", arch="vit_small_patch16_224", hub_id="Org/Model",
                       weights=str(tmp_path / "nope.safetensors"), dim=384)
    with pytest.raises(WeightsNotFoundError) as info:
        find_weights(spec, tmp_path / "given.bin")
    text = str(info.value)
    for where in ("given.bin", "nope.safetensors", str(tmp_path / "hub" / "models--Org--Model")):
        assert where in text
    assert "nothing is downloaded" in text and "--feature-weights" in text
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        build_encoder(spec_dict("export", str(tmp_path / "missing.pt2")))


def test_weights_are_found_in_a_local_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--Org--Model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    for rev in ("old000", "abc123"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "model.safetensors").write_bytes(b"x")
    spec = EncoderSpec(name="m", source="timm", arch="vit_small_patch16_224", hub_id="Org/Model", dim=384)
    assert find_weights(spec) == repo / "snapshots" / "abc123" / "model.safetensors"
    assert find_weights(spec.replace(source="hf")) == repo / "snapshots" / "abc123"


def test_weights_other_than_the_recorded_ones_are_refused(tiny_files):
    spec = spec_dict("export", tiny_files["export"], weights_sha256="0" * 64)
    with pytest.raises(EncoderError, match="not the ones encoder 'tiny' was recorded with"):
        build_encoder(spec)


def test_a_contract_only_entry_asks_for_an_exported_file():
    with pytest.raises(EncoderError, match="--feature-net PATH"):
        build_encoder("conch")


def test_a_broken_file_is_a_typed_error(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(EncoderError, match=r"not a loadable torch.export \(.pt2\) file"):
        build_encoder(spec_dict("export", str(bad)))


def test_save_helpers_round_trip(tmp_path):  # the helpers the benchmark and the docs use
    module = tiny_vit(seed=3)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.jit.load(save_torchscript(module, tmp_path / "m.pt"))(x), module(x))
