"""`ats-wsi train --zoom-mpp/--zoom-regions/--zoom-size` and `ats-wsi predict` of the two-stage model, end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import TRAIN_ENV, cli, explain, read_csv, slide_set_manifest

from ats_wsi.classifier import load_model, read_checkpoint
from ats_wsi.outputs import read_zoom_maps

# 3 regions of 128 µm read at 2 µm/px (64 px), 2 patches of 32 px at 0.5 µm/px in each
ZOOM_ARGS = ["--zoom-mpp", "2", "--zoom-regions", "3", "--zoom-size", "128", "--n-patches", "2",
             "--patch-mpp", "0.5", "--patch-size", "32", "--feature-dim", "8", "--low-downsample", "16",
             "--attention-kwargs", "{}", "--feature-kwargs", "{}", "--batch-size", "2", "--seed", "0",
             "--no-progress"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoomcli")
    manifest, rows = slide_set_manifest(folder, n_slides=4, size=((1536, 1024), (1792, 1280)), seed=5, val_index=0)
    return folder, manifest, [r["path"] for r in rows]


@pytest.fixture(scope="module")
def zoom_run(cohort):
    folder, manifest, _ = cohort
    out = folder / "run"
    proc = cli("train", manifest, "--out", out, "--epochs", "2", *ZOOM_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    return out, proc


def test_train_with_zoom_stores_the_zoom_in_the_checkpoint(zoom_run):
    out, proc = zoom_run
    assert "epoch   2" in proc.stdout
    payload = read_checkpoint(out / "last.pt")
    cfg = payload["config"]
    assert (cfg["zoom_mpp"], cfg["zoom_regions"], cfg["zoom_size"], cfg["n_patches"]) == (2.0, 3, 128.0, 2)
    assert cfg["instance_head"] is True  # the CLI's default instance head and its aids, as for one stage
    assert payload["train_config"]["distill"] == "rank" and payload["train_config"]["instance_weight"] == 1.0
    assert any(k.startswith("sampler.stage2.attention_net") for k in payload["state_dict"])
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)


def test_predict_with_zoom_writes_predictions_maps_and_the_zoom_geojson(zoom_run, cohort, tmp_path):
    out, _ = zoom_run
    folder, _, slides = cohort
    res = tmp_path / "pred"
    proc = cli("predict", out / "best.pt", folder / "set", "--out", res, "--geojson", "--samples", "2",
               "--seed", "7", "--no-progress")
    assert proc.returncode == 0, explain(proc)
    rows = {r["name"]: r for r in read_csv(res / "predictions.csv")}
    assert len(rows) == 4
    model = load_model(out / "best.pt")
    for path in slides[:2]:  # (the other two: the same code path; their rows are checked by count)
        name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        row = rows[name]
        assert int(row["patches_read"]) == 2 * 3 * 2  # samples x regions x patches per region
        # the CSV is the library's prediction of that slide with the same seed
        pred = model.predict(path, samples=2, seed=7)
        assert [float(row["p0"]), float(row["p1"])] == pytest.approx(pred.probabilities.tolist(), abs=1e-6)
        assert int(row["pixels_read"]) == pred.pixels_read
        assert (res / "maps" / f"{name}.zarr").is_dir() and (res / "overlays" / f"{name}.png").is_file()
        data = json.loads((res / "geojson" / f"{name}.geojson").read_text())
        feats = data["features"]
        regions = [f for f in feats if f["properties"]["name"].startswith("zoom region")]
        patches = [f for f in feats if f["properties"]["name"].startswith("patch ")]
        tiles = [f for f in feats if f["properties"]["name"] == "zoom tile"]
        assert len(regions) == 2 * 3 and len(patches) == 2 * 3 * 2 and tiles
        assert data["properties"]["zoom_samplings"] == 2
        # the patch boxes are the prediction's, sampling after sampling, region after region
        got = np.array([[min(p[0] for p in f["geometry"]["coordinates"][0]),
                         min(p[1] for p in f["geometry"]["coordinates"][0])] for f in patches])
        np.testing.assert_array_equal(got, pred.boxes_xywh[:, :2])
        probs = [f["properties"]["measurements"]["attention_probability"] for f in regions]
        np.testing.assert_allclose(probs, np.concatenate([r.region_probability for r in pred.zoom]), rtol=1e-5)
        # the stage-2 maps in the map's zoom group: one image per sampling and region, the prediction's maps
        maps = read_zoom_maps(res / "maps" / f"{name}.zarr")
        assert [(m.metadata["sampling"], m.metadata["zoom_region"]) for m in maps] == [(s, k) for s in (1, 2)
                                                                                       for k in (1, 2, 3)]
        for m, (s, k) in zip(maps, [(s, k) for s in range(2) for k in range(3)]):
            np.testing.assert_allclose(m.data, pred.zoom[s].zoom_attention[k], atol=1e-6)
            assert m.origin_xy == pytest.approx(tuple(pred.zoom[s].zoom_origin_xy[k]))


@pytest.mark.parametrize("extra, words", [
    (["--zoom-mpp", "2"], ["--zoom-regions", "--zoom-size", "missing"]),
    (["--zoom-mpp", "2", "--zoom-regions", "0", "--zoom-size", "128"], ["--zoom-regions", "1..65536"]),
    (["--zoom-mpp", "-2", "--zoom-regions", "3", "--zoom-size", "128"], ["--zoom-mpp", "µm/px"]),
    (["--zoom-mpp", "0.1", "--zoom-regions", "3", "--zoom-size", "5000"], ["--zoom-size", "16384 px"]),
    (["--zoom-mpp", "2", "--zoom-regions", "3", "--zoom-size", "128", "--patch-level", "0"], ["--patch-mpp"]),
    (["--zoom-mpp", "2", "--zoom-regions", "3", "--zoom-size", "128", "--tile-aligned"], ["--tile-aligned"]),
])
def test_bad_zoom_flags_end_in_one_line_naming_the_flag(cohort, tmp_path, extra, words):
    _, manifest, _ = cohort
    proc = cli("train", manifest, "--out", tmp_path / "run", "--epochs", "1", "--no-progress", *extra)
    assert proc.returncode == 2, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()
