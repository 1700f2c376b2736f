"""One slide's prediction in two stages that a pipeline can overlap: prepare, then finish.

:meth:`SlideClassifier.predict` is :func:`prepare_slide` then
:func:`finish_slide`; ``ats-wsi predict --read-ahead N`` runs the prepare
stage of the next N slides in a background thread while the main thread
finishes the current one (:mod:`ats_wsi.run.read_ahead`).

- **prepare** (reads, no encoder): open the slide (:class:`SlideInput`), the
  low view and the attention map, every sampling's cells drawn with the
  slide's generator (:meth:`~ats_wsi.model.AttentionSampler.draw_cells`), and
  the patch pixels of those cells: uint8 on the model's device (decoded on the
  GPU by nvImageCodec, or through pinned host memory on CUDA). The first
  sampling's patches are always read; later samplings' while the patches held
  stay within :data:`READ_AHEAD_BYTES` (the rest are read in finish).
- **finish** (the encoder): the feature net or frozen encoder on those
  patches (a :class:`~ats_wsi.encoders.PatchEncoder` runs under autocast in
  its spec's dtype), the estimator, the heads, the :class:`SlidePrediction`.

The draws are those of the one-stage serial path: the generator is used by
the draws alone, so drawing every sampling before reading any gives the same
cells, the same patches and the same probabilities, bit for bit.

Kept serial (prepare only opens the slide; finish does the rest):

- two-stage (zoom) models: the patches a sampling reads depend on the second
  attention map, computed from regions read in the same sampling;
- a frozen encoder with a feature cache: the cache decides which boxes are
  read at all, and only the finishing thread touches it (its per-slide
  counts stay exact); prepare draws the cells, finish reads what the cache lacks.

Thread rules: prepare touches only its own slide, its reader and the
attention net; it never runs the feature net, the heads or the feature cache,
and never changes the model. The sampler kind (``--sampler uniform``) and
torch's thread count are the run's, set before the pipeline starts
(:meth:`SlideClassifier.sampling`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encoders import PatchEncoder
from ..errors import PredictionError, SamplingError
from ..geometry import cell_grid_level0, size_wh
from ..patches.prepared import PreparedSource
from ..slide.lowview import TissueThreshold
from ._roi import restrict_to_roi, roi_grid
from ._task import slide_value
from .inputs import SlideInput
from .prediction import MAX_SAMPLES, NOT_FINITE, SlidePrediction, slide_seed

__all__ = ["EncoderClock", "PreparedSlide", "READ_AHEAD_BYTES", "busy_fraction", "finish_slide", "prepare_slide"]

READ_AHEAD_BYTES = 256 * 2**20
"""Patch pixels one prepared slide holds beyond its first sampling's (later samplings are read in finish)."""


@dataclass
class PreparedSlide:
    """A slide after :func:`prepare_slide`: what :func:`finish_slide` needs, pixels included.

    Attributes:
        item: the slide's :class:`SlideInput`.
        own: whether ``item`` was made by prepare (finish, or :meth:`close`, closes it).
        samples, n_patches, seed, deterministic: the prediction's settings.
        prepare_seconds: wall seconds of the prepare stage.
        zoom: a two-stage model: nothing prepared beyond ``item``.
        attention: ``[1, h', w']`` the attention map; ``grid_mask`` its mask (or None).
        like: the tensor whose device and dtype the patches take.
        streamed: the map was made block by block (:meth:`~ats_wsi.model.AttentionSampler.attend_streamed`).
        source: the patch source, serving the patches read ahead.
        draws: one :class:`~ats_wsi.model.CellDraw` per sampling, in draw order.
    """

    item: SlideInput
    own: bool
    samples: int
    n_patches: int | None
    seed: int
    deterministic: bool
    prepare_seconds: float = 0.0
    zoom: bool = False
    attention: torch.Tensor | None = None
    grid_mask: torch.Tensor | None = None
    like: torch.Tensor | None = None
    streamed: bool = True
    source: PreparedSource | None = None
    draws: list = field(default_factory=list)

    def close(self) -> None:
        """Let go of the pixels; close the slide input if prepare made it (finish calls this;
        a second call does nothing)."""
        self.source = None
        self.draws = []
        if self.own:
            self.own = False
            self.item.close()


