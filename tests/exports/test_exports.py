"""predict's exports (issue 27): HDF5 features in the TRIDENT/CLAM layout read back by h5py,
the top-attention patches as the pixels of their boxes, and the missing-extra error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ats_wsi.classifier import ModelConfig, build_model, load_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import MissingExtraError
from ats_wsi.exports import require_h5py, top_patches
from ats_wsi.exports.patches import read_patch
from ats_wsi.outputs import attention_scale, read_attention_zarr
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.slide import open_slide

# with replacement and no instance head, the estimator's output is the mean of the drawn
# features and the head reads it alone: both facts are checked against the file below
TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0, replace=True, instance_head=False)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_geojson import check_geojson, check_qupath  # noqa: E402


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "one.svs"
    write_synthetic_slide(path, 2048, 1536, n_lesions=1, seed=5)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(**TINY)))
    return path


@pytest.fixture(scope="module")
def run(model_path, slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rows, errors = predict_slides([slide], PredictSettings(checkpoint=str(model_path), out_dir=str(out), samples=2,
                                                           geojson=True, export_features=True, export_patches=3))
    assert errors == [], errors
    return out, rows[0]


def test_features_h5_has_the_trident_clam_layout_and_the_boxes_of_the_run(run, model_path):
    out, row = run
    boxes = np.asarray(json.loads((out / ".done" / "one.json").read_text())["boxes_xywh"])
    geo = json.loads((out / "geojson" / "one.geojson").read_text())
    patches = [f for f in geo["features"] if f["properties"]["name"].startswith("patch ")]
    with h5py.File(out / "features" / "one.h5", "r") as fh:
        features, coords = fh["features"][:], fh["coords"][:]
        assert features.shape == (8, 8) and features.dtype == np.float32  # 2 samplings x 4 patches, D = 8
        assert coords.shape == (8, 2) and coords.dtype == np.int64
        assert np.array_equal(coords, boxes[:, :2]) and np.array_equal(fh["boxes_xywh"][:], boxes)
        for k, feature in enumerate(patches):  # the GeoJSON box k starts at coords[k]
            assert feature["geometry"]["coordinates"][0][0] == coords[k].tolist()
            assert feature["properties"]["measurements"]["draw_order"] == fh["draw_order"][k]
        assert fh["draw_order"][:].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
        assert fh["sampling"][:].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        attrs = dict(fh["coords"].attrs)
        assert attrs["patch_size"] == 64 and attrs["patch_size_level0"] == boxes[0, 2] and attrs["patch_level"] == 0
        assert attrs["mpp"] == pytest.approx(attrs["level0_mpp"] * boxes[0, 2] / 64)
        embeddings, embedding = fh["slide_embeddings"][:], fh["slide_embedding"][:]
        assert embeddings.shape == (2, 8) and np.allclose(embedding, embeddings.mean(0))
        probabilities = fh.attrs["probabilities"]
        assert fh.attrs["format"] == "ats-wsi features 1" and fh.attrs["encoder"] == ""
        assert fh.attrs["feature_net"] == "feature-small" and fh.attrs["checkpoint"] == row["checkpoint"]
        attention, x_cells = fh["attention"][:], fh["attention_x_cells"][:]
    # with replacement the estimator is the mean of each sampling's drawn features
    assert np.allclose(embeddings, features.reshape(2, 4, 8).mean(1), atol=1e-6)
    with torch.no_grad():  # the head reads the embedding: the slide's probabilities again
        logits = load_model(model_path).head(torch.from_numpy(embeddings))
    assert np.allclose(torch.softmax(logits, -1).mean(0).numpy(), probabilities, atol=1e-5)
    assert np.allclose(probabilities, [float(row[f"p{k}"]) for k in range(2)], atol=1e-6)
    # one unit of attention in the GeoJSON and the file (x cells, as on the overlay), and the probability beside it
    assert np.allclose([f["properties"]["measurements"]["attention"] for f in patches], x_cells, rtol=1e-5)
    assert np.allclose([f["properties"]["measurements"]["attention_probability"] for f in patches], attention)


def test_the_runs_geojson_follows_the_qupath_rules_with_the_map_as_detections(run, slide):
    out, row = run
    data = json.loads((out / "geojson" / "one.geojson").read_text())
    check_geojson(data)
    kinds = [f["properties"]["objectType"] for f in data["features"]]
    for f, kind in zip(data["features"], kinds):
        check_qupath(f, kind)
    first = data["features"][0]["properties"]
    assert first["name"] == "ats-wsi prediction" and first["classification"]["name"] == f"class {row['predicted']}"
    assert first["measurements"]["probability"] == pytest.approx(float(row[f"p{row['predicted']}"]), abs=1e-6)
    zarr_map = read_attention_zarr(out / "maps" / "one.zarr")
    tiles = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
    scaled = attention_scale(zarr_map.data)
    assert len(tiles) == int((scaled >= 1.0).sum()) > 0  # one tile per cell at or above uniform
    assert max(t["properties"]["measurements"]["attention"] for t in tiles) == pytest.approx(float(scaled.max()))


def test_top_patches_are_the_pixels_of_the_highest_attention_boxes(run, slide):
    out, _ = run
    with h5py.File(out / "features" / "one.h5", "r") as fh:
        boxes, attention = fh["boxes_xywh"][:], fh["attention"][:]
    chosen = top_patches(boxes, attention, 3)
    assert [float(attention[i]) for i in chosen] == sorted((float(attention[i]) for i in chosen), reverse=True)
    files = sorted(p.name for p in (out / "patches" / "one").iterdir())
    assert files == sorted([f"{r + 1:02d}_x{boxes[i][0]}_y{boxes[i][1]}.png" for r, i in enumerate(chosen)]
                           + ["sheet.png"])
    with open_slide(slide) as s:
        for rank, i in enumerate(chosen):
            png = np.asarray(Image.open(out / "patches" / "one" / f"{rank + 1:02d}_x{boxes[i][0]}_y{boxes[i][1]}.png"))
            assert png.shape == (64, 64, 3)
            assert np.array_equal(png, read_patch(s, boxes[i], (64, 64)))
            x, y, w, h = (int(v) for v in boxes[i])  # patches of level 0: the PNG is the slide's pixels there
            assert (w, h) == (64, 64) and np.array_equal(png, s.read_region((x, y), 0, (w, h)))
    assert Image.open(out / "patches" / "one" / "sheet.png").size[0] > 64


def test_top_patches_skip_repeats_and_keep_the_first_draw_on_ties():
    boxes = np.array([[0, 0, 8, 8], [8, 0, 8, 8], [0, 0, 8, 8], [16, 0, 8, 8]])
    assert top_patches(boxes, np.array([0.5, 0.2, 0.5, 0.2]), 3) == [0, 1, 3]
    assert top_patches(boxes, np.array([0.1, 0.2, 0.1, 0.3]), 2) == [3, 1]


def test_a_missing_export_is_redone_on_a_rerun(run, model_path, slide):
    out, _ = run
    settings = dict(checkpoint=str(model_path), out_dir=str(out), samples=2, geojson=True, export_features=True,
                    export_patches=3)
    statuses = []
    predict_slides([slide], PredictSettings(**settings), progress=lambda n, s: statuses.append(s))
    assert statuses == ["skipped"]
    (out / "features" / "one.h5").unlink()
    predict_slides([slide], PredictSettings(**settings), progress=lambda n, s: statuses.append(s))
    assert statuses == ["skipped", "done"] and (out / "features" / "one.h5").is_file()


def test_without_h5py_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # what Python does when the package is not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'ats-wsi\[hdf5\]'"):
        require_h5py()


def test_the_clam_style_example_loads_the_bags(run):
    out, _ = run
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "feature_bags.py"), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "one.h5: features (8, 8), coords (8, 2), label -1"


def test_too_many_export_patches_is_one_line_before_anything_is_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ats_wsi.cli", "predict", str(tmp_path / "none.pt"),
                           str(tmp_path), "--out", str(tmp_path / "out"), "--export-patches", "257"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()  # a usage error
    assert proc.stderr.strip() == "ats-wsi predict: --export-patches must be at most 256, got 257"
