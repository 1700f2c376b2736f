"""A model at a physical resolution (issue 16): ``ModelConfig.patch_mpp``.

A model trained (``ats_wsi.run.train``, 3 epochs on 4 small synthetic slides
at 0.5 µm/px, ~15-25 s) predicts a 0.25 µm/px copy of one of them (the same
tissue, every pixel repeated 2 x 2, written by tifffile with levels at 1, 4
and 16 only) with its attention peak in the same place, and reads the same
patches there.

Three tiny epochs leave the attention map flat (max / mean ~1.03 over the
tissue), so its peak would be a near tie. The peak test therefore sets the
trained model's attention by hand after training: the attention net is a
single 1 x 1 convolution over 4 x 4-pooled low pixels (``layers=0, pool=4``)
and its weights are set to ``-2`` per channel, so attention is a fixed
function of colour (darkness: the dark spots). The feature net and head stay
as trained.
"""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, SlideInput, build_model, load_model, save_checkpoint, slide_seed
from ats_wsi.data.synthetic import make_slide_set
from ats_wsi.errors import ResolutionError
from ats_wsi.run.train import TrainSettings, train
from ats_wsi.slide import open_slide

TINY_MPP = dict(n_patches=4, patch_size=48, feature_dim=8, low_mpp=8.0, low_downsample=None, patch_mpp=0.5,
                attention_kwargs={"layers": 0, "pool": 4})
SIZE = (1536, 1024)  # level 0 of the 0.5 µm/px slides (w, h): not square


