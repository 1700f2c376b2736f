"""Training an attention-sampling slide classifier from a manifest.

One slide is one forward pass (slides differ in size; the low view keeps its
µm/px), and a batch accumulates the gradients of ``batch_size`` slides before
one optimiser step. Under ``torchrun`` the slides of each batch are shared
among the processes and DDP averages their gradients, which gives the same
update as one process with the same total batch: every slide's draws are
seeded by (seed, epoch, slide index), whatever process runs it, and BatchNorm
running statistics are folded in slide by slide in the batch's order on every
process (:class:`_RunningStats`), as one process would. In one process the next slide of a batch
is prepared (attention, draws, patch reads) in a background thread while one trains
(:mod:`.train_ahead`): the same draws and pixels, so the same weights.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import ModelConfig, SlideClassifier, SlideInput, SlideInputs, build_model
from ..classifier.checkpoint import load_weights, read_checkpoint, save_checkpoint
from ..classifier.stages import EncoderClock
from ..data.manifest import Manifest, ManifestRow, bad_rows, read_cohort
from ..encoders import attach_feature_cache
from ..errors import CheckpointError, ManifestError, SlideError
from ..atomic import new_owner
from ..atomic import write_csv_atomic, write_json_atomic
from ..curves import youden_threshold
from ..roi import roi_for_slide
from ..metrics import roc_auc
from ._aids import InstanceMemory, aid_losses, check_aids, memory_for, set_exploration
from .objective import Objective, cox_gradients, evaluate_outcome, fit_outcome, metric_fields, summary_view
from ._processes import _Processes
from ._running_stats import _RunningStats
from ._schedule import all_mean, param_groups, set_lr
from ._progress import ProgressFactory, open_bar
from .objective import class_weights
from .preflight import SlideChecks, open_slides
from .selection import SELECT, best_epoch
from .unreadable import MidRunFailures
from .cohort_check import CohortError, CohortSummary, check_cohort, class_problems, summarise, write_summary
from .outdir import epoch_checkpoints, hold_results_folder, prepare_run_folder, remove_stale_temporaries

from .settings import METRIC_FIELDS, EpochMetrics, TrainSettings
from .train_ahead import PreparedDraw, TrainAhead, read_ahead_refusal

__all__ = ["TrainSettings", "train", "EpochMetrics"]


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(index) * 104_729) & 0x7FFFFFFF


def forward_slide(net, item: SlideInput, generator: torch.Generator, device, prepared: PreparedDraw | None = None):
    """One slide through the model (or its DDP wrapper): ``(logits [1, C], AttentionResult)``
    (``prepared``: its low view and patch source, made ahead: :mod:`.train_ahead`)."""
    if prepared is not None:
        return net(prepared.x_low, prepared.source, prepared.mask, generator=generator)
    x_low, mask = item.low_inputs(device)
    return net(x_low, item.source(device), mask, generator=generator)


def _evaluate(model, inputs: SlideInputs, rows, seed, epoch, device,
              failures: MidRunFailures | None = None) -> tuple[float, float, float, float]:
    """Validation loss, accuracy, ROC AUC and (two classes) Youden's threshold on P(class 1)
    (slides that fail: see :class:`.unreadable.MidRunFailures`)."""
    model.eval()
    losses, correct, probs, labels = [], 0, [], []
    with torch.no_grad():
        for i, row in enumerate(rows):
            if failures is not None and row in failures:
                continue
            gen = torch.Generator(device=device).manual_seed(_item_seed(seed + 1, epoch, i))
            try:
                logits, result = forward_slide(model, inputs[row.path], gen, device)
            except SlideError as exc:
                if failures is None:
                    raise
                failures.record(row, exc, epoch)
                continue
            labels.append(row.label)
            if model.config.readout == "head":
                p = torch.softmax(logits.double(), -1)[0]
                losses.append(F.cross_entropy(logits, torch.tensor([row.label], device=device)).item())
            else:  # as `predict` reads it: the instance head's top patch
                p = model.slide_probabilities(result, logits).double()[0]
                losses.append(-math.log(max(float(p[row.label]), 1e-12)))
            correct += int(int(p.argmax()) == row.label)
            probs.append(p.cpu().numpy())
    if not labels:
        return float("nan"), float("nan"), float("nan"), float("nan")
    stacked = np.stack(probs)
    auc = roc_auc(labels, stacked)
    threshold = (youden_threshold([label == 1 for label in labels], stacked[:, 1]) if stacked.shape[1] == 2
                 else float("nan"))
    return float(np.mean(losses)), correct / len(labels), auc, threshold


def train(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ModelConfig | None = None,
    settings: TrainSettings | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_slide: Callable[..., None] | None = None,
    on_cohort: Callable[[CohortSummary], None] | None = None,
) -> list[EpochMetrics]:
    """Train a slide classifier; checkpoints every epoch into ``out_dir``.

    Args:
        manifest: CSV or TSV of ``path,label[,split,slide_id,mpp]``
            (:mod:`ats_wsi.data.manifest`); labels written as names become the
            config's ``class_names`` (sorted, unless the config names them).
        out_dir: gets ``checkpoints/epoch-NNN.pt``, ``last.pt``, ``best.pt``
            (best by ``settings.select``; the last without a val split),
            ``metrics.csv``, ``config.json``, ``cohort.json``/``cohort.txt``
            (:class:`~ats_wsi.run.cohort_check.CohortSummary`) and, when slides
            were skipped, ``skipped.csv``. The cohort is checked first
            (duplicates, classes: :func:`~ats_wsi.run.cohort_check.check_cohort`),
            then every slide opened, its µm/px checked and a sample of its
            tiles decoded: unreadable ones raise
            :class:`~ats_wsi.run.unreadable.UnreadableSlides` naming them, or with
            ``settings.skip_unreadable`` are skipped, as is a slide that fails
            in an epoch. A folder that holds a run is refused
            (:class:`~ats_wsi.errors.RunExistsError`) unless ``resume`` or ``overwrite``.
        config: the model (ignored on resume: the checkpoint's is used).
        settings: :class:`TrainSettings`.
        resume: continue from ``out_dir/last.pt`` (or the newest ``checkpoints/epoch-NNN.pt``
            when the run stopped before writing it).
        overwrite: remove the folder's run files first.
        progress: ``progress(total, desc, unit) -> bar`` (:mod:`ats_wsi.run._progress`): a bar
            per epoch and one for the slide checks, on rank 0 (the CLI draws tqdm bars; None: none).
        on_epoch: called with each epoch's metrics.
        on_slide: called after each training slide's backward pass as
            ``on_slide(epoch, row, slide_input, logits, result)``
            (diagnostics: where the draws fell, what the head saw).
        on_cohort: called with the cohort summary before the first epoch.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs as DDP (gloo on CPU,
    nccl on CUDA); only rank 0 writes files.

    Returns:
        The metrics of every epoch (including resumed ones).
    """
    settings = settings or TrainSettings()
    out = Path(out_dir)
    procs = _Processes.start(settings.device)
    if settings.select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {settings.select!r}")
    if procs.rank == 0 and not overwrite:
        prepare_run_folder(out, resume=resume, overwrite=False)  # refused before any work
    config, payload, history = _resume_state(out, config, resume)
    cohort, train_rows, val_rows, config = _read_splits(manifest, settings, procs, config)
    _check_labels(manifest, train_rows + val_rows, config)
    classify = config.task == "classification"
    duplicates = check_cohort(manifest, cohort.rows, config.n_classes, config.class_names, classes=classify,
                              train_split=settings.train_split, allow_duplicates=settings.allow_duplicates)
    try:
        given_mpp = {str(r.path): r.mpp if r.mpp is not None else settings.mpp
                     for r in train_rows + val_rows if (r.mpp or settings.mpp) is not None}
        rois = {str(r.path): roi_for_slide(r.roi or settings.roi, r.path, include=settings.roi_include,
                                           exclude=settings.roi_exclude)  # the manifest's roi column wins
                for r in train_rows + val_rows} if settings.roi or any(r.roi for r in train_rows + val_rows) else None
        with _run_folder(out, procs.rank, resume, overwrite), \
                SlideInputs(config, workers=settings.workers, mpp=given_mpp, device=procs.device, rois=rois) as inputs:
            checks = SlideChecks(settings.check_tiles, physical=(config.patch_mpp or config.low_mpp) is not None)
            # Every slide is opened (in parallel) before the first epoch; they stay open.
            train_rows, val_rows, bad = open_slides(manifest, out, train_rows, val_rows, inputs, settings,
                                                    rank=procs.rank, progress=progress, checks=checks)
            problems = class_problems(manifest, train_rows + val_rows, config.n_classes, config.class_names,
                                      settings.train_split) if classify else []  # what the skipped slides left
            if problems:
                raise CohortError(bad_rows(manifest, problems, "problem(s) of the cohort"))
            shown, rows = summary_view(config, cohort.rows)
            summary = summarise(manifest, rows, train_rows + val_rows, inputs, shown, [u.as_dict() for u in bad],
                                duplicates)
            summary.resumed_from = None if payload is None else int(payload["epoch"])
            if procs.rank == 0:
                write_summary(out, summary)
                on_cohort is not None and on_cohort(summary)
            failures = MidRunFailures(manifest, out, bad, len(train_rows) + len(val_rows),
                                      skip=settings.skip_unreadable and not procs.distributed, write=procs.rank == 0)
            torch.manual_seed(settings.seed)
            model: SlideClassifier = build_model(config).to(procs.device)
            cache = attach_feature_cache(model, settings.feature_cache)
            optimizer = torch.optim.AdamW(param_groups(model, settings), lr=settings.lr,
                                          weight_decay=settings.weight_decay)
            if payload is not None:  # a tampered last.pt is a CheckpointError, as for predict
                load_weights(out / "last.pt", model, payload, optimizer)
            # Buffers (BatchNorm statistics) are kept equal by _RunningStats, not broadcast from rank 0.
            net = (torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
                   if procs.distributed else model)
            if procs.rank == 0:
                write_json_atomic(out / "config.json", {"model": config.to_dict(), "train": asdict(settings)})
            check_aids(settings, model)
            weights = class_weights(train_rows, config.n_classes, settings.class_weights) if classify else None
            objective = Objective(config, weights, procs.distributed)
            epoch = _Epoch(model, net, optimizer, settings, procs, _RunningStats(model), train_rows, objective,
                           on_slide, failures)
            epoch.memory = memory_for(settings, model, len(train_rows))
            refused = read_ahead_refusal(config, distributed=procs.distributed,
                                         attention_net=getattr(model.sampler, "attention_net", None))
            epoch.ahead = TrainAhead(model, procs.device, enabled=settings.read_ahead and refused is None)
            start = 0 if payload is None else int(payload["epoch"])
            clock = EncoderClock(model)  # the encoder's busy fraction per epoch
            for index in range(start, settings.epochs):
                t0 = time.perf_counter()
                clock.reset()
                train_loss, train_acc = epoch.run(index, inputs, progress)
                val_loss, val_acc, val_auc, val_threshold = (
                    _validate(model, objective, inputs, val_rows, settings.seed, index, procs.device, failures)
                    if procs.rank == 0 else (0.0, 0.0, 0.0, float("nan")))
                stats = cache.take_stats() if cache is not None else {"hits": 0, "misses": 0}
                ahead_used, read_wait = epoch.ahead.take_stats()
                seconds = time.perf_counter() - t0
                metrics = EpochMetrics(index + 1, train_loss, train_acc, val_loss, val_acc,
                                       seconds, optimizer.param_groups[0]["lr"], val_auc,
                                       feature_hits=stats["hits"], feature_misses=stats["misses"],
                                       val_threshold=val_threshold, encoder_busy=clock.busy(seconds),
                                       attention_sd=epoch.attention_sd(), read_ahead_slides=ahead_used,
                                       read_wait=read_wait)
                history.append(metrics)
                if procs.rank == 0:
                    _save_epoch(out, model, optimizer, metrics, history, settings)
                    on_epoch is not None and on_epoch(metrics)
    finally:
        procs.finish()
    return history


@contextlib.contextmanager
def _run_folder(out: Path, rank: int, resume: bool, overwrite: bool):
    """Hold the run folder's lock (rank 0; a second run into it is refused), replace its run
    (``overwrite``) and remove a killed run's temporaries (``.ats.tmp-*``)."""
    if rank != 0:
        yield
        return
    run_id = new_owner()
    with hold_results_folder(out, run_id):
        prepare_run_folder(out, resume=resume, overwrite=overwrite)
        remove_stale_temporaries(out, run_id)
        yield


def _validate(model, objective: Objective, inputs, rows, seed, epoch, device, failures):
    """:func:`_evaluate` for a classifier, :func:`.objective.evaluate_outcome` for the other tasks;
    with the draws a prediction makes (the config's ``predict_patches``, where set)."""
    with model.sampling(None, n_patches=model.config.predict_patches):
        if objective.task == "classification":
            return _evaluate(model, inputs, rows, seed, epoch, device, failures)
        model.eval()

        def forward(i, row):
            gen = torch.Generator(device=device).manual_seed(_item_seed(seed + 1, epoch, i))
            return forward_slide(model, inputs[row.path], gen, device)[0]

        return evaluate_outcome(objective, forward, rows, failures, epoch)


def _read_splits(manifest, settings: TrainSettings, procs: _Processes,
                 config: ModelConfig) -> tuple[Manifest, list, list, ModelConfig]:
    """The manifest, its train and val rows (of ``settings.fold`` when given), and the config with
    its class names (labels written as names) or what its task takes from the training slides."""
    cohort = read_cohort(manifest, classes=config.class_names, task=config.task, time_column=settings.time_column,
                         event_column=settings.event_column, target_column=settings.target_column)
    if cohort.class_names is not None and config.class_names is None:
        config = replace(config, class_names=list(cohort.class_names), n_classes=len(cohort.class_names))
    if settings.fold is not None:
        from ..data.folds import assign_fold

        cohort = replace(cohort, rows=assign_fold(manifest, cohort.rows, settings.fold))
    elif any(r.fold is not None for r in cohort.rows):
        raise ManifestError(f"{manifest}: its split column holds fold numbers; choose the test fold with --fold K "
                            f"(the next fold is val, the others train), or run every fold with --folds")
    train_rows, val_rows = cohort.split(settings.train_split), cohort.split(settings.val_split)
    if not train_rows:
        raise ManifestError(f"{manifest}: no slides in split {settings.train_split!r}")
    config = fit_outcome(manifest, config, train_rows)
    if procs.distributed and settings.batch_size % procs.world:
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of the {procs.world} processes")
    if settings.batch_size < 1 or settings.epochs < 0:
        raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {settings.batch_size} and {settings.epochs}")
    return cohort, train_rows, val_rows, config


def _resume_state(out: Path, config: ModelConfig | None, resume: bool):
    """``(config, payload or None, history)``: the run folder's last checkpoint when resuming."""
    if not resume:
        return config or ModelConfig(), None, []
    found = [out / "last.pt"] if (out / "last.pt").is_file() else []
    found += [path for _, path in reversed(epoch_checkpoints(out))][:1]
    if not found:
        raise CheckpointError(out / "last.pt", "cannot resume: no last.pt and no checkpoints/epoch-NNN.pt in the "
                                               "run folder (it stopped before its first epoch ended); start again "
                                               "with --overwrite")
    payloads = [read_checkpoint(path) for path in found]
    # a run killed between checkpoints/epoch-N.pt and last.pt: the epoch checkpoint is newer
    payload, path = max(zip(payloads, found), key=lambda pp: int(pp[0].get("epoch", 0)))
    history = [EpochMetrics(**m) for m in payload.get("train_config", {}).get("history", [])]
    config = ModelConfig.from_dict(payload["config"], path=path)
    head = payload.get("state_dict", {}).get("head.weight")
    if head is not None and head.shape[0] != config.head_outputs:  # before the cohort is checked against it
        raise CheckpointError(path, f"its config says {config.n_classes} classes but its slide head has "
                                    f"{head.shape[0]} outputs: not a checkpoint ats-wsi wrote; start again with --overwrite")
    return config, payload, history


def _check_labels(manifest, rows: list[ManifestRow], config: ModelConfig) -> None:
    for row in rows if config.task == "classification" else ():
        if row.label >= config.n_classes:
            raise ManifestError(f"{manifest}: {row.path} has label {row.label}, but the model has "
                                f"n_classes={config.n_classes} (labels 0..{config.n_classes - 1}); set --classes")


@dataclass
class _Epoch:
    """One pass over the training slides: batches of slides, one optimiser step per batch."""

    model: SlideClassifier
    net: nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainSettings
    procs: _Processes
    running_stats: _RunningStats
    rows: list[ManifestRow]
    objective: Objective
    on_slide: Callable[..., None] | None = None
    failures: MidRunFailures | None = None
    memory: InstanceMemory | None = None
    ahead: TrainAhead | None = None
    """Prepares the next slide of a batch while one trains (:mod:`.train_ahead`)."""
    spread: list[float] = field(default_factory=list)
    """This epoch's spread of the attention logits, one value a slide (:func:`_logit_sd`)."""

    def run(self, epoch: int, inputs: SlideInputs, progress: ProgressFactory | None) -> tuple[float, float]:
        """Train one epoch; returns the mean training loss and accuracy (over all processes)."""
        s = self.settings
        if self.failures is not None:
            self.rows = [r for r in self.rows if r not in self.failures]
        set_lr(self.optimizer, s, epoch)
        set_exploration(self.model, s, epoch)
        order = np.random.default_rng([s.seed, epoch]).permutation(len(self.rows))
        self.net.train()
        tally = [[], 0, 0]  # losses, correct, seen
        self.spread.clear()
        n_batches = math.ceil(len(self.rows) / s.batch_size)
        bar = open_bar(progress if self.procs.rank == 0 else None, n_batches, f"epoch {epoch + 1}/{s.epochs}", "batch")
        for b in range(n_batches):
            self.step(epoch, order[b * s.batch_size:(b + 1) * s.batch_size], inputs, tally)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(tally[0]):.3f}", acc=f"{tally[1] / max(tally[2], 1):.2f}")
        if bar is not None:
            bar.close()
        return all_mean(*tally, self.procs.distributed)

    def attention_sd(self) -> float:
        """This epoch's mean spread of the attention logits over the slides' tissue (NaN: none)."""
        spread = [v for v in self.spread if math.isfinite(v)]
        return float(np.mean(spread)) if spread else float("nan")

    def _cox(self, epoch: int, batch: np.ndarray, inputs: SlideInputs) -> tuple[dict[int, float], float]:
        """The Cox loss of ``batch`` and its gradient by slide risk, from a first forward pass without
        gradients (the same draws: same seeds; BatchNorm buffers left as they were)."""
        def forward(idx, row):
            gen = torch.Generator(device=self.procs.device).manual_seed(_item_seed(self.settings.seed, epoch, idx))
            with self.running_stats.capture(keep=False):
                return forward_slide(self.net, inputs[row.path], gen, self.procs.device)[0]

        return cox_gradients(self.objective, forward, [(int(i), self.rows[i]) for i in batch], self.failures)

    def step(self, epoch: int, batch: np.ndarray, inputs: SlideInputs, tally: list) -> None:
        """Accumulate the gradients of this process's slides of ``batch``; one optimiser step."""
        world, device = self.procs.world, self.procs.device
        # A short last batch may leave a process without a slide; it still has to
        # join the gradient all-reduce, so it runs one slide with weight 0.
        mine = [(idx, 1.0) for idx in batch[self.procs.rank::world]] or [(batch[0], 0.0)]
        self.optimizer.zero_grad(set_to_none=True)
        cox = self._cox(epoch, batch, inputs) if self.objective.batched else None
        try:
            self._slides(epoch, batch, mine, inputs, tally, cox)
        finally:
            if self.ahead is not None:
                self.ahead.drain()  # nothing prepared ahead outlives the weights it was drawn with
        self.optimizer.step()
        self.running_stats.fold(len(batch), world, self.procs.distributed)

    def _slides(self, epoch: int, batch: np.ndarray, mine: list, inputs: SlideInputs, tally: list, cox) -> None:
        """Forward and backward of this process's slides of ``batch``, the next one read ahead."""
        world, device, ahead = self.procs.world, self.procs.device, self.ahead
        for j, (idx, weight) in enumerate(mine):
            row = self.rows[idx]
            if self.failures is not None and row in self.failures:
                continue
            gen = torch.Generator(device=device).manual_seed(_item_seed(self.settings.seed, epoch, idx))
            prepared = None
            last = not self.procs.distributed or j == len(mine) - 1
            sync = contextlib.nullcontext() if last else self.net.no_sync()
            # capture() restores the BatchNorm buffers only after the backward, which reads them.
            try:
                if ahead is not None:
                    prepared = ahead.take(j, inputs[row.path])
                    k = next((k for k in range(j + 1, len(mine)) if self.failures is None
                              or self.rows[mine[k][0]] not in self.failures), None)
                    if k is not None:  # the next slide, drawn with the same weights and seed as its forward will be
                        ahead.start(k, inputs[self.rows[mine[k][0]].path],
                                    _item_seed(self.settings.seed, epoch, mine[k][0]))
                with sync, self.running_stats.capture(keep=weight > 0):
                    logits, result = forward_slide(self.net, inputs[row.path], gen, device, prepared)
                    extra = result.entropy_loss + (aid_losses(self.model, self.settings, result, row.label,
                                                                self.memory, str(row.path))
                                                   if self.objective.task == "classification" else 0.0)
                    if cox is None:
                        ce = self.objective.slide_loss(logits, row)
                        ((ce * self.objective.weight(row) + extra) * (weight * world / len(batch))).backward()
                    else:  # the batch's Cox loss, through this slide's risk (its gradient is cox[0][idx])
                        ce, cox_part = torch.tensor(cox[1]), logits.reshape(-1)[0] * cox[0].get(int(idx), 0.0)
                        (cox_part * weight + extra * (weight * world / len(batch))).backward()
            except SlideError as exc:  # a broken tile met in the epoch: stop naming it, or skip it
                if self.failures is None:
                    raise
                self.failures.record(row, exc, epoch)
                continue
            finally:
                if ahead is not None:
                    ahead.settle(prepared)
            if self.on_slide is not None and weight:
                self.on_slide(epoch, row, inputs[row.path], logits.detach(), result)
            if weight:
                self.spread.append(_logit_sd(result))
                tally[0].append(ce.item())
                tally[1] += self.objective.correct(logits, row)
                tally[2] += 1


