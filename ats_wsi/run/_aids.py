"""What makes attention sampling learn a small lesion among look-alikes: the per-patch
losses and the exploration schedule that :func:`ats_wsi.run.train.train` adds to the
slide loss.

Why they are needed (measured in ``docs/results/lesion-benchmark.md``): the slide
head sees the estimator's mean of ``n`` patch features. When a lesion covers 1 %
of the tissue, most draws of a positive slide miss it, a hit moves the mean by
``1 / n``, and the attention's gradient (a patch's difference from the mean,
times the head's gradient) stays near zero until the features already tell a
lesion from its look-alikes: training sits at ln 2. Three aids, none of which
touches the estimator (its forward value and gradients stay unbiased for
whatever map it draws from):

- **Exploration that anneals**: the map's smoothing (a share of the attention
  spread uniformly over tissue cells, :class:`~ats_wsi.sampling.SampleSoftmax`)
  starts at ``explore`` and falls linearly to the model's own ``smoothing``
  over ``explore_epochs``; during those epochs ``explore_patches`` draws are
  made per slide instead of ``n_patches``. Early draws cover the tissue, so
  lesions are found before the attention knows where to look.
- **A per-patch (instance) loss** on a separate linear head over each drawn
  patch's features, under the multiple-instance assumption with a negative
  class (``negative_class``, 0 by default: "normal"): every patch of a
  negative slide is negative; in a slide of class ``k`` the drawn patch the
  instance head finds least negative is class ``k``. Each patch gets its own
  gradient, not ``1 / n`` of the mean's.
- **Attention that predicts the patch scores** (``distill``): the attention
  net's logit at each drawn cell is trained (binary cross-entropy) towards
  the instance head's probability that the patch is not negative (no gradient
  into the instance head). The attention map then ranks cells by what the
  patches under them turned out to be, instead of waiting for the slide loss's
  small score-function signal.

Written here rather than taken from a library: no maintained package offers
these losses over attention sampling's draws.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DISTILL", "InstanceMemory", "aid_losses", "check_aids", "distill_loss", "exploration", "instance_loss",
           "memory_for", "set_exploration", "zoom_aid_losses", "zoom_distill_loss", "zoom_distill_targets"]


def exploration(epoch: int, *, explore: float, explore_epochs: int, final: float) -> float:
    """The attention's smoothing in ``epoch`` (0-based): ``explore`` at epoch 0,
    falling linearly to ``final`` at ``explore_epochs``, then ``final``."""
    if explore_epochs <= 0 or epoch >= explore_epochs:
        return float(final)
    t = epoch / explore_epochs
    return float(explore + (final - explore) * t)


def instance_loss(logits: Tensor, label: int, negative: int = 0, top: int | None = None) -> Tensor:
    """The multiple-instance loss of one slide's drawn patches.

    Args:
        logits: ``[n, C]``, the instance head's logits of the slide's drawn patches.
        label: the slide's class.
        negative: the class that means "nothing found" (normal tissue).
        top: the patch a positive slide trains (default: the one the head finds
            least negative).

    Returns:
        A scalar: for a negative slide, the mean cross-entropy of every patch
        against ``negative``; otherwise the cross-entropy against ``label`` of
        the patch with the smallest probability of ``negative``.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"instance logits must be [n, C] with n >= 1, got {tuple(logits.shape)}")
    if int(label) == int(negative):
        return F.cross_entropy(logits, torch.full((logits.shape[0],), int(negative), device=logits.device))
    if top is None:
        with torch.no_grad():
            top = int(torch.argmin(torch.softmax(logits.float(), dim=-1)[:, negative]))
    return F.cross_entropy(logits[top:top + 1], torch.tensor([int(label)], device=logits.device))


DISTILL = ("bce", "rank")


