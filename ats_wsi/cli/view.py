"""``ats-wsi view SLIDE [--results DIR]``: a slide in napari, with its attention map,
its sampled boxes and the "Attention sampling" widget docked.

The one obvious way in: napari's own ``viewer.open(path)`` uses napari's
builtin reader (pixels, one level) unless ``plugin=`` is given, and its GUI
asks which plugin to use when two can read a file. This command always
opens through the ``napari-ats-wsi`` plugin (by name; ats_wsi never imports
the plugin): the slide as a lazy multiscale layer in µm (computed levels
where the file has too few), and from a ``predict`` folder the map
``maps/NAME.zarr`` as a heatmap on the absolute scale with its colour bar,
the sampled boxes numbered in draw order and the predicted class; for a
two-stage (zoom) model also each drawn region's stage-2 map, one layer a
region placed where the region lies (``NAME.zarr zoom region K``, read from
the map's ``zoom`` group).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import HelpFormatter, error

PLUGIN = "napari-ats-wsi"
WIDGET = "Attention sampling"


def register(sub) -> None:
    """Add ``view`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("view", help="open a slide in napari with its attention map, boxes and the widget",
                       formatter_class=HelpFormatter)
    p.add_argument("slide", help="a slide file (or OME-Zarr folder)")
    p.add_argument("--results", help="a folder written by `ats-wsi predict`: show the slide's attention map "
                                     "(a two-stage model's region maps too), sampled boxes and predicted class "
                                     "from it")
    p.add_argument("--checkpoint", help="preselect this checkpoint in the widget (default: the one the --results "
                                        "were predicted with, where that file still is)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px of the slide, overriding its metadata (as given to "
                                             "`ats-wsi predict --mpp`; default: the slide's, or else the µm/px "
                                             "the map was made with)")
    p.add_argument("--no-widget", action="store_true", help="do not dock the Attention sampling widget")
    p.set_defaults(func=run)


def results_map(results: str | Path, slide: str | Path) -> Path | None:
    """The attention map ``predict`` wrote for ``slide`` in ``results`` (``maps/NAME.zarr``), or None.

    NAME is found in the finished rows (``.done/*.json``, whose ``slide`` is
    the path predicted), else it is the slide's file stem.
    """
    from ..run.results import ResultsFolder

    return ResultsFolder(results).map_of(slide)


def open_viewer(slide, results=None, *, checkpoint=None, widget: bool = True, show: bool = True, viewer=None,
                mpp: float | None = None, on_warning=None):
    """A napari viewer with the slide (and its results) opened; ``napari.run()`` is left to the caller.

    ``viewer``: open into this ``napari.Viewer`` instead of a new one.
    ``mpp``: the slide's level-0 µm/px, overriding its metadata. Without it,
    a slide whose µm/px is unknown or differs from the one its map was made
    with (``predict --mpp``) is drawn at the map's, and ``on_warning(text)``
    is called with what was done, so that map and boxes lie over the tissue.

    Returns:
        the ``napari.Viewer``; its layers are the slide, then (with
        ``results``) the heatmap, a zoom's region maps and the boxes; the
        widget is docked unless ``widget=False``.

    Raises:
        FileNotFoundError: ``results`` holds no map for this slide.
    """
    import napari

    viewer = napari.Viewer(show=show) if viewer is None else viewer
    slide_layer = viewer.open(str(slide), plugin=PLUGIN)[0]
    if mpp is not None:
        _set_mpp(slide_layer, mpp)
    if results is not None:
        found = results_map(results, slide)
        if found is None:
            viewer.close()
            raise FileNotFoundError(f"{results}: no attention map for {slide} (looked for maps/NAME.zarr)")
        heat = viewer.open(str(found), plugin=PLUGIN)[0]
        note = _match_map(slide_layer, heat.metadata.get("mpp"), given=mpp)
        if note and on_warning is not None:
            on_warning(f"{slide}: {note}")
        if getattr(heat, "colorbar", None) is not None:
            heat.colorbar.visible = True
        meta = heat.metadata.get("map_metadata") or {}
        _show_prediction(viewer, meta)
        checkpoint = checkpoint if checkpoint is not None else _results_checkpoint(meta)
    _fit_with_scale_bar(viewer)
    if widget:
        _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
        if checkpoint is not None:
            dock.set_checkpoint(checkpoint)
    return viewer


def _results_checkpoint(meta: dict) -> str | None:
    """The checkpoint a ``predict`` map was made with, where that file still is (its path is in the map)."""
    path = meta.get("checkpoint_path")
    return path if path and Path(path).is_file() else None


def _fit_with_scale_bar(viewer) -> None:
    """Fit the canvas to the slide, with the scale bar on (in µm: napari reads the unit from the
    layers, which the plugin gives in micrometres when the slide's µm/px is known)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    bar = getattr(overlays, "scale_bar", None) or viewer.scale_bar
    bar.visible = True
    viewer.reset_view()


def _set_mpp(slide_layer, mpp: float) -> None:
    """Draw the slide at ``mpp`` µm per level-0 pixel (the widget then reads the same)."""
    slide_layer.scale = (float(mpp), float(mpp))
    slide_layer.metadata["mpp"] = float(mpp)


def _match_map(slide_layer, map_mpp: float | None, *, given: float | None) -> str | None:
    """Put the slide on the map's µm/px where the slide's is unknown or differs; what was done, or None."""
    slide_mpp = given if given is not None else slide_layer.metadata.get("mpp")
    if map_mpp is None or (slide_mpp is not None and abs(slide_mpp / map_mpp - 1) <= 0.01):
        return None
    if given is not None:
        return (f"--mpp {given:g} differs from the {map_mpp:g} µm/px the attention map was made with: map and boxes "
                f"are drawn where that resolution puts them")
    _set_mpp(slide_layer, map_mpp)
    had = "no µm/px" if slide_mpp is None else f"{slide_mpp:g} µm/px"
    return (f"the slide has {had} and its attention map was made at {map_mpp:g} µm/px (predict --mpp); drawn at "
            f"the map's (pass --mpp to choose)")


def _show_prediction(viewer, meta: dict) -> None:
    """Write the predicted class and probability of a ``predict`` map on the canvas."""
    from ..outputs import ATTENTION_UNIT, prediction_title

    probabilities, predicted = meta.get("probabilities"), meta.get("predicted")
    if probabilities is None or predicted is None:
        return
    name = meta.get("predicted_name") or str(predicted)
    # a survival or regression map carries its own title ("risk 0.412"); a classifier's is made here
    title = meta.get("title") or prediction_title(name, probabilities[int(predicted)])
    viewer.text_overlay.text = f"{title}\nheatmap: {ATTENTION_UNIT}"  # napari's colour bar has no label of its own
    viewer.text_overlay.visible = True


def run(args: argparse.Namespace) -> int:
    """Open napari and block until its window is closed."""
    if not Path(args.slide).exists():
        return error(f"ats-wsi view: {args.slide}: no such file or folder")
    if args.mpp is not None and not 0 < args.mpp < float("inf"):
        return error(f"ats-wsi view: --mpp must be a number > 0, got {args.mpp}")
    if args.results is not None and results_map(args.results, args.slide) is None:
        return error(f"ats-wsi view: {args.results}: no attention map for {args.slide} "
                     f"(expected maps/{Path(args.slide).stem}.zarr from `ats-wsi predict`)")
    try:
        import napari
    except ImportError:
        return error('ats-wsi view: napari is not installed; pip install "ats-wsi[napari]"')
    open_viewer(args.slide, args.results, checkpoint=args.checkpoint, widget=not args.no_widget, mpp=args.mpp,
                on_warning=lambda text: print(f"ats-wsi view: warning: {text}", file=sys.stderr))
    napari.run()
    return 0
