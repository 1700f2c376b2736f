"""The "Attention sampling" dock widget.

Pick a slide layer (opened by this plugin's reader) and a checkpoint, set
the number of patches and of samplings, press Run. The prediction is
``ats_wsi.classifier.load_model(checkpoint).predict(slide)``, the one slide
path every tool uses; it runs in a napari worker thread (progress in the
activity dock and in the widget); when it is done the widget adds

- the attention heatmap, placed over the slide layer by the slide layer's own
  scale and translate (µm when the slide's mpp is known), and
- a Shapes layer of the sampled boxes in level-0 pixel coordinates, with the
  slide layer's transform, edge colour by the attention of each box,

and shows the predicted class and the class probabilities. Every failure
(a wrong checkpoint, an unreadable slide, a missing model package) ends as
one napari error notification; nothing is raised into the event loop and the
UI stays responsive.

Scripts drive it through a public API (no private fields): choose the slide
layer (``widget.slide_layer = layer``) and the checkpoint
(``widget.set_checkpoint(path)``), set ``widget.n_patches`` / ``widget.samples``,
then ``widget.run_blocking()`` predicts in the calling thread, adds the same
layers and returns the ``SlidePrediction`` (raising on errors); ``widget.result``
is the last prediction and ``widget.save_geojson(path)`` writes it for QuPath
(what the "Save GeoJSON" button does).

The heatmap is on the absolute scale of the overlays (attention × number of
cells, 1 = uniform, colour bar shown), the boxes are numbered in draw order,
and the predicted class and probability are written on the canvas.
"""
from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info

from ._reader import ATTENTION_KIND, KIND_KEY, SLIDE_KIND, attention_layer_data, box_rectangles, boxes_layer_data
from ._zoom import zoom_layer_data

if TYPE_CHECKING:
    import napari

    from ats_wsi.classifier import SlidePrediction

__all__ = ["AttentionSamplingWidget", "AttentionOutcome", "attention_job", "box_rectangles", "predict_stages"]

log = logging.getLogger(__name__)

STAGES = ("loading checkpoint", "opening slide", "sampling attention", "done")


@dataclass
class AttentionOutcome:
    """What the worker hands back to the UI thread: a prediction or an error.

    Attributes:
        prediction: the :class:`ats_wsi.classifier.SlidePrediction` (None on error).
        error: a one-line message for the user (None on success).
    """

    prediction: "SlidePrediction | None" = None
    error: str | None = None


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing or broken: the job reports it when it imports the classifier
        return "cpu"


def predict_stages(
    slide_path: str, checkpoint_path: str, n_patches: int, samples: int, seed: int = 0
) -> Generator[str, None, "SlidePrediction"]:
    """Load the checkpoint, open the slide, predict: yields each stage's name as it
    starts and returns the :class:`~ats_wsi.classifier.SlidePrediction`.

    Errors propagate as raised (``CheckpointError``, ``SlideError``, ...);
    :func:`attention_job` turns them into a message for the UI.
    """
    yield STAGES[0]
    from ats_wsi.classifier import load_model

    model = load_model(checkpoint_path, device=_device())
    yield STAGES[1]
    from ats_wsi.slide import open_slide

    with open_slide(slide_path) as slide:
        yield STAGES[2]
        prediction = model.predict(slide, samples=samples, n_patches=n_patches, seed=seed)
    yield STAGES[3]
    return prediction


def attention_job(
    slide_path: str, checkpoint_path: str, n_patches: int, samples: int, seed: int = 0
) -> Generator[str, None, AttentionOutcome]:
    """Worker body: :func:`predict_stages`, with every error made a message.

    A generator (napari's GeneratorWorker): it yields the name of each stage
    as it starts, so the UI can show progress and the worker can be stopped
    between stages, and returns an :class:`AttentionOutcome`. It never
    raises: errors are returned as a message, so the UI shows exactly one
    notification that names the file and the cause.
    """
    stage = STAGES[0]
    try:
        stages = predict_stages(slide_path, checkpoint_path, n_patches, samples, seed)
        while True:
            try:
                stage = next(stages)
            except StopIteration as stop:
                return AttentionOutcome(prediction=stop.value)
            yield stage
    except Exception as exc:  # noqa: BLE001 - every failure must become a notification
        log.debug("attention sampling failed while %s:\n%s", stage, traceback.format_exc())
        return AttentionOutcome(error=f"{stage} failed: {type(exc).__name__}: {_first_line(str(exc))}")


