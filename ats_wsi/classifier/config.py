"""The model config: every name and number needed to rebuild a slide classifier.

A checkpoint stores this config (never pickled code); :func:`build_model`
turns the same config into the same network again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, ConfigError

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a slide classifier.

    Attributes:
        n_classes: number of slide labels (0 .. n_classes - 1).
        attention_net, attention_kwargs: name and arguments in ``ats_wsi.nets``.
        feature_net, feature_kwargs: likewise (``"timm:<name>"`` works when installed).
        feature_dim: D, the feature vector per patch.
        n_patches: patches drawn per slide (in training; and in prediction
            unless ``predict_patches`` is set).
        predict_patches: patches drawn per slide in prediction and in
            training's validation (``None``: ``n_patches``). More draws
            than in training cost reads only where the model is used and
            find small lesions the training draws miss (docs/training.md,
            "Patches at prediction"). Without replacement a slide with fewer
            usable cells gives all of them.
        patch_size: side of a square patch, in pixels of ``patch_level``
            (of ``patch_mpp`` when that is set).
        patch_level: pyramid level patches are read from (0: full resolution);
            ignored when ``patch_mpp`` is set.
        patch_mpp: µm/px patches are read at from any slide (``None``: by
            ``patch_level``); the slide's own levels only decide how (see
            :class:`ats_wsi.patches.PatchReader`). A model trained at 0.5
            µm/px reads 0.5 µm/px from a 0.25 µm/px scan.
        mpp_tolerance: relative tolerance of ``patch_mpp`` (0.05: 0.2527
            µm/px is read as 0.25).
        low_downsample / low_mpp: resolution of the attention net's input
            (exactly one is set; µm/px is what pathology models should use).
        replace: sampling with replacement.
        entropy: weight of the entropy regulariser.
        min_tissue: fraction of tissue a cell needs to be drawn (0: any).
        tile_aligned: snap patches to the grid of multiples of
            ``patch_size``; with ``patch_size`` = the level's tile size each
            patch is one stored tile (see :class:`ats_wsi.model.AttentionSampler`).
        mean, std: per-channel normalisation of pixels scaled to [0, 1]
            (the attention net's input; the feature net's too unless
            ``feature_mean``/``feature_std`` or an encoder spec say otherwise).
        class_names: optional names of the labels.
        feature_spec: a pretrained patch encoder as the feature net: an
            :class:`ats_wsi.encoders.EncoderSpec` dict (with the weights'
            place and sha256); ``None``: ``feature_net`` by name. Its ``mpp``
            is the model's ``patch_mpp``, its ``dim`` the ``feature_dim``,
            and it normalises its own input.
        feature_frozen: the encoder runs in eval mode without gradients; its
            weights stay out of checkpoints (the spec names the file).
        feature_adapter: width of a trainable adapter between encoder and
            head (0: the head sits right after the encoder).
        feature_mean, feature_std: the feature net's own normalisation
            (``None``: ``mean``/``std``).
        sampler: ``"attention"``, or ``"uniform"`` over tissue cells (the
            random-patch baseline: same reads, features and head, no attention).
        smoothing: share of the attention spread uniformly over tissue cells
            at prediction (training anneals it from its ``explore`` value).
        temperature: the attention's softmax temperature (logits are
            divided by it; < 1 sharpens the map onto its best cells).
        instance_head: a linear per-patch classifier beside the slide head:
            it scores every drawn patch (what the per-patch loss trains and
            the attention learns to predict; see :mod:`ats_wsi.run.train`).
        readout: how a prediction's class probabilities are read from a draw:
            ``"head"``, the slide head over the estimator's output (the
            original attention sampling); ``"top"`` (needs the instance
            head), the instance head's probabilities of the drawn patch it
            finds least ``negative_class`` (the patch the multiple-instance
            loss trains: a slide is as positive as its most positive drawn
            patch). See docs/training.md, "The readout".
        negative_class: the class meaning "nothing found" (normal tissue),
            for ``readout="top"``.
        zoom_mpp: attention that zooms (docs/zoom.md): a second attention
            stage over regions read at this µm/px inside the ``zoom_regions``
            regions drawn from the low view; ``n_patches`` patches are then
            drawn in each region (``None``: one stage, the default).
        zoom_regions: ``n1``, regions drawn per slide (set with ``zoom_mpp``).
        zoom_size: a region's side in µm (set with ``zoom_mpp``).
        task: ``"classification"``, ``"survival"`` or ``"regression"``: what the
            slide head predicts (:mod:`ats_wsi.outcomes`); ``predict`` reads it.
        survival_loss: ``"nll"`` (discrete-time hazards over ``n_bins`` bins) or
            ``"cox"`` (one risk, the Cox partial likelihood over a batch).
        n_bins: bins of the discrete-time survival head.
        time_bins: the bins' inner cut points (quantiles of the training
            slides' event times, set by training; the manifest's time unit).
        target_mean, target_std: regression targets are standardised with
            them for training (set by training from the training slides).
    """

    n_classes: int = 2
    attention_net: str = "attention-small"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_net: str = "feature-small"
    feature_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_dim: int = 64
    n_patches: int = 16
    predict_patches: int | None = None
    patch_size: int = 128
    patch_level: int = 0
    patch_mpp: float | None = None
    mpp_tolerance: float = 0.05
    low_downsample: float | None = 16.0
    low_mpp: float | None = None
    replace: bool = False
    entropy: float = 0.01
    min_tissue: float = 0.0
    tile_aligned: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    class_names: list[str] | None = None
    feature_spec: dict[str, Any] | None = None
    feature_frozen: bool = False
    feature_adapter: int = 0
    feature_mean: tuple[float, float, float] | None = None
    feature_std: tuple[float, float, float] | None = None
    sampler: str = "attention"
    smoothing: float = 0.0
    temperature: float = 1.0
    instance_head: bool = False
    readout: str = "head"
    negative_class: int = 0
    zoom_mpp: float | None = None
    zoom_regions: int | None = None
    zoom_size: float | None = None
    task: str = "classification"
    survival_loss: str = "nll"
    n_bins: int = 4
    time_bins: list[float] | None = None
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def head_outputs(self) -> int:
        """Outputs of the slide head: a logit per class, per time bin (``nll``), or one (``cox``, regression)."""
        if self.task == "survival" and self.survival_loss == "nll":
            return len(self.time_bins) + 1 if self.time_bins is not None else self.n_bins
        return 1 if self.task in ("survival", "regression") else self.n_classes

    def __post_init__(self):
        """Every rule of a valid config, for a config built in code as for one read from a file.

        Raises:
            ConfigError: a value of the wrong type, a size out of range, a
                bad resolution or normalisation, class names that do not
                match ``n_classes`` (every problem named in one message).
        """
        from ._config_check import config_problems
        from ._task import task_problems

        problems = config_problems(self)
        problems += task_problems(self) if not problems else []
        if problems:
            raise ConfigError(None, "model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (what a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path=None) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(path, f"unknown model config keys {unknown} (made by a newer ats-wsi?)")
        try:
            cfg = cls(**data)
        except ConfigError as exc:
            raise CheckpointError(path, f"its model config is out of range or of the wrong type: "
                                        f"{exc.reason.removeprefix('model config: ')}") from None
        cfg.mean, cfg.std = tuple(cfg.mean), tuple(cfg.std)
        if cfg.feature_mean is not None:
            cfg.feature_mean = tuple(cfg.feature_mean)
        if cfg.feature_std is not None:
            cfg.feature_std = tuple(cfg.feature_std)
        return cfg

    @classmethod
    def from_user(cls, data: Any, source=None) -> ModelConfig:
        """A config a person wrote (``--config`` JSON with flags applied): every
        problem is a :class:`~ats_wsi.errors.ConfigError` naming the key and why.

        ``low_mpp`` given without ``low_downsample`` replaces the default
        downsample (the two are alternatives); both given is an error.
        """
        from ._config_check import check_user_config

        checked = check_user_config(cls, data, source)
        try:
            cls(**checked)
        except ConfigError as exc:
            raise ConfigError(source, exc.reason.removeprefix("model config: ")) from None
        return cls.from_dict(checked)

    def low_resolution(self) -> dict[str, float]:
        """``{"downsample": ...}`` or ``{"mpp": ...}`` for :func:`ats_wsi.slide.read_low_view`."""
        if (self.low_downsample is None) == (self.low_mpp is None):
            raise ValueError("set exactly one of low_downsample and low_mpp")
        return {"mpp": self.low_mpp} if self.low_mpp is not None else {"downsample": self.low_downsample}

    @property
    def zoom(self) -> bool:
        """True for a two-stage model (attention that zooms: ``zoom_mpp`` set)."""
        return self.zoom_mpp is not None
