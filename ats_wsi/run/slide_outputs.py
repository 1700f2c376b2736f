"""A slide's files in a batch prediction's results folder: writing them, and naming those its done marker
vouches for (:mod:`ats_wsi.run.predict` writes the marker after them)."""
from __future__ import annotations

import os

from ..exports import export_files, outline_roi, write_slide_exports
from ..geojson import write_geojson
from ..outputs import render_overlay, write_attention_zarr, write_overlay_png
from ..zoom_sheet import prediction_zoom_sheet
from .predict_settings import PredictSettings
from .results import ResultsFolder

__all__ = ["slide_output_files", "write_slide_outputs"]


def write_slide_outputs(folder: ResultsFolder, name: str, path: str, slide, roi, pred, settings: PredictSettings,
                        model) -> None:
    """Write a slide's map, overlay, GeoJSON and exports (each file atomically); a zoom model's sheet too.

    Args:
        folder: the results folder.
        name: the slide's output NAME.
        path: the slide's path, as recorded.
        slide: the open slide.
        roi: the slide's region of interest (outlined on the overlay), or None.
        pred: its :class:`~ats_wsi.classifier.SlidePrediction`.
        settings: the run's settings.
        model: the :class:`~ats_wsi.classifier.SlideClassifier` that predicted it (for the exports).
    """
    write_attention_zarr(
        folder.map(name), pred.attention, cell_size_xy=pred.cell_size_xy,
        origin_xy=pred.origin_xy, mpp=pred.mpp, ngff_version=settings.ngff_version, zoom=pred.zoom,
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
                           origin_xy=pred.origin_xy, boxes_xywh=pred.boxes_xywh, title=pred.title)
    image = image if roi is None else outline_roi(image, roi, thumb_ds)
    write_overlay_png(folder.overlay(name), image)
    if pred.zoom is not None:  # a zoom model: its first sampling's regions, each with its stage-2 map
        write_overlay_png(folder.zoom_overlay(name), prediction_zoom_sheet(slide, pred.zoom, pred.title))
    if settings.geojson:
        write_geojson(folder.geojson(name), pred, slide=str(path), slide_wh=slide.dimensions)
    write_slide_exports(folder.root, name, pred, model=model, slide=slide, checkpoint=settings.checkpoint_id,
                        features=settings.export_features, patches=settings.export_patches)


def slide_output_files(name: str, settings: PredictSettings, zoom: bool = False) -> list[str]:
    """A slide's outputs (relative to ``out_dir``) that its done marker vouches for: what
    :func:`write_slide_outputs` wrote for it. ``zoom``: the slide was predicted by a zoom model
    (``SlidePrediction.zoom`` set), which also writes ``overlays/NAME.zoom.png``."""
    geojson = [ResultsFolder.geojson_rel(name)] if settings.geojson else []
    sheet = [ResultsFolder.zoom_overlay_rel(name)] if zoom else []
    return [ResultsFolder.map_rel(name), ResultsFolder.overlay_rel(name), *sheet, *geojson,
            *export_files(name, features=settings.export_features, patches=settings.export_patches)]
