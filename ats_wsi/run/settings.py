"""What a training run is told (:class:`TrainSettings`, stored in every checkpoint) and what
each epoch reports (:class:`EpochMetrics`): plain values, apart from the loop that uses them
(:mod:`.train`)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FLAT_ATTENTION", "METRIC_FIELDS", "EpochMetrics", "TrainSettings"]


@dataclass
class TrainSettings:
    """How to train (plain values; stored in every checkpoint)."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 4
    device: str = "cpu"
    seed: int = 0
    workers: int = 2
    train_split: str = "train"
    val_split: str = "val"
    attention_lr: float | None = None
    """Learning rate of the attention net (None: ``lr``); its own optimiser param group."""
    schedule: str = "constant"
    """``"constant"`` or ``"cosine"`` (per epoch, from ``lr`` down to ``min_lr_ratio * lr``)."""
    warmup_epochs: int = 0
    """Epochs of linear warm-up (from ``lr / (warmup_epochs + 1)``) before the schedule."""
    min_lr_ratio: float = 0.0
    select: str = "accuracy"
    """What ``best.pt`` is chosen by: validation ``"accuracy"``, ``"auc"`` or ``"loss"``, or ``"last"`` (the last
    epoch; the validation numbers are still computed, and the decision threshold is the last epoch's)."""
    class_weights: str | None = None
    """``"balanced"``: weight each slide's loss by ``n / (K * n_class)`` of the training slides."""
    skip_unreadable: bool = False
    """Train on the readable slides and list the others in ``skipped.csv`` (else: fail, naming them all)."""
    open_threads: int = 4
    """Threads that open the slides (and read their low views) before the first epoch."""
    feature_cache: str | None = None
    """Folder of a frozen encoder's features per patch box (``--feature-cache``; in memory as well)."""
    explore: float = 0.0
    """Attention smoothing in epoch 1, annealed to the model's ``smoothing`` (:mod:`ats_wsi.run._aids`)."""
    explore_epochs: int = 0
    """Epochs over which ``explore`` anneals (0: no exploration schedule)."""
    explore_patches: int | None = None
    """Patches drawn per slide while exploring (None: the model's ``n_patches``)."""
    instance_weight: float = 0.0
    """Weight of the per-patch multiple-instance loss (needs the model's instance head)."""
    distill_weight: float = 0.0
    """Weight of the loss that trains the attention to predict the instance head's scores."""
    negative_class: int = 0
    """The label meaning "nothing found", for the per-patch losses."""
    distill: str = "bce"
    """``"bce"`` (absolute scores) or ``"rank"`` (within-slide ranking); see :func:`._aids.distill_loss`."""
    distill_temperature: float = 1.0
    """``"rank"``: the instance head's log-odds are divided by it before their softmax; below 1
    the attention learns a map whose ratios between cells are the odds ratios to the power
    ``1 / distill_temperature`` (sharper: draws concentrate on the likeliest regions)."""
    distill_memory: bool = False
    """With an instance memory, the distillation runs over every remembered cell of the
    slide (the attention's logits from this step's map), not only this step's draws."""
    instance_memory: int = 0
    """Patches a slide whose frozen features the instance loss remembers (0: only
    this step's draws); needs a frozen feature net (:class:`._aids.InstanceMemory`)."""
    roi: str | None = None
    """A GeoJSON file, or a folder of ``<slide name>.geojson``: draw only inside its polygons (``--roi``)."""
    roi_include: list[str] | None = None
    roi_exclude: list[str] = field(default_factory=list)
    """Class names of the ROI's features that make the region / are cut out of it."""
    allow_duplicates: bool = False
    """Train although a slide is on several rows (else: an error listing them, :mod:`.cohort_check`)."""
    check_tiles: int = 16
    """Tiles per slide decoded before the first epoch (0: none; :class:`.preflight.SlideChecks`)."""
    mpp: float | None = None
    """Level-0 µm/px of every slide, overriding its metadata (a manifest's ``mpp`` column wins)."""
    fold: int | None = None
    """A manifest with fold numbers: fold ``fold`` is test, the next val, the rest train (:mod:`ats_wsi.data.folds`)."""
    read_ahead: bool = False
    """Prepare the next slide of a batch (attention, draws, patch reads) in a background thread while
    one trains (``--read-ahead``, on by default with a CUDA ``--device``: on 2 CPU cores it measured no
    gain; the same draws and pixels: :mod:`ats_wsi.run.train_ahead`). Off where
    :func:`~ats_wsi.run.train_ahead.read_ahead_refusal` says why: torchrun, zoom, an attention
    net with BatchNorm or dropout."""
    time_column: str | None = None
    event_column: str | None = None
    target_column: str | None = None
    """The manifest's outcome columns (None: found by name, :mod:`ats_wsi.data.outcomes`)."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float
    val_auc: float = float("nan")
    """ROC AUC of the validation slides (one-vs-rest macro for > 2 classes; NaN with one class);
    survival: Harrell's C-index; regression: R² (:mod:`.objective`)."""
    val_threshold: float = float("nan")
    """Two classes: the threshold on P(class 1) that maximises Youden's J on the validation slides
    (``predict`` reports sensitivity and specificity at it; NaN otherwise)."""
    feature_hits: int = 0
    """Patch boxes whose features the feature cache served this epoch (training and validation)."""
    feature_misses: int = 0
    """Patch boxes encoded this epoch because the feature cache lacked them."""
    attention_sd: float = float("nan")
    """The spread of the attention net's logits over a training slide's tissue cells (standard
    deviation, mean over the epoch's slides; NaN for uniform draws). Near 0 (below
    :data:`FLAT_ATTENTION`) the map is flat: the draws are uniform whatever was learnt."""
    encoder_busy: float = float("nan")
    """Seconds inside the patch encoder's forward calls over the epoch's wall seconds, in [0, 1]
    (:class:`~ats_wsi.classifier.stages.EncoderClock`; NaN in checkpoints written before it was measured).
    Training reads ahead within a batch only: the next batch's draws depend on the weights this step changes."""
    read_ahead_slides: int = 0
    """Training slides whose forward used patches read ahead by the background thread (:mod:`.train_ahead`)."""
    read_wait: float = float("nan")
    """Seconds the training thread waited for patches: its own reads, and a slide read ahead that was
    not ready yet (NaN in checkpoints written before it was measured; not in metrics.csv)."""


FLAT_ATTENTION = 0.01
"""An ``attention_sd`` below this after the exploration epochs means the attention net is stuck
flat (measured on the lesion benchmark: a stuck net stays at 0.002 for 30 epochs, a learning one
reaches 0.2-0.5); ``ats-wsi train`` then says so."""


METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "seconds", "lr", "encoder_busy",
                 "attention_sd"]