def _first_line(message: str, limit: int = 400) -> str:
    """The first line of an error message, shortened for a notification."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def show_scale(heat_layer) -> None:
    """Show the heatmap's colour bar (the absolute attention scale), where napari has one."""
    colorbar = getattr(heat_layer, "colorbar", None)
    if colorbar is not None:
        colorbar.visible = True


def remove_layers_over(viewer, slide_path) -> int:
    """Remove the heatmaps and box layers drawn over the slide at ``slide_path`` (by the widget or read
    from a ``predict`` folder); returns how many."""
    if not slide_path:
        return 0
    target = os.path.realpath(slide_path)
    gone = 0
    for layer in list(viewer.layers):
        meta = layer.metadata or {}
        if meta.get(KIND_KEY) not in (ATTENTION_KIND, "patches"):
            continue
        over = meta.get("slide") or (meta.get("map_metadata") or {}).get("slide")
        if over and os.path.realpath(over) == target:
            viewer.layers.remove(layer)
            gone += 1
    return gone


def show_title(viewer, prediction) -> None:
    """Write the predicted class and its probability (a survival model's risk, a regression model's
    value) on the canvas (napari's text overlay)."""
    from ats_wsi.outputs import ATTENTION_UNIT

    # napari's colour bar has no label of its own
    viewer.text_overlay.text = f"{prediction.title}\nheatmap: {ATTENTION_UNIT}"
    viewer.text_overlay.visible = True


