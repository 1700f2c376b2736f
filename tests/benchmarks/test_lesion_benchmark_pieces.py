"""The lesion benchmark's pieces (benchmarks/lesion_encoder.py, lesion_dense.py, lesion_common.py):
the self-supervised encoder exports and loads back, dense features cover exactly the tissue
patches, gated ABMIL learns a separable toy problem, the HDF5 layout."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
h5py = pytest.importorskip("h5py")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import lesion_common  # noqa: E402
import lesion_dense  # noqa: E402
import lesion_encoder  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread is fastest, and fair to a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Four 1024 x 768 synthetic slides at 0.5 µm/px (one lesion / decoys of 100-150 µm) and their rows."""
    from ats_wsi.data.synthetic import make_slide_set

    folder = tmp_path_factory.mktemp("lesion_tiny")
    manifest = make_slide_set(folder / "set", n_slides=4, size=(1024, 768), seed=5, n_spots=(2, 2),
                              n_lesions=(1, 1), lesion_size_um=(100, 150))
    return manifest, lesion_common.read_cohort_slides(manifest)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """A SmallCNN (D=32) trained two SimCLR steps on 16 tiny patches, exported; (net, spec path, patches)."""
    _, rows = tiny
    torch.manual_seed(0)
    patches = lesion_encoder.sample_patches(rows, 16, seed=0)
    mean, std = lesion_encoder.pool_mean_std(patches)
    net, record = lesion_encoder.train_encoder(patches, dim=32, steps=2, batch=8, seed=0, mean=mean, std=std)
    assert record["steps"] == 2 and np.isfinite(record["loss_last10"])
    _, spec_path = lesion_encoder.export_encoder(net, tmp_path_factory.mktemp("enc"), mean=mean, std=std,
                                                 mpp=0.5, patch_px=128)
    return net, spec_path, patches


def test_patches_are_tissue_at_half_a_micron(tiny):
    _, rows = tiny
    patches = lesion_encoder.sample_patches(rows, 6, seed=1)
    assert patches.shape == (6, 3, 128, 128) and patches.dtype == torch.uint8
    assert patches.float().std() > 5  # not blank glass


def test_augment_keeps_shape_and_range():
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    v = lesion_encoder.augment(x, torch.Generator().manual_seed(0))
    assert v.shape == x.shape and v.dtype == torch.float32 and 0 <= float(v.min()) and float(v.max()) <= 1


def test_exported_encoder_loads_through_ats_wsi_with_equal_features(exported):
    from ats_wsi.encoders import build_encoder, load_spec

    net, spec_path, patches = exported
    spec = load_spec(str(spec_path))
    assert (spec.source, spec.mpp, spec.patch_px, spec.input_px, spec.dim, spec.pooling) == \
        ("export", 0.5, 128, 128, 32, "model")
    check = lesion_encoder.check_export(spec_path, net, patches[:5])
    assert check["shape"] == [5, 32] and check["max_abs_diff"] < 1e-5
    encoder = build_encoder(str(spec_path), frozen=True)  # the loader ats-wsi train uses
    assert encoder(patches[:3]).shape == (3, 32)  # dynamic batch: 3 was never seen at export


