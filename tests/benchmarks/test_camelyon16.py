"""benchmarks/camelyon16.py: the manifest of a CAMELYON16 folder (both layouts), its errors, the protocol.

The slides are tiny stand-ins (tifffile, 64 x 48, a few KB) under the
challenge's file names; nothing is trained here.
"""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ats_wsi.data.manifest import read_cohort
from ats_wsi.errors import ManifestError

tifffile = pytest.importorskip("tifffile")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "camelyon16.py"
_spec = importlib.util.spec_from_file_location("camelyon16", SCRIPT)
camelyon16 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(camelyon16)

NORMALS = [f"normal_{i:03d}" for i in range(1, 8)]  # 7
TUMORS = [f"tumor_{i:03d}" for i in range(1, 6)]  # 5
TESTS = {"test_001": "Tumor", "test_002": "Normal", "test_003": "Normal", "test_004": "Tumor"}


def _tiff(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(path.name)).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb")


def _camelyon(root: Path, nested: bool, reference: str | None = "default") -> Path:
    """A CAMELYON16 stand-in under `root`: nested (training/normal/, testing/images/) or flat."""
    for name in NORMALS + TUMORS:
        folder = root / "training" / (name.split("_")[0] if nested else "")
        _tiff(folder / f"{name}.tif")
    for name in TESTS:
        _tiff(root / "testing" / ("images" if nested else "") / f"{name}.tif")
    if reference == "default":  # nested: CAMELYON's own rows (Test_001,Tumor,Macro,Primary); flat: short rows
        lines = [f"{n.title()},{lab},Macro,Primary" if lab == "Tumor" else f"{n.title()},{lab},," for n, lab in
                 TESTS.items()] if nested else [f"{n},{lab}" for n, lab in TESTS.items()]
        (root / "testing" / "reference.csv" if nested else root / "reference.csv").write_text(
            "\r\n".join(lines) + "\r\n")
    return root


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
def test_manifest_lists_every_slide_with_its_label_and_split(tmp_path, nested):
    root = _camelyon(tmp_path / "c16", nested)
    manifest = camelyon16.build_manifest(root, tmp_path / "out", val_fraction=0.3, seed=0)
    assert manifest == tmp_path / "out" / "manifest.csv"
    rows = _rows(manifest)
    assert list(rows[0]) == ["path", "label", "split"]
    sub = ("training/normal/", "training/tumor/", "testing/images/") if nested else ("training/",) * 2 + ("testing/",)
    expected_paths = ([str((root / sub[0] / f"{n}.tif").resolve()) for n in NORMALS]
                      + [str((root / sub[1] / f"{n}.tif").resolve()) for n in TUMORS]
                      + [str((root / sub[2] / f"{n}.tif").resolve()) for n in TESTS])
    assert [r["path"] for r in rows] == expected_paths
    assert [r["label"] for r in rows] == ["normal"] * 7 + ["tumor"] * 5 + ["tumor", "normal", "normal", "tumor"]
    assert [r["split"] for r in rows[12:]] == ["test"] * 4
    # val: round(30 %) of each training label: 2 of 7 normals, 2 of 5 tumors
    val = [Path(r["path"]).stem for r in rows if r["split"] == "val"]
    assert sum(v.startswith("normal") for v in val) == 2 and sum(v.startswith("tumor") for v in val) == 2
    assert {r["split"] for r in rows[:12]} == {"train", "val"}
    # the package reads it: names sorted into classes, splits kept
    cohort = read_cohort(manifest)
    assert [row.label for row in cohort.rows] == [0] * 7 + [1] * 5 + [1, 0, 0, 1]
    assert [row.split for row in cohort.rows] == [r["split"] for r in rows]


def test_val_split_is_seeded_and_the_same_for_both_layouts(tmp_path):
    def val(root, seed):
        rows = _rows(camelyon16.build_manifest(root, root / "out", seed=seed))
        return sorted(Path(r["path"]).stem for r in rows if r["split"] == "val")

    nested, flat = _camelyon(tmp_path / "a", True), _camelyon(tmp_path / "b", False)
    assert val(nested, 0) == val(flat, 0) == val(nested, 0)
    assert len(val(nested, 0)) == round(7 * 0.15) + round(5 * 0.15) == 2
    assert any(val(nested, s) != val(nested, 0) for s in range(1, 6))


