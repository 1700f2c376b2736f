"""SlideClassifier with an instance head: per-patch logits, and the slide head reading the
estimate of the mean features and of the mean per-patch class probabilities."""
import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model
from ats_wsi.sampling import expectation


def model_and_inputs(**kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_patches=5, patch_size=16, feature_dim=6, instance_head=True, **kw))
    x_high = torch.rand(1, 3, 128, 96)
    return model, torch.nn.functional.avg_pool2d(x_high, 4), x_high


@pytest.mark.parametrize("replace", [False, True])
def test_slide_logits_read_the_estimated_mean_of_features_and_patch_probabilities(replace):
    model, x_low, x_high = model_and_inputs(replace=replace)
    logits, result = model(x_low, x_high, generator=torch.Generator().manual_seed(2))
    inst = model.instance_logits(result)
    assert inst.shape == (1, 5, 2)
    assert torch.allclose(inst, model.instance_head(result.patch_features))
    expected = expectation(torch.softmax(inst, -1), result.sampled_attention, replace)
    manual = model.head(torch.cat([result.features, expected], -1))
    assert torch.allclose(logits, manual, atol=1e-6)
    assert model.head.in_features == 6 + 2


def test_the_instance_heads_probabilities_carry_the_slide_loss_to_the_attention_and_the_instance_head():
    model, x_low, x_high = model_and_inputs()
    logits, _ = model(x_low, x_high, generator=torch.Generator().manual_seed(3))
    logits[0, 1].backward()
    assert model.instance_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sampler.attention_net.parameters())


def test_without_an_instance_head_the_slide_head_reads_the_features_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_patches=5, patch_size=16, feature_dim=6))
    assert model.instance_head is None and model.head.in_features == 6
    x_high = torch.rand(1, 3, 128, 96)
    logits, result = model(torch.nn.functional.avg_pool2d(x_high, 4), x_high)
    assert model.instance_logits(result) is None
    assert torch.allclose(logits, model.head(result.features))
