"""The slide classifier: attention sampling over a slide, then a linear head.

:meth:`SlideClassifier.predict` is the one path from a slide to a
prediction; ``ats-wsi predict``, the demo and the napari widget call it, and
training feeds the same :class:`~ats_wsi.classifier.inputs.SlideInput` to
:meth:`SlideClassifier.forward`.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import SamplingError
from ..model import AttentionResult, AttentionSampler
from ..sampling import expectation, nested_expectation
from ..nets import create_attention_net
from .config import ModelConfig
from .feature_net import Normalize, build_feature_net
from .prediction import SlidePrediction
from .stages import PreparedSlide, finish_slide, prepare_slide

__all__ = ["Normalize", "SlideClassifier", "build_model"]


class SlideClassifier(nn.Module):
    """Attention sampling over a slide, then a linear head on the features.

    ``forward(x_low, source, mask)`` takes the low view as uint8 (or float in
    [0, 1]) ``[B, 3, h, w]``, a patch source (a
    :class:`ats_wsi.patches.SlideSource` or a tensor) and an optional tissue
    mask, and returns ``(logits [B, n_classes], AttentionResult)``. Both nets
    normalise their own input, so a large uint8 view is only ever converted
    to float tile by tile.
    """

    def __init__(self, config: ModelConfig, *, encoder_weights: bool = True):
        super().__init__()
        attention = create_attention_net(config.attention_net, in_channels=3, **config.attention_kwargs)
        features = build_feature_net(config, encoder_weights=encoder_weights)
        config, feature_in, head_in = features.config, features.module, features.width
        self.config = config
        attention_in = nn.Sequential(Normalize(config.mean, config.std), attention)
        if hasattr(attention, "receptive_field"):  # lets tiling skip the probe
            attention_in.receptive_field = attention.receptive_field
        if config.zoom:  # two attention stages (docs/zoom.md); every net normalises its own input
            self.sampler = _zoom_sampler(config, attention_in, feature_in)
        else:
            self.sampler = self._one_stage(config, attention_in, feature_in, features.step)
        # Per-patch scores: a linear instance head over each drawn patch's features. Its class
        # probabilities are averaged by the same unbiased estimator as the features, and the slide
        # head reads both: the expected share of "lesion" among the draws is a count the head can
        # threshold, where a lesion's features alone are diluted by the look-alikes drawn with it.
        self.instance_head = nn.Linear(head_in, config.n_classes) if config.instance_head else None
        self.head = nn.Linear(head_in + (config.n_classes if config.instance_head else 0), config.head_outputs)
        self.threshold: float | None = None
        """Two classes: a slide is predicted class 1 when P(class 1) >= this (``load_model`` sets the
        threshold training chose on the validation slides); None: the arg-max class."""

    @staticmethod
    def _one_stage(config: ModelConfig, attention_in: nn.Module, feature_in: nn.Module,
                   feature_step) -> AttentionSampler:
        return AttentionSampler(
            attention_in,
            feature_in,
            n_patches=config.n_patches,
            patch_size=config.patch_size,
            replace=config.replace,
            entropy=config.entropy,
            min_tissue=config.min_tissue,
            tile_aligned=config.tile_aligned,
            sampler=config.sampler,
            smoothing=config.smoothing,
            temperature=config.temperature,
            feature_step=feature_step,
        )

    def forward(self, x_low: Tensor, source, mask: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                deterministic: bool | None = None) -> tuple[Tensor, AttentionResult]:
        result = self.sampler(x_low, source, mask, generator=generator, deterministic=deterministic)
        return self.slide_logits(result), result

    def slide_logits(self, result: AttentionResult) -> Tensor:
        """``[B, n_classes]``: the slide head over the estimate of the mean features (and,
        with an instance head, of the mean per-patch class probabilities)."""
        if self.instance_head is None:
            return self.head(result.features)
        probs = torch.softmax(self.instance_head(result.patch_features.float()), dim=-1)  # [B, n, C]
        if self.config.zoom:  # [B, n1, n2, C]: through both stages, as the features
            expected = nested_expectation(probs, result.region_attention, result.sampled_attention,
                                          self.sampler.stage1.replace, self.sampler.stage2.replace)
        else:
            expected = expectation(probs, result.sampled_attention, self.sampler.replace)  # [B, C]
        return self.head(torch.cat([result.features, expected.to(result.features.dtype)], dim=-1))

    def slide_probabilities(self, result: AttentionResult, logits: Tensor | None = None) -> Tensor:
        """``[B, n_classes]``: a draw's class probabilities as the config's ``readout`` reads them.

        ``"head"``: the softmax of :meth:`slide_logits` (``logits`` when given).
        ``"top"``: the instance head's probabilities of the drawn patch with the
        smallest probability of ``negative_class``, through both stages for a
        zoom: what the multiple-instance loss trains that patch towards (a
        negative slide's every patch is negative, a positive slide's top patch
        is its class), so a slide is as positive as its most positive drawn
        patch. It is not the estimator's unbiased mean: it grows with the
        patches drawn (docs/training.md, "The readout").
        """
        if self.config.readout != "top":
            return torch.softmax((self.slide_logits(result) if logits is None else logits).float(), dim=-1)
        probs = torch.softmax(self.instance_logits(result).float(), dim=-1)
        probs = probs.reshape(probs.shape[0], -1, probs.shape[-1])  # [B, n, C] (a zoom's n1 · n2 patches)
        top = probs[..., self.config.negative_class].argmin(dim=1)  # [B]
        return probs[torch.arange(probs.shape[0], device=probs.device), top]

    def instance_logits(self, result: AttentionResult) -> Tensor | None:
        """``[B, n, n_classes]``: the instance head's logits for each drawn patch of
        ``result`` (``[B, n1, n2, n_classes]`` for a zoom; ``None`` without an instance head)."""
        if self.instance_head is None or result.patch_features is None:
            return None
        return self.instance_head(result.patch_features.float())

    @property
    def class_names(self) -> tuple[str, ...]:
        """The config's class names, else ``("class 0", "class 1", ...)``."""
        names = self.config.class_names
        if names and len(names) == self.config.n_classes:
            return tuple(str(n) for n in names)
        return tuple(f"class {k}" for k in range(self.config.n_classes))

    def attention_cell_um_xy(self) -> tuple[float, float] | None:
        """``(w, h)`` of one attention cell in µm: the low view's µm/px times the
        attention net's stride; ``None`` when the low view is set as a
        downsample (the cell then depends on each slide's µm/px, which a
        prediction records: ``cell_size_xy`` times ``mpp``)."""
        if self.config.low_mpp is None:
            return None
        try:
            rows, cols = self.sampler.attention_field().stride
        except SamplingError:  # a net that is not local (no stride to speak of)
            return None
        return float(self.config.low_mpp) * cols, float(self.config.low_mpp) * rows

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.parameters()).device

    @torch.no_grad()
    def predict(
        self,
        slide,
        *,
        samples: int = 1,
        n_patches: int | None = None,
        seed: int = 0,
        deterministic: bool = False,
        workers: int = 2,
        stream: bool = True,
        sampler: str | None = None,
        roi=None,
        readout: str | None = None,
        threshold: float | None = None,
    ) -> SlidePrediction:
        """Classify one slide: the low view, the attention map once, ``samples`` draws.

        Args:
            slide: a path, an open slide (left open) or a :class:`SlideInput`.
            samples: average the class probabilities of this many draws from
                the one attention map.
            n_patches: patches per draw (default: the config's ``predict_patches``, else its ``n_patches``).
            seed: base seed; draws are seeded per slide (:func:`slide_seed`).
            deterministic: take the top-n cells instead of sampling.
            workers: tile-decoding threads (when a path or slide is given).
            stream: read the low view tile by tile and work on the attention
                map in blocks (:meth:`AttentionSampler.attend_streamed`), so
                that memory does not grow with the slide; ``False`` holds the
                whole low view (the training path). Both give the same draws
                for the same seed on CPU, and probabilities equal up to float
                rounding.
            sampler: ``"uniform"`` draws uniformly over tissue cells instead of
                from the attention map (the random-patch ablation of a trained
                model); ``None``: the model's own.
            roi: a :class:`~ats_wsi.roi.Roi`: draw only cells whose whole patch box lies in
                it (and on tissue), the attention renormalised over them.
            readout: ``"head"`` or ``"top"``: how the probabilities are read
                (:meth:`slide_probabilities`); ``None``: the config's ``readout``.
            threshold: two classes: ``predicted`` is 1 when P(class 1) >= it; ``None``:
                :attr:`threshold` (a loaded checkpoint's validation threshold), else the arg-max.

        Returns:
            :class:`SlidePrediction`, with the sampled boxes in level-0 pixels.

        Raises:
            PredictionError: the head gave NaN or inf logits (never written as ``nan``).
            SamplingError: more than ``MAX_SAMPLES`` samplings, or draws that cannot be made.
            SlideError, EncoderError: the slide or the encoder failed (their messages say why).
        """
        self.eval()
        with self.sampling(sampler, readout, threshold=threshold):
            prepared = self.prepare(slide, samples=samples, n_patches=n_patches, seed=seed,
                                    deterministic=deterministic, workers=workers, stream=stream, roi=roi)
            return self.finish(prepared)

    def prepare(self, slide, **kwargs) -> PreparedSlide:
        """The reading half of :meth:`predict` (its arguments but ``sampler``): the slide
        opened, the attention map, the draws and their patch pixels
        (:func:`~ats_wsi.classifier.stages.prepare_slide`). Safe in another thread while
        :meth:`finish` runs on an earlier slide; the model must be in eval mode."""
        return prepare_slide(self, slide, **kwargs)

    def finish(self, prepared: PreparedSlide) -> SlidePrediction:
        """The encoding half of :meth:`predict`: the feature net, the heads, the prediction
        (:func:`~ats_wsi.classifier.stages.finish_slide`); closes ``prepared``."""
        return finish_slide(self, prepared)

    @contextlib.contextmanager
    def sampling(self, sampler: str | None, readout: str | None = None, n_patches: int | None = None,
                 threshold: float | None = None):
        """Inside the block, draw with ``sampler`` (``"attention"``, ``"uniform"``; None: the
        model's own), ``n_patches`` patches a draw (a zoom model: a region; None: the sampler's
        own), read probabilities with ``readout`` (``"head"``, ``"top"``; None: the config's) and
        decide a two-class slide at P(class 1) >= ``threshold`` (None: :attr:`threshold`); all
        restored after. A pipeline sets them once for its run, not per slide.

        Raises:
            ConfigError: ``readout="top"`` for a model without an instance head.
        """
        own, n, config, cut = self.sampler.sampler_kind, self.sampler.n_patches, self.config, self.threshold
        try:
            if threshold is not None:
                self.threshold = float(threshold)
            if sampler is not None:
                self.sampler.set_sampler(sampler)
            if n_patches:
                self.sampler.n_patches = int(n_patches)
            if readout is not None and readout != config.readout:
                self.config = dataclasses.replace(config, readout=readout)  # validated: ConfigError
            yield self
        finally:
            self.sampler.sampler_kind, self.sampler.n_patches, self.config, self.threshold = own, n, config, cut

    def decide(self, probabilities) -> int:
        """The predicted class of a slide's class probabilities: with two classes and a
        :attr:`threshold`, 1 when P(class 1) >= it; else the arg-max."""
        p = np.asarray(probabilities, dtype=np.float64).ravel()
        if self.threshold is not None and len(p) == 2 and self.config.task == "classification":
            return int(p[1] >= self.threshold)
        return int(np.argmax(p))


