"""Batch prediction: many slides to disk, resumable, failures recorded.

Each slide goes through :meth:`ats_wsi.classifier.SlideClassifier.predict`
(the one slide path); this module only adds what a batch needs: an executor
(in process, or a ``dask.distributed`` client), the files below, and the
bookkeeping that makes a killed run resumable.

Outputs of :func:`predict_slides` in ``out_dir``:

- ``predictions.csv``: one row per finished slide (input order);
- ``errors.csv``: one row per slide that failed, with the reason;
- ``maps/<name>.zarr``: the full attention map as OME-Zarr aligned to the slide's level-0
  coordinates, a zoom's stage-2 maps in its ``zoom`` group (see :mod:`ats_wsi.outputs`);
- ``overlays/<name>.png``: thumbnail + heatmap on the absolute scale (with its
  colour bar) + the sampled boxes numbered in draw order + the predicted class;
- ``overlays/<name>.zoom.png`` (a zoom model): its drawn regions, each with its stage-2 map
  and patches (:mod:`ats_wsi.zoom_sheet`);
- ``geojson/<name>.geojson`` (``geojson=True``): boxes and top-attention regions for QuPath (:mod:`ats_wsi.geojson`);
- ``features/<name>.h5`` (``export_features``), ``patches/<name>/`` (``export_patches``):
  the sampled features for TRIDENT/CLAM heads and the top-attention patches (:mod:`ats_wsi.exports`);
- ``.done/<name>.json``: the finished row, written last; a re-run with the same checkpoint skips slides that have it.

Every file is written under a temporary name and renamed, so a run killed at
any point leaves only complete files, and a re-run completes the rest and
gives the same outputs as an uninterrupted run (draws are seeded per slide).
Results are reproducible bit for bit between runs with the same checkpoint,
settings and ``torch_threads`` (the number of threads changes the order of
float sums in CPU kernels); in process and on dask workers alike.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..classifier import SlideClassifier, checkpoint_id, load_model
from ..classifier.stages import EncoderClock, busy_fraction
from ..encoders import PatchEncoder, attach_feature_cache
from ..errors import CheckpointError, OutputError
from ..roi import roi_for_slide
from ..atomic import owned_by, write_csv_atomic, write_json_atomic
from .read_ahead import ReadAhead, check_read_ahead
from .outdir import as_output_error, holding_results_folder, invalidate_marker, output_digests, outputs_match
from .predict_settings import PredictSettings, run_key
from .results import MAX_NAME_BYTES, ResultsFolder, SlideResult, labelled_row, output_names, prediction_fields
from .slide_outputs import slide_output_files, write_slide_outputs

__all__ = ["predict_slides", "PredictSettings", "SlideResult", "output_names", "run_key", "MAX_NAME_BYTES",
           "RUN_SUMMARY", "RunTiming", "finish_one", "predict_one", "prepare_one", "run_summary"]


_MODELS: dict[tuple[str, str, str], SlideClassifier] = {}


def _model_for(settings: PredictSettings) -> SlideClassifier:
    """The checkpoint's model, loaded once per process (per dask worker)."""
    key = _model_key(settings)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(settings.checkpoint, settings.device, feature_weights=settings.feature_weights)
    model = _MODELS[key]
    cache = _feature_cache(model)
    wanted = None if settings.feature_cache is None else Path(settings.feature_cache)
    if (cache is None) != (wanted is None) or (cache is not None and cache.directory != wanted):
        attach_feature_cache(model, settings.feature_cache)  # one cache per folder and process: its memory stays
    return model


def _model_key(settings: PredictSettings) -> tuple[str, str, str]:
    """What identifies a loaded model in this process: checkpoint file, its content id, device."""
    return settings.checkpoint, settings.checkpoint_id, settings.device


def _feature_cache(model):
    """The feature cache attached to ``model``'s frozen encoder, or None."""
    return next((m.cache for m in model.modules() if isinstance(m, PatchEncoder) and m.cache is not None), None)


class PreparedRead:
    """A slide after the prepare stage (:func:`prepare_one`): its open slide, ROI and
    :class:`~ats_wsi.classifier.stages.PreparedSlide`. :func:`finish_one` closes it."""

    def __init__(self, path: str, slide, roi, prepared):
        self.path, self.slide, self.roi, self.prepared = path, slide, roi, prepared
        self._open = True

    def close(self) -> None:
        """Let go of the prepared pixels and close the slide (once)."""
        if self._open:
            self._open = False
            try:
                self.prepared.close()
            finally:
                self.slide.close()


