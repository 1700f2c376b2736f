"""The plugin's manifest and name, as napari knows them (shared by the tests)."""
from pathlib import Path

import napari_ats_wsi
import npe2

MANIFEST_PATH = Path(napari_ats_wsi.__file__).parent / "napari.yaml"
MANIFEST = npe2.PluginManifest.from_file(MANIFEST_PATH)
PLUGIN = MANIFEST.name  # what users pass as viewer.open(..., plugin=PLUGIN)