def distill_loss(sampled_logits: Tensor, instance_logits: Tensor, negative: int = 0, *,
                 kind: str = "bce", temperature: float = 1.0, target_temperature: float = 1.0) -> Tensor:
    """The attention's loss against the instance head's scores of the drawn patches
    (a target: no gradient into the instance head).

    Args:
        sampled_logits: ``[n]``, the attention net's logit at each drawn cell.
        instance_logits: ``[n, C]``, the instance head's logits of the same patches.
        negative: the class that means "nothing found".
        kind: ``"bce"``: binary cross-entropy of each logit against the
            probability that its patch is not ``negative`` (absolute scores);
            ``"rank"``: cross-entropy between the softmax over the drawn cells of
            the patches' log-odds of a finding and that of the attention logits
            divided by ``temperature`` (relative: within each slide, attention
            ranks cells as the instance head ranks their patches, so it learns
            where a finding would be even in slides that have none).
        temperature: the attention's softmax temperature (``"rank"``).
        target_temperature: ``"rank"``: the log-odds are divided by it before their softmax.
            Below 1 the target is sharper than the instance head's odds: the map's ratio
            between two cells becomes their odds ratio to the power ``1 / target_temperature``,
            so a region the head finds e.g. e¹ times likelier than plain tissue gets e⁴ times
            the draws at 0.25 instead of e¹.
    """
    if kind not in DISTILL:
        raise ValueError(f"distill kind must be one of {DISTILL}, got {kind!r}")
    with torch.no_grad():
        log_p = torch.log_softmax(instance_logits.float(), dim=-1)
        finding = 1.0 - log_p[:, negative].exp()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(sampled_logits.float(), finding)
    with torch.no_grad():
        odds = torch.logit(finding.clamp(1e-6, 1 - 1e-6))
        target = torch.softmax(odds / target_temperature, dim=0)
    return -(target * torch.log_softmax(sampled_logits.float() / temperature, dim=0)).sum()


# ---------------------------------------------------------------- what train() calls

def check_aids(settings, model) -> None:
    """The per-patch losses need an instance head; the negative class must exist
    (``settings``: :class:`~ats_wsi.run.train.TrainSettings`, ``model``: a SlideClassifier)."""
    if (settings.instance_weight or settings.distill_weight) and model.instance_head is None:
        raise ValueError("instance_weight and distill_weight need a model with an instance head "
                         "(ModelConfig(instance_head=True); ats-wsi train: --instance-head)")
    if not 0 <= settings.negative_class < model.config.n_classes:
        raise ValueError(f"negative_class {settings.negative_class} is not a class of this "
                         f"{model.config.n_classes}-class model")
    tau = settings.distill_temperature
    if not (math.isfinite(tau) and 0.01 <= tau <= 100):
        raise ValueError(f"distill_temperature {tau!r} must be between 0.01 and 100 (1: the instance head's odds)")


def set_exploration(model, settings, epoch: int) -> None:
    """This epoch's attention smoothing and number of draws (exploring, then the model's own)."""
    exploring = epoch < settings.explore_epochs
    model.sampler.softmax.smoothing = exploration(epoch, explore=settings.explore,
                                                  explore_epochs=settings.explore_epochs,
                                                  final=model.config.smoothing)
    more = settings.explore_patches if exploring and settings.explore_patches else None
    model.sampler.n_patches = int(more or model.config.n_patches)