def prepare_one(path: str, settings: PredictSettings, model: SlideClassifier) -> PreparedRead:
    """The reading stage of one slide: open it, its ROI, the attention map, the draws and their patches
    (:meth:`SlideClassifier.prepare`). Safe in a background thread while :func:`finish_one` runs;
    ``model`` in eval mode, its sampler kind set for the run (:meth:`SlideClassifier.sampling`)."""
    from ..slide import open_slide

    mpp = settings.slide_mpp.get(str(path), settings.mpp)
    roi = roi_for_slide(settings.slide_roi.get(str(path), settings.roi), path, include=settings.roi_include,
                        exclude=settings.roi_exclude)
    slide = open_slide(path, mpp=mpp)
    try:
        prepared = model.prepare(slide, samples=settings.samples, n_patches=settings.n_patches, seed=settings.seed,
                                 deterministic=settings.deterministic, workers=settings.workers, roi=roi)
    except BaseException:
        slide.close()
        raise
    return PreparedRead(str(path), slide, roi, prepared)


def finish_one(ready: PreparedRead, name: str, settings: PredictSettings, model: SlideClassifier) -> SlideResult:
    """The encoding stage of one slide: its prediction (:meth:`SlideClassifier.finish`), map, overlay,
    exports and done marker; closes ``ready``. Runs in the thread that owns the feature cache
    (its counts are this slide's)."""
    folder = ResultsFolder(settings.out_dir)
    path, slide, roi = ready.path, ready.slide, ready.roi
    cache = _feature_cache(model)
    try:
        if cache is not None:
            cache.take_stats()  # count this slide's lookups only
        pred = model.finish(ready.prepared)
        write_slide_outputs(folder, name, path, slide, roi, pred, settings, model)
    finally:
        ready.close()
    row = {
        "slide": str(path),
        "name": name,
        **{f"p{k}": f"{v:.6f}" for k, v in enumerate(pred.probabilities)},
        "predicted": pred.predicted,
        "seconds": f"{pred.seconds:.3f}",
        "patches_read": pred.patches_read,
        "pixels_read": pred.pixels_read,
        "slide_pixels": pred.slide_pixels,
        "fraction_read": f"{pred.fraction_read:.6f}",
        "checkpoint": settings.checkpoint_id,
        **({} if pred.value is None else {"risk" if pred.task == "survival" else "value": f"{pred.value:.6f}"}),
        "run_key": run_key(settings),
        "boxes_xywh": pred.boxes_xywh.tolist(),
    }
    if cache is not None:  # features served by the cache / computed, for this slide
        stats = cache.take_stats()
        row.update(feature_hits=stats["hits"], feature_misses=stats["misses"], feature_disk_hits=stats["disk_hits"])
    # the marker vouches for these
    row["outputs"] = output_digests(folder.root, slide_output_files(name, settings, zoom=pred.zoom is not None))
    write_json_atomic(folder.marker(name), row)
    return SlideResult(str(path), name, row, folder, pred)


def predict_one(path: str, name: str, settings: PredictSettings) -> SlideResult:
    """Predict one slide and write its map, overlay and done marker: :func:`prepare_one` then
    :func:`finish_one`, with the run's torch threads and sampler.

    Runs in the calling process or on a dask worker. Returns the slide's
    :class:`SlideResult` (its ``row`` is the row of ``predictions.csv``);
    raises on failure (the caller records it).
    """
    model = _model_for(settings).eval()
    with _torch_threads(settings.torch_threads), \
            model.sampling(settings.sampler, settings.readout, threshold=settings.threshold):
        return finish_one(prepare_one(path, settings, model), name, settings, model)


def _predict_owned(path: str, name: str, settings: PredictSettings) -> SlideResult:
    """:func:`predict_one` with this run's temporaries and the slide's done marker removed first."""
    with owned_by(settings.run_id) if settings.run_id else contextlib.nullcontext():
        invalidate_marker(settings.out_dir, name)
        return predict_one(path, name, settings)


