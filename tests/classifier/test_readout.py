"""The readout: how a draw's class probabilities are read (``ModelConfig.readout``).

``"head"``: the softmax of the slide head; ``"top"``: the instance head's probabilities of the drawn
patch it finds least negative (the patch the multiple-instance loss trains), through both stages of
a zoom; the rules of the two keys; old checkpoints (no key) read with the head.
"""
import dataclasses

import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model
from ats_wsi.errors import ConfigError


def model_and_inputs(**kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_patches=5, patch_size=16, feature_dim=6, instance_head=True, **kw))
    x_high = torch.rand(1, 3, 128, 96)
    return model, torch.nn.functional.avg_pool2d(x_high, 4), x_high


@pytest.mark.parametrize("negative", [0, 1])
def test_top_reads_the_instance_probabilities_of_the_least_negative_drawn_patch(negative):
    model, x_low, x_high = model_and_inputs(readout="top", negative_class=negative, n_classes=3)
    with torch.no_grad():  # a head whose patches differ clearly, so the top patch is not a tie
        model.instance_head.weight.normal_(0, 3)
    logits, result = model(x_low, x_high, generator=torch.Generator().manual_seed(4))
    probs = torch.softmax(model.instance_head(result.patch_features), -1)[0].detach()  # [5, 3], by hand
    top = min(range(5), key=lambda i: float(probs[i, negative]))
    assert float(probs[top, negative]) < sorted(float(p) for p in probs[:, negative])[1]  # one clear top
    got = model.slide_probabilities(result, logits)
    assert got.shape == (1, 3)
    assert torch.allclose(got[0], probs[top], atol=1e-6)
    # The slide head's logits play no part in it.
    assert torch.allclose(model.slide_probabilities(result, logits * 0 + 7), got)


def test_head_is_the_softmax_of_the_slide_head():
    model, x_low, x_high = model_and_inputs()
    assert model.config.readout == "head"
    logits, result = model(x_low, x_high, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(model.slide_probabilities(result), torch.softmax(logits, -1), atol=1e-6)
    assert torch.allclose(model.slide_probabilities(result, logits), torch.softmax(logits, -1))


def test_predict_uses_the_readout_and_can_override_it_for_one_call(svs_jpeg):
    torch.manual_seed(0)
    config = ModelConfig(n_patches=6, patch_size=32, feature_dim=6, instance_head=True, low_downsample=8.0,
                         readout="top")
    model = build_model(config)
    with torch.no_grad():
        model.instance_head.weight.normal_(0, 3)
    top = model.predict(svs_jpeg.path, seed=1)
    with torch.no_grad():
        inst = torch.softmax(model.instance_head(torch.from_numpy(top.patch_features)), -1)
    assert top.probabilities == pytest.approx(inst[int(inst[:, 0].argmin())].double().numpy(), abs=1e-6)
    head = model.predict(svs_jpeg.path, seed=1, readout="head")
    assert (head.boxes_xywh == top.boxes_xywh).all()  # the same draws, read another way
    assert not head.probabilities == pytest.approx(top.probabilities, abs=1e-3)
    assert model.config.readout == "top"  # restored after the call


def test_the_rules_of_readout_and_negative_class():
    with pytest.raises(ConfigError, match="'readout' must be one of \\['head', 'top'\\], got 'max'"):
        ModelConfig(readout="max")
    with pytest.raises(ConfigError, match="needs 'instance_head' true"):
        ModelConfig(readout="top")
    with pytest.raises(ConfigError, match="'negative_class' must be a class index in 0..1, got 2"):
        ModelConfig(negative_class=2)
    with pytest.raises(ConfigError, match="'negative_class': expected an integer, got True"):
        ModelConfig(negative_class=True)
    model, *_ = model_and_inputs()
    with pytest.raises(ConfigError, match="needs 'instance_head' true"):
        with build_model(ModelConfig()).sampling(None, "top"):
            pass
    with model.sampling(None, "top"):
        assert model.config.readout == "top"
    assert model.config.readout == "head"


def test_a_config_written_before_the_readout_reads_with_the_head():
    old = dataclasses.asdict(ModelConfig(instance_head=True))
    del old["readout"], old["negative_class"]
    config = ModelConfig.from_dict(old)
    assert config.readout == "head" and config.negative_class == 0