def _heatmap_transform(
    cell_size_xy: Sequence[float], origin_xy: Sequence[float], scale_yx: np.ndarray, translate_yx: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate of a heatmap over a slide layer with the given transform
    (:func:`ats_wsi.geometry.cell_transform`, as write_attention_zarr uses)."""
    from ats_wsi.geometry import cell_transform

    return cell_transform(cell_size_xy, origin_xy, scale_yx, translate_yx)


def format_prediction(prediction: "SlidePrediction") -> str:
    """Two lines for the widget: the predicted class and all probabilities (one line, the risk or
    the value, for a survival or regression model)."""
    if getattr(prediction, "value", None) is not None:
        return f"Predicted: {prediction.title}"
    probs = prediction.probabilities
    listing = ", ".join(f"{n}: {p:.3f}" for n, p in zip(prediction.class_names, probs))
    return f"Predicted: {prediction.predicted_name} (p = {probs[prediction.predicted]:.3f})\n{listing}"


class AttentionSamplingWidget(Container):
    """Dock widget "Attention sampling" (see the module docstring).

    Attributes:
        worker: the worker of the last run (None before the first), so
            scripts and tests can wait for it.
        last_outcome: the :class:`AttentionOutcome` of the last finished run.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        self._viewer = napari_viewer
        self._slide = ComboBox(label="slide layer", choices=self._slide_layer_choices, nullable=True)
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth *.ckpt")
        self._n_patches = SpinBox(label="n_patches", value=16, min=1, max=4096)
        self._samples = SpinBox(label="samples", value=1, min=1, max=64)
        self._run = PushButton(text="Run")
        self._save = PushButton(text="Save GeoJSON", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=len(STAGES), visible=False)
        self._status = Label(label="", value="")
        self._result = Label(label="", value="")
        super().__init__(
            widgets=[
                self._slide,
                self._checkpoint,
                self._n_patches,
                self._samples,
                self._run,
                self._save,
                self._progress,
                self._status,
                self._result,
            ],
            labels=True,
        )
        self.worker = None
        self.last_outcome: AttentionOutcome | None = None
        self._result_slide: str | None = None  # the path of the slide the shown result is of (for GeoJSON)
        self._run.changed.connect(self.run)
        self._save.changed.connect(self._ask_geojson_path)
        events = [getattr(napari_viewer.layers.events, e) for e in ("inserted", "removed", "reordered")]
        for event in events:
            event.connect(self._refresh_slides)

        def disconnect(*_):  # a closed dock must not be called back by the viewer it left
            for event in events:
                event.disconnect(self._refresh_slides)

        self.native.destroyed.connect(disconnect)
        self._refresh_slides()

    # ------------------------------------------------------------------ choices

    def _slide_layer_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if getattr(layer, "metadata", {}).get(KIND_KEY) == SLIDE_KIND
        ]

    @property
    def slide_layers(self) -> tuple:
        """The slide layers the widget offers, in layer-list order."""
        return tuple(layer for layer in self._slide.choices if layer is not None)

    def _refresh_slides(self, _event=None) -> None:
        self._slide.reset_choices()
        if self._slide.value is None and self.slide_layers:
            self._slide.value = self.slide_layers[-1]

    # ------------------------------------------------------------------ run

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def set_checkpoint(self, path: str | Path) -> None:
        """Choose the checkpoint file (what the "checkpoint" field does)."""
        self._checkpoint.value = Path(path)

    @property
    def checkpoint(self) -> Path | None:
        """The chosen checkpoint file, or None."""
        return Path(self._checkpoint.value) if self._checkpoint.value else None

    @property
    def slide_layer(self):
        """The chosen slide layer (one of :attr:`slide_layers`), or None."""
        return self._slide.value

    @slide_layer.setter
    def slide_layer(self, layer) -> None:
        if layer not in self.slide_layers:
            raise ValueError(f"{getattr(layer, 'name', layer)!r} is not a slide layer opened by napari-ats-wsi")
        self._slide.value = layer

    @property
    def n_patches(self) -> int:
        """Patches per sampling (the "n_patches" field)."""
        return int(self._n_patches.value)

    @n_patches.setter
    def n_patches(self, value: int) -> None:
        self._n_patches.value = int(value)

    @property
    def samples(self) -> int:
        """Samplings averaged (the "samples" field)."""
        return int(self._samples.value)

    @samples.setter
    def samples(self, value: int) -> None:
        self._samples.value = int(value)

    @property
    def result(self) -> "SlidePrediction | None":
        """The last prediction, or None before the first successful run."""
        outcome = self.last_outcome
        return None if outcome is None else outcome.prediction

    def save_geojson(self, path: str | Path) -> Path:
        """Write the last prediction's boxes and top-attention regions as GeoJSON for QuPath
        (:func:`ats_wsi.geojson.write_geojson`, level-0 pixels); returns the path."""
        from ats_wsi.geojson import write_geojson

        if self.result is None:
            raise RuntimeError("Attention sampling: run a prediction before saving it")
        return write_geojson(path, self.result, slide=self._result_slide)

    def _ask_geojson_path(self, _clicked=None) -> None:
        from magicgui.widgets import request_values

        values = request_values(path={"annotation": Path, "label": "GeoJSON file",
                                      "options": {"mode": "w", "filter": "*.geojson"}})
        if values and values.get("path"):
            try:
                written = self.save_geojson(values["path"])
            except Exception as exc:  # noqa: BLE001 - a failed save is a notification, not a crash
                show_error(f"Saving GeoJSON failed: {type(exc).__name__}: {_first_line(str(exc))}")
                return
            show_info(f"Saved {written}")

    def _inputs(self) -> tuple[Any, Path | None, str | None]:
        """The chosen slide layer and checkpoint, and what is missing (None when nothing)."""
        layer = self._slide.value
        checkpoint = Path(self._checkpoint.value) if self._checkpoint.value else None
        if layer is None:
            return layer, checkpoint, "open a slide with the ats-wsi reader and choose its layer first"
        if checkpoint is None or not checkpoint.is_file():
            return layer, checkpoint, f"checkpoint {checkpoint} is not a file"
        return layer, checkpoint, None

    def run(self, _clicked=None) -> None:
        """Start a prediction on the chosen slide layer in a worker thread (no-op while one runs)."""
        if self.running:
            return
        layer, checkpoint, missing = self._inputs()
        if missing is not None:
            show_error(f"Attention sampling: {missing}")
            return
        from napari.qt.threading import create_worker

        self._run.enabled = False
        self._progress.value = 0
        self._progress.visible = True
        self._status.value = "starting"
        self._result.value = ""
        self.worker = create_worker(
            attention_job,
            layer.metadata["path"],
            str(checkpoint),
            int(self._n_patches.value),
            int(self._samples.value),
            _progress={"total": len(STAGES), "desc": "Attention sampling"},
            _connect={
                "yielded": self._on_stage,
                "returned": lambda outcome, layer=layer: self._on_outcome(outcome, layer),
                "errored": self._on_crash,
                "finished": self._on_finished,
            },
        )

    def _on_stage(self, stage: str) -> None:
        self._status.value = stage
        self._progress.value = min(self._progress.value + 1, len(STAGES))

    def _on_crash(self, exc: BaseException) -> None:
        # attention_job returns its errors; this is only reached if the worker
        # machinery itself fails.
        self._status.value = "failed"
        show_error(f"Attention sampling failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self._run.enabled = True
        self._progress.visible = False

    def run_blocking(self) -> "SlidePrediction":
        """Predict on the chosen slide layer in the calling thread, add the layers, return the prediction.

        For scripts and notebooks (the Run button uses a worker thread). The
        layers, labels and :attr:`last_outcome` end as after a Run.

        Raises:
            RuntimeError: a Run is still in progress.
            ValueError: no slide layer or no checkpoint file is chosen.
            CheckpointError, SlideError, ...: as ``load_model`` / ``predict`` raise them.
        """
        if self.running:
            raise RuntimeError("Attention sampling: a run is in progress")
        layer, checkpoint, missing = self._inputs()
        if missing is not None:
            raise ValueError(missing)
        stages = predict_stages(
            layer.metadata["path"], str(checkpoint), int(self._n_patches.value), int(self._samples.value)
        )
        while True:
            try:
                self._status.value = next(stages)
            except StopIteration as stop:
                prediction = stop.value
                break
        self.last_outcome = AttentionOutcome(prediction=prediction)
        self._show(prediction, layer)
        return prediction

    def _on_outcome(self, outcome: AttentionOutcome, slide_layer) -> None:
        self.last_outcome = outcome
        if outcome.error is not None:
            self._status.value = "failed"
            show_error(f"Attention sampling on {slide_layer.name}: {outcome.error}")
            return
        try:
            self._show(outcome.prediction, slide_layer)
        except Exception as exc:  # noqa: BLE001 - a failure to draw must not crash the UI
            log.debug("showing the prediction failed:\n%s", traceback.format_exc())
            self._status.value = "failed"
            reason = f"{type(exc).__name__}: {_first_line(str(exc))}"
            show_error(f"Attention sampling on {slide_layer.name}: showing the result failed: {reason}")

    def _show(self, prediction: "SlidePrediction", slide_layer) -> None:
        """Add the prediction's layers, fill in the labels and tell the user."""
        self.add_prediction_layers(prediction, slide_layer)
        self._result_slide = slide_layer.metadata.get("path")
        self._save.enabled = True
        summary = format_prediction(prediction)
        self._status.value = f"{len(prediction.boxes_xywh)} patches in {prediction.seconds:.1f} s"
        self._result.value = summary
        show_info(f"{slide_layer.name}: {summary.splitlines()[0]}")

    # ------------------------------------------------------------------ layers

    def add_prediction_layers(self, pred: "SlidePrediction", slide_layer) -> tuple[Any, Any]:
        """Add the heatmap and the sampled boxes of ``pred`` over ``slide_layer`` (and, for a zoom, each
        drawn region's stage-2 map between them: :func:`._zoom.zoom_layer_data`); return heatmap and boxes."""
        from ats_wsi.outputs import AttentionMap

        remove_layers_over(self._viewer, slide_layer.metadata.get("path"))  # Run replaces, never piles up
        scale_yx = np.asarray(slide_layer.scale, dtype=np.float64)[-2:]
        translate_yx = np.asarray(slide_layer.translate, dtype=np.float64)[-2:]
        # The slide reader sets scale = mpp when the mpp is known: the map is then in µm.
        units_um = slide_layer.metadata.get("mpp") is not None
        scale, translate = _heatmap_transform(pred.cell_size_xy, pred.origin_xy, scale_yx, translate_yx)
        attention = AttentionMap(
            data=np.asarray(pred.attention, dtype=np.float32),
            scale=scale,
            translation=translate,
            unit="micrometer" if units_um else None,
            cell_size_xy=tuple(float(v) for v in pred.cell_size_xy),
            origin_xy=tuple(float(v) for v in pred.origin_xy),
            mpp=float(scale_yx[1]) if units_um else None,
            metadata={"slide": slide_layer.metadata.get("path")},
        )
        data, kwargs, _ = attention_layer_data(attention, name=f"{slide_layer.name} attention")
        heat = self._viewer.add_image(data, **kwargs)

        show_scale(heat)
        for data, kwargs, _ in zoom_layer_data(getattr(pred, "zoom", None), name=slide_layer.name, scale_yx=scale_yx,
                                               translate_yx=translate_yx, units_um=units_um,
                                               slide=slide_layer.metadata.get("path")):
            self._viewer.add_image(data, **kwargs)  # a zoom's stage-2 maps, one per drawn region
        data, shape_kwargs, _ = boxes_layer_data(
            pred.boxes_xywh, pred.box_attention, name=f"{slide_layer.name} patches", scale_yx=scale_yx,
            translate_yx=translate_yx, micrometer=units_um,
            level0_extent=max(slide_layer.metadata.get("dimensions") or [1]), slide=slide_layer.metadata.get("path"))
        shapes = self._viewer.add_shapes(data, **shape_kwargs)
        show_title(self._viewer, pred)
        return heat, shapes

