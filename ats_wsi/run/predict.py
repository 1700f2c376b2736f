"""Batch prediction: many slides to disk, resumable, failures recorded.

Each slide goes through :meth:`ats_wsi.classifier.SlideClassifier.predict`
(the one slide path); this module only adds what a batch needs: an executor
(in process, or a ``dask.distributed`` client), the files below, and the
bookkeeping that makes a killed run resumable.

Outputs of :func:`predict_slides` in ``out_dir``:

- ``predictions.csv``: one row per finished slide (input order);
- ``errors.csv``: one row per slide that failed, with the reason;
- ``maps/<name>.zarr``: the full attention map as OME-Zarr aligned to the
  slide's level-0 coordinates (see :mod:`ats_wsi.outputs`);
- ``overlays/<name>.png``: thumbnail + heatmap on the absolute scale (with its
  colour bar) + the sampled boxes numbered in draw order + the predicted class;
- ``geojson/<name>.geojson`` (``geojson=True``): boxes and top-attention
  regions for QuPath (:mod:`ats_wsi.geojson`);
- ``features/<name>.h5`` (``export_features``), ``patches/<name>/`` (``export_patches``):
  the sampled features for TRIDENT/CLAM heads and the top-attention patches (:mod:`ats_wsi.exports`);
- ``.done/<name>.json``: the finished row, written last; a re-run with the
  same checkpoint skips slides that have it.

Every file is written under a temporary name and renamed, so a run killed at
any point leaves only complete files, and a re-run completes the rest and
gives the same outputs as an uninterrupted run (draws are seeded per slide).
Results are reproducible bit for bit between runs with the same checkpoint,
settings and ``torch_threads`` (the number of threads changes the order of
float sums in CPU kernels); in process and on dask workers alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..classifier import SlideClassifier, checkpoint_id, load_model
from ..encoders import PatchEncoder, attach_feature_cache
from ..errors import CheckpointError, OutputError
from ..exports import export_files, outline_roi, write_slide_exports
from ..roi import roi_for_slide
from ..atomic import owned_by, write_csv_atomic, write_json_atomic
from ..geojson import write_geojson
from ..outputs import render_overlay, write_attention_zarr, write_overlay_png
from .outdir import as_output_error, holding_results_folder, invalidate_marker, output_digests, outputs_match
from .results import MAX_NAME_BYTES, ResultsFolder, SlideResult, output_names

__all__ = ["predict_slides", "PredictSettings", "SlideResult", "output_names", "run_key", "MAX_NAME_BYTES"]


# --------------------------------------------------------------------------- folders


@dataclass
class PredictSettings:
    """Settings of a batch prediction (plain values: they travel to dask workers)."""

    checkpoint: str
    out_dir: str
    samples: int = 1
    n_patches: int | None = None
    device: str = "cpu"
    seed: int = 0
    deterministic: bool = False
    workers: int = 2
    ngff_version: str = "0.4"
    overlay_size: int = 1024
    geojson: bool = False
    """Also write ``geojson/<name>.geojson`` (boxes and top-attention regions for QuPath, ``--geojson``)."""
    torch_threads: int = 1
    checkpoint_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    """The owner of this run's temporaries (12 hex digits; see run/outdir.py): ``""`` gives
    :func:`predict_slides` a new one, in the copy of the settings it runs on."""
    mpp: float | None = None
    """Level-0 µm/px given for every slide, overriding its metadata (``--mpp``)."""
    slide_mpp: dict[str, float] = field(default_factory=dict)
    """Level-0 µm/px of single slides by path (a manifest's ``mpp`` column); before ``mpp``."""
    slide_roi: dict[str, str] = field(default_factory=dict)
    """Regions of interest of single slides by path (a manifest's ``roi`` column); before ``roi``."""
    feature_cache: str | None = None
    """Folder of a frozen encoder's features per patch box (``--feature-cache``)."""
    feature_weights: str | None = None
    """Where the checkpoint's encoder weights are on this machine (``--feature-weights``)."""
    sampler: str | None = None
    """``"uniform"``: draw uniformly over tissue instead of from the attention (``--sampler``); None: the model's."""
    export_features: bool = False
    """Also write ``features/<name>.h5``: the sampled patches' features, TRIDENT/CLAM layout (``--export-features``)."""
    export_patches: int = 0
    """Also write the K top-attention patches as PNG and a contact sheet, ``patches/<name>/`` (``--export-patches``)."""
    roi: str | None = None
    """A GeoJSON file, or a folder of ``<slide name>.geojson``: draw only inside its polygons (``--roi``)."""
    roi_include: list[str] | None = None
    roi_exclude: list[str] = field(default_factory=list)
    """Class names of the ROI's features that make the region / are cut out of it (``--roi-include/-exclude``)."""


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


def run_key(settings: PredictSettings) -> str:
    """A short hash of what makes a slide's outputs (checkpoint and sampling settings).

    A finished slide is skipped on a re-run only if its marker has the same key,
    so a re-run with other settings never mixes old and new results. How the
    same thing is computed (device, threads) is not part of it: that changes
    only the last digits of floats.
    """
    parts = [settings.checkpoint_id, settings.samples, settings.n_patches, settings.seed,
             settings.deterministic, settings.ngff_version, settings.overlay_size]
    if settings.mpp is not None or settings.slide_mpp:  # (absent otherwise: keys of earlier runs stay valid)
        parts.append(["mpp", settings.mpp, sorted(settings.slide_mpp.items())])
    if settings.geojson:  # (absent otherwise, as above)
        parts.append("geojson")
    if settings.sampler is not None:  # (absent otherwise, as above)
        parts.append(["sampler", settings.sampler])
    if settings.roi is not None or settings.slide_roi:  # (absent otherwise, as above)
        parts.append(["roi", settings.roi, settings.roi_include, list(settings.roi_exclude),
                      sorted(settings.slide_roi.items())])
    if settings.export_features or settings.export_patches:  # (absent otherwise, as above)
        parts.append(["exports", settings.export_features, settings.export_patches])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def prediction_fields(n_classes: int, class_names: Sequence[str] | None = None,
                      labelled: bool = False, feature_cache: bool = False, slide_ids: bool = False,
                      splits: bool = False, task: str = "classification", outcomes: Sequence[str] = ()) -> list[str]:
    """Columns of ``predictions.csv``. After the columns of every run come, with a
    feature cache, ``feature_hits`` / ``feature_misses`` / ``feature_disk_hits``
    (patch features served by the cache, computed, and served from its folder);
    for a checkpoint with class names, ``p_<name>`` per class and
    ``predicted_class``; for slides given with labels (a manifest), ``label``
    (and ``label_class``); then the manifest's ``slide_id`` and ``split`` where given. A survival
    model's rows have ``risk`` (higher: shorter survival) where a classifier's have ``p0 ..``,
    ``predicted``; a regression model's ``value``; then the manifest's ``outcomes`` (``time``,
    ``event``; ``target``)."""
    if task != "classification":
        fields = ["slide", "name", "risk" if task == "survival" else "value", "seconds", "patches_read",
                  "pixels_read", "slide_pixels", "fraction_read", "checkpoint"]
        fields += ["feature_hits", "feature_misses", "feature_disk_hits"] if feature_cache else []
        return fields + list(outcomes) + (["slide_id"] if slide_ids else []) + (["split"] if splits else [])
    fields = ["slide", "name", *[f"p{k}" for k in range(n_classes)], "predicted", "seconds",
              "patches_read", "pixels_read", "slide_pixels", "fraction_read", "checkpoint"]
    if feature_cache:
        fields += ["feature_hits", "feature_misses", "feature_disk_hits"]
    if class_names:
        fields += [f"p_{n}" for n in class_names] + ["predicted_class"]
    if labelled:
        fields += ["label"] + (["label_class"] if class_names else [])
    return fields + (["slide_id"] if slide_ids else []) + (["split"] if splits else [])


def _labelled(row: dict, class_names: Sequence[str] | None, label: int | None, labelled: bool) -> dict:
    """``row`` with the class-name columns and the label (see :func:`prediction_fields`)."""
    row = dict(row)
    if class_names:
        row.update({f"p_{n}": row[f"p{k}"] for k, n in enumerate(class_names)})
        row["predicted_class"] = class_names[int(row["predicted"])]
    if labelled:
        row["label"] = "" if label is None else int(label)
        if class_names:
            row["label_class"] = "" if label is None else class_names[int(label)]
    return row


def predict_one(path: str, name: str, settings: PredictSettings) -> SlideResult:
    """Predict one slide and write its map, overlay and done marker.

    Runs in the calling process or on a dask worker. Returns the slide's
    :class:`SlideResult` (its ``row`` is the row of ``predictions.csv``);
    raises on failure (the caller records it).
    """
    from ..slide import open_slide

    folder = ResultsFolder(settings.out_dir)
    model = _model_for(settings)
    mpp = settings.slide_mpp.get(str(path), settings.mpp)
    cache = _feature_cache(model)
    if cache is not None:
        cache.take_stats()  # count this slide's lookups only
    roi = roi_for_slide(settings.slide_roi.get(str(path), settings.roi), path, include=settings.roi_include,
                        exclude=settings.roi_exclude)
    with _torch_threads(settings.torch_threads), open_slide(path, mpp=mpp) as slide:
        pred = model.predict(slide, samples=settings.samples, n_patches=settings.n_patches, seed=settings.seed,
                             deterministic=settings.deterministic, workers=settings.workers,
                             sampler=settings.sampler, roi=roi)
        write_attention_zarr(
            folder.map(name), pred.attention, cell_size_xy=pred.cell_size_xy,
            origin_xy=pred.origin_xy, mpp=pred.mpp, ngff_version=settings.ngff_version,
            metadata={"slide": str(path), "checkpoint": settings.checkpoint_id,
                      "checkpoint_path": os.path.abspath(settings.checkpoint),
                      "probabilities": [float(v) for v in pred.probabilities],
                      "predicted": pred.predicted, "low_downsample": pred.low_downsample,
                      "class_names": list(pred.class_names), "predicted_name": pred.predicted_name,
                      "boxes_xywh": pred.boxes_xywh.tolist(),
                      "box_attention": [float(v) for v in pred.box_attention],
                      "task": pred.task, "value": pred.value, "title": pred.title},
        )
        thumb = slide.thumbnail(settings.overlay_size)
        thumb_ds = slide.dimensions[0] / thumb.shape[1]
        image = render_overlay(thumb, thumb_ds, pred.attention, cell_size_xy=pred.cell_size_xy,
                               origin_xy=pred.origin_xy, boxes_xywh=pred.boxes_xywh,
                               title=pred.title)
        image = image if roi is None else outline_roi(image, roi, thumb_ds)
        write_overlay_png(folder.overlay(name), image)
        if settings.geojson:
            write_geojson(folder.geojson(name), pred, slide=str(path), slide_wh=slide.dimensions)
        write_slide_exports(folder.root, name, pred, model=model, slide=slide, checkpoint=settings.checkpoint_id,
                            features=settings.export_features, patches=settings.export_patches)
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
    row["outputs"] = output_digests(folder.root, _output_files(name, settings))  # the marker vouches for these
    write_json_atomic(folder.marker(name), row)
    return SlideResult(str(path), name, row, folder, pred)


def _output_files(name: str, settings: PredictSettings) -> list[str]:
    """A slide's outputs (relative to ``out_dir``) that its done marker vouches for."""
    geojson = [ResultsFolder.geojson_rel(name)] if settings.geojson else []
    return [ResultsFolder.map_rel(name), ResultsFolder.overlay_rel(name), *geojson,
            *export_files(name, features=settings.export_features, patches=settings.export_patches)]


def _predict_owned(path: str, name: str, settings: PredictSettings) -> SlideResult:
    """:func:`predict_one` with this run's temporaries and the slide's done marker removed first."""
    with owned_by(settings.run_id) if settings.run_id else contextlib.nullcontext():
        invalidate_marker(settings.out_dir, name)
        return predict_one(path, name, settings)


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

    Returns:
        ``(rows, errors)`` in input order; also written to predictions.csv
        and errors.csv.
    """
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
        return {**_labelled(rows[name], class_names, label_of.get(name), labelled), **extra[name]}

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

    for path, name, outcome in _completed(todo, settings, executor):
        stop = as_output_error(outcome, out)  # the results folder cannot be written: stop the run
        if stop is not None:
            with contextlib.suppress(OSError):
                flush()
            raise stop
        if isinstance(outcome, BaseException):
            record_failure(path, name, outcome)
        else:
            rows[name] = outcome.row
            progress and progress(name, "done")
            on_result and on_result(outcome)
        flush()
    flush()
    return [final(n) for n in names if n in rows], [errors[n] for n in names if n in errors]


def _completed(todo: list[tuple[str, str]], settings: PredictSettings,
               executor) -> Iterator[tuple[str, str, SlideResult | BaseException]]:
    """``(path, name, result or exception)`` per slide of ``todo``, as each finishes.

    In process (``executor`` None) slides run one after the other in this
    thread; on a ``dask.distributed`` client they run on its workers and come
    back in the order they finish. A slide's failure is yielded, not raised.
    """
    if executor is None:
        for path, name in todo:
            try:
                yield path, name, _predict_owned(path, name, settings)
            except Exception as exc:  # a batch run records any failure and goes on
                yield path, name, exc
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