def test_missing_reference_is_an_error_naming_the_path(tmp_path):
    root = _camelyon(tmp_path / "c16", True, reference=None)
    with pytest.raises(ManifestError, match=r"testing/reference\.csv.*reference\.csv"):
        camelyon16.build_manifest(root, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_a_test_slide_without_a_reference_row_is_an_error_naming_it(tmp_path):
    root = _camelyon(tmp_path / "c16", False)
    _tiff(root / "testing" / "test_005.tif")
    with pytest.raises(ManifestError, match=r"reference\.csv: no reference row for 1 test slide\(s\): test_005\.tif"):
        camelyon16.build_manifest(root, tmp_path / "out")


def test_bad_reference_labels_are_named_by_line(tmp_path):
    root = _camelyon(tmp_path / "c16", False)
    (root / "reference.csv").write_text("image,type\ntest_001,Tumor\ntest_002,Benign\n")
    with pytest.raises(ManifestError, match=r"line 3: 'test_002,Benign'"):
        camelyon16.build_manifest(root, tmp_path / "out")


def test_a_header_row_in_reference_is_skipped(tmp_path):
    root = _camelyon(tmp_path / "c16", False)
    body = (root / "reference.csv").read_text()
    (root / "reference.csv").write_text("image,label\n" + body)
    rows = _rows(camelyon16.build_manifest(root, tmp_path / "out"))
    assert [r["label"] for r in rows if r["split"] == "test"] == ["tumor", "normal", "normal", "tumor"]


def test_no_slides_is_an_error_naming_the_folder(tmp_path):
    (tmp_path / "empty" / "training").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"empty/training: no training slides"):
        camelyon16.build_manifest(tmp_path / "empty", tmp_path / "out")
    root = tmp_path / "no_test"
    _tiff(root / "training" / "normal_001.tif")
    with pytest.raises(ManifestError, match=r"no_test/testing: no test slides"):
        camelyon16.build_manifest(root, tmp_path / "out")


def test_both_layouts_at_once_is_an_error(tmp_path):
    root = _camelyon(tmp_path / "c16", True)
    _tiff(root / "training" / "normal_003.tif")
    with pytest.raises(ManifestError, match=r"normal_003 is also at"):
        camelyon16.build_manifest(root, tmp_path / "out")


def test_protocol_trains_on_the_manifest_then_predicts_the_test_split(tmp_path):
    manifest, run = tmp_path / "manifest.csv", tmp_path / "run"
    train, predict = camelyon16.protocol(manifest, run, device="cuda", train_args=["--epochs", "3"])
    assert train == ["ats-wsi", "train", str(manifest), "--out", str(run), "--device", "cuda", "--epochs", "3"]
    assert predict == ["ats-wsi", "predict", str(run / "best.pt"), str(manifest), "--split", "test",
                       "--out", str(run / "test"), "--device", "cuda"]


def test_command_line_prints_the_protocol_or_exits_with_the_path(tmp_path):
    root = _camelyon(tmp_path / "c16", True)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), str(root), "--out", str(out), "--", "--epochs", "2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"manifest: {out / 'manifest.csv'} (16 slides: ")
    manifest, run = (out / "manifest.csv").resolve(), (out / "run").resolve()
    assert lines[1:] == [f"ats-wsi train {manifest} --out {run} --epochs 2",
                         f"ats-wsi predict {run / 'best.pt'} {manifest} --split test --out {run / 'test'}"]
    (root / "testing" / "reference.csv").unlink()
    failed = subprocess.run([sys.executable, str(SCRIPT), str(root), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert failed.returncode == 1
    assert f"camelyon16: {root / 'testing' / 'reference.csv'}: no reference.csv" in failed.stderr