def _finish_owned(ready: PreparedRead, name: str, settings: PredictSettings, model) -> SlideResult:
    """:func:`finish_one` with this run's temporaries and the slide's done marker removed first."""
    try:
        with owned_by(settings.run_id) if settings.run_id else contextlib.nullcontext():
            invalidate_marker(settings.out_dir, name)
            return finish_one(ready, name, settings, model)
    finally:
        ready.close()


def _predict_caught(path: str, name: str, settings: PredictSettings):
    """:func:`_predict_owned` on a dask worker: a slide's failure comes back as a value, so that the
    worker does not log it as a failed task with its traceback (the driver records it, one line)."""
    try:  # only the row travels back, not the prediction's arrays
        result = _predict_owned(path, name, settings)
        result.prediction = None
        return result
    except Exception as exc:  # recorded by the driver in errors.csv; typed errors pickle with their reason
        return exc


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with ``n`` intra-op threads, then restore: CPU kernels sum in an order
    that depends on it, so equal results (in process and on dask workers,
    which default to 1 thread) need an equal count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _done_row(folder: ResultsFolder, name: str, checkpoint: str, key: str) -> dict | None:
    marker = folder.marker(name)
    row = folder.read_marker(marker) if marker.is_file() else None
    if row is None or row.get("checkpoint") != checkpoint or row.get("run_key") != key:
        return None
    if not folder.map(name).is_dir() or not folder.overlay(name).is_file():
        return None
    if not outputs_match(folder.root, row.get("outputs")):  # a map / overlay of another run, or of none
        return None
    return row


def _finished_and_todo(folder: ResultsFolder, paths, names, checkpoint: str, key: str, progress, on_result):
    """``(rows of slides a same-settings run finished, [(path, name)] still to do)``."""
    rows: dict[str, dict] = {}
    todo = []
    for path, name in zip(paths, names):
        row = _done_row(folder, name, checkpoint, key)
        if row is not None:
            rows[name] = row
            progress and progress(name, "skipped")
            on_result and on_result(SlideResult(str(path), name, row, folder))
        else:
            todo.append((str(path), name))
    return rows, todo


