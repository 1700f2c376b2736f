"""build_feature_net: the one door from a model config to its feature net (by name or a
pretrained encoder), with the module tree older checkpoints were saved with."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))
from encoder_helpers import save_torchscript, spec_dict, tiny_vit  # noqa: E402

from ats_wsi.classifier import ModelConfig, build_model, load_model  # noqa: E402
from ats_wsi.classifier.feature_net import Normalize, build_feature_net  # noqa: E402
from ats_wsi.classifier.features import EncoderFeatures  # noqa: E402
from ats_wsi.encoders import EncoderSpec, PatchEncoder, build_backbone  # noqa: E402
from ats_wsi.errors import EncoderError, TimmUnavailableError  # noqa: E402
from ats_wsi.nets import create_feature_net  # noqa: E402
from ats_wsi.patches import plain_features  # noqa: E402

PIXELS = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return save_torchscript(tiny_vit(), tmp_path_factory.mktemp("enc") / "tiny.pt")


def test_a_net_by_name_is_the_named_net_behind_its_own_normalisation():
    config = ModelConfig(feature_net="feature-small", feature_kwargs={"widths": [4, 6]}, feature_dim=5,
                         feature_mean=(0.1, 0.2, 0.3), feature_std=(0.5, 0.25, 0.2))
    torch.manual_seed(3)
    built = build_feature_net(config)
    torch.manual_seed(3)
    reference = create_feature_net("feature-small", in_channels=3, out_features=5, widths=[4, 6]).eval()
    scaled = PIXELS.float() / 255
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        got, want = built.module.eval()(PIXELS), reference((scaled - mean) / std)
    torch.testing.assert_close(got, want)
    assert (built.width, built.step, built.config) == (5, None, config)


def test_an_encoder_config_gives_the_encoder_its_step_and_its_resolved_spec(encoder_file):
    config = ModelConfig(feature_spec=spec_dict("torchscript", encoder_file), feature_net="encoder:tiny",
                         feature_dim=16, feature_adapter=8, patch_mpp=1.0, patch_size=32, patch_level=None)
    built = build_feature_net(config)
    assert isinstance(built.module, PatchEncoder) and isinstance(built.step, EncoderFeatures)
    assert built.width == 8  # the adapter's width, not the encoder's dim
    assert len(built.config.feature_spec["weights_sha256"]) == 64  # the weights' hash is recorded
    with torch.no_grad():
        torch.testing.assert_close(built.module.embed(PIXELS), PatchEncoder(built.module.spec, tiny_vit()).embed(PIXELS))


def test_the_classifier_is_built_through_the_one_door(encoder_file):
    for config in (ModelConfig(feature_dim=8),
                   ModelConfig(feature_spec=spec_dict("torchscript", encoder_file), feature_net="encoder:tiny",
                               feature_dim=16, feature_frozen=True, patch_mpp=1.0, patch_size=32, patch_level=None)):
        model = build_model(config)
        built = build_feature_net(config)
        assert type(model.sampler.feature_net) is type(built.module)
        if built.step is None:
            assert model.sampler.feature_step is plain_features
        else:
            assert type(model.sampler.feature_step) is type(built.step)
        assert model.config == built.config and model.head.in_features == built.width


def test_the_state_dict_keeps_the_layout_older_checkpoints_were_saved_with():
    # the keys a checkpoint of the default config held before the feature-net factory (commit 0772eb1)
    keys = {k for k in build_model(ModelConfig()).state_dict() if k.startswith("sampler.feature_net.")}
    assert keys == {f"sampler.feature_net.1.{k}" for k in (
        "blocks.0.weight", "blocks.1.bias", "blocks.1.num_batches_tracked", "blocks.1.running_mean",
        "blocks.1.running_var", "blocks.1.weight", "blocks.4.weight", "blocks.5.bias", "blocks.5.num_batches_tracked",
        "blocks.5.running_mean", "blocks.5.running_var", "blocks.5.weight", "head.bias", "head.weight")}
    assert isinstance(build_model(ModelConfig()).sampler.feature_net[0], Normalize)


@pytest.mark.parametrize("road", ["timm:<name> feature net", "timm encoder spec"])
def test_both_roads_to_timm_say_the_same_when_it_is_missing(road, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(TimmUnavailableError, match="pip install timm") as caught:
        if road.startswith("timm:"):
            create_feature_net("timm:resnet18", out_features=4)
        else:
            build_backbone(EncoderSpec(name="r", source="timm", arch="resnet18", weights="random", dim=4))
    assert isinstance(caught.value, EncoderError) and isinstance(caught.value, ImportError)


def test_a_checkpoint_whose_feature_net_needs_a_missing_timm_names_itself(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    path = tmp_path / "timm-net.pt"
    torch.save({"format": "ats-wsi-checkpoint", "format_version": 1, "state_dict": {},
                "config": {"n_classes": 2, "feature_dim": 4, "feature_net": "timm:resnet18"}}, path)
    with pytest.raises(TimmUnavailableError, match="pip install timm") as caught:
        load_model(path)
    assert str(path) in str(caught.value)
