"""The per-patch aids of a two-stage (zoom) model (ats_wsi.run._aids, zoom section): the instance loss
and its memory over the n1 x n2 drawn patches, the distillation targets of both stages against hand
computations, the logits a ZoomResult carries, and --attention-lr on both attention nets."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ats_wsi.classifier import ModelConfig, SlideInput, build_model
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.run._aids import (InstanceMemory, aid_losses, zoom_aid_losses, zoom_distill_loss,
                               zoom_distill_targets)
from ats_wsi.run._schedule import param_groups
from ats_wsi.run.settings import TrainSettings
from ats_wsi.zoom import ZoomResult

ZOOM = dict(patch_mpp=0.5, patch_size=32, n_patches=3, feature_dim=2, low_downsample=16.0, instance_head=True,
            zoom_mpp=2.0, zoom_regions=2, zoom_size=128.0, attention_kwargs={"hidden": 4, "layers": 1, "pool": 4})


def _model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**ZOOM))
    with torch.no_grad():  # the instance head's logits are the patch features themselves
        model.instance_head.weight.copy_(torch.eye(2))
        model.instance_head.bias.zero_()
    return model


def _result(features, xy0, region_logits=None, sampled_logits=None) -> ZoomResult:
    """A zoom result of one slide with the given patch features [n1, n2, 2] and patch corners [n1, n2, 2]."""
    n1, n2 = features.shape[:2]
    zeros = torch.zeros
    long = torch.long
    return ZoomResult(features=zeros(1, 2), attention=zeros(1, 4, 4), region_positions=zeros(1, n1, 2, dtype=long),
                      region_attention=torch.full((1, n1), 0.1), region_xy0=zeros(1, n1, 2, dtype=long),
                      zoom_attention=zeros(1, n1, 3, 3), positions=zeros(1, n1, n2, 2, dtype=long),
                      sampled_attention=torch.full((1, n1, n2), 0.2), patch_xy0=xy0[None],
                      patch_features=features[None],
                      entropy_loss=torch.tensor(0.0),
                      region_logits=None if region_logits is None else region_logits[None],
                      sampled_logits=None if sampled_logits is None else sampled_logits[None])


# the instance logits (= features) of 2 regions x 3 patches; patch (1, 2) is the least negative
FEATURES = torch.tensor([[[2.0, -1.0], [0.5, 0.0], [1.0, 0.2]],
                         [[0.0, 0.1], [3.0, -2.0], [-1.0, 1.5]]])
XY0 = torch.tensor([[[0, 0], [32, 0], [64, 0]], [[500, 300], [532, 300], [564, 300]]])


def test_the_instance_loss_over_a_zoom_result_trains_the_least_negative_of_all_its_patches():
    model = _model()
    settings = TrainSettings(instance_weight=1.0, distill_weight=0.0)
    positive = aid_losses(model, settings, _result(FEATURES, XY0), label=1)
    # by hand: p(normal) of patch (1, 2) = 1 / (1 + e^2.5), the smallest; its cross-entropy against "tumor"
    assert positive.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.5))), rel=1e-6)
    negative = aid_losses(model, settings, _result(FEATURES, XY0), label=0)
    by_hand = np.mean([math.log1p(math.exp(b - a)) for a, b in FEATURES.reshape(-1, 2).tolist()])
    assert negative.item() == pytest.approx(by_hand, rel=1e-6)


def test_the_instance_memory_of_a_zoom_keys_patches_by_their_level0_corner_and_picks_the_novel_one():
    model = _model()
    settings = TrainSettings(instance_weight=1.0, distill_weight=0.0, instance_memory=64)
    memory = InstanceMemory(64, 2, 2)
    normal = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [1.0, 2.0]], [[2.0, 1.0], [1.5, 1.5], [1.0, 1.0]]])
    zoom_aid_losses(model, settings, _result(normal, XY0), 0, memory, "normal")
    # the same stage-2 cell (row, col) in two regions is two patches: 6 kept, not 3
    assert len(memory) == 6
    # patch (0, 1) is the farthest from every normal patch (5.7 from (2, 2)); (1, 1) is the least negative
    tumor = torch.tensor([[[1.0, 1.1], [6.0, 6.0], [2.0, 2.1]], [[1.0, 0.9], [1.0, 3.0], [1.1, 1.0]]])
    loss = zoom_aid_losses(model, settings, _result(tumor, XY0), 1, memory, "tumor")
    expected = F.cross_entropy(tumor[0, 1][None], torch.tensor([1]))  # ln 2, where patch (1, 1) would give 0.127
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert len(memory) == 12
    zoom_aid_losses(model, settings, _result(tumor, XY0), 1, memory, "tumor")  # the same corners again: kept once
    assert len(memory) == 12


def test_the_two_stage_rank_targets_against_a_hand_computation():
    # two classes, negative 0: a patch's log-odds of a finding are its logit difference d = l1 - l0
    logits = torch.tensor([[[0.0, 1.0], [0.0, -1.0], [0.5, 0.0]], [[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    d = (logits[..., 1] - logits[..., 0]).double().numpy()
    tau = 0.5
    regions, cells = zoom_distill_targets(logits, 0, kind="rank", target_temperature=tau)
    e = np.exp(d / tau)
    np.testing.assert_allclose(cells.numpy(), e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(regions.numpy(), e.sum(axis=1) / e.sum(), rtol=1e-5)  # log-sum-exp scores
    # together they are the one-stage rank target over all six patches
    np.testing.assert_allclose((regions[:, None] * cells).numpy(), e / e.sum(), rtol=1e-5)
    regions_bce, cells_bce = zoom_distill_targets(logits, 0, kind="bce")
    p = 1 / (1 + np.exp(-d))
    np.testing.assert_allclose(cells_bce.numpy(), p, rtol=1e-5)
    np.testing.assert_allclose(regions_bce.numpy(), p.max(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[n1, n2, C\]"):
        zoom_distill_targets(logits[0], 0)


def test_the_zoom_distillation_loss_trains_both_stages_towards_their_targets():
    logits = torch.tensor([[[0.0, 1.0], [0.0, -1.0], [0.5, 0.0]], [[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]]])
    d = (logits[..., 1] - logits[..., 0]).double().numpy()
    region_logits = torch.tensor([0.3, -0.2], requires_grad=True)
    sampled = torch.tensor([[0.1, 0.0, -0.4], [1.0, 0.2, 0.3]], requires_grad=True)
    t1, t2, tau = 0.25, 0.5, 1.0
    loss = zoom_distill_loss(region_logits, sampled, logits.requires_grad_(True), 0, kind="rank",
                             temperatures=(t1, t2), target_temperature=tau)

    def log_softmax(x):
        return x - np.log(np.exp(x).sum())

    e = np.exp(d / tau)
    first = -(e.sum(1) / e.sum() * log_softmax(region_logits.detach().double().numpy() / t1)).sum()
    second = np.mean([-(e[r] / e[r].sum() * log_softmax(sampled[r].detach().double().numpy() / t2)).sum()
                      for r in range(2)])
    assert loss.item() == pytest.approx(first + second, rel=1e-5)
    loss.backward()
    assert region_logits.grad.abs().sum() > 0 and sampled.grad.abs().sum() > 0
    assert logits.grad is None or logits.grad.abs().sum() == 0  # a target: nothing flows into the instance head


def test_a_zoom_forward_gives_both_stages_logits_and_the_aids_reach_both_attention_nets(tmp_path):
    path = tmp_path / "s.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=1, seed=3, lesion_size_um=(60.0, 120.0))
    model = _model()
    model.sampler.stage1.softmax.temperature = model.sampler.stage2.softmax.temperature = 0.5
    with SlideInput(path, model.config) as item:
        x_low, mask = item.low_inputs()
        logits, result = model(x_low, item.source(), mask, generator=torch.Generator().manual_seed(1))
    assert result.region_logits.shape == (1, 2) and result.sampled_logits.shape == (1, 2, 3)
    # softmax at temperature 0.5 and no smoothing: each drawn probability is exp(logit / 0.5) up to one constant
    ratio = result.region_attention[0] / torch.exp(result.region_logits[0] / 0.5)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-4, atol=0)
    ratio2 = result.sampled_attention[0] / torch.exp(result.sampled_logits[0] / 0.5)  # one constant per region
    torch.testing.assert_close(ratio2, ratio2[:, :1].expand_as(ratio2), rtol=1e-4, atol=0)
    settings = TrainSettings(instance_weight=1.0, distill_weight=1.0, distill="rank", distill_temperature=0.5)
    loss = aid_losses(model, settings, result, 1)
    loss.backward()
    for net in model.sampler.attention_nets:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert model.instance_head.weight.grad.abs().sum() > 0


def test_attention_lr_puts_both_stages_attention_nets_in_its_group_and_one_stage_is_unchanged():
    model = _model()
    groups = param_groups(model, TrainSettings(lr=1e-3, attention_lr=0.03))
    stage1, stage2 = (set(map(id, net.parameters())) for net in model.sampler.attention_nets)
    assert stage1 and stage2 and not stage1 & stage2
    assert set(map(id, groups[1]["params"])) == stage1 | stage2 and groups[1]["lr"] == 0.03
    assert not set(map(id, groups[0]["params"])) & (stage1 | stage2)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    one = build_model(ModelConfig(patch_size=32, n_patches=4, feature_dim=8, low_downsample=16.0))
    groups = param_groups(one, TrainSettings(attention_lr=0.03))
    assert set(map(id, groups[1]["params"])) == set(map(id, one.sampler.attention_net.parameters()))