class InstanceMemory:
    """The features of the patches drawn so far in each training slide, for a frozen
    feature net: the instance loss then sees a slide's whole history, not only
    this step's draws, and picks a positive slide's patch by what the negative
    slides have never shown.

    Why (measured in ``docs/training.md``): the plain multiple-instance loss
    trains a positive slide's drawn patch that the instance head itself scores
    highest. When a look-alike starts out higher than the lesion (three seeds in
    four on the lesion benchmark), the look-alike is trained "tumor" and the
    lesion is never picked: the head ends up ranking lesions *below* everything
    (lesion-vs-follicle AUC 0.000). With the memory, a positive slide's patch is
    the one farthest (Euclidean, in feature space) from every patch the negative
    slides have shown: a look-alike has near twins in the negative slides, a
    lesion has none. Only valid while the features do not change, hence frozen
    feature nets only.

    Memory is bounded before allocation: at most ``per_slide`` patches a slide
    (a drawn cell is kept once; past the bound a new cell replaces a random one,
    so early finds survive), ``per_slide`` cut so that all slides together fit
    ``budget_bytes`` (at least 32 a slide), and at most ``reference`` negative
    patches (a random subset) to measure distances against.
    """

    def __init__(self, per_slide: int, n_slides: int, dim: int, *, negative: int = 0,
                 budget_bytes: int = 256 << 20, reference: int = 8192, seed: int = 0):
        if per_slide < 1:
            raise ValueError(f"instance memory must keep at least 1 patch a slide, got {per_slide}")
        fit = budget_bytes // max(1, n_slides * max(1, dim) * 4)
        self.per_slide = int(min(per_slide, max(32, fit)))
        self.negative, self.reference = int(negative), int(reference)
        self._rng = np.random.default_rng(seed)
        self._slides: dict[str, tuple[dict[tuple[int, int], int], list[Tensor]]] = {}
        self._cells: dict[str, dict[int, tuple[int, int]]] = {}  # slide -> row -> its cell
        self._labels: dict[str, int] = {}
        self._negatives: Tensor | None = None  # stacked, rebuilt when a negative slide adds a patch

    def add(self, slide: str, label: int, positions: Tensor, features: Tensor) -> Tensor:
        """Remember a slide's drawn cells (``positions`` ``[n, 2]``, ``features``
        ``[n, D]``, detached) and return its whole memory ``[m, D]``."""
        index, rows = self._slides.setdefault(slide, ({}, []))
        self._cells.setdefault(slide, {})
        self._labels[slide] = int(label)
        for cell, f in zip(positions.tolist(), features.detach().float().cpu()):
            cell = (int(cell[0]), int(cell[1]))
            if cell in index:
                continue
            if int(label) == self.negative:
                self._negatives = None
            if len(rows) < self.per_slide:
                index[cell] = len(rows)
                rows.append(f)
            else:  # replace a random remembered cell
                j = int(self._rng.integers(len(rows)))
                del index[self._cells[slide][j]]
                index[cell] = j
                rows[j] = f
            self._cells[slide][index[cell]] = cell
        return torch.stack(rows).to(features.device)

    def cells(self, slide: str) -> Tensor:
        """long ``[m, 2]``: the remembered cells of ``slide`` (row, col on the attention
        map), in the order of the rows :meth:`add` returns."""
        cells = self._cells.get(slide, {})
        return torch.tensor([cells[i] for i in range(len(cells))], dtype=torch.long).view(-1, 2)

    def negatives(self) -> Tensor | None:
        """``[r, D]``: the remembered patches of negative slides (at most ``reference``), or None."""
        if self._negatives is None:
            rows = [f for s, (_, fs) in self._slides.items() if self._labels[s] == self.negative for f in fs]
            if not rows:
                return None
            keep = (self._rng.choice(len(rows), self.reference, replace=False) if len(rows) > self.reference
                    else range(len(rows)))
            self._negatives = torch.stack([rows[i] for i in keep])
        return self._negatives

    def most_novel(self, bag: Tensor) -> int | None:
        """The index of the patch of ``bag`` ``[m, D]`` farthest from its nearest
        remembered negative patch (None before any negative slide was seen)."""
        ref = self.negatives()
        if ref is None:
            return None
        with torch.no_grad():
            nearest = torch.cdist(bag.float().cpu(), ref).min(dim=1).values
        return int(torch.argmax(nearest))

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self._slides.values())


def memory_for(settings, model, n_slides: int) -> InstanceMemory | None:
    """The instance loss's memory of drawn patches for a training run (``settings``:
    :class:`~ats_wsi.run.train.TrainSettings`), or None when it is off; a
    feature net that trains is refused (its features change every step)."""
    if not settings.instance_memory or not settings.instance_weight or model.instance_head is None:
        return None
    if not model.config.feature_frozen:
        raise ValueError("instance_memory needs a frozen feature net (ats-wsi train: --freeze-features); "
                         "the features of a feature net that trains change every step")
    return InstanceMemory(settings.instance_memory, n_slides, model.instance_head.in_features,
                          negative=settings.negative_class, seed=settings.seed)


