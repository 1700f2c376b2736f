"""Regions of interest (ats_wsi.roi): GeoJSON polygons with holes and MultiPolygons, include and
exclude classes, rasterised at pixel centres, whole boxes inside or not."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ats_wsi.errors import RoiError
from ats_wsi.roi import Roi, read_roi, roi_file_for

SQUARE_WITH_HOLE = [[[100, 100], [900, 100], [900, 700], [100, 700], [100, 100]],
                    [[400, 300], [600, 300], [600, 500], [400, 500], [400, 300]]]


def _feature(coords, kind="Polygon", cls=None):
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def _write(tmp_path, features, name="roi.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_raster_is_even_odd_at_pixel_centres_with_the_hole_outside(tmp_path):
    roi = read_roi(_write(tmp_path, [_feature(SQUARE_WITH_HOLE, cls="Tumor")]))
    grid = roi.raster((8, 10), 100.0)  # pixel (r, c) centred at ((c + .5) * 100, (r + .5) * 100)
    expected = np.zeros((8, 10), bool)
    expected[1:7, 1:9] = True
    expected[3:5, 4:6] = False
    assert np.array_equal(grid, expected)


def test_a_triangle_matches_a_point_in_polygon_reference():
    ring = np.array([[10.0, 5.0], [90.0, 30.0], [30.0, 95.0]])
    grid = Roi([[ring]]).raster((50, 50), 2.0)
    ys, xs = (np.mgrid[0:50, 0:50] + 0.5) * 2.0
    (ax, ay), (bx, by), (cx, cy) = ring

    def side(px, py, x0, y0, x1, y1):
        return (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)

    s1, s2, s3 = side(xs, ys, ax, ay, bx, by), side(xs, ys, bx, by, cx, cy), side(xs, ys, cx, cy, ax, ay)
    reference = ((s1 > 0) & (s2 > 0) & (s3 > 0)) | ((s1 < 0) & (s2 < 0) & (s3 < 0))
    assert np.array_equal(grid, reference)


def test_boxes_inside_a_polygon_with_a_hole_and_none_in_the_hole():
    roi = Roi([[np.array(r, float) for r in SQUARE_WITH_HOLE]])
    boxes = np.array([[150, 150, 64, 64],    # inside
                      [450, 350, 64, 64],    # in the hole
                      [380, 280, 64, 64],    # across the hole's border
                      [50, 50, 64, 64],      # across the outer border
                      [820, 620, 64, 64],    # inside, near the corner
                      [1500, 10, 64, 64]])   # off the polygon
    assert roi.boxes_inside(boxes, (2000, 1000)).tolist() == [True, False, False, False, True, False]


def test_multipolygons_include_and_exclude_classes(tmp_path):
    a = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]
    b = [[[200, 0], [300, 0], [300, 100], [200, 100], [200, 0]]]
    pen = [[[50, 0], [250, 0], [250, 50], [50, 50], [50, 0]]]
    path = _write(tmp_path, [_feature([a, b], "MultiPolygon", "Tumor"), _feature(pen, cls="Pen"),
                             _feature({"type": "Point"}, "Point", "Tumor")])
    grid = read_roi(path, exclude=["Pen"]).raster((2, 6), 50.0)
    assert grid.tolist() == [[True, False, False, False, False, True], [True, True, False, False, True, True]]
    everything = read_roi(path).raster((2, 6), 50.0)  # no class excluded: the pen mark is part of the region
    assert everything.tolist() == [[True] * 6, [True, True, False, False, True, True]]
    only_pen = read_roi(path, include=["Nothing"], exclude=["Pen"])  # excluded only: the rest of the slide
    assert only_pen.raster((2, 6), 50.0).tolist() == [[True, False, False, False, False, True], [True] * 6]


def test_bad_roi_files_are_typed_errors_naming_the_file(tmp_path):
    with pytest.raises(RoiError, match="no such ROI file"):
        read_roi(tmp_path / "missing.geojson")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(RoiError, match="bad.geojson: not a GeoJSON file"):
        read_roi(tmp_path / "bad.geojson")
    path = _write(tmp_path, [_feature(SQUARE_WITH_HOLE, cls="Tumor")], "t.geojson")
    with pytest.raises(RoiError, match=r"--roi-include names \['Stroma'\] \(the file has \['Tumor'\]\)"):
        read_roi(path, include=["Stroma"])


def test_a_folder_is_matched_by_slide_name(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE_WITH_HOLE)], "slide_1.geojson")
    assert roi_file_for(tmp_path, "/data/slide_1.svs") == path
    assert roi_file_for(path, "/data/other.svs") == path
    with pytest.raises(RoiError, match="no ROI file for slide other.svs: expected other.geojson"):
        roi_file_for(tmp_path, "/data/other.svs")


def test_a_mask_image_at_any_resolution_is_aligned_by_size(tmp_path):
    import tifffile
    from PIL import Image

    from ats_wsi.roi import roi_for_slide

    mask = np.zeros((30, 40), np.uint8)  # a slide of 4000 x 3000 at 1/100
    mask[10:20, 5:25] = 255  # level-0 x 500..2500, y 1000..2000
    Image.fromarray(mask).save(tmp_path / "s1.png")
    tifffile.imwrite(tmp_path / "s2.tif", mask)
    for name in ("s1.svs", "s2.svs"):
        roi = roi_for_slide(tmp_path, name)
        grid = roi.raster((300, 400), 10.0, (4000, 3000))  # pixel centres at level-0 (c + .5) * 10
        expected = np.zeros((300, 400), bool)
        expected[100:200, 50:250] = True
        assert np.array_equal(grid, expected)
        inside = roi.boxes_inside(np.array([[600, 1100, 256, 256], [400, 1100, 256, 256], [2300, 1800, 256, 256]]),
                                  (4000, 3000))
        assert inside.tolist() == [True, False, False]
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(RoiError, match="empty.png: not a mask image"):
        roi_for_slide(tmp_path / "empty.png", "x.svs")
