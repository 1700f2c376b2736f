"""What ``predict`` writes for one slide on request, beside its map and overlay,
and the files a slide's done marker vouches for (so that a re-run redoes a slide
whose exports are missing)."""
from __future__ import annotations

import os
from pathlib import Path

from .features import write_features_h5
from .patches import write_top_patches

__all__ = ["export_files", "write_slide_exports", "outline_roi"]


def outline_roi(image, roi, downsample: float, colour=(0, 160, 0)):
    """Draw ``roi``'s rings (included green, excluded red) on a PIL ``image`` of ``downsample`` level-0
    pixels per pixel; returns the image."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    for polygons, fill in ((roi.include, colour), (roi.exclude, (220, 0, 0))):
        for polygon in polygons:
            for ring in polygon:
                points = [(float(x) / downsample, float(y) / downsample) for x, y in ring.tolist()]
                draw.line(points + points[:1], fill=fill, width=2)
    return image


def export_files(name: str, *, features: bool = False, patches: int = 0) -> list[str]:
    """The exports of slide ``name``, relative to the results folder."""
    return [*([f"features/{name}.h5"] if features else []), *([f"patches/{name}"] if patches else [])]


def write_slide_exports(out: str | os.PathLike, name: str, prediction, *, model, slide, checkpoint: str = "",
                        features: bool = False, patches: int = 0) -> None:
    """Write ``features/<name>.h5`` (``features``) and ``patches/<name>/`` (``patches`` > 0).

    Args:
        out: the results folder.
        name: the slide's output name.
        prediction: the slide's :class:`~ats_wsi.classifier.SlidePrediction`.
        model: the :class:`~ats_wsi.classifier.SlideClassifier` that made it.
        slide: the open slide.
        checkpoint: the checkpoint's id, recorded in the HDF5 file.
        features, patches: what to write (see :mod:`ats_wsi.exports`).
    """
    out = Path(out)
    patch_wh = tuple(int(v) for v in model.sampler.patch_size)
    if features:
        write_features_h5(out / "features" / f"{name}.h5", prediction, name=name, patch_px=patch_wh[0],
                          checkpoint=checkpoint, encoder=model.config.feature_spec,
                          feature_net=model.config.feature_net)
    if patches:
        write_top_patches(out / "patches" / name, slide, prediction, patches, patch_wh)