def aid_losses(model, settings, result, label: int, memory: InstanceMemory | None = None, slide: str = ""):
    """The per-patch losses of one slide (0 when off): instance loss and attention distillation.

    With ``memory`` (frozen features) the instance loss runs over every patch the
    slide has shown so far (:class:`InstanceMemory`), and so does the distillation
    when ``settings.distill_memory`` is on: the attention's logits at every
    remembered cell (from the map of this step) learn the instance head's ranking
    of their patches, not only the few cells this step drew. Why: the draws of one
    step follow the attention's current beliefs (after exploration, mostly the same
    few regions), while the memory keeps the uniform draws of the exploration
    epochs too, so the attention keeps learning how plain tissue compares with the
    look-alikes and the lesion.
    """
    if not (settings.instance_weight or settings.distill_weight):
        return 0.0
    if getattr(result, "region_positions", None) is not None:  # a two-stage (zoom) model: its own section below
        return zoom_aid_losses(model, settings, result, label, memory, slide)
    inst = model.instance_logits(result)[0]  # [n, C]
    bag = bag_logits = None
    if memory is not None:
        bag = memory.add(slide, label, result.positions[0], result.patch_features[0])
        bag_logits = model.instance_head(bag)  # [m, C], the slide's whole history
    loss = 0.0
    if settings.instance_weight:
        if bag is not None:
            top = None if int(label) == settings.negative_class else memory.most_novel(bag)
            loss = settings.instance_weight * instance_loss(bag_logits, label, settings.negative_class, top)
        else:
            loss = settings.instance_weight * instance_loss(inst, label, settings.negative_class)
    if settings.distill_weight and model.sampler.sampler_kind == "attention":
        logits, scores = result.sampled_logits[0], inst
        if bag is not None and settings.distill_memory and result.logits is not None:
            cells = memory.cells(slide).to(result.logits.device)
            logits, scores = result.logits[0][cells[:, 0], cells[:, 1]], bag_logits
        loss = loss + settings.distill_weight * distill_loss(
            logits, scores, settings.negative_class, kind=settings.distill,
            temperature=model.sampler.softmax.temperature,
            target_temperature=settings.distill_temperature)
    return loss


# ---------------------------------------------------------------- two-stage (zoom) models
# The drawn patches of a zoom are n1 regions x n2 cells. The instance loss and its memory run
# over the flat list of the n1·n2 patches; distillation trains both attention stages.

