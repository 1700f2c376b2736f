"""`--roi` in prediction: every sampled box lies inside the region's polygon and none touches its
hole; the overlay outlines it; an ROI that misses the tissue is a typed error in errors.csv."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, SlideInput, build_model, load_model, save_checkpoint
from ats_wsi.classifier.checkpoint import read_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import RoiError
from ats_wsi.roi import read_roi
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.run.train import TrainSettings, train

TINY = dict(n_patches=16, patch_size=64, feature_dim=8, low_downsample=16.0)
OUTER = (100, 100, 1948, 1436)  # x0, y0, x1, y1 in level-0 pixels
HOLE = (600, 400, 1400, 1100)


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roi")
    slide = folder / "one.svs"
    write_synthetic_slide(slide, 2048, 1536, n_lesions=1, seed=5)
    torch.manual_seed(0)
    save_checkpoint(folder / "model.pt", build_model(ModelConfig(**TINY)))
    roi = folder / "rois" / "one.geojson"
    roi.parent.mkdir()
    roi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [_rect(*OUTER), _rect(*HOLE)]}},
        {"type": "Feature", "properties": {"classification": {"name": "Pen"}},
         "geometry": {"type": "Polygon", "coordinates": [_rect(0, 0, 2048, 90)]}}]}))
    return folder, slide, roi


def _inside(box, rect) -> bool:
    x, y, w, h = box
    return rect[0] <= x and rect[1] <= y and x + w <= rect[2] and y + h <= rect[3]


def _overlaps(box, rect) -> bool:
    x, y, w, h = box
    return x < rect[2] and rect[0] < x + w and y < rect[3] and rect[1] < y + h


def test_every_sampled_box_lies_in_the_polygon_and_none_in_its_hole(setup):
    folder, slide, roi = setup
    model = load_model(folder / "model.pt")
    free = model.predict(slide, samples=4, seed=1)
    assert any(_overlaps(b, HOLE) or not _inside(b, OUTER) for b in free.boxes_xywh.tolist())  # the test can fail
    pred = model.predict(slide, samples=4, seed=1, roi=read_roi(roi, exclude=["Pen"]))
    assert len(pred.boxes_xywh) == 64
    for box in pred.boxes_xywh.tolist():
        assert _inside(box, OUTER) and not _overlaps(box, HOLE), box
    assert pred.attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_predict_slides_takes_a_folder_of_rois_by_slide_name(setup, tmp_path):
    folder, slide, roi = setup
    rows, errors = predict_slides([slide], PredictSettings(checkpoint=str(folder / "model.pt"), out_dir=str(tmp_path),
                                                           roi=str(roi.parent), roi_exclude=["Pen"]))
    assert errors == []
    boxes = json.loads((tmp_path / ".done" / "one.json").read_text())["boxes_xywh"]
    assert all(_inside(b, OUTER) and not _overlaps(b, HOLE) for b in boxes)


def test_an_roi_off_the_tissue_is_a_typed_error(setup, tmp_path):
    folder, slide, _ = setup
    tiny = tmp_path / "tiny.geojson"  # smaller than a patch
    tiny.write_text(json.dumps({"type": "Polygon", "coordinates": [_rect(1000, 700, 1030, 730)]}))
    with pytest.raises(RoiError, match="no patch of slide .*one.svs lies wholly inside the region"):
        load_model(folder / "model.pt").predict(slide, roi=read_roi(tiny))
    rows, errors = predict_slides([slide], PredictSettings(checkpoint=str(folder / "model.pt"),
                                                           out_dir=str(tmp_path / "out"), roi=str(tiny)))
    assert rows == [] and errors[0]["error"] == "RoiError"


def test_training_masks_the_low_view_to_roi_and_tissue_and_records_the_roi(setup, tmp_path):
    folder, slide, roi = setup
    region = read_roi(roi, exclude=["Pen"])
    config = ModelConfig(**TINY)
    with SlideInput(slide, config, roi=region) as item, SlideInput(slide, config) as plain:
        _, mask = item.low_inputs()
        _, tissue = plain.low_inputs()
        expected = tissue[0].numpy() & region.raster(tissue.shape[1:], item.view.downsample)
        assert np.array_equal(mask[0].numpy(), expected) and 0 < expected.sum() < tissue.sum()
    rois = tmp_path / "rois"  # a folder with the region of each slide (the same polygons)
    rois.mkdir()
    other = tmp_path / "two.svs"  # a classifier needs both classes in train
    write_synthetic_slide(other, 2048, 1536, n_lesions=0, seed=6)
    for name in ("one", "two"):
        (rois / f"{name}.geojson").write_text(roi.read_text())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{slide},1\n{other},0\n")
    train(manifest, tmp_path / "run", config, TrainSettings(epochs=1, batch_size=1, roi=str(rois),
                                                            roi_exclude=["Pen"]), progress=False)
    stored = read_checkpoint(tmp_path / "run" / "last.pt")["train_config"]
    assert stored["roi"] == str(rois) and stored["roi_exclude"] == ["Pen"]
    off = tmp_path / "off.geojson"  # outside the slide: training reads no slide through it
    off.write_text(json.dumps({"type": "Polygon", "coordinates": [_rect(5000, 5000, 6000, 6000)]}))
    with pytest.raises(RoiError, match="no tissue of slide .*one.svs lies inside the region of interest"):
        train(manifest, tmp_path / "run-off", config, TrainSettings(epochs=1, batch_size=1, roi=str(off)),
              progress=False)


def test_the_command_takes_roi_flags(setup, tmp_path):
    import subprocess
    import sys

    folder, slide, roi = setup
    proc = subprocess.run([sys.executable, "-m", "ats_wsi.cli", "predict", str(folder / "model.pt"), str(slide),
                           "--out", str(tmp_path / "out"), "--no-progress", "--roi", str(roi.parent),
                           "--roi-exclude", "Pen", "--roi-include", "Tumor"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    boxes = json.loads((tmp_path / "out" / ".done" / "one.json").read_text())["boxes_xywh"]
    assert len(boxes) == 16 and all(_inside(b, OUTER) and not _overlaps(b, HOLE) for b in boxes)
    proc = subprocess.run([sys.executable, "-m", "ats_wsi.cli", "predict", str(folder / "model.pt"), str(slide),
                           "--out", str(tmp_path / "out2"), "--no-progress", "--roi", str(roi.parent),
                           "--roi-include", "Stroma"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "RoiError" in proc.stderr and "--roi-include names ['Stroma']" in proc.stderr


def test_a_manifest_roi_column_restricts_predict_and_train(setup, tmp_path):
    from ats_wsi.cli import main
    from ats_wsi.data.manifest import read_cohort

    folder, slide, roi = setup
    manifest = tmp_path / "m.csv"  # the roi cell relative to the manifest's folder, as slide paths are
    relative = roi.relative_to(folder)
    manifest.write_text(f"path,label,roi\n{slide},1,{roi}\n")
    assert read_cohort(manifest).rows[0].roi == roi
    (folder / "m2.csv").write_text(f"path,label,roi\none.svs,1,{relative}\n")
    assert read_cohort(folder / "m2.csv").rows[0].roi == roi
    out = tmp_path / "out"
    assert main(["predict", str(folder / "model.pt"), str(manifest), "--out", str(out), "--no-progress",
                 "--roi-exclude", "Pen"]) == 0
    boxes = json.loads((out / ".done" / "one.json").read_text())["boxes_xywh"]
    assert len(boxes) == 16 and all(_inside(b, OUTER) and not _overlaps(b, HOLE) for b in boxes)
    other = tmp_path / "two.svs"
    write_synthetic_slide(other, 2048, 1536, n_lesions=0, seed=6)
    off = tmp_path / "off.geojson"  # a row's roi is used in training: this one misses the slide
    off.write_text(json.dumps({"type": "Polygon", "coordinates": [_rect(5000, 5000, 6000, 6000)]}))
    (tmp_path / "m3.csv").write_text(f"path,label,roi\n{slide},1,{off}\n{other},0,\n")
    with pytest.raises(RoiError, match="no tissue of slide .*one.svs lies inside the region of interest"):
        train(tmp_path / "m3.csv", tmp_path / "run", ModelConfig(**TINY), TrainSettings(epochs=1, batch_size=1),
              progress=False)