def _hand_grid(mask: np.ndarray, w: int, h: int, step: int, min_tissue: float) -> set:
    """Grid patches with tissue, by loops: each patch's share of mask cells (cells are a whole divisor of it)."""
    sy, sx = h // mask.shape[0], w // mask.shape[1]
    assert step % sx == 0 and step % sy == 0
    keep = set()
    for r in range(h // step):
        for c in range(w // step):
            cell = mask[r * step // sy:(r + 1) * step // sy, c * step // sx:(c + 1) * step // sx]
            if cell.mean() >= min_tissue:
                keep.add((c * step, r * step))
    return keep


def test_dense_features_cover_exactly_the_tissue_patches(tiny, exported, tmp_path):
    from ats_wsi.encoders import build_encoder
    from ats_wsi.patches import PatchReader

    _, rows = tiny
    net, spec_path, _ = exported
    encoder = build_encoder(str(spec_path), frozen=True)
    row = rows[0]
    rec = lesion_dense.encode_slide(encoder, row, tmp_path / "s.h5", min_tissue=0.25, batch=7)
    features, coords, attrs = lesion_dense.read_features(tmp_path / "s.h5")
    with lesion_common.open_cohort_slide(row) as slide:
        mask = slide.tissue_mask()
        want = _hand_grid(mask, 1024, 768, 128, 0.25)  # 128 px at 0.5 µm/px on a 0.5 µm/px slide
        assert 0 < len(want) < 48
        assert {tuple(c) for c in coords.tolist()} == want and len(coords) == len(want)
        assert rec["n_patches"] == attrs["n_patches"] == len(want) and not rec["cached"]
        pick = coords[[0, len(coords) - 1]]
        with torch.no_grad():
            direct = encoder(PatchReader(slide, mpp=0.5, patch_size=128).read(pick)).numpy()
    np.testing.assert_allclose(features[[0, len(coords) - 1]], direct, rtol=1e-5, atol=1e-5)


def test_grid_fraction_counts_mask_centres_on_a_non_square_slide():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 50)) < 0.4  # 3 level-0 px per mask cell; patches of 12 px: 4 x 4 cells
    frac = lesion_common.grid_tissue_fraction(mask, (150, 90), 12.0)
    assert frac.shape == (90 // 12, 150 // 12)
    for r in range(frac.shape[0]):
        for c in range(frac.shape[1]):
            assert frac[r, c] == pytest.approx(mask[4 * r:4 * r + 4, 4 * c:4 * c + 4].mean())


def test_hdf5_layout_and_resume(tiny, exported, tmp_path):
    from ats_wsi.encoders import build_encoder

    _, rows = tiny
    encoder = build_encoder(str(exported[1]), frozen=True)
    recs = lesion_dense.encode_cohort(encoder, rows[:2], tmp_path)
    folder = lesion_dense.feature_dir(tmp_path, encoder.spec)
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"{rows[0].name}.h5", f"{rows[1].name}.h5"]  # no temporaries left
    with h5py.File(folder / files[0], "r") as f:
        assert set(f.keys()) == {"features", "coords"}
        n = f["coords"].shape[0]
        assert f["features"].shape == (n, 32) and f["features"].dtype == np.float32
        assert f["coords"].shape == (n, 2) and f["coords"].dtype == np.int64
        ca = dict(f["coords"].attrs)
        assert ca["patch_size"] == 128 and ca["patch_level"] == 0 and ca["patch_size_level0"] == 128
        assert ca["patch_mpp"] == 0.5 and ca["level0_mpp"] == pytest.approx(0.5)
        assert ca["target_magnification"] == 20
        fa = dict(f.attrs)
        assert fa["n_patches"] == n and fa["dim"] == 32 and fa["spec_digest"] == encoder.spec.digest()
        assert fa["label"] == rows[0].label and fa["seconds"] > 0
    mtime = (folder / files[0]).stat().st_mtime_ns
    again = lesion_dense.encode_cohort(encoder, rows[:2], tmp_path)
    assert all(r["cached"] for r in again) and (folder / files[0]).stat().st_mtime_ns == mtime
    assert [r["n_patches"] for r in again] == [r["n_patches"] for r in recs]


def _toy_bags(rng, n, d=8):
    bags, labels = [], []
    for i in range(n):
        bag = rng.normal(size=(int(rng.integers(5, 15)), d)).astype(np.float32)
        label = i % 2
        if label:  # one "lesion" instance: far out along the first axis
            bag[rng.integers(len(bag)), 0] += 6.0
        bags.append(torch.from_numpy(bag))
        labels.append(label)
    return bags, labels


def test_gated_abmil_learns_a_separable_toy_problem():
    from ats_wsi.metrics import roc_auc

    rng = np.random.default_rng(0)
    train, ytr = _toy_bags(rng, 24)
    val, yval = _toy_bags(rng, 8)
    test, yte = _toy_bags(rng, 16)
    model, hist = lesion_dense.train_abmil(train, ytr, val, yval, epochs=10, lr=2e-3, hidden=32, attn=16, seed=0)
    assert 1 <= hist["best_epoch"] <= 10 and len(hist["history"]) == 10
    probs = lesion_dense.predict_bags(model, test)
    assert roc_auc(yte, probs) == 1.0
    model.eval()
    with torch.no_grad():
        logit, att = model(test[1])
    assert att.shape == (len(test[1]),) and float(att.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(att.argmax()) == int(test[1][:, 0].argmax())  # attention finds the lesion instance
    ev = lesion_dense.evaluate_split(yte, probs, ["normal" if y == 0 else "<0.5mm" for y in yte], resamples=50)
    assert ev["roc_auc"]["value"] == 1.0 and ev["per_stratum"]["normal"]["kind"] == "specificity"


def test_dense_grid_on_a_quarter_micron_slide_reads_256_level0_pixels_per_patch(exported, tmp_path):
    from ats_wsi.data.synthetic import write_synthetic_slide
    from ats_wsi.encoders import build_encoder

    path = tmp_path / "q.svs"
    write_synthetic_slide(path, 2048, 1536, mpp=0.25, n_lesions=0, n_decoys=0, seed=2)
    row = lesion_common.CohortSlide(path=path, label=0, split="test")
    encoder = build_encoder(str(exported[1]), frozen=True)
    lesion_dense.encode_slide(encoder, row, tmp_path / "q.h5")
    features, coords, _ = lesion_dense.read_features(tmp_path / "q.h5")
    with h5py.File(tmp_path / "q.h5", "r") as f:
        assert f["coords"].attrs["patch_size_level0"] == 256 and f["coords"].attrs["level0_mpp"] == 0.25
    with lesion_common.open_cohort_slide(row) as slide:
        want = _hand_grid(slide.tissue_mask(), 2048, 1536, 256, 0.25)
    assert {tuple(c) for c in coords.tolist()} == want and features.shape == (len(want), 32)


def test_cohort_rows_read_names_strata_and_lesion_size(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,mpp,lesion_mm,stratum\n"
                        "a.svs,tumor,train,0.25,0.31,<0.5mm\nb.svs,normal,test,0.5,,normal\n")
    a, b = lesion_common.read_cohort_slides(manifest)
    assert (a.label, a.split, a.mpp, a.lesion_mm, a.stratum) == (1, "train", 0.25, 0.31, "<0.5mm")
    assert (b.label, b.split, b.mpp, b.lesion_mm, b.stratum) == (0, "test", 0.5, None, "normal")
    assert a.path == tmp_path / "a.svs" and a.name == "a"
    boxes = {"lesions": [(0, 0, 1200, 800)], "decoys": []}  # 1200 px at 0.5 µm/px: 0.6 mm
    assert lesion_common.derived_stratum(a, boxes, 0.5) == "0.5-2mm"
    assert lesion_common.derived_stratum(b, boxes, 0.5) == "normal"


def test_patch_truth_marks_spot_cores_rims_and_other_tissue():
    boxes = {"lesions": [(0, 0, 400, 400)], "decoys": [(1000, 0, 400, 400)]}
    coords = np.array([[136, 136], [0, 0], [1136, 136], [600, 600], [380, 380]])
    assert lesion_common.patch_truth(coords, 128, boxes).tolist() == [2, -1, 1, 0, -1]
