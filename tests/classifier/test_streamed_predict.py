"""predict reads the low view tile by tile (stream=True, the default) and gives what the
whole-view path (stream=False, the training path) gives: the same boxes for the same seed,
probabilities and attention equal up to float rounding (sums in another order)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, SlideInput, build_model
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.slide import open_slide, read_low_view, tissue_mask
from ats_wsi.slide.lowview import LowViewReader, TissueThreshold

TINY = dict(n_patches=5, patch_size=64, feature_dim=8, class_names=["benign", "tumour"])


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("streamed") / "wide.svs"
    write_synthetic_slide(path, 2560, 1536, n_lesions=1, seed=3)  # levels at 1, 4, 16
    return path


@pytest.mark.parametrize("extra", [
    dict(low_downsample=16.0),                          # a stored level, one tile
    dict(low_downsample=4.0),                           # 640 x 384: two tiles across, halos
    dict(low_downsample=6.0, min_tissue=0.3),           # area-resampled (ratio 1.5), a tissue fraction
    dict(low_downsample=4.0, replace=True),             # with replacement: torch.multinomial on the map
])
def test_streamed_predict_equals_the_whole_view(slide, extra):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, **extra)).eval()
    for seed in (0, 1):
        a = model.predict(slide, seed=seed, samples=2)
        b = model.predict(slide, seed=seed, samples=2, stream=False)
        np.testing.assert_array_equal(a.boxes_xywh, b.boxes_xywh)
        np.testing.assert_allclose(a.attention, b.attention, rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5)
        np.testing.assert_allclose(a.box_attention, b.box_attention, rtol=2e-5)
        assert (a.cell_size_xy, a.origin_xy, a.low_downsample) == (b.cell_size_xy, b.origin_xy, b.low_downsample)


def test_streamed_predict_never_reads_the_whole_low_view(slide, monkeypatch):
    from ats_wsi.sampling.streamed import BLOCK_PIXELS

    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, low_downsample=2.0)).eval()  # a 1280 x 768 view
    reads = []
    original = LowViewReader.read

    def spy(self, row0, col0, rows, cols):
        reads.append(rows * cols)
        return original(self, row0, col0, rows, cols)

    monkeypatch.setattr(LowViewReader, "read", spy)
    monkeypatch.setattr("ats_wsi.classifier.inputs.read_low_view", None)  # would fail if called
    model.predict(slide)
    # tiles of 512² plus a halo, strips of the mask pass of about BLOCK_PIXELS: never the whole view
    assert max(reads) <= max(600 ** 2, BLOCK_PIXELS + 1280 * 8) < 1280 * 768


@pytest.mark.parametrize("downsample", [4.0, 6.0, 5.3])
def test_low_view_regions_are_the_whole_view_cut(slide, downsample):
    with open_slide(slide) as s:
        view = read_low_view(s, downsample=downsample)
        reader = LowViewReader(s, downsample=downsample)
        assert reader.shape == view.image.shape[:2]
        rng = np.random.default_rng(0)
        rows, cols = reader.shape
        for _ in range(20):
            r0, c0 = int(rng.integers(0, rows - 1)), int(rng.integers(0, cols - 1))
            h, w = int(rng.integers(1, rows - r0 + 1)), int(rng.integers(1, cols - c0 + 1))
            np.testing.assert_array_equal(reader.read(r0, c0, h, w), view.image[r0:r0 + h, c0:c0 + w])


def test_tissue_threshold_from_regions_equals_the_whole_mask():
    rng = np.random.default_rng(1)
    rgb = np.full((90, 70, 3), 240, np.uint8)
    rgb[20:60, 10:50] = rng.integers(60, 200, (40, 40, 3), dtype=np.uint8)
    tissue = TissueThreshold()
    for r in range(0, 90, 32):
        for c in range(0, 70, 25):
            tissue.add(rgb[r:r + 32, c:c + 25])
    np.testing.assert_array_equal(tissue.mask(rgb), tissue_mask(rgb, never_empty=True))
    blank = TissueThreshold()
    blank.add(np.full((8, 8, 3), 240, np.uint8))
    assert blank.mask(np.full((3, 4, 3), 240, np.uint8)).all()  # nothing stands out: all tissue


def test_slide_input_reads_the_whole_view_only_when_asked(slide):
    with SlideInput(slide, ModelConfig(**TINY, low_downsample=4.0)) as item:
        assert item._view is None and item.low.shape == (384, 640)
        x_low, mask = item.low_inputs()
        assert tuple(x_low.shape) == (1, 3, 384, 640) and tuple(mask.shape) == (1, 384, 640)


def test_attention_cells_in_um_go_into_the_checkpoint_and_the_map(slide, tmp_path):
    import zarr

    from ats_wsi.classifier import save_checkpoint
    from ats_wsi.classifier.checkpoint import read_checkpoint
    from ats_wsi.outputs import read_attention_zarr, write_attention_zarr

    torch.manual_seed(0)
    config = ModelConfig(**TINY, low_mpp=8.0, low_downsample=None,
                         attention_net="attention-small", attention_kwargs={"hidden": 4, "layers": 2, "pool": 4})
    model = build_model(config).eval()
    assert model.attention_cell_um_xy() == (32.0, 32.0)  # 8 µm/px x a stride of 4
    payload = read_checkpoint(save_checkpoint(tmp_path / "m.pt", model))
    assert payload["attention_cell_um_xy"] == (32.0, 32.0)
    assert build_model(ModelConfig(**TINY, low_downsample=16.0)).attention_cell_um_xy() is None

    pred = model.predict(slide)  # a 0.5 µm/px slide: cells of 64 level-0 px
    assert pred.cell_size_xy == pytest.approx((64.0, 64.0), rel=0.02)
    path = write_attention_zarr(tmp_path / "a.zarr", pred.attention, cell_size_xy=pred.cell_size_xy,
                                origin_xy=pred.origin_xy, mpp=pred.mpp)
    um = zarr.open_group(str(path), mode="r").attrs["ats_wsi"]["cell_size_um_xy"]
    assert um == pytest.approx([pred.cell_size_xy[0] * 0.5, pred.cell_size_xy[1] * 0.5])
    assert um == pytest.approx([32.0, 32.0], rel=0.02)
    assert "cell_size_um_xy" not in read_attention_zarr(path).metadata