def box_mean(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    s = img[:h, :w].astype(np.uint32).reshape(h // f, f, w // f, f, 3).sum(axis=(1, 3))
    return ((s + f * f // 2) // (f * f)).astype(np.uint8)


def write_finer_copy(src: str, dst: str, *, with_mpp: bool = True) -> str:
    """The slide's level 0 with every pixel repeated 2 x 2, as a 0.25 µm/px tifffile pyramid with
    levels at 1, 4 and 16 (exact block means; JPEG Q95): no level at the source's 0.5 µm/px."""
    import tifffile

    with open_slide(src) as slide:
        assert slide.mpp == pytest.approx(0.5)
        base = slide.read_level(0)
    fine = np.repeat(np.repeat(base, 2, axis=0), 2, axis=1)
    extra = dict(resolution=(40000.0, 40000.0), resolutionunit="CENTIMETER") if with_mpp else {}
    with tifffile.TiffWriter(dst) as tw:
        for k, lv in enumerate([fine, box_mean(fine, 4), box_mean(fine, 16)]):
            tw.write(lv, tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb",
                     metadata=None, subfiletype=1 if k else 0, **extra)
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, manifest rows, seconds): a tiny model trained 3 epochs on 4 slides at 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("mpp_train")
    manifest = make_slide_set(folder / "set", n_slides=4, size=SIZE, seed=11, lesion_size_um=(60.0, 120.0),
                              n_spots=(1, 2), val_fraction=0.0, test_fraction=0.0)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    train(manifest, folder / "run", ModelConfig(**TINY_MPP), TrainSettings(epochs=3, batch_size=2, workers=1),
          progress=False)
    seconds = time.perf_counter() - t0
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return load_model(folder / "run" / "last.pt"), rows, seconds


def test_the_checkpoint_keeps_patch_mpp_and_training_stays_small(trained):
    model, _, seconds = trained
    assert model.config.patch_mpp == 0.5 and model.config.mpp_tolerance == 0.05
    assert seconds < 90, seconds  # (measured ~15-25 s on 2 busy cores)


def test_a_model_trained_at_05_predicts_a_025_copy_with_the_same_attention_peak(trained, tmp_path):
    model, rows, _ = trained
    src = next(r["path"] for r in rows if r["label"] == "1")
    copy = write_finer_copy(src, str(tmp_path / "copy025.tif"))
    conv = model.sampler.attention_net[1].body[-1]  # [Normalize, AttentionNet]; body = [AvgPool2d, Conv2d 1x1]
    with torch.no_grad():
        conv.weight.fill_(-2.0)  # attention = softmax of darkness (see the module docstring)
        conv.bias.zero_()
    a = model.predict(src, deterministic=True)
    b = model.predict(copy, deterministic=True)
    assert (a.mpp, b.mpp) == (pytest.approx(0.5), pytest.approx(0.25))
    # the same low view in µm: the same grid of cells, in µm
    assert a.attention.shape == b.attention.shape
    np.testing.assert_allclose(np.asarray(a.cell_size_xy) * 0.5, np.asarray(b.cell_size_xy) * 0.25, rtol=1e-6)
    peak_a = np.unravel_index(np.argmax(a.attention), a.attention.shape)
    peak_b = np.unravel_index(np.argmax(b.attention), b.attention.shape)
    assert peak_a == peak_b, (peak_a, peak_b)
    inside = a.attention[a.attention > 0]  # (cells without tissue are masked to 0)
    assert a.attention.max() > 3 * inside.mean()  # a peak, not a flat map (measured: 21x the mean)
    assert np.corrcoef(a.attention.ravel(), b.attention.ravel())[0, 1] > 0.99  # (measured 0.9999)
    # the patches read: the same boxes in µm (level-0 boxes twice as large on the copy)
    assert (a.boxes_xywh[:, 2:] == 48).all() and (b.boxes_xywh[:, 2:] == 96).all()
    np.testing.assert_allclose(a.boxes_xywh[0] * 0.5, b.boxes_xywh[0] * 0.25, atol=1.0)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.01)  # (measured 2e-5 apart)


def test_boxes_at_patch_mpp_are_the_level0_boxes_of_what_was_read(trained, tmp_path):
    model, rows, _ = trained
    copy = write_finer_copy(rows[0]["path"], str(tmp_path / "copy.tif"))
    with SlideInput(copy, model.config) as item:
        assert (item.reader.level, item.reader.factor) == (0, 2)
        x_low, mask = item.low_inputs()
        source = item.source()
        gen = torch.Generator().manual_seed(slide_seed(copy, 4))
        with torch.no_grad():
            _, result = model(x_low, source, mask, generator=gen)
        seen = (result.patches[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pred = model.predict(item, seed=4)
        assert pred.boxes_xywh.shape == (4, 4) and (pred.boxes_xywh[:, 2:] == 96).all()
        for (x, y, w, h), patch in zip(pred.boxes_xywh.tolist(), seen):
            np.testing.assert_array_equal(box_mean(item.slide.read_region((x, y), 0, (w, h)), 2), patch)


def test_a_slide_without_mpp_names_itself_unless_one_is_given(trained, tmp_path):
    model, rows, _ = trained
    bare = write_finer_copy(rows[0]["path"], str(tmp_path / "bare.tif"), with_mpp=False)
    config = ModelConfig(**{**TINY_MPP, "low_mpp": None, "low_downsample": 32.0})  # low view by downsample
    with pytest.raises(ResolutionError) as info:
        SlideInput(bare, config)
    assert bare in str(info.value) and "0.5 µm/px" in str(info.value)
    with SlideInput(bare, config, mpp=0.25) as item:  # what a manifest's mpp column gives
        assert item.slide.mpp == 0.25 and (item.reader.level, item.reader.factor) == (0, 2)
    with open_slide(bare, mpp=0.25) as slide:  # what --mpp gives
        pred = model.predict(slide, deterministic=True)
        assert (pred.boxes_xywh[:, 2:] == 96).all()


def test_the_level_path_is_the_default_and_unchanged(tmp_path):
    config = ModelConfig()
    assert config.patch_mpp is None and config.patch_level == 0
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_patches=3, patch_size=32, feature_dim=4, patch_mpp=1.0))
    save_checkpoint(path, model)
    assert load_model(path).config.patch_mpp == 1.0


@pytest.mark.parametrize("flags, patch_mpp", [
    (["--patch-mpp", "0.5", "--patch-size", "224"], 0.5),
    (["--patch-magnification", "20"], 0.5),
    (["--patch-magnification", "40", "--mpp-tolerance", "0.02"], 0.25),
    (["--patch-level", "1"], None),
    ([], 0.5),  # the command's default is physical (docs/training.md)
])
def test_train_flags_set_patch_mpp_in_the_config(flags, patch_mpp):
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import model_config

    args = build_parser().parse_args(["train", "m.csv", "--out", "o", *flags])
    config = model_config(args)
    assert config.patch_mpp == patch_mpp
    if "--patch-size" in flags:
        assert config.patch_size == 224
    if "--mpp-tolerance" in flags:
        assert config.mpp_tolerance == 0.02


@pytest.mark.parametrize("flags, message", [
    (["--patch-mpp", "0.5", "--patch-level", "1"], "not both"),
    (["--patch-mpp", "-1"], "must be a number > 0"),
    (["--patch-magnification", "0"], "must be a number > 0"),
    (["--patch-mpp", "0.5", "--mpp-tolerance", "2"], "must be in [0, 1)"),
])
def test_bad_train_resolution_flags_are_refused(flags, message):
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import model_config

    args = build_parser().parse_args(["train", "m.csv", "--out", "o", *flags])
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace(")", r"\)")):
        model_config(args)
