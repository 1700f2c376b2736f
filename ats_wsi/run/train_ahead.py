"""Training read-ahead within a batch: the next slide's draws and patches, prepared while this one trains.

A batch takes one optimiser step, after all its slides: inside a batch the
weights do not change. So while the training thread runs slide j (attention,
encoder, estimator, backward), one background thread prepares slide j + 1 of
the same batch: its low view, the attention net's forward under
``torch.no_grad()`` with the same weights, the cells drawn with the same
generator seed (:meth:`~ats_wsi.model.AttentionSampler.draw_cells`, as the
model's own forward draws them), and the pixels of their patch boxes.

The training thread then runs slide j + 1's forward as always: the attention
again, with gradients, and the draws again. Its source is a
:class:`~ats_wsi.patches.prepared.PreparedSource`, which hands out the pixels
read ahead only for boxes equal to the prepared ones and reads anything else
itself (a miss). Learning is therefore the same by construction: the same
draws, the same pixels; read-ahead changes only who read them, and when.

Bounded: at most one slide prepared ahead (the next one), and its patches
(``n_patches x 3 x w x h`` uint8) only when they fit in
:data:`~ats_wsi.classifier.stages.READ_AHEAD_BYTES`, checked before reading.

Thread rules: the background thread runs the attention net alone, under
``no_grad`` and without switching it to eval mode, and reads through its own
slide's reader. It never touches autograd state, the optimiser, the feature
net or the heads, and never writes to the feature cache or counts in it (it
asks :meth:`~ats_wsi.encoders.FeatureCache.holds` only). Runs it cannot serve read serially
(:func:`read_ahead_refusal` says why): under ``torchrun``, a two-stage (zoom)
model, and an attention net whose training-mode forward changes state
(BatchNorm buffers, dropout's draws from the global generator).

With a frozen encoder's feature cache the background thread reads only the
drawn boxes the cache does not hold (:meth:`~ats_wsi.encoders.FeatureCache.holds`:
a lookup that neither counts nor writes); the training thread's own lookup
decides, and the cache's misses are served from the pixels read ahead when
they all were (:meth:`~ats_wsi.patches.prepared.PreparedSource.extract_slide`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..classifier.features import cache_group
from ..classifier.stages import READ_AHEAD_BYTES
from ..encoders import PatchEncoder
from ..patches.prepared import PreparedSource

__all__ = ["PreparedDraw", "TrainAhead", "read_ahead_refusal"]

_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RReLU)
"""Modules whose training-mode forward changes buffers or draws from torch's global generator."""


def read_ahead_refusal(config, *, distributed: bool = False, attention_net: nn.Module | None = None) -> str | None:
    """Why a training run cannot read ahead (None: it can).

    Args:
        config: the :class:`~ats_wsi.classifier.ModelConfig`.
        distributed: the run is one process of several (``torchrun``).
        attention_net: the model's attention net (None: built from ``config`` to look at it).
    """
    if distributed:
        return "under torchrun each process trains its own slides of a batch"
    if config.zoom:
        return "a two-stage (zoom) model reads its patches inside regions it reads in the same pass"
    if attention_net is None:
        from ..nets import create_attention_net

        attention_net = create_attention_net(config.attention_net, in_channels=3, **config.attention_kwargs)
    stateful = sorted({type(m).__name__ for m in attention_net.modules() if isinstance(m, _STATEFUL)})
    if stateful:
        return (f"the attention net has {', '.join(stateful)}, whose forward in training mode changes its buffers "
                f"or draws random numbers")
    return None


@dataclass
class PreparedDraw:
    """One training slide's inputs, made before its forward.

    Attributes:
        x_low: uint8 ``[1, 3, h, w]`` the low view; ``mask`` bool ``[1, h, w]`` its tissue
            (:meth:`~ats_wsi.classifier.SlideInput.low_inputs`).
        source: the slide's patch source, serving the patches read ahead (none when it was
            made in the training thread), counting the seconds of the reads it makes itself.
        ahead: made by the background thread.
    """

    x_low: torch.Tensor
    mask: torch.Tensor
    source: PreparedSource
    ahead: bool = False


