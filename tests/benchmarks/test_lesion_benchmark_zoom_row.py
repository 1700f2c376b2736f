"""The lesion benchmark's zoom row (benchmarks/lesion_benchmark.py): the frozen row's flags plus the zoom's,
32 patches a slide as the one-stage rows, and N patches a slide at prediction."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import lesion_benchmark  # noqa: E402


def test_the_zoom_row_is_the_frozen_row_with_8_regions_of_4_patches(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"weights": "/enc/encoder.pt2"}))
    frozen = lesion_benchmark.row_flags("ats-frozen", str(spec), tmp_path)
    zoom = lesion_benchmark.row_flags("ats-frozen-zoom", str(spec), tmp_path)
    assert "ats-frozen-zoom" in lesion_benchmark.ROWS
    assert zoom == ["--zoom-mpp", "2", "--zoom-regions", "8", "--zoom-size", "256", "--n-patches", "4", *frozen]
    assert "--sampler" not in zoom and "--freeze-features" in zoom
    # prediction: N patches a slide = N / 8 in each of the 8 regions; one-stage rows take N as it is
    assert [lesion_benchmark.predict_n_patches("ats-frozen-zoom", n) for n in (8, 16, 32, 64)] == [1, 2, 4, 8]
    assert lesion_benchmark.predict_n_patches("ats-frozen", 16) == 16
    with pytest.raises(SystemExit, match="not a multiple"):
        lesion_benchmark.predict_n_patches("ats-frozen-zoom", 12)


def test_the_defaults_zoom_row_draws_its_regions_and_validates_with_128_patches_and_low2_attends_at_2um(tmp_path):
    zoom = lesion_benchmark.row_flags("defaults-zoom", None, tmp_path, regions=16, patches=2)
    assert zoom == ["--zoom-mpp", "2", "--zoom-regions", "16", "--zoom-size", "256", "--n-patches", "2",
                    "--predict-patches", "8"]  # 16 x 2 = 32 a step; 16 x 8 = 128 at validation
    assert lesion_benchmark.predict_n_patches("defaults-zoom", 128, 16) == 8
    assert lesion_benchmark.row_flags("defaults-low2", None, tmp_path) == ["--low-mpp", "2"]
    from ats_wsi.cli import build_parser
    from ats_wsi.cli._auto_encoder import wanted

    for row in ("defaults-zoom", "defaults-low2"):  # both pretrain the default encoder, as the defaults row
        args = build_parser().parse_args(["train", "m.csv", "--out", "o", *lesion_benchmark.row_flags(row, None, tmp_path)])
        assert wanted(args) == (True, None), row


def test_draw_shares_count_the_boxes_on_the_lesion_and_on_follicles(tmp_path):
    from types import SimpleNamespace

    from ats_wsi.data.synthetic import load_synthetic_slide, write_synthetic_slide

    paths = []
    for i, lesions in enumerate((1, 0)):
        path = tmp_path / f"s{i}.svs"
        write_synthetic_slide(path, 1024, 768, n_lesions=lesions, n_decoys=1, seed=40 + i, lesion_size_um=(40.0, 80.0))
        paths.append(path)
    pos, neg = (load_synthetic_slide(p) for p in paths)
    lx, ly, lw, lh = pos.lesions[0]
    dx, dy, dw, dh = neg.decoys[0]
    far = [2000, 2000, 8, 8]  # off the slide: on nothing
    records = {"s0": [[lx, ly, lw, lh], far, far, far], "s1": [[dx, dy, dw, dh], far]}
    (tmp_path / ".done").mkdir()
    for name, boxes in records.items():
        (tmp_path / ".done" / f"{name}.json").write_text(json.dumps({"boxes_xywh": boxes}))
    rows = [{"slide": str(p), "name": p.stem} for p in paths]
    cohort = {str(paths[0]): SimpleNamespace(label=1), str(paths[1]): SimpleNamespace(label=0)}
    got = lesion_benchmark.draw_shares(rows, tmp_path, cohort)
    on_decoy = float(np.mean([lesion_benchmark_overlaps(records["s0"], pos.decoys).mean(), 0.5]))
    assert got == {"on_lesion": 0.25, "lesion_found": 1.0, "on_follicle": pytest.approx(on_decoy)}
    (tmp_path / ".done" / "s1.json").unlink()
    assert lesion_benchmark.draw_shares(rows, tmp_path, cohort) is None  # a slide without its record


def lesion_benchmark_overlaps(boxes, targets):
    from lesion_diagnose import overlaps

    return overlaps(np.asarray(boxes, dtype=np.float64), targets)


def test_the_defaults_rows_pass_nothing_and_the_scratch_rows_turn_pretraining_off(tmp_path):
    from ats_wsi.cli import build_parser
    from ats_wsi.cli._auto_encoder import wanted

    flags = {row: lesion_benchmark.row_flags(row, None, tmp_path)
             for row in ("defaults", "uniform-defaults", "ats", "uniform")}
    assert flags == {"defaults": [], "uniform-defaults": ["--sampler", "uniform"], "ats": ["--no-pretrain"],
                     "uniform": ["--sampler", "uniform", "--no-pretrain"]}
    for row, want in (("defaults", True), ("uniform-defaults", True), ("ats", False), ("uniform", False)):
        args = build_parser().parse_args(["train", "m.csv", "--out", "o", *flags[row]])
        assert wanted(args) == (want, None), row


def test_the_table_shows_the_operating_point_at_the_validation_threshold():
    ci = {"value": 0.968, "ci_low": 0.89, "ci_high": 1.0}
    m = {"roc_auc": ci, "balanced_accuracy": ci, "per_stratum": {}, "auc_by_stratum": {}, "patches_per_slide": 32,
         "tissue_read": 0.0041, "seconds_per_slide": 0.25, "pixels_read_per_slide": 1.3e6,
         "operating_point": {"sensitivity": 0.9, "specificity": 1.0, "threshold": 0.9544}}
    lines = lesion_benchmark.table({"rows": {"defaults": {"n32": m, "train_seconds": 599},
                                             "old": {"n32": {**m, "operating_point": None}}}})
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 0.90 / 1.00 (0.954) | 32 |" in lines[2] and "| – | 32 |" in lines[3]
    drawn = lesion_benchmark.table({"rows": {"z": {"n32": {**m, "draws": {"on_lesion": 0.125, "lesion_found": 0.9,
                                                                          "on_follicle": 0.25}}}}})
    assert "| 0.12 / 0.90 / 0.25 | nan |" in drawn[2] and drawn[2].count("|") == drawn[0].count("|")


def test_a_trained_row_predicted_with_uniform_draws_or_another_readout_gets_its_own_name_folder_and_flags():
    variant = lesion_benchmark.predict_variant
    assert variant(None, None) == (None, None, [])  # the checkpoint's own settings: ROW, test-nN
    assert variant(None, "uniform") == ("uniform draws", "uniform", ["--sampler", "uniform"])
    assert variant("head", None) == ("head", "head", ["--readout", "head"])
    assert variant("top", "uniform") == ("top, uniform draws", "top-uniform",
                                          ["--readout", "top", "--sampler", "uniform"])