@holding_results_folder  # OUT's lock for the whole run; stale temporaries removed
def predict_slides(
    slides: Sequence[str | os.PathLike],
    settings: PredictSettings,
    *,
    executor=None,
    progress: Callable[[str, str], None] | None = None,
    labels: Sequence[int | None] | None = None,
    slide_ids: Sequence[str | None] | None = None,
    splits: Sequence[str | None] | None = None,
    model: SlideClassifier | None = None,
    on_result: Callable[[SlideResult], None] | None = None,
    outcomes: Sequence[dict] | None = None,
    on_summary: Callable[[dict], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Predict many slides into ``settings.out_dir``; resumable; failures recorded.

    Args:
        slides: slide paths (already expanded from folders/globs).
        settings: :class:`PredictSettings`; left unchanged (the run works on a copy with
            absolute paths, ``checkpoint_id`` and ``run_id`` filled in).
        executor: None (in process) or a ``dask.distributed.Client``.
        progress: called as ``progress(name, status)`` per finished slide,
            status in {"done", "skipped", "failed"}.
        labels: the class index of each slide (None: unknown), written beside
            its prediction (``label``; see :func:`prediction_fields`).
        slide_ids: each slide's ID (a manifest's ``slide_id``): a column, and
            the slide's output name (:func:`output_names`).
        splits: each slide's split (a manifest's): a column.
        model: the checkpoint's model, already loaded by the caller (with
            ``settings.feature_weights``): it is not loaded again. In process it
            predicts (moved to ``settings.device``); with an ``executor`` only
            its config is read here, and each worker loads its own.
        on_result: called with each finished slide's :class:`SlideResult`
            (skipped ones too, read back from their done markers).
        outcomes: each slide's outcome cells (survival ``time``/``event``, regression
            ``target``; a manifest's): columns of a survival or regression model's rows.
        on_summary: called at the end with the run's summary, the dict written to
            ``run.json`` (:func:`run_summary`: slides, failures, read-ahead, the encoder's
            busy fraction).

    Returns:
        ``(rows, errors)`` in input order; also written to predictions.csv
        and errors.csv.

    Raises:
        ConfigError: ``settings.read_ahead`` outside ``0..MAX_READ_AHEAD``.
    """
    check_read_ahead(settings.read_ahead)  # before any work
    # Absolute paths: dask workers on other machines (or in other folders) get them. A new
    # settings value: the caller's is left as it was given.
    settings = replace(settings, checkpoint=os.path.abspath(settings.checkpoint),
                       out_dir=os.path.abspath(settings.out_dir))
    if not os.path.isfile(settings.checkpoint):
        raise CheckpointError(settings.checkpoint, "no such checkpoint file")
    settings = replace(settings, checkpoint_id=checkpoint_id(settings.checkpoint))
    # A checkpoint that does not load fails the run here, not slide by slide; it is loaded once.
    if model is not None and executor is None:
        _MODELS.clear()
        _MODELS[_model_key(settings)] = model.to(settings.device).eval()
    if executor is None:
        model = _model_for(settings)
    elif model is None:
        model = load_model(settings.checkpoint, "cpu", feature_weights=settings.feature_weights)
    n_classes = int(model.config.n_classes)
    key = run_key(settings)
    folder = ResultsFolder(settings.out_dir)
    out = folder.root
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(os.path.abspath(p)) for p in slides]
    for what, values in (("labels", labels), ("slide IDs", slide_ids), ("splits", splits)):
        if values is not None and len(values) != len(slides):
            raise ValueError(f"{len(values)} {what} for {len(slides)} slides")
    names = output_names(paths, slide_ids)
    rows, todo = _finished_and_todo(folder, paths, names, settings.checkpoint_id, key, progress, on_result)
    errors: dict[str, dict] = {}

    class_names = list(model.config.class_names) if model.config.class_names else None
    label_of = dict(zip(names, labels)) if labels is not None else {}
    task = model.config.task
    fields = prediction_fields(n_classes, class_names, labels is not None and task == "classification",
                               settings.feature_cache is not None, slide_ids is not None, splits is not None,
                               task, list(outcomes[0]) if outcomes else ())
    extra = {n: {**({"slide_id": slide_ids[i] or ""} if slide_ids is not None else {}),
                 **({"split": splits[i] or ""} if splits is not None else {}),
                 **(outcomes[i] if outcomes else {})} for i, n in enumerate(names)}

    def final(name):
        labelled = labels is not None and task == "classification"
        return {**labelled_row(rows[name], class_names, label_of.get(name), labelled), **extra[name]}

    def flush():
        try:
            write_csv_atomic(folder.predictions, [final(n) for n in names if n in rows], fields)
            write_csv_atomic(folder.errors, [errors[n] for n in names if n in errors],
                             ["slide", "name", "error", "message"])
        except OSError as exc:  # a full or read-only disk: a typed error, not a traceback
            raise as_output_error(exc, out) or OutputError.from_os_error(out, exc) from None

    def record_failure(path, name, exc):
        errors[name] = {"slide": path, "name": name, "error": type(exc).__name__,
                        "message": str(getattr(exc, "reason", exc)).replace("\n", " ")}
        progress and progress(name, "failed")

    timing, start, done = RunTiming(), time.perf_counter(), 0
    with contextlib.closing(_completed(todo, settings, executor, timing)) as completed:  # stops a read-ahead
        for path, name, outcome in completed:
            stop = as_output_error(outcome, out)  # the results folder cannot be written: stop the run
            if stop is not None:
                with contextlib.suppress(OSError):
                    flush()
                raise stop
            if isinstance(outcome, BaseException):
                record_failure(path, name, outcome)
            else:
                rows[name] = outcome.row
                done += 1
                progress and progress(name, "done")
                on_result and on_result(outcome)
            flush()
    if executor is not None:
        timing.wall_seconds = time.perf_counter() - start
    flush()
    summary = run_summary(settings, timing, slides=len(names), predicted=done, skipped=len(names) - len(todo),
                          failed=len(errors), executor=executor)
    try:
        write_json_atomic(folder.root / RUN_SUMMARY, summary)
    except OSError as exc:
        raise as_output_error(exc, out) or OutputError.from_os_error(out, exc) from None
    on_summary and on_summary(summary)
    return [final(n) for n in names if n in rows], [errors[n] for n in names if n in errors]


RUN_SUMMARY = "run.json"
"""The run's summary in ``out_dir`` (:func:`run_summary`), rewritten by every run."""