def _logit_sd(result) -> float:
    """The standard deviation of the attention logits over the cells the map may draw (NaN
    without logits, e.g. uniform draws or a two-stage model)."""
    logits = getattr(result, "logits", None)
    if logits is None or not logits.requires_grad:  # uniform draws: zeros without a graph
        return float("nan")
    with torch.no_grad():
        cells = logits[0][result.attention[0] > 0]
        return float(cells.float().std()) if cells.numel() > 1 else float("nan")


def _save_epoch(out: Path, model, optimizer, metrics: EpochMetrics, history, settings: TrainSettings) -> None:
    train_config = {**asdict(settings), "history": [asdict(m) for m in history]}
    ckpt = save_checkpoint(out / "checkpoints" / f"epoch-{metrics.epoch:03d}.pt", model, epoch=metrics.epoch,
                           optimizer=optimizer, metrics=asdict(metrics), train_config=train_config)
    import shutil

    from ..atomic import atomic_path

    with atomic_path(out / "last.pt") as tmp:
        shutil.copyfile(ckpt, tmp)
    best = best_epoch(history, settings.select)
    best_ckpt = out / "checkpoints" / f"epoch-{best.epoch:03d}.pt"
    # Also when best.pt is missing (a run stopped between writing last.pt and best.pt).
    if best.epoch == metrics.epoch or (not (out / "best.pt").is_file() and best_ckpt.is_file()):
        with atomic_path(out / "best.pt") as tmp:
            shutil.copyfile(best_ckpt, tmp)
    cached = ["feature_hits", "feature_misses"] if settings.feature_cache else []
    fields, rename = metric_fields(model.config.task, METRIC_FIELDS + cached)
    rows = [{rename.get(k, k): v for k, v in asdict(m).items()} for m in history]
    write_csv_atomic(out / "metrics.csv", rows, fields)
