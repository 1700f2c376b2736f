"""make_lesion_benchmark: a lymph-node-like cohort with one lesion per tumor slide, follicles and two scanners.

The cohort here is small (8 slides of 1.6 x 1.2 mm, lesions 0.1–0.6 mm),
written once per module; the laws of a full 120-slide cohort are checked on
its plan (no pixels). The 0.25 µm/px texture bank takes a few seconds to
build once per process.
"""
from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

openslide = pytest.importorskip("openslide")

from ats_wsi.data.manifest import read_cohort  # noqa: E402
from ats_wsi.data.synthetic import (  # noqa: E402
    load_lesions,
    load_synthetic_slide,
    make_lesion_benchmark,
    make_slide_set,
    write_synthetic_slide,
)
from ats_wsi.data.synthetic._benchmark import plan_benchmark  # noqa: E402
from ats_wsi.patches import PatchReader  # noqa: E402
from ats_wsi.slide import open_slide  # noqa: E402

SMALL = dict(size_mm=(1.6, 1.2), lesion_mm=(0.1, 0.6), decoy_mm=(0.1, 0.2), n_decoys=(3, 6))
N = 8


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(manifest path, rows as dicts, on_slide calls) of an 8-slide cohort."""
    calls = []
    manifest = make_lesion_benchmark(tmp_path_factory.mktemp("bench"), N, seed=3, **SMALL,
                                     on_slide=lambda i, n: calls.append((i, n)))
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return manifest, rows, calls


def test_manifest_names_label_split_scanner_and_lesion_of_every_slide(cohort):
    manifest, rows, calls = cohort
    assert manifest.name == "manifest.csv"
    assert list(rows[0]) == ["path", "label", "split", "mpp", "lesion_mm", "stratum"]
    assert [Path(r["path"]).name for r in rows] == [f"slide_{i:03d}.svs" for i in range(N)]
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    assert calls == [(i, N) for i in range(1, N + 1)]
    assert Counter(r["label"] for r in rows) == {"normal": 4, "tumor": 4}
    # scanners: half of each label at each mpp, so the resolution says nothing about the label
    assert Counter((r["label"], r["mpp"]) for r in rows) == {(lab, m): 2 for lab in ("normal", "tumor")
                                                              for m in ("0.25", "0.5")}
    for r in rows:
        if r["label"] == "normal":
            assert r["lesion_mm"] == "" and r["stratum"] == "normal"
        else:
            d = float(r["lesion_mm"])
            assert 0.1 <= d <= 0.6
            assert r["stratum"] == ("<0.5mm" if d < 0.5 else "0.5-2mm")
    # splits stratified by label: round(1/3) of 4 test, round(2/15) of 4 val, per label
    assert Counter((r["label"], r["split"]) for r in rows) == {
        (lab, s): n for lab in ("normal", "tumor") for s, n in (("train", 2), ("val", 1), ("test", 1))}


def test_read_cohort_reads_the_manifest_with_its_extra_columns(cohort):
    manifest, rows, _ = cohort
    read = read_cohort(manifest)
    assert [row.label for row in read.rows] == [int(r["label"] == "tumor") for r in rows]
    assert [row.class_name for row in read.rows] == [r["label"] for r in rows]
    assert [row.split for row in read.rows] == [r["split"] for r in rows]
    assert [row.mpp for row in read.rows] == [float(r["mpp"]) for r in rows]


def test_slides_have_one_lesion_of_the_drawn_size_follicles_and_the_same_physical_size(cohort):
    _, rows, _ = cohort
    for r in rows:
        truth = load_synthetic_slide(r["path"])
        mpp = float(r["mpp"])
        assert truth.mpp == mpp
        assert (truth.width * mpp, truth.height * mpp) == (1600.0, 1200.0)  # µm, either scanner
        assert truth.label == (r["label"] == "tumor") == len(truth.lesions)
        assert 3 <= len(truth.decoys) <= 6
        for x, y, w, h in truth.decoys:  # follicles: 0.1–0.2 mm mean diameter, irregular outlines
            assert 0.1 * 0.7 <= (w + h) / 2 * mpp / 1000 <= 0.2 * 1.3 + 0.01
        if truth.lesions:
            assert load_lesions(r["path"]) == truth.lesions
            x, y, w, h = truth.lesions[0]
            assert (w + h) / 2 * mpp / 1000 == pytest.approx(float(r["lesion_mm"]), rel=0.3, abs=0.01)
        with openslide.OpenSlide(r["path"]) as slide:
            assert float(slide.properties["openslide.mpp-x"]) == mpp
            assert slide.properties["aperio.AppMag"] == ("40" if mpp == 0.25 else "20")


def test_a_second_call_rewrites_nothing(cohort):
    manifest, rows, _ = cohort
    files = [Path(r["path"]) for r in rows] + [Path(r["path"]).with_suffix(".lesions.json") for r in rows]
    before = {f: f.stat().st_mtime_ns for f in files}
    text = manifest.read_text()
    calls = []
    again = make_lesion_benchmark(manifest.parent, N, seed=3, **SMALL, on_slide=lambda i, n: calls.append(i))
    assert again == manifest and manifest.read_text() == text
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert calls == list(range(1, N + 1))


def test_a_120_slide_plan_is_stratified_by_label_stratum_and_scanner():
    plans = plan_benchmark(120, seed=0)
    assert Counter(p.split for p in plans) == {"train": 64, "val": 16, "test": 40}
    assert Counter(p.label for p in plans) == {0: 60, 1: 60}
    assert Counter((p.label, p.mpp) for p in plans) == {(lab, m): 30 for lab in (0, 1) for m in (0.25, 0.5)}
    for label in (0, 1):
        for split, share in (("train", 32), ("val", 8), ("test", 20)):
            mine = [p for p in plans if p.label == label and p.split == split]
            assert len(mine) == share
            assert abs(sum(p.mpp == 0.25 for p in mine) - share / 2) <= 1
    tumors = [p for p in plans if p.label == 1]
    for stratum in ("<0.5mm", "0.5-2mm"):
        mine = [p for p in tumors if p.stratum == stratum]
        assert abs(sum(p.split == "test" for p in mine) - len(mine) / 3) <= 1
        assert abs(sum(p.split == "val" for p in mine) - len(mine) * 2 / 15) <= 1
    assert plan_benchmark(120, seed=0) == plans and plan_benchmark(120, seed=1) != plans


def test_lesion_diameters_are_log_uniform_from_0_1_to_2_mm():
    d = np.array([p.lesion_mm for p in plan_benchmark(3000, seed=5) if p.label == 1])
    assert len(d) == 1500 and d.min() >= 0.1 and d.max() <= 2.0
    u = np.sort(np.log(d / 0.1) / math.log(20))  # uniform on [0, 1] under the law
    ks = np.max(np.abs(u - (np.arange(1, len(u) + 1) - 0.5) / len(u)))
    assert ks < 0.04  # Kolmogorov-Smirnov: the 1 % critical value for n = 1500 is 0.042
    assert np.mean(d < 0.5) == pytest.approx(math.log(5) / math.log(20), abs=0.04)  # 0.537
    follicles = Counter(p.n_decoys for p in plan_benchmark(3000, seed=5))
    assert set(follicles) == {3, 4, 5, 6} and min(follicles.values()) > 600


def _lesion_stats(slide_path, size: int = 64):
    """Mean RGB and sqrt band powers of lesion-interior patches read at 0.5 µm/px (grey, 3 frequency bands)."""
    truth = load_synthetic_slide(slide_path)
    x, y, w, h = truth.lesions[0]
    with open_slide(slide_path) as slide, PatchReader(slide, mpp=0.5, patch_size=size, workers=1) as reader:
        assert reader.downsample == pytest.approx(0.5 / truth.mpp)
        step, half = size * reader.downsample, 0.3 * min(w, h)
        xs = np.arange(x + w / 2 - half, x + w / 2 + half - step, step)
        ys = np.arange(y + h / 2 - half, y + h / 2 + half - step, step)
        xy = np.array([(a, b) for a in xs for b in ys], int)
        patches = reader.read(xy).numpy().transpose(0, 2, 3, 1).astype(np.float64)
    grey = patches.mean(axis=3)
    power = np.abs(np.fft.rfft2(grey - grey.mean(axis=(1, 2), keepdims=True))) ** 2
    k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])  # cycles per 0.5 µm px
    bands = [(1 / 64, 1 / 32), (1 / 32, 1 / 16), (1 / 16, 1 / 8)]  # 32–64, 16–32 (nuclei), 8–16 µm
    return patches.mean(axis=(0, 1, 2)), np.sqrt([power[:, (k >= a) & (k < b)].mean() for a, b in bands])


def test_a_0_25_slide_read_at_0_5_looks_like_a_0_5_slide(tmp_path):
    """Same tissue, same stain, two scanners: at 0.5 µm/px the lesion's colour and nucleus-scale texture agree.

    Tolerance: mean RGB within 3 grey levels; band powers within 12 %. The
    control, a 0.25 µm/px slide with pixel-sized textures (texture_scale=1,
    nuclei half as wide in µm), misses by more than 25 % in a band.
    """
    common = dict(n_lesions=1, n_decoys=0, seed=5, stain_seed=9, lesion_size_um=(800.0, 800.0))
    half = write_synthetic_slide(tmp_path / "half.svs", 4000, 3000, mpp=0.5, **common)
    quarter = write_synthetic_slide(tmp_path / "quarter.svs", 8000, 6000, mpp=0.25, texture_scale=2, **common)
    control = write_synthetic_slide(tmp_path / "control.svs", 8000, 6000, mpp=0.25, **common)
    colour_half, bands_half = _lesion_stats(half.path)
    colour_quarter, bands_quarter = _lesion_stats(quarter.path)
    colour_control, bands_control = _lesion_stats(control.path)
    assert np.abs(colour_quarter - colour_half).max() < 3
    assert np.abs(bands_quarter / bands_half - 1).max() < 0.12
    assert np.abs(bands_control / bands_half - 1).max() > 0.25


def test_new_arguments_are_recorded_only_when_given(tmp_path):
    plain = write_synthetic_slide(tmp_path / "plain.svs", 1024, 768, n_lesions=1, n_decoys=1,
                                  lesion_size_um=(60.0, 120.0), tile_size=128)
    params = load_params(plain.path)
    assert not {"decoy_size_um", "texture_scale", "stain_seed"} & set(params)
    scaled = write_synthetic_slide(tmp_path / "scaled.svs", 2048, 1536, mpp=0.25, n_lesions=1, n_decoys=2,
                                   lesion_size_um=(60.0, 60.0), decoy_size_um=(30.0, 40.0), texture_scale=2,
                                   stain_seed=4, tile_size=128)
    params = load_params(scaled.path)
    assert (params["decoy_size_um"], params["texture_scale"], params["stain_seed"]) == ([30.0, 40.0], 2, 4)
    for x, y, w, h in scaled.decoys:
        assert 30 * 0.7 <= (w + h) / 2 * 0.25 <= 40 * 1.3 + 4
    with pytest.raises(ValueError, match="texture_scale must be a positive integer"):
        write_synthetic_slide(tmp_path / "bad.svs", 1024, 768, texture_scale=1.5)
    with pytest.raises(ValueError, match="decoy_size_um must be"):
        write_synthetic_slide(tmp_path / "bad.svs", 1024, 768, decoy_size_um=(50.0, 10.0))


def load_params(path: Path) -> dict:
    import json

    return json.loads(path.with_suffix(".lesions.json").read_text())["params"]


# sha256 of slides written by the code before make_lesion_benchmark (commit 5cf91d4), with
# libjpeg-turbo through imagecodecs: the old arguments must give the same bytes.
_OLD_SET = {
    "slide_000.svs": "045189f89b4369fef9ddfdc0e616879904cf52f1d86a9efe94d5a69ce22183b9",
    "slide_000.lesions.json": "4d4a0e813f006bfb80e83d03a335aac95ea8a62cea067ee8a5b7f4d6c4d08b5e",
    "slide_001.svs": "061a8acda3ff3e9dd9370544b98d1c46f462d5c5d997c3df5081d49035d5e578",
    "slide_001.lesions.json": "9262dec1225243f98d00a163fde432c00ca353ead5870d474177e022a243725a",
}
_OLD_QUARTER = "71f80720eb8a8668d37c35921f5f6ead2220f0b49c4b60cfca3889e86ece8dae"


def test_old_arguments_still_write_the_same_bytes(tmp_path):
    make_slide_set(tmp_path / "set", n_slides=2, size=(1024, 768), seed=7, n_lesions=(1, 1), n_spots=(2, 2),
                   lesion_size_um=(60.0, 120.0), tile_size=128)
    got = {name: hashlib.sha256((tmp_path / "set" / name).read_bytes()).hexdigest() for name in _OLD_SET}
    assert got == _OLD_SET
    # an mpp other than 0.5 keeps its pixel-sized textures unless texture_scale is given
    old = write_synthetic_slide(tmp_path / "q.svs", 1536, 1024, mpp=0.25, n_lesions=1, n_decoys=1, seed=11,
                                tile_size=128, lesion_size_um=(60, 100))
    assert hashlib.sha256(old.path.read_bytes()).hexdigest() == _OLD_QUARTER


def test_slides_are_written_alike_by_a_pool_of_workers(tmp_path):
    kw = dict(size_mm=(1.2, 1.0), mpps=(0.5,), lesion_mm=(0.1, 0.3), decoy_mm=(0.1, 0.15), n_decoys=(3, 3))
    one = make_lesion_benchmark(tmp_path / "one", 3, seed=2, **kw)
    calls = []
    two = make_lesion_benchmark(tmp_path / "two", 3, seed=2, workers=2, on_slide=lambda i, n: calls.append((i, n)),
                                **kw)
    assert sorted(calls) == [(1, 3), (2, 3), (3, 3)]
    for i in range(3):
        name = f"slide_{i:03d}.svs"
        assert (one.parent / name).read_bytes() == (two.parent / name).read_bytes()
    assert one.read_text().replace(str(one.parent.resolve()), "") == two.read_text().replace(
        str(two.parent.resolve()), "")


def test_bad_arguments_and_a_lesion_too_large_for_the_slide_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"every mpp must be 0.5 / k"):
        make_lesion_benchmark(tmp_path, 2, mpps=(0.3,))
    with pytest.raises(ValueError, match=r"lesion_mm must be"):
        make_lesion_benchmark(tmp_path, 2, lesion_mm=(2.0, 0.1))
    with pytest.raises(ValueError, match=r"cannot fit 1 lesions"):
        make_lesion_benchmark(tmp_path, 2, seed=0, size_mm=(1.0, 1.0), mpps=(0.5,), lesion_mm=(0.9, 0.9),
                              positive_fraction=1.0)
