"""Make the README's napari screenshot: a slide, its attention and sampled boxes.

Runs the plugin the way a user does: opens the slide with this plugin's
reader, docks the "Attention sampling" widget, picks the checkpoint, presses
Run, waits for the worker, fits the slide in the window and saves a
screenshot of the whole window (canvas and widget). Needs a display; on a
headless machine run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m napari_ats_wsi._screenshot \\
        SLIDE.svs RUN/checkpoint.pt --out docs/img/napari-attention.png
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def take_screenshot(
    slide: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    n_patches: int = 16,
    samples: int = 1,
    size: tuple[int, int] = (1400, 860),
    timeout_s: float = 300.0,
) -> Path:
    """Open ``slide``, run the widget with ``checkpoint``, save the window to ``out`` (PNG).

    Raises:
        RuntimeError: the run failed (its napari error message) or timed out.
    """
    import napari
    import numpy as np
    from napari.utils.notifications import NotificationSeverity, notification_manager
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from ats_wsi.outputs import write_overlay_png

    viewer = napari.Viewer(show=True)
    try:
        viewer.window.resize(*size)
        plugin = "napari-ats-wsi"
        viewer.open(str(slide), plugin=plugin)
        _, widget = viewer.window.add_plugin_dock_widget(plugin, "Attention sampling")
        widget._checkpoint.value = Path(checkpoint)
        widget._n_patches.value = n_patches
        widget._samples.value = samples
        first_record = len(notification_manager.records)
        widget._run.native.click()
        deadline = time.monotonic() + timeout_s
        while widget.worker is not None and (widget.worker.is_running or not widget._run.enabled):
            if time.monotonic() > deadline:
                raise RuntimeError(f"attention sampling did not finish in {timeout_s:.0f} s")
            QApplication.processEvents()
            time.sleep(0.02)
        errors = [
            str(n.message)
            for n in notification_manager.records[first_record:]
            if n.severity == NotificationSeverity.ERROR
        ]
        if errors:
            raise RuntimeError(errors[0])
        viewer.layers.selection.active = viewer.layers[-1]
        viewer.reset_view()
        for _ in range(25):  # let the multiscale tiles of the fitted view load and draw
            QApplication.processEvents()
            time.sleep(0.04)
        image = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
        return write_overlay_png(out, Image.fromarray(np.ascontiguousarray(image)))
    finally:
        viewer.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default="docs/img/napari-attention.png")
    parser.add_argument("--n-patches", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args(argv)
    path = take_screenshot(args.slide, args.checkpoint, args.out, n_patches=args.n_patches, samples=args.samples)
    print(path)


if __name__ == "__main__":
    main()
