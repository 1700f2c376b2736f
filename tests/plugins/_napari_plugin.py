"""Shared by the plugin tests: the plugin's manifest and name, and the heatmap look."""
import os
from pathlib import Path

import numpy as np

import napari_ats_wsi
import npe2

MANIFEST_PATH = Path(napari_ats_wsi.__file__).parent / "napari.yaml"
MANIFEST = npe2.PluginManifest.from_file(MANIFEST_PATH)
PLUGIN = MANIFEST.name  # what users pass as viewer.open(..., plugin=PLUGIN)


def assert_inferno_fading_in(layer):
    """Heatmap look: inferno's colours, transparent at the low limit, opaque at the high one."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    colors = np.asarray(layer.colormap.colors)
    np.testing.assert_allclose(colors[:, :3], np.asarray(AVAILABLE_COLORMAPS["inferno"].colors)[:, :3])
    assert colors[0, 3] == 0 and colors[-1, 3] == 1 and np.all(np.diff(colors[:, 3]) >= 0)
    assert layer.blending == "translucent" and 0 < layer.opacity < 1


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