def prepare_slide(model, slide, *, samples: int = 1, n_patches: int | None = None, seed: int = 0,
                  deterministic: bool = False, workers: int = 2, stream: bool = True, roi=None,
                  read_bytes: int = READ_AHEAD_BYTES) -> PreparedSlide:
    """The reading half of :meth:`SlideClassifier.predict` (arguments as there); ``model`` in eval mode.

    Args:
        read_bytes: patch bytes held beyond the first sampling's (0: only the first sampling is read ahead).

    Returns:
        :class:`PreparedSlide` for :func:`finish_slide` (which closes it).

    Raises:
        SamplingError, SlideError, RoiError: as :meth:`SlideClassifier.predict`.
    """
    start = time.perf_counter()
    if int(samples) > MAX_SAMPLES:  # each sampling reads its patches: bounded work
        raise SamplingError(f"samples must be at most {MAX_SAMPLES} samplings per slide, got {samples!r}")
    given = isinstance(slide, SlideInput)
    item = slide if given else SlideInput(slide, model.config, workers=workers, device=model.device)
    if n_patches is None:  # the prediction's own number of draws, where the config has one
        n_patches = getattr(model.config, "predict_patches", None)
    prepared = PreparedSlide(item, not given, max(1, int(samples)), n_patches, int(seed),
                             bool(deterministic), zoom=bool(model.config.zoom), streamed=bool(stream))
    try:
        if prepared.zoom:
            if roi is not None:
                raise SamplingError("a two-stage (zoom) model does not take a region of interest yet: drop --roi")
        else:
            with torch.no_grad():
                _attend_and_read(model, prepared, roi, int(read_bytes))
    except BaseException:
        prepared.close()
        raise
    prepared.prepare_seconds = time.perf_counter() - start
    return prepared


def _attend_and_read(model, prepared: PreparedSlide, roi, read_bytes: int) -> None:
    """The attention map, every sampling's cells, and the patches of the first samplings."""
    item, sampler, device = prepared.item, model.sampler, model.device
    source = item.source(device)
    generator = torch.Generator(device=device).manual_seed(slide_seed(item.path, prepared.seed))
    if prepared.streamed:
        attention, grid_mask = sampler.attend_streamed(item.low.read, item.low.shape, tissue=TissueThreshold())
        like, low_shape = attention, tuple(item.low.shape)
    else:
        x_low, mask = item.low_inputs(device)
        attention, grid_mask = sampler.attend(x_low, mask)
        like, low_shape = x_low, tuple(x_low.shape[-2:])
    if roi is not None:
        inside = roi_grid(sampler, source, item.low.shape, attention.shape[-2:], roi, item.slide.dimensions)
        attention, grid_mask = restrict_to_roi(attention, grid_mask, inside, slide=str(item.path), roi_path=roi.path)
    draws = [sampler.draw_cells(low_shape, attention, grid_mask, source, n_patches=prepared.n_patches,
                                generator=generator, deterministic=prepared.deterministic, blocks=prepared.streamed)
             for _ in range(prepared.samples)]
    reads = []
    if not _cache_decides(sampler.feature_net):
        left = read_bytes
        for cells in draws:
            pw, ph = size_wh(cells.patch_wh, "patch size")
            nbytes = int(cells.xy.shape[0]) * int(cells.xy.shape[1]) * 3 * int(pw) * int(ph)
            if reads and nbytes > left:
                break
            reads.append((cells.xy, (int(pw), int(ph)), source.extract(cells.xy, (pw, ph))))
            left -= 0 if len(reads) == 1 else nbytes
    prepared.attention, prepared.grid_mask, prepared.like = attention, grid_mask, like
    prepared.source, prepared.draws = PreparedSource(source, reads), draws


def _cache_decides(feature_net) -> bool:
    """Whether a feature cache decides which boxes are read (a frozen encoder with a cache attached)."""
    return isinstance(feature_net, PatchEncoder) and feature_net.frozen and feature_net.cache is not None


def finish_slide(model, prepared: PreparedSlide) -> SlidePrediction:
    """The encoding half of :meth:`SlideClassifier.predict`: the prediction of a :class:`PreparedSlide`.

    ``SlidePrediction.seconds`` is the two stages' wall time, not the time
    the slide waited between them. Closes ``prepared``.

    Raises:
        PredictionError: the head gave NaN or inf logits.
        EncoderError, SlideError: the encoder, or a read left to finish, failed.
    """
    start = time.perf_counter() - prepared.prepare_seconds
    try:
        with torch.no_grad():
            if prepared.zoom:
                from ._zoom_predict import predict_zoom

                return predict_zoom(model, prepared.item, start, samples=prepared.samples,
                                    n_patches=prepared.n_patches, seed=prepared.seed,
                                    deterministic=prepared.deterministic, stream=prepared.streamed)
            return _finish_one_stage(model, prepared, start)
    finally:
        prepared.close()


