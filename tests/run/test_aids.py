"""The learning aids of training (ats_wsi.run._aids): exploration schedule, the
multiple-instance loss and the attention's distillation loss, against hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from ats_wsi.run._aids import distill_loss, exploration, instance_loss


def test_exploration_falls_linearly_from_explore_to_final():
    kw = dict(explore=1.0, explore_epochs=4, final=0.1)
    assert [exploration(e, **kw) for e in range(6)] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1, 0.1])
    assert exploration(0, explore=1.0, explore_epochs=0, final=0.0) == 0.0  # no schedule


def test_instance_loss_of_a_negative_slide_is_every_patch_against_the_negative_class():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    expected = sum(-math.log(math.exp(a) / (math.exp(a) + math.exp(b))) for a, b in logits.tolist()) / 3
    assert instance_loss(logits, 0).item() == pytest.approx(expected, rel=1e-6)


def test_instance_loss_of_a_positive_slide_is_its_least_negative_patch_against_its_label():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 0.2], [1.0, 0.0, 0.0]],
                          requires_grad=True)
    loss = instance_loss(logits, 2)
    # patch 2 has the smallest probability of class 0
    assert loss.item() == pytest.approx(F.cross_entropy(logits[2:3], torch.tensor([2])).item(), rel=1e-6)
    loss.backward()
    assert logits.grad[[0, 1, 3]].abs().sum() == 0 and logits.grad[2].abs().sum() > 0


def test_instance_loss_takes_another_negative_class():
    logits = torch.tensor([[2.0, -1.0], [-3.0, 1.0]])
    # negative class 1: a slide of class 0 trains the patch least likely to be class 1 (patch 0)
    assert instance_loss(logits, 0, negative=1).item() == pytest.approx(
        F.cross_entropy(logits[:1], torch.tensor([0])).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\[n, C\]"):
        instance_loss(torch.zeros(0, 2), 1)


def test_distill_loss_is_bce_towards_the_instance_heads_probability_of_a_finding():
    sampled = torch.tensor([0.3, -2.0, 1.5], requires_grad=True)
    inst = torch.tensor([[1.0, -1.0], [0.0, 2.0], [-0.5, -0.5]], requires_grad=True)
    target = 1 - torch.softmax(inst.detach(), -1)[:, 0]
    loss = distill_loss(sampled, inst)
    manual = -(target * torch.log(torch.sigmoid(sampled.detach()))
               + (1 - target) * torch.log(1 - torch.sigmoid(sampled.detach()))).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    loss.backward()
    assert inst.grad is None  # a target: no gradient into the instance head
    assert sampled.grad.abs().sum() > 0


def test_rank_distillation_is_cross_entropy_between_the_two_rankings_of_the_drawn_cells():
    sampled = torch.tensor([0.3, -2.0, 1.5], requires_grad=True)
    inst = torch.tensor([[1.0, -1.0], [0.0, 2.0], [-0.5, -0.5]])
    finding = 1 - torch.softmax(inst, -1)[:, 0]
    target = torch.softmax(torch.log(finding / (1 - finding)), 0)  # = finding odds, normalised
    loss = distill_loss(sampled, inst, kind="rank", temperature=0.5)
    manual = -(target * torch.log_softmax(sampled.detach() / 0.5, 0)).sum()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # a constant shift of every attention logit changes nothing (only the ranking counts)
    assert distill_loss(sampled.detach() + 7.0, inst, kind="rank", temperature=0.5).item() == \
        pytest.approx(loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="distill kind"):
        distill_loss(sampled, inst, kind="listnet")