def run_summary(settings: PredictSettings, timing: RunTiming, *, slides: int, predicted: int, skipped: int,
                failed: int, executor=None) -> dict:
    """What ``run.json`` holds: counts of this run's slides, where it ran, the read-ahead and its peak,
    wall seconds, and the encoder's seconds and busy fraction (``encoder_busy`` = encoder seconds / wall
    seconds, in [0, 1]; None on dask, where each worker has its own clock)."""
    return {"slides": slides, "predicted": predicted, "skipped": skipped, "failed": failed,
            "device": settings.device, "executor": "in process" if executor is None else "dask",
            "read_ahead": timing.read_ahead, "read_ahead_peak": timing.read_ahead_peak,
            "wall_seconds": round(timing.wall_seconds, 3),
            "encoder_seconds": None if timing.encoder_seconds is None else round(timing.encoder_seconds, 3),
            "encoder_busy": None if timing.encoder_busy is None else round(timing.encoder_busy, 4)}


@dataclass
class RunTiming:
    """What a batch prediction measured about itself (``run.json``).

    Attributes:
        read_ahead: slides prepared ahead (``settings.read_ahead``; 0 on dask).
        read_ahead_peak: the most slides prepared (or being prepared) ahead at once.
        wall_seconds: wall time of predicting this run's slides (in process).
        encoder_seconds: time inside the patch encoder (:class:`~ats_wsi.classifier.stages.EncoderClock`).
        encoder_busy: ``encoder_seconds / wall_seconds`` in [0, 1]; None on dask (per-worker clocks).
    """

    read_ahead: int = 0
    read_ahead_peak: int = 0
    wall_seconds: float = 0.0
    encoder_seconds: float | None = None

    @property
    def encoder_busy(self) -> float | None:
        """``encoder_seconds / wall_seconds`` in [0, 1]; None where no clock ran (dask)."""
        return None if self.encoder_seconds is None else busy_fraction(self.encoder_seconds, self.wall_seconds)


def _completed(todo: list[tuple[str, str]], settings: PredictSettings, executor,
               timing: RunTiming) -> Iterator[tuple[str, str, SlideResult | BaseException]]:
    """``(path, name, result or exception)`` per slide of ``todo``, as each finishes.

    In process (``executor`` None) the main thread finishes slides in input
    order while one background thread prepares the next ``settings.read_ahead``
    (:class:`~ats_wsi.run.read_ahead.ReadAhead`); ``timing`` is filled in. On a
    ``dask.distributed`` client slides run on its workers and come back in the
    order they finish. A slide's failure is yielded, not raised.
    """
    if executor is None:
        yield from _in_process(todo, settings, timing)
        return
    from distributed import as_completed

    # Task keys unique to this run: on a shared scheduler another run's task of
    # the same slide name would otherwise be taken for this one.
    run = uuid.uuid4().hex[:8]
    futures = {executor.submit(_predict_caught, path, name, settings, pure=False,
                               key=f"ats-predict-{name}-{run}"): (path, name)
               for path, name in todo}
    for future in as_completed(list(futures)):
        path, name = futures[future]
        try:
            yield path, name, future.result()  # a SlideResult, or the slide's exception as a value
        except Exception as exc:  # the task itself failed (a worker lost, a result that did not travel)
            yield path, name, exc


def _in_process(todo: list[tuple[str, str]], settings: PredictSettings, timing: RunTiming):
    """:func:`_completed` in this process: prepare ahead in one thread, finish here; ``timing`` filled in.

    Torch's thread count and the sampler kind are set once for the run (both threads compute with
    them), the feature cache and the encoder are only touched here."""
    model = _model_for(settings).eval()
    timing.read_ahead = check_read_ahead(settings.read_ahead)
    start = time.perf_counter()
    with _torch_threads(settings.torch_threads), EncoderClock(model) as clock, \
            model.sampling(settings.sampler, settings.readout, threshold=settings.threshold), \
            ReadAhead(todo, lambda item: prepare_one(item[0], settings, model), timing.read_ahead,
                      discard=PreparedRead.close) as pipeline:
        try:
            for (path, name), ready in pipeline:
                if not isinstance(ready, BaseException):
                    try:
                        ready = _finish_owned(ready, name, settings, model)
                    except Exception as exc:  # a batch run records any failure and goes on
                        ready = exc
                yield path, name, ready
        finally:
            timing.wall_seconds = time.perf_counter() - start
            timing.encoder_seconds = clock.seconds
            timing.read_ahead_peak = pipeline.peak
