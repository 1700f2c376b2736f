"""GeoJSON for QuPath (ats_wsi.geojson): valid against the GeoJSON schema, boxes at their
level-0 positions in draw order, top-attention regions that follow the cells' borders."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ats_wsi.geojson import attention_detections, attention_regions, prediction_geojson, write_geojson


def check_geojson(data) -> None:
    """The parts of the GeoJSON schema (RFC 7946) this package writes, checked strictly:
    FeatureCollection > Feature > Polygon, coordinates nested [ring][position][x, y] of
    finite numbers, every ring closed with at least 4 positions, properties an object."""
    assert isinstance(data, dict) and data["type"] == "FeatureCollection"
    assert isinstance(data["features"], list)
    for feature in data["features"]:
        assert feature["type"] == "Feature"
        assert isinstance(feature.get("properties"), dict)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        rings = geometry["coordinates"]
        assert isinstance(rings, list) and rings
        for ring in rings:
            assert isinstance(ring, list) and len(ring) >= 4
            for position in ring:
                assert isinstance(position, list) and len(position) == 2
                assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in position)
            assert ring[0] == ring[-1], "ring not closed"


QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tma_core"}


def check_qupath(feature, object_type: str = "annotation") -> None:
    """What QuPath's importer (0.4+) reads: a Feature whose properties have a known ``objectType``,
    a ``classification`` with a name and an RGB ``color`` of three ints 0..255, ``measurements``
    as a name -> finite number object (JSON has no NaN), and a string ``name`` where there is one."""
    assert feature["type"] == "Feature" and feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    props = feature["properties"]
    assert props["objectType"] in QUPATH_OBJECT_TYPES and props["objectType"] == object_type
    assert isinstance(props["classification"]["name"], str) and props["classification"]["name"]
    color = props["classification"]["color"]
    assert len(color) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
    assert isinstance(props["measurements"], dict)
    for key, value in props["measurements"].items():
        assert isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool)
        assert math.isfinite(value)
    assert isinstance(props.get("name", ""), str)


def _prediction(attention, boxes, box_attention, cell=(50.0, 40.0), origin=(10.0, 20.0)):
    return SimpleNamespace(attention=np.asarray(attention, np.float32), boxes_xywh=np.asarray(boxes),
                           box_attention=np.asarray(box_attention, np.float32), cell_size_xy=cell, origin_xy=origin)


def _area(ring) -> float:
    pts = np.asarray(ring[:-1], dtype=float)
    return 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(np.roll(pts[:, 0], -1), pts[:, 1])))


def test_schema_checker_catches_what_it_should():
    good = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}]}
    check_geojson(good)
    for broken in ([[[0, 0], [1, 0], [1, 1], [0, 1]]],  # open ring
                   [[0, 0], [1, 0], [1, 1], [0, 0]],  # one nesting level short
                   [[[0, 0], [1, 0], [1, float("nan")], [0, 0]]]):
        bad = json.loads(json.dumps(good))
        bad["features"][0]["geometry"]["coordinates"] = broken
        with pytest.raises((AssertionError, TypeError)):
            check_geojson(bad)


def test_boxes_are_polygons_at_their_level0_positions_in_draw_order():
    boxes = np.array([[100, 200, 64, 32], [0, 0, 64, 32], [4000, 10, 64, 32]])
    pred = _prediction(np.full((3, 5), 1 / 15), boxes, [0.2, 0.5, 0.3])
    data = json.loads(json.dumps(prediction_geojson(pred)))  # what a file holds
    check_geojson(data)
    patches = [f for f in data["features"] if f["properties"].get("name", "").startswith("patch")]
    assert len(patches) == 3
    for k, (feature, (x, y, w, h)) in enumerate(zip(patches, boxes)):
        check_qupath(feature)
        ring = feature["geometry"]["coordinates"][0]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        assert (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)) == (x, y, w, h)
        assert feature["properties"]["measurements"]["draw_order"] == k + 1
        # the unit of the overlay and napari: attention x cells (15 cells here)
        assert feature["properties"]["measurements"]["attention"] == pytest.approx(pred.box_attention[k] * 15)
        assert feature["properties"]["measurements"]["attention_probability"] == pytest.approx(pred.box_attention[k])
        assert feature["properties"]["name"] == f"patch {k + 1}"


def test_top_cells_merge_into_regions_that_follow_cell_borders():
    att = np.zeros((6, 8), np.float32)
    att[1:4, 1:4] = 1.0  # a 3 x 3 block with a hole in the middle
    att[2, 2] = 0.0
    att[4, 6] = 2.0  # a single cell apart
    att /= att.sum()
    regions = attention_regions(att, quantile=0.5)
    assert [r["cells"] for r in regions] == [8, 1]
    block = regions[0]
    assert len(block["rings"]) == 2  # outer ring and the hole
    assert sorted(block["rings"][0]) == [(1, 1), (1, 4), (4, 1), (4, 4)]
    assert sorted(block["rings"][1]) == [(2, 2), (2, 3), (3, 2), (3, 3)]
    assert block["attention"] == pytest.approx(8 / 10)
    data = prediction_geojson(_prediction(att, np.zeros((0, 4)), []), quantile=0.5)
    check_geojson(data)
    regions_json = [f for f in data["features"] if f["properties"].get("name", "").startswith("attention region")]
    outer, hole = regions_json[0]["geometry"]["coordinates"]
    assert _area(outer) - _area(hole) == pytest.approx(8 * 50 * 40)  # level-0 px of 8 cells of 50 x 40
    assert min(p[0] for p in outer) == 10 + 1 * 50 and min(p[1] for p in outer) == 20 + 1 * 40
    for f in regions_json:
        check_qupath(f)


def test_cells_touching_at_a_corner_make_valid_rings():
    att = np.zeros((3, 3), np.float32)
    att[0, 0] = att[1, 1] = att[0, 2] = att[1, 2] = 1.0  # (0,0)-(1,1) meet at a corner only
    regions = attention_regions(att / att.sum(), quantile=0.5)
    for region in regions:
        for ring in region["rings"]:
            assert len(ring) >= 4 and len(set(ring)) == len(ring)
    assert sum(r["cells"] for r in regions) == 4


def test_uniform_or_empty_attention_has_no_regions_to_fail_on():
    assert attention_regions(np.zeros((4, 4))) == []
    regions = attention_regions(np.full((4, 4), 1 / 16))
    assert len(regions) == 1 and regions[0]["cells"] == 16


def test_write_geojson_is_a_json_file(tmp_path):
    pred = _prediction(np.eye(4) / 4, np.array([[1, 2, 3, 4]]), [0.25])
    path = write_geojson(tmp_path / "g" / "s.geojson", pred, slide="s.svs")
    data = json.loads(path.read_text())
    check_geojson(data)
    assert data["properties"]["slide"] == "s.svs"


def test_cells_above_the_floor_are_detection_tiles_with_the_overlay_unit():
    att = np.array([[0.0, 0.1, 0.02], [0.5, 0.3, 0.08]], np.float32)  # x 6 cells: 0, .6, .12, 3, 1.8, .48
    data = json.loads(json.dumps(prediction_geojson(_prediction(att, np.zeros((0, 4)), []))))
    check_geojson(data)
    tiles = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
    for f in tiles:
        check_qupath(f, "detection")
    assert [f["properties"]["measurements"]["attention"] for f in tiles] == pytest.approx([3.0, 1.8])
    ring = tiles[0]["geometry"]["coordinates"][0]  # cell (row 1, col 0): 50 x 40 from (10, 20)
    assert ring == [[10.0, 60.0], [60.0, 60.0], [60.0, 100.0], [10.0, 100.0], [10.0, 60.0]]
    # regions need twice uniform: only the cell of 3.0
    regions = [f for f in data["features"] if f["properties"].get("name", "").startswith("attention region")]
    assert [r["properties"]["measurements"]["cells"] for r in regions] == [1]
    assert regions[0]["properties"]["measurements"]["attention_max"] == pytest.approx(3.0)


def test_detections_are_capped_at_the_highest_cells_before_they_are_built():
    rng = np.random.default_rng(0)
    att = rng.random((30, 40)).astype(np.float32)
    att /= att.sum()
    tiles = attention_detections(att, (1.0, 1.0), (0.0, 0.0), floor=0.0, limit=25)
    values = [t["properties"]["measurements"]["attention"] for t in tiles]
    assert values == pytest.approx(sorted(att.ravel() * att.size, reverse=True)[:25], rel=1e-6)


def test_a_flat_map_has_no_regions_of_scattered_single_cells():
    rng = np.random.default_rng(1)
    att = (1 + 0.05 * rng.standard_normal((15, 15))).astype(np.float32)
    att /= att.sum()
    data = prediction_geojson(_prediction(att, np.zeros((0, 4)), []))
    assert not [f for f in data["features"] if f["properties"].get("name", "").startswith("attention region")]
    assert len(attention_regions(att, 0.9)) > 5  # what the quantile alone made of it: scattered cells


def test_the_prediction_is_a_classified_annotation_over_the_slide():
    pred = _prediction(np.full((2, 2), 0.25), np.zeros((0, 4)), [])
    pred.probabilities, pred.predicted, pred.class_names = np.array([0.2, 0.8]), 1, ("normal", "tumor")
    data = json.loads(json.dumps(prediction_geojson(pred, slide_wh=(5000, 3000))))
    check_geojson(data)
    first = data["features"][0]
    check_qupath(first)
    assert first["properties"]["classification"]["name"] == "tumor"
    assert first["properties"]["measurements"] == {"probability": 0.8, "p_normal": 0.2, "p_tumor": 0.8}
    assert first["geometry"]["coordinates"][0] == [[0, 0], [5000, 0], [5000, 3000], [0, 3000], [0, 0]]