def zoom_distill_targets(instance_logits: Tensor, negative: int = 0, *, kind: str = "rank",
                         target_temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """What the two attention stages of a zoom learn from the instance head's scores of the drawn patches.

    Args:
        instance_logits: ``[n1, n2, C]``, the instance head's logits of each drawn region's patches.
        negative: the class that means "nothing found".
        kind: as in :func:`distill_loss`.
        target_temperature: ``"rank"``: the log-odds are divided by it (:func:`distill_loss`).

    Returns:
        ``(regions [n1], cells [n1, n2])``, no gradient. ``"rank"``: ``cells[r]`` is
        the softmax over region ``r``'s patches of their log-odds of a finding over
        ``target_temperature`` (what :func:`distill_loss` gives a one-stage slide), and
        ``regions`` the softmax over the regions of the log-sum-exp of the same scaled
        log-odds. Log-sum-exp, not max: then ``regions[r] · cells[r, j]`` is exactly
        the one-stage rank target over all ``n1 · n2`` patches (the region's share of
        it, times the patch's share within the region), so the two stages factor the
        map a one-stage model would learn from the same draws, and a region with
        several likely patches outranks one with a single patch as likely.
        ``"bce"``: ``cells`` the probability of a finding of each patch, ``regions``
        the largest of its region (a region holds a finding when one of its patches does).
    """
    if kind not in DISTILL:
        raise ValueError(f"distill kind must be one of {DISTILL}, got {kind!r}")
    if instance_logits.ndim != 3 or 0 in instance_logits.shape[:2]:
        raise ValueError(f"zoom instance logits must be [n1, n2, C] with n1, n2 >= 1, "
                         f"got {tuple(instance_logits.shape)}")
    with torch.no_grad():
        finding = 1.0 - torch.softmax(instance_logits.float(), dim=-1)[..., negative]  # [n1, n2]
        if kind == "bce":
            return finding.max(dim=1).values, finding
        scaled = torch.logit(finding.clamp(1e-6, 1 - 1e-6)) / target_temperature
        return torch.softmax(torch.logsumexp(scaled, dim=1), dim=0), torch.softmax(scaled, dim=1)


def zoom_distill_loss(region_logits: Tensor, sampled_logits: Tensor, instance_logits: Tensor, negative: int = 0, *,
                      kind: str = "rank", temperatures: tuple[float, float] = (1.0, 1.0),
                      target_temperature: float = 1.0) -> Tensor:
    """Distillation of both attention stages of one slide's zoom: stage 1 + the mean over regions of stage 2.

    Args:
        region_logits: ``[n1]``, the stage-1 net's logit at each drawn region.
        sampled_logits: ``[n1, n2]``, the stage-2 net's logit at each drawn cell.
        instance_logits: ``[n1, n2, C]``, the instance head's logits of the same patches.
        negative, kind, target_temperature: as in :func:`zoom_distill_targets`.
        temperatures: the stage-1 and stage-2 softmax temperatures (``"rank"``).

    Stage 2 is :func:`distill_loss` of each region's cells; stage 1 the same loss
    of the region logits against :func:`zoom_distill_targets`' region target
    (cross-entropy of softmax(logits / temperature) for ``"rank"``, binary
    cross-entropy for ``"bce"``).
    """
    regions, _ = zoom_distill_targets(instance_logits, negative, kind=kind, target_temperature=target_temperature)
    if kind == "bce":
        first = F.binary_cross_entropy_with_logits(region_logits.float(), regions)
    else:
        first = -(regions * torch.log_softmax(region_logits.float() / temperatures[0], dim=0)).sum()
    second = torch.stack([distill_loss(sampled_logits[r], instance_logits[r], negative, kind=kind,
                                       temperature=temperatures[1], target_temperature=target_temperature)
                          for r in range(sampled_logits.shape[0])]).mean()
    return first + second


def zoom_aid_losses(model, settings, result, label: int, memory: InstanceMemory | None = None, slide: str = ""):
    """:func:`aid_losses` of a two-stage model's result (a :class:`~ats_wsi.zoom.ZoomResult`).

    The instance loss runs over the flat list of the ``n1 · n2`` drawn patches; the
    instance memory keys a patch by its level-0 corner (``patch_xy0``: unique in the
    slide, where a stage-2 cell is only unique in its region). Distillation trains
    both attention stages (:func:`zoom_distill_loss`; needs ``result.region_logits``).
    """
    inst = model.instance_logits(result)[0]  # [n1, n2, C]
    flat = inst.reshape(-1, inst.shape[-1])
    loss = 0.0
    if settings.instance_weight:
        if memory is not None:
            features = result.patch_features[0].reshape(flat.shape[0], -1)
            bag = memory.add(slide, label, result.patch_xy0[0].reshape(-1, 2), features)
            top = None if int(label) == settings.negative_class else memory.most_novel(bag)
            loss = settings.instance_weight * instance_loss(model.instance_head(bag), label, settings.negative_class,
                                                            top)
        else:
            loss = settings.instance_weight * instance_loss(flat, label, settings.negative_class)
    if settings.distill_weight:
        if result.region_logits is None:
            raise ValueError("zoom distillation needs the stage-1 logits of the drawn regions (ZoomResult."
                             "region_logits): call ZoomSampler.forward, or draw(..., logits=...)")
        stages = model.sampler.stage1.softmax.temperature, model.sampler.stage2.softmax.temperature
        loss = loss + settings.distill_weight * zoom_distill_loss(
            result.region_logits[0], result.sampled_logits[0], inst, settings.negative_class, kind=settings.distill,
            temperatures=stages, target_temperature=settings.distill_temperature)
    return loss
