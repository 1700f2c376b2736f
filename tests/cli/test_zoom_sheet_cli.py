"""`ats-wsi predict` of a two-stage (zoom) checkpoint writes `overlays/NAME.zoom.png`, vouched for by the
slide's done marker; a one-stage checkpoint's outputs and marker are as before."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import cli, explain
from PIL import Image

from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.run.outdir import outputs_match
from ats_wsi.zoom_sheet import zoom_sheet_layout

# untrained tiny models: 3 regions of 128 µm at 2 µm/px, 2 patches of 32 px at 0.5 µm/px in each
ONE_STAGE = dict(patch_mpp=0.5, patch_size=32, n_patches=2, feature_dim=4, low_downsample=16.0,
                 attention_kwargs={"hidden": 2, "layers": 1, "pool": 4})
ZOOM = dict(ONE_STAGE, zoom_mpp=2.0, zoom_regions=3, zoom_size=128.0)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoomsheetcli") / "s.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=1, seed=3, lesion_size_um=(60.0, 120.0))
    return path


def _predict(folder: Path, slide: Path, config: dict) -> Path:
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "m.pt", build_model(ModelConfig(**config)))
    out = folder / "results"
    proc = cli("predict", checkpoint, slide, "--out", out, "--samples", "2", "--seed", "7", "--no-progress")
    assert proc.returncode == 0, explain(proc)
    return out


def test_a_zoom_checkpoint_writes_its_sheet_and_the_marker_vouches_for_it(slide, tmp_path):
    out = _predict(tmp_path, slide, ZOOM)
    sheet = out / "overlays" / "s.zoom.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(sheet) as image:
        image.verify()
    with Image.open(sheet) as image:
        layout = zoom_sheet_layout(3, tile=192, columns=4, title=True)  # 3 tiles in a row, the title band
        assert image.mode == "RGB" and image.size == (layout.width, layout.height) == (3 * 192 + 16, 293)
    marker = json.loads((out / ".done" / "s.json").read_text())
    assert set(marker["outputs"]) == {"maps/s.zarr", "overlays/s.png", "overlays/s.zoom.png"}
    assert outputs_match(out, marker["outputs"])  # the digests are of the files written
    sheet.unlink()  # a results folder without the sheet no longer holds this slide's finished outputs
    assert not outputs_match(out, marker["outputs"])


def test_a_one_stage_checkpoint_writes_no_sheet(slide, tmp_path):
    out = _predict(tmp_path, slide, ONE_STAGE)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["s.png"]
    marker = json.loads((out / ".done" / "s.json").read_text())
    assert set(marker["outputs"]) == {"maps/s.zarr", "overlays/s.png"}