def _finish_one_stage(model, prepared: PreparedSlide, start: float) -> SlidePrediction:
    item, source, sampler = prepared.item, prepared.source, model.sampler
    probs, boxes, box_attention, patch_features, embeddings, values = [], [], [], [], [], []
    for cells in prepared.draws:
        result = sampler.draw_features(cells, prepared.attention, source, prepared.like, blocks=prepared.streamed)
        logits = model.slide_logits(result).float()
        if not bool(torch.isfinite(logits).all()):  # a NaN must never reach predictions.csv
            raise PredictionError(item.path, NOT_FINITE)
        probs.append(model.slide_probabilities(result, logits)[0].cpu())
        values.append(slide_value(model.config, logits))
        boxes.append(source.boxes_level0(result.xy.cpu(), sampler.patch_size)[0])
        box_attention.append(result.sampled_attention[0].float().cpu())
        embeddings.append(result.features[0].float().reshape(-1).cpu())
        if result.patch_features is not None:  # [n, D] (axes after the first flattened)
            patch_features.append(result.patch_features[0].float().reshape(len(result.xy[0]), -1).cpu())
    p = torch.stack(probs).mean(0).numpy()
    names = model.class_names
    if model.config.task != "classification":  # one pseudo-class: the risk or value is in `value`
        p, names = np.ones(1), ("risk" if model.config.task == "survival" else "value",)
    boxes_xywh = torch.cat(boxes).numpy().astype(np.int64)
    attention_np = prepared.attention[0].float().cpu().numpy()
    cell_wh, origin_xy = cell_grid_level0(low_shape=item.low.shape, map_shape=attention_np.shape,
                                          low_downsample=item.low.downsample, receptive_field=sampler.receptive_field)
    w0, h0 = item.slide.dimensions
    return SlidePrediction(
        slide=str(item.path),
        probabilities=p,
        predicted=model.decide(p),
        class_names=names,
        attention=attention_np,
        cell_size_xy=cell_wh,
        origin_xy=origin_xy,
        boxes_xywh=boxes_xywh,
        box_attention=torch.cat(box_attention).numpy(),
        seconds=time.perf_counter() - start,
        patches_read=source.patches_read,
        pixels_read=int(source.patches_read * boxes_xywh[0, 2] * boxes_xywh[0, 3]) if len(boxes_xywh) else 0,
        slide_pixels=int(w0) * int(h0),
        mpp=item.slide.mpp,
        low_downsample=float(item.low.downsample),
        patch_features=torch.cat(patch_features).numpy() if len(patch_features) == prepared.samples else None,
        embeddings=torch.stack(embeddings).numpy(),
        task=model.config.task,
        value=None if values[0] is None else float(np.mean(values)),
    )


def busy_fraction(busy_seconds: float, wall_seconds: float) -> float:
    """``busy_seconds / wall_seconds`` clamped to [0, 1] (0 for no wall time)."""
    if not wall_seconds > 0:
        return 0.0
    return float(min(1.0, max(0.0, busy_seconds / wall_seconds)))


class EncoderClock:
    """Seconds spent inside a classifier's patch encoder, for its busy fraction (encoder seconds / wall seconds).

    Times every forward call of the module that encodes patches: a
    :class:`~ats_wsi.encoders.PatchEncoder`'s backbone (reached with or
    without a feature cache; resizing and normalising are outside it), else
    the feature net. Forward calls only: the backward pass of a fine-tuned
    encoder is not counted. On CPU, wall time in the call; on CUDA, CUDA
    events on the current stream around it (work queued on the same stream
    by a read-ahead thread in between is counted too: an upper bound).

    Use as a context manager (the hooks are removed at exit), or :meth:`close`.
    """

    def __init__(self, model):
        net = model.sampler.feature_net
        self.module = net.backbone if isinstance(net, PatchEncoder) else net
        self._host = 0.0
        self._events: list = []
        self._open: dict[int, object] = {}
        try:
            self._hooks = [self.module.register_forward_pre_hook(self._before),
                           self.module.register_forward_hook(self._after)]
        except RuntimeError:  # a TorchScript backbone takes no hooks: time the whole encoder instead
            self.module = net
            self._hooks = [net.register_forward_pre_hook(self._before), net.register_forward_hook(self._after)]

    def _before(self, module, args) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open[threading.get_ident()] = event
        else:
            self._open[threading.get_ident()] = time.perf_counter()

    def _after(self, module, args, output) -> None:
        began = self._open.pop(threading.get_ident(), None)
        if isinstance(began, float):
            self._host += time.perf_counter() - began
        elif began is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((began, end))

    @property
    def seconds(self) -> float:
        """Seconds inside the encoder since the clock started (or was :meth:`reset`)."""
        for began, end in self._events:  # folded in: the list does not grow with the run
            end.synchronize()
            self._host += began.elapsed_time(end) / 1000.0
        self._events.clear()
        return self._host

    def busy(self, wall_seconds: float) -> float:
        """The busy fraction in [0, 1]: :attr:`seconds` over ``wall_seconds`` (:func:`busy_fraction`)."""
        return busy_fraction(self.seconds, wall_seconds)

    def reset(self) -> None:
        """Start counting again from 0."""
        _ = self.seconds
        self._host = 0.0

    def close(self) -> None:
        """Remove the hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> EncoderClock:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
