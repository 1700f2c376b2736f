"""A two-stage (zoom) prediction's stage-2 maps in its OME-Zarr attention map: one NGFF image per drawn
region, placed over the region on the slide; a one-stage map unchanged; the size bounded before writing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import OutputError
from ats_wsi.outputs import MAX_ZOOM_MAP_CELLS, read_attention_zarr, read_zoom_maps, write_attention_zarr
from ats_wsi.run.predict import PredictSettings, predict_one
from ats_wsi.zoom import ZoomRecord

MPP = 0.5  # the synthetic slide's level-0 µm/px
ZOOM = dict(patch_mpp=0.5, patch_size=32, n_patches=2, feature_dim=4, low_downsample=16.0,
            zoom_mpp=2.0, zoom_regions=3, zoom_size=128.0, attention_kwargs={"hidden": 2, "layers": 1, "pool": 4})


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoommaps") / "s.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=1, seed=3, lesion_size_um=(60.0, 120.0))
    return path


def _checkpoint(folder: Path, **config) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(folder / "m.pt", build_model(ModelConfig(**config)))


def _attrs(folder: Path) -> dict:
    """A zarr group's attributes as written on disk (v2 ``.zattrs``, v3 ``zarr.json``)."""
    if (folder / "zarr.json").is_file():
        return json.loads((folder / "zarr.json").read_text())["attributes"]
    return json.loads((folder / ".zattrs").read_text())


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_predict_writes_each_regions_stage2_map_placed_over_the_region(slide, tmp_path, ngff):
    checkpoint = Path(_checkpoint(tmp_path, **ZOOM))
    results = tmp_path / "results"
    pred = predict_one(str(slide), "s", PredictSettings(checkpoint=str(checkpoint), out_dir=str(results), samples=2,
                                                        seed=7, ngff_version=ngff)).prediction  # what was drawn
    assert len(pred.zoom) == 2
    found = results / "maps" / "s.zarr"
    stage1 = read_attention_zarr(found)
    np.testing.assert_array_equal(stage1.data, pred.attention.astype(np.float32))
    assert stage1.metadata["zoom_maps"] == "zoom"
    group = _attrs(found / "zoom")
    layout = group["bioformats2raw.layout"] if ngff == "0.4" else group["ome"]["bioformats2raw.layout"]
    assert layout == 3 and group["ats_wsi"]["images"] == [str(k) for k in range(6)]
    maps = read_zoom_maps(found)
    assert len(maps) == 2 * 3  # samplings x regions
    for k, amap in enumerate(maps):
        s, r = divmod(k, 3)
        record = pred.zoom[s]
        np.testing.assert_array_equal(amap.data, record.zoom_attention[r].astype(np.float32))
        assert amap.data.shape == record.zoom_attention.shape[1:] and amap.data.shape[0] > 1
        assert (amap.metadata["sampling"], amap.metadata["zoom_region"]) == (s + 1, r + 1)
        assert amap.metadata["slide"] == str(slide)
        np.testing.assert_array_equal(amap.metadata["region_box_xywh"], record.region_boxes[r])
        np.testing.assert_array_equal(amap.metadata["patch_boxes_xywh"], record.patch_boxes[r])
        assert amap.metadata["region_probability"] == pytest.approx(record.region_probability[r], rel=1e-12)
        # the NGFF transform on disk, by hand: µm per cell, the centre of cell (0, 0) in µm
        cw, ch = record.zoom_cell_size_xy
        ox, oy = record.zoom_origin_xy[r]
        image = _attrs(found / "zoom" / str(k))
        ms = image["multiscales"][0] if ngff == "0.4" else image["ome"]["multiscales"][0]
        assert [a.get("unit") for a in ms["axes"]] == ["micrometer", "micrometer"]
        scale, translation = ms["datasets"][0]["coordinateTransformations"]
        assert scale["scale"] == pytest.approx([ch * MPP, cw * MPP], rel=1e-12)
        assert translation["translation"] == pytest.approx([(oy + ch / 2 - 0.5) * MPP, (ox + cw / 2 - 0.5) * MPP],
                                                           rel=1e-12)
        # the region's map lies inside its region box
        x, y, w, h = record.region_boxes[r]
        assert x <= ox and ox + cw * amap.data.shape[1] <= x + w + 1e-9
        assert y <= oy and oy + ch * amap.data.shape[0] <= y + h + 1e-9
    # the done marker vouches for the map with its zoom group (a changed region map is a changed output)
    # and for the zoom sheet beside the overlay
    marker = json.loads((results / ".done" / "s.json").read_text())
    assert list(marker["outputs"]) == ["maps/s.zarr", "overlays/s.png", "overlays/s.zoom.png"]


def test_a_one_stage_map_has_no_zoom_group(slide, tmp_path):
    checkpoint = _checkpoint(tmp_path, patch_size=32, n_patches=3, feature_dim=8, low_downsample=16.0)
    results = tmp_path / "results"
    predict_one(str(slide), "s", PredictSettings(checkpoint=str(checkpoint), out_dir=str(results)))
    found = results / "maps" / "s.zarr"
    assert sorted(p.name for p in found.iterdir()) == [".zattrs", ".zgroup", "0"]
    assert "zoom_maps" not in _attrs(found)["ats_wsi"]
    assert read_zoom_maps(found) == []


def test_stage2_maps_over_the_bound_are_refused_before_anything_is_written(tmp_path):
    n1, side = 64, 1 << 12  # 64 regions of 4096² cells: 2^30 cells, over the bound (held as one broadcast value)
    assert n1 * side * side > MAX_ZOOM_MAP_CELLS
    record = ZoomRecord(region_boxes=np.zeros((n1, 4)), region_probability=np.full(n1, 1 / n1), stage1_cells=4,
                        zoom_attention=np.broadcast_to(np.float64(1 / side**2), (n1, side, side)),
                        zoom_cell_size_xy=(1.0, 1.0), zoom_origin_xy=np.zeros((n1, 2)),
                        patch_boxes=np.zeros((n1, 1, 4)), patch_probability=np.ones((n1, 1)))
    path = tmp_path / "maps" / "s.zarr"
    write_attention_zarr(path, np.full((2, 2), 0.25), cell_size_xy=(8, 8))  # an earlier run's map
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError) as err:
        write_attention_zarr(path, np.full((2, 2), 0.25), cell_size_xy=(8, 8), zoom=[record])
    message = str(err.value)
    assert str(path) in message and "1,073,741,824 cells" in message and "64 regions x 4096 x 4096" in message
    assert "--zoom-regions" in message and "--samples" in message
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written
