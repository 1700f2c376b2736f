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


def test_a_sharper_rank_target_is_minimised_by_the_odds_to_the_power_one_over_its_temperature():
    inst = torch.tensor([[2.0, -1.0], [0.0, 0.5], [-1.0, 1.0], [0.3, 0.2]])
    finding = 1 - torch.softmax(inst, -1)[:, 0]
    odds = torch.log(finding / (1 - finding))
    for tau in (1.0, 0.25):
        # the minimum: the attention's map (softmax of logits / 0.5) equals the softmax of odds / tau
        best = (0.5 * odds / tau).clone().requires_grad_(True)
        distill_loss(best, inst, kind="rank", temperature=0.5, target_temperature=tau).backward()
        assert best.grad.abs().max().item() < 1e-6
        # the same logits are not the minimum of the other target
        other = (0.5 * odds / (1.25 - tau)).clone().requires_grad_(True)
        distill_loss(other, inst, kind="rank", temperature=0.5, target_temperature=tau).backward()
        assert other.grad.abs().max().item() > 1e-2
    # the map's ratio between the likeliest and the least likely cell at tau = 0.25 is the odds ratio ** 4
    ratio = torch.exp(odds.max() - odds.min()).item()
    best = torch.softmax(odds / 0.25, 0)
    assert (best.max() / best.min()).item() == pytest.approx(ratio ** 4, rel=1e-4)


# ------------------------------------------------------------------ the instance memory (frozen features)

def _cells(*rc):
    return torch.tensor(rc, dtype=torch.long).view(-1, 2)


def test_instance_memory_keeps_each_drawn_cell_once_and_returns_the_whole_history():
    from ats_wsi.run._aids import InstanceMemory

    mem = InstanceMemory(per_slide=10, n_slides=2, dim=3)
    bag = mem.add("a", 1, _cells(0, 0, 0, 1), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert bag.tolist() == [[1, 0, 0], [0, 1, 0]]
    # cell (0, 1) again (its features are the same for a frozen net): kept once; (2, 2) is new
    bag = mem.add("a", 1, _cells(0, 1, 2, 2), torch.tensor([[0, 1.0, 0], [0, 0, 1.0]]))
    assert bag.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert len(mem) == 3 and mem.add("b", 0, _cells(5, 5), torch.ones(1, 3)).shape == (1, 3)


def test_instance_memory_is_bounded_per_slide_and_by_its_byte_budget():
    from ats_wsi.run._aids import InstanceMemory

    mem = InstanceMemory(per_slide=40, n_slides=1, dim=2, seed=0)
    for i in range(100):  # 100 distinct cells through a memory of 40
        bag = mem.add("a", 1, _cells(i, 0), torch.full((1, 2), float(i)))
    assert bag.shape == (40, 2) and len(set(bag[:, 0].tolist())) == 40
    # random replacement keeps early finds: some of the first 40 cells survive 60 replacements
    # (each survives with probability (1 - 1/40)^k for the k replacements after it)
    assert 0 < sum(v < 40 for v in bag[:, 0].tolist()) < 40
    # 1,000 slides of 1,024-d features in 256 MiB: 65 patches a slide; never under 32
    assert InstanceMemory(1024, 1000, 1024).per_slide == 65
    assert InstanceMemory(1024, 10 ** 6, 1024).per_slide == 32
    with pytest.raises(ValueError, match="at least 1 patch"):
        InstanceMemory(0, 1, 2)


def test_a_positive_slides_patch_is_the_one_farthest_from_every_negative_patch():
    from ats_wsi.run._aids import InstanceMemory

    mem = InstanceMemory(per_slide=10, n_slides=3, dim=2)
    pos = mem.add("p", 1, _cells(0, 0, 0, 1, 0, 2), torch.tensor([[0.0, 0.1], [5.0, 5.0], [1.0, 0.05]]))
    assert mem.most_novel(pos) is None  # no negative slide seen yet: the head's own pick
    mem.add("n1", 0, _cells(0, 0, 0, 1), torch.tensor([[0.0, 0.0], [1.0, 0.1]]))
    assert mem.most_novel(pos) == 1  # (5, 5): nothing like it in the negatives
    mem.add("n2", 0, _cells(3, 3), torch.tensor([[5.0, 5.0]]))  # now a negative has shown its twin
    assert mem.most_novel(pos) == 0  # (0, 0.1) is 0.1 from its nearest negative, (1, 0.05) 0.05
    # the distances against a direct computation
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.1], [5.0, 5.0]])
    assert torch.argmax(torch.cdist(pos, ref).min(1).values).item() == mem.most_novel(pos)