def build_model(config: ModelConfig | dict, *, encoder_weights: bool = True) -> SlideClassifier:
    """A fresh :class:`SlideClassifier` from a config (or its dict).

    ``encoder_weights=False``: a fine-tuned encoder is built without reading
    its pretrained weights (the checkpoint's state dict fills them); a frozen
    encoder always reads them from the file its spec names.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SlideClassifier(config, encoder_weights=encoder_weights)


def _zoom_sampler(config: ModelConfig, attention_in: nn.Module, feature_in: nn.Module):
    """The two-stage sampler of a zoom config: stage 2's attention net is a second net of the
    config's ``attention_net`` kind, with the same normalisation in front as stage 1's; a
    pretrained encoder at stage 3 gets its resolution check and feature cache
    (:class:`~.features.ZoomEncoderFeatures`)."""
    from ..zoom import ZoomSampler
    from .features import ZoomEncoderFeatures

    zoom_net = create_attention_net(config.attention_net, in_channels=3, **config.attention_kwargs)
    zoom_in = nn.Sequential(Normalize(config.mean, config.std), zoom_net)
    sampler = ZoomSampler(attention_in, zoom_in, feature_in, n_regions=config.zoom_regions,
                          n_patches=config.n_patches, replace_regions=config.replace, replace=config.replace,
                          entropy=config.entropy, zoom_entropy=config.entropy, smoothing=config.smoothing,
                          feature_step=ZoomEncoderFeatures() if config.feature_spec is not None else None)
    sampler.stage1.softmax.temperature = sampler.stage2.softmax.temperature = config.temperature
    sampler.stage1.min_tissue = config.min_tissue
    sampler.patch_size = (config.patch_size, config.patch_size)
    return sampler
