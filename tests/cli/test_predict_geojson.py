"""`ats-wsi predict --geojson`: one GeoJSON per slide, valid, its boxes where the run put them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cli_helpers import PREDICT_ARGS, cli, explain

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_geojson import check_geojson, check_qupath  # noqa: E402


def test_predict_geojson_writes_boxes_at_their_level0_positions(checkpoint, predict_input, tmp_path):
    slide = predict_input.good[0]
    out = tmp_path / "run"
    proc = cli("predict", str(checkpoint), str(slide), "--out", str(out), "--geojson", *PREDICT_ARGS)
    assert proc.returncode == 0, explain(proc)
    data = json.loads((out / "geojson" / f"{slide.stem}.geojson").read_text())
    check_geojson(data)
    done = json.loads((out / ".done" / f"{slide.stem}.json").read_text())
    boxes = [f for f in data["features"] if f["properties"].get("name", "").startswith("patch ")]
    assert len(boxes) == len(done["boxes_xywh"]) > 0
    for k, (feature, (x, y, w, h)) in enumerate(zip(boxes, done["boxes_xywh"])):
        check_qupath(feature)
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == [x, y] and ring[2] == [x + w, y + h]
        assert feature["properties"]["measurements"]["draw_order"] == k + 1
    prediction = data["features"][0]  # what QuPath shows of the slide's class (it ignores the top-level properties)
    check_qupath(prediction)
    row = done
    assert prediction["properties"]["classification"]["name"] == f"class {row['predicted']}"
    assert abs(prediction["properties"]["measurements"]["probability"] - float(row[f"p{row['predicted']}"])) < 1e-6
    assert data["properties"]["slide"] == str(slide)