def test_instance_loss_trains_the_patch_it_is_given():
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-1.0, 3.0]], requires_grad=True)
    loss = instance_loss(logits, 1, top=0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([1])).item(), rel=1e-6)
    loss.backward()
    assert logits.grad[1:].abs().sum() == 0


def test_with_a_memory_the_instance_loss_runs_over_the_slides_history_and_picks_the_novel_patch():
    from types import SimpleNamespace

    from ats_wsi.run._aids import InstanceMemory, aid_losses

    head = torch.nn.Linear(2, 2)
    model = SimpleNamespace(instance_head=head, instance_logits=lambda r: head(r.patch_features),
                            sampler=SimpleNamespace(sampler_kind="attention"))
    settings = SimpleNamespace(instance_weight=1.0, distill_weight=0.0, negative_class=0)
    mem = InstanceMemory(per_slide=8, n_slides=2, dim=2)

    def result(cells, feats):
        return SimpleNamespace(positions=_cells(*cells)[None], patch_features=torch.tensor(feats)[None])

    neg = [[0.0, 0.0], [1.0, 1.0]]
    loss = aid_losses(model, settings, result((0, 0, 0, 1), neg), 0, mem, "n")
    assert loss.item() == pytest.approx(F.cross_entropy(head(torch.tensor(neg)), torch.zeros(2, dtype=torch.long)).item())
    aid_losses(model, settings, result((0, 0), [[0.1, 0.0]]), 1, mem, "p")
    # the positive slide's second step: its memory holds both steps' patches; (4, 4) is the novel one
    loss = aid_losses(model, settings, result((1, 1), [[4.0, 4.0]]), 1, mem, "p")
    assert loss.item() == pytest.approx(F.cross_entropy(head(torch.tensor([[4.0, 4.0]])), torch.tensor([1])).item())
    # the negative slide's memory keeps its patches: a later step's loss covers all three
    loss = aid_losses(model, settings, result((2, 2), [[2.0, 0.0]]), 0, mem, "n")
    every = torch.tensor(neg + [[2.0, 0.0]])
    assert loss.item() == pytest.approx(F.cross_entropy(head(every), torch.zeros(3, dtype=torch.long)).item())


def test_with_distill_memory_the_attention_learns_the_ranking_of_every_remembered_cell():
    from types import SimpleNamespace

    from ats_wsi.run._aids import InstanceMemory, aid_losses

    head = torch.nn.Linear(2, 2)
    model = SimpleNamespace(instance_head=head, instance_logits=lambda r: head(r.patch_features),
                            sampler=SimpleNamespace(sampler_kind="attention", softmax=SimpleNamespace(temperature=0.5)))
    settings = SimpleNamespace(instance_weight=0.0, distill_weight=1.0, negative_class=0, distill="rank",
                               distill_temperature=0.25, distill_memory=True)
    mem = InstanceMemory(per_slide=8, n_slides=1, dim=2)
    logits = torch.randn(4, 5, requires_grad=True)  # the whole map of this step

    def result(cells, feats):
        c = _cells(*cells)
        return SimpleNamespace(positions=c[None], patch_features=torch.tensor(feats)[None], logits=logits[None],
                               sampled_logits=logits[c[:, 0], c[:, 1]][None])

    aid_losses(model, settings, result((0, 0, 2, 3), [[0.0, 1.0], [3.0, -1.0]]), 0, mem, "s")
    loss = aid_losses(model, settings, result((1, 4), [[-2.0, 0.5]]), 0, mem, "s")
    # the loss covers the three remembered cells, with this step's map at each
    cells = torch.tensor([[0, 0], [2, 3], [1, 4]])
    feats = torch.tensor([[0.0, 1.0], [3.0, -1.0], [-2.0, 0.5]])
    want = distill_loss(logits[cells[:, 0], cells[:, 1]], head(feats), kind="rank", temperature=0.5,
                        target_temperature=0.25)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert mem.cells("s").tolist() == cells.tolist()
    loss.backward()
    touched = logits.grad.abs() > 0
    assert touched.sum().item() == 3 and all(touched[r, c] for r, c in cells.tolist())
    # off: only this step's draw, whose single cell makes the rank loss constant
    settings.distill_memory = False
    only = aid_losses(model, settings, result((3, 3), [[1.0, 1.0]]), 0, mem, "s")
    assert only.item() == pytest.approx(0.0, abs=1e-6)