class TrainAhead:
    """Prepares the next slide of a batch in a background thread (:mod:`ats_wsi.run.train_ahead`).

    Args:
        model: the :class:`~ats_wsi.classifier.SlideClassifier` being trained (its sampler is used,
            never its DDP wrapper).
        device: where the model runs.
        enabled: read ahead (else every :meth:`take` is made in the training thread, still
            counting its read seconds).
        read_bytes: the most patch bytes one prepared slide may hold.

    Attributes:
        used: training slides whose forward used patches read ahead (since :meth:`take_stats`).
        waited: seconds the training thread waited for patches: its own reads, and the slide
            prepared ahead when it was not ready yet.
    """

    def __init__(self, model, device, *, enabled: bool = True, read_bytes: int = READ_AHEAD_BYTES):
        self.model, self.device, self.enabled, self.read_bytes = model, device, bool(enabled), int(read_bytes)
        self.wraps = not model.config.zoom  # a zoom model's source is its own (regions, then patches)
        self.used, self.waited = 0, 0.0
        self._pending: tuple | None = None  # (key, thread, box)

    def start(self, key, item, seed: int) -> None:
        """Begin preparing ``item`` (a :class:`~ats_wsi.classifier.SlideInput`) for the forward that
        :meth:`take` will ask for with ``key``, its draws seeded with ``seed``; waits first for
        (and drops) a slide still prepared ahead, so that never more than one is."""
        self.drain()
        if not self.enabled:
            return
        box: dict = {}

        def prepare():
            try:
                box["value"] = self._prepare(item, seed)
            except BaseException as exc:  # the training thread meets it again when it reads itself
                box["error"] = exc

        thread = threading.Thread(target=prepare, name="ats-train-ahead", daemon=True)
        self._pending = (key, thread, box)
        thread.start()

    def take(self, key, item) -> PreparedDraw | None:
        """``item``'s :class:`PreparedDraw` for its forward: the one prepared ahead under ``key``
        (waited for), else one made now; None for a zoom model (the forward makes its own)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            began = time.perf_counter()
            pending[1].join()
            self.waited += time.perf_counter() - began
            if pending[0] == key and "value" in pending[2]:
                return pending[2]["value"]
        if not self.wraps:
            return None
        x_low, mask = item.low_inputs(self.device)
        return PreparedDraw(x_low, mask, PreparedSource(item.source(self.device)))

    def settle(self, prepared: PreparedDraw | None) -> None:
        """Count a forward's use of ``prepared``: its patches read ahead were used, its own reads' seconds."""
        if prepared is not None:
            self.used += int(prepared.source.served > 0)
            self.waited += prepared.source.read_seconds

    def drain(self) -> None:
        """Wait for the slide being prepared, if any, and drop it (before the weights change)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].join()

    def take_stats(self) -> tuple[int, float]:
        """``(used, waited)`` since the last call; both start again from 0."""
        stats, self.used, self.waited = (self.used, self.waited), 0, 0.0
        return stats

    def _prepare(self, item, seed: int) -> PreparedDraw:
        """The background thread's work: low view, attention (no_grad), draws, and the patches if they fit."""
        sampler = self.model.sampler
        with torch.no_grad():
            x_low, mask = item.low_inputs(self.device)
            source = item.source(self.device)
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
            attention, grid_mask = sampler.attend(x_low, mask)  # what forward() computes, without a graph
            cells = sampler.draw_cells(tuple(x_low.shape[-2:]), attention, grid_mask, source, generator=generator)
            pw, ph = (int(v) for v in cells.patch_wh)
            xy = cells.xy[:, self._lacking(source, cells.xy, (pw, ph))]  # [1, k, 2]: what the cache lacks
            nbytes = int(xy.shape[0]) * int(xy.shape[1]) * 3 * pw * ph
            fits = 0 < xy.shape[1] and nbytes <= self.read_bytes
            reads = [(xy, (pw, ph), source.extract(xy, (pw, ph)))] if fits else []
        return PreparedDraw(x_low, mask, PreparedSource(source, reads), ahead=True)

    def _lacking(self, source, xy: torch.Tensor, patch_wh: tuple[int, int]) -> torch.Tensor:
        """Indices of the draws of ``xy`` long ``[1, n, 2]`` to read: all, or with a frozen encoder's
        feature cache those it does not hold (:meth:`~ats_wsi.encoders.FeatureCache.holds`, which
        neither counts nor writes: the training thread's lookup decides what is read)."""
        encoder = self.model.sampler.feature_net
        every = torch.arange(xy.shape[1])
        if not (isinstance(encoder, PatchEncoder) and encoder.frozen and encoder.cache is not None):
            return every
        boxes = source.boxes(xy, patch_wh)
        group = cache_group(encoder, boxes.geometry[0], patch_wh)
        held = torch.tensor(encoder.cache.holds(group, boxes.xywh[0].numpy()), dtype=torch.bool)
        return every[~held]
