"""The npe2 manifest: valid, discovered by napari through the entry point, complete."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import npe2

from ats_wsi.slide import SLIDE_SUFFIXES
from _napari_plugin import MANIFEST, MANIFEST_PATH, PLUGIN

SLIDE_PATTERNS = {f"*{s}" for s in SLIDE_SUFFIXES}


def test_manifest_validates_with_npe2_cli():
    npe2_cli = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2_cli), "validate", str(MANIFEST_PATH), "--imports"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_napari_discovers_the_plugin_through_its_entry_point():
    from napari.plugins import _initialize_plugins

    _initialize_plugins.cache_clear()
    _initialize_plugins()
    pm = npe2.PluginManager.instance()
    manifest = pm.get_manifest(PLUGIN)
    assert manifest.package_metadata is not None, "found as a file, not as an installed distribution"
    assert manifest.package_metadata.name == PLUGIN
    contributions = manifest.contributions
    assert len(contributions.readers) == 2 and len(contributions.writers) == 1 and len(contributions.widgets) == 1
    for command in contributions.commands:
        assert callable(pm.commands.get(command.id)), command.id


def test_manifest_offers_readers_for_slides_and_attention_maps_a_writer_and_the_widget():
    readers = {r.command.split(".", 1)[1]: r for r in MANIFEST.contributions.readers}
    assert set(readers["get_slide_reader"].filename_patterns) == SLIDE_PATTERNS
    assert readers["get_attention_reader"].filename_patterns == ["*.zarr"]
    assert all(r.accepts_directories for r in readers.values())
    [writer] = MANIFEST.contributions.writers
    assert writer.layer_types == ["image"] and writer.filename_extensions == [".zarr"]
    [widget] = MANIFEST.contributions.widgets
    assert widget.display_name == "Attention sampling"


def test_napari_offers_both_readers_for_a_zarr_folder(tmp_path):
    import numpy as np

    from ats_wsi.outputs import write_attention_zarr

    path = write_attention_zarr(tmp_path / "m.zarr", np.ones((2, 3), np.float32), cell_size_xy=(4, 4))
    pm = npe2.PluginManager.instance()
    ours = [r.command for r in pm.iter_compatible_readers([str(path)]) if r.plugin_name == PLUGIN]
    assert sorted(ours) == [f"{PLUGIN}.get_attention_reader", f"{PLUGIN}.get_slide_reader"]
