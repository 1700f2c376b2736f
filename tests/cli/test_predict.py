"""`ats-wsi predict` over a folder: predictions.csv, OME-Zarr maps aligned to level 0,
overlay PNGs, and bad slides recorded in errors.csv while the others finish."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from cli_helpers import N_GOOD, PREDICT_ARGS, cli, explain, read_csv
from PIL import Image

from ats_wsi.outputs import read_attention_zarr
from ats_wsi.slide import open_slide

SAMPLES, N_PATCHES, PATCH, LOW_DS = 2, 4, 64, 16.0  # as in PREDICT_ARGS and MODEL_ARGS


def test_predict_exits_1_and_reports_the_bad_slides(reference, predict_input):
    proc = reference.proc
    assert proc.returncode == 1, explain(proc)
    assert f"{N_GOOD} slide(s) predicted" in proc.stdout
    assert "2 slide(s) failed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_slides_land_in_errors_csv_with_the_reason(reference, predict_input):
    errors = {r["name"]: r for r in read_csv(reference.out / "errors.csv")}
    assert list(errors) == ["garbage", "truncated"]  # input order: the folder sorted
    assert errors["garbage"]["slide"] == str(predict_input.garbage)
    assert errors["garbage"]["error"] == "CorruptSlideError"
    assert "not a slide" in errors["garbage"]["message"]
    assert errors["truncated"]["slide"] == str(predict_input.truncated)
    assert errors["truncated"]["error"] == "CorruptSlideError"
    assert "truncated" in errors["truncated"]["message"]
    for name in errors:  # nothing half-made for them
        assert not (reference.out / "maps" / f"{name}.zarr").exists()
        assert not (reference.out / "overlays" / f"{name}.png").exists()
        assert not (reference.out / ".done" / f"{name}.json").exists()


def test_predictions_csv_has_a_row_per_good_slide_with_probabilities_summing_to_1(reference, predict_input):
    rows = read_csv(reference.out / "predictions.csv")
    assert [r["slide"] for r in rows] == [str(p) for p in predict_input.good]
    assert list(rows[0]) == ["slide", "name", "p0", "p1", "predicted", "seconds", "patches_read", "pixels_read",
                             "slide_pixels", "fraction_read", "checkpoint"]
    for row, path in zip(rows, predict_input.good):
        p = np.array([float(row["p0"]), float(row["p1"])])
        assert np.all((p >= 0) & (p <= 1))
        assert p.sum() == pytest.approx(1.0, abs=2e-6)  # printed with 6 decimals
        assert int(row["predicted"]) == int(np.argmax(p))
        assert float(row["seconds"]) > 0
        assert int(row["patches_read"]) == SAMPLES * N_PATCHES
        assert int(row["pixels_read"]) == SAMPLES * N_PATCHES * PATCH * PATCH
        with open_slide(path) as s:
            w, h = s.dimensions
        assert int(row["slide_pixels"]) == w * h
        assert float(row["fraction_read"]) == pytest.approx(int(row["pixels_read"]) / (w * h), abs=1e-6)
        assert len(row["checkpoint"]) == 16


def test_maps_are_ome_zarr_aligned_to_level_0(reference, predict_input):
    rows = {r["name"]: r for r in read_csv(reference.out / "predictions.csv")}
    for path in predict_input.good:
        name = path.stem
        amap = read_attention_zarr(reference.out / "maps" / f"{name}.zarr")
        with open_slide(path) as s:
            w, h, mpp = *s.dimensions, s.mpp
        rows_, cols = amap.data.shape
        assert amap.data.dtype == np.float32
        assert float(amap.data.sum()) == pytest.approx(1.0, abs=1e-4)  # a distribution over the cells
        assert amap.data.min() >= 0
        # The grid covers the slide: the low view is round(w / 16) x round(h / 16) pixels,
        # so cells x map shape is the slide's size within half a low pixel.
        cw, ch = amap.cell_size_xy
        assert cols * cw == pytest.approx(w, abs=LOW_DS / 2)
        assert rows_ * ch == pytest.approx(h, abs=LOW_DS / 2)
        assert amap.origin_xy == (0.0, 0.0)
        # Physical placement: µm, cell centres at (i + 0.5) * cell - 0.5 pixel.
        assert amap.unit == "micrometer" and amap.mpp == mpp == 0.5
        assert amap.scale == pytest.approx((ch * mpp, cw * mpp))
        assert amap.translation == pytest.approx(((ch / 2 - 0.5) * mpp, (cw / 2 - 0.5) * mpp))
        # NGFF 0.4 (zarr v2) by default, with y and x axes.
        root = zarr.open_group(str(reference.out / "maps" / f"{name}.zarr"), mode="r")
        ms = root.attrs["multiscales"][0]
        assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
        # The map carries the row's prediction.
        assert amap.metadata["probabilities"] == pytest.approx(
            [float(rows[name]["p0"]), float(rows[name]["p1"])], abs=1e-6)
        assert amap.metadata["slide"] == str(path)


def test_sampled_boxes_are_recorded_and_lie_on_the_slide(reference, predict_input):
    for path in predict_input.good:
        marker = json.loads((reference.out / ".done" / f"{path.stem}.json").read_text())
        boxes = np.array(marker["boxes_xywh"])
        assert boxes.shape == (SAMPLES * N_PATCHES, 4)
        assert np.all(boxes[:, 2:] == PATCH)
        with open_slide(path) as s:
            w, h = s.dimensions
        centres = boxes[:, :2] + PATCH / 2
        assert np.all((centres >= 0) & (centres <= [w, h]))


def test_overlays_are_valid_pngs_the_shape_of_the_slide(reference, predict_input):
    for path in predict_input.good:
        png = reference.out / "overlays" / f"{path.stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            tw, th = im.size
            assert im.mode == "RGB"
            pixels = np.asarray(im)
        with open_slide(path) as s:
            w, h = s.dimensions
        assert max(tw, th) == min(1024, max(w, h))
        assert tw / th == pytest.approx(w / h, abs=0.01)
        assert pixels.std() > 0  # not a blank image


def test_rerun_skips_finished_slides_and_retries_failed_ones(reference, predict_input, checkpoint, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(reference.out, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()}
    proc = cli("predict", checkpoint, predict_input.folder, "--out", out, *PREDICT_ARGS)
    assert proc.returncode == 1, explain(proc)
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()} == stamps  # nothing redone
    assert read_csv(out / "predictions.csv") == read_csv(reference.out / "predictions.csv")
    assert read_csv(out / "errors.csv") == read_csv(reference.out / "errors.csv")

    # Other settings (here --samples) are another run: nothing is skipped, nothing mixed.
    proc = cli("predict", checkpoint, predict_input.good[0], "--out", out, "--samples", "1", "--seed", "7",
               "--no-progress")
    assert proc.returncode == 0, explain(proc)
    marker = json.loads((out / ".done" / f"{predict_input.good[0].stem}.json").read_text())
    assert marker["patches_read"] == N_PATCHES


def test_readout_top_needs_an_instance_head(checkpoint, predict_input, tmp_path):
    proc = cli("predict", checkpoint, predict_input.good[0], "--out", tmp_path / "r", "--readout", "top",
               "--no-progress")
    assert proc.returncode == 2 and "has no instance head" in proc.stderr and "--readout head" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r" / "predictions.csv").exists()
