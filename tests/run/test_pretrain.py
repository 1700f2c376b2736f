"""ats-wsi pretrain: SimCLR's loss and views, the patches it reads, the encoder it exports."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from ats_wsi.cli import main
from ats_wsi.encoders import build_encoder, load_spec
from ats_wsi.encoders.simclr import SimCLRNet, SimCLRSettings, augment, export_encoder, info_nce, train_simclr
from ats_wsi.errors import ConfigError
from ats_wsi.patches import PatchReader
from ats_wsi.run.pretrain import PretrainSettings, pretrain, sample_tissue_patches
from ats_wsi.slide import open_slide


def test_info_nce_equals_the_formula():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double().numpy()
    total = 0.0
    for i in range(10):
        sims = {j: float(z[i] @ z[j]) / 0.3 for j in range(10) if j != i}
        positive = (i + 5) % 10
        total += -sims[positive] + math.log(sum(math.exp(v) for v in sims.values()))
    assert float(info_nce(z1, z2, 0.3)) == pytest.approx(total / 10, rel=1e-5)


def test_identical_views_score_below_chance_and_random_ones_near_it():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(32, 16, generator=gen)
    chance = math.log(63)
    assert float(info_nce(z, z, 0.2)) < 0.25 * chance
    assert abs(float(info_nce(z, torch.randn(32, 16, generator=gen), 0.2)) - chance) < 0.25 * chance


def test_a_view_without_jitter_is_a_flip_or_quarter_turn_of_the_patch():
    gen = torch.Generator().manual_seed(2)
    patches = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=gen)
    views = augment(patches, torch.Generator().manual_seed(3), crop=(1.0, 1.0), hed=0.0, bright=0.0,
                    contrast=0.0, grey=0.0)
    x = patches.float() / 255
    for view, img in zip(views, x):
        turns = [torch.rot90(t, k, dims=(1, 2)) for t in (img, img.flip(2)) for k in range(4)]
        # the stain round trip (RGB -> optical density -> RGB) clamps values below 1/255
        assert min(float((view - t.clamp(1 / 255, 1)).abs().max()) for t in turns) < 1e-4


def test_views_are_random_in_range_and_repeatable():
    patches = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    a = augment(patches, torch.Generator().manual_seed(5))
    b = augment(patches, torch.Generator().manual_seed(5))
    c = augment(patches, torch.Generator().manual_seed(6))
    assert a.shape == patches.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.fixture(scope="module")
def two_textures():
    """64 patches of 32 px: half fine noise, half coarse blobs (the same mean colour)."""
    gen = torch.Generator().manual_seed(7)
    fine = torch.rand(32, 1, 32, 32, generator=gen)
    coarse = torch.nn.functional.interpolate(torch.rand(32, 1, 4, 4, generator=gen), size=32, mode="nearest")
    tint = torch.tensor([0.9, 0.5, 0.8]).view(1, 3, 1, 1)
    pixels = torch.cat([fine, coarse]).mul(0.6).add(0.2).mul(tint).mul(255).round().to(torch.uint8)
    return pixels, torch.tensor([0] * 32 + [1] * 32)


def test_simclr_lowers_its_loss_and_exports_what_it_learnt(two_textures, tmp_path):
    pixels, _ = two_textures
    steps = []
    net, record = train_simclr(pixels, SimCLRSettings(steps=24, batch=16, dim=16, seed=0),
                               on_step=lambda s, loss: steps.append(loss))
    assert len(steps) == 24 and record["patches"] == 64
    assert record["loss_last10"] < record["loss_first10"] - 0.3, record
    pt2, spec_path = export_encoder(net, tmp_path, mean=record["mean"], std=record["std"], mpp=0.5, patch_px=32)
    spec = load_spec(str(spec_path))
    assert (spec.mpp, spec.patch_px, spec.dim, spec.source) == (0.5, 32, 16, "export")
    encoder = build_encoder(spec, frozen=True)
    m, s = torch.tensor(record["mean"]).view(1, 3, 1, 1), torch.tensor(record["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = net((pixels.float() / 255 - m) / s)
        assert float((encoder(pixels) - direct).abs().max()) < 1e-4
    assert not any(p.name.startswith(".ats.tmp") for p in tmp_path.iterdir())


def test_bad_pools_and_settings_are_refused():
    with pytest.raises(ValueError, match="uint8 patches"):
        train_simclr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="steps >= 1"):
        train_simclr(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), SimCLRSettings(steps=0))
    assert SimCLRNet(dim=8)(torch.zeros(2, 3, 40, 40)).shape == (2, 8)


def test_patches_are_read_on_tissue_at_the_asked_resolution(svs_jpeg):
    rng = np.random.default_rng(0)
    patches = sample_tissue_patches(svs_jpeg.path, 12, mpp=1.0, patch_px=32, rng=rng, workers=1)
    assert patches.shape == (12, 3, 32, 32) and patches.dtype == torch.uint8
    # the same boxes through PatchReader at 1 µm/px give the same pixels
    with open_slide(svs_jpeg.path) as slide, PatchReader(slide, mpp=1.0, patch_size=32, workers=1) as reader:
        mask = np.asarray(slide.tissue_mask(), bool)
        rng = np.random.default_rng(0)
        rows, cols = np.nonzero(mask)
        pick = rng.integers(0, len(rows), size=12)
        w, h = slide.dimensions
        side = 32 * reader.resolution.downsample
        cx = (cols[pick] + rng.random(12)) * w / mask.shape[1]
        cy = (rows[pick] + rng.random(12)) * h / mask.shape[0]
        xy = np.clip(np.stack([cx - side / 2, cy - side / 2], 1).round().astype(np.int64), 0,
                     [w - side, h - side])
        assert torch.equal(reader.read(xy), patches)
        # every centre is on tissue
        mx = np.clip(((xy[:, 0] + side / 2) * mask.shape[1] / w).astype(int), 0, mask.shape[1] - 1)
        my = np.clip(((xy[:, 1] + side / 2) * mask.shape[0] / h).astype(int), 0, mask.shape[0] - 1)
        assert mask[my, mx].mean() >= 0.9


def _manifest(tmp_path, svs_jpeg, splits=("train", "train", "test")) -> str:
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "split"])
        for split in splits:
            w.writerow([svs_jpeg.path, split])
    return str(path)


def test_pretrain_reads_only_the_split_and_writes_encoder_spec_and_record(tmp_path, svs_jpeg):
    manifest = _manifest(tmp_path, svs_jpeg)
    settings = PretrainSettings(n_patches=9, mpp=1.0, patch_px=32, workers=1,
                                simclr=SimCLRSettings(steps=2, batch=4, dim=8))
    seen = []
    result = pretrain(manifest, tmp_path / "enc", settings, on_slide=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    assert len(result["slides"]) == 2 and result["training"]["patches"] == 9
    record = json.loads((tmp_path / "enc" / "pretrain.json").read_text())
    assert record["settings"]["simclr"]["steps"] == 2 and record["spec"] == result["spec"]
    assert load_spec(str(tmp_path / "enc" / "spec.json")).patch_px == 32
    with pytest.raises(ConfigError, match="no slide in split 'val'"):
        pretrain(manifest, tmp_path / "none", PretrainSettings(split="val"))


def test_cli_pretrain_prints_the_next_command_and_refuses_bad_values(tmp_path, svs_jpeg, capsys):
    manifest = _manifest(tmp_path, svs_jpeg)
    out = tmp_path / "enc"
    assert main(["pretrain", manifest, "--out", str(out), "--patches", "8", "--mpp", "1", "--patch-size", "32",
                 "--steps", "2", "--batch", "4", "--dim", "8", "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "SimCLR on 8 patches of 2 slides" in printed.out and str(out / "spec.json") in printed.out
    assert "--freeze-features" in printed.err or "frozen encoder" in printed.err
    assert sorted(p.name for p in out.iterdir()) == ["encoder.pt2", "pretrain.json", "spec.json"]
    assert main(["pretrain", manifest, "--out", str(out), "--mpp", "1000"]) == 1
    assert "--mpp" in capsys.readouterr().err


def test_colour_balanced_weights_give_each_colour_an_equal_share_above_the_floor():
    from ats_wsi.run.pretrain import colour_balanced_weights

    pink, purple, dark = [230, 160, 200], [120, 60, 160], [40, 20, 60]
    rgb = np.array([pink] * 87 + [purple] * 10 + [dark] * 3, np.uint8)
    w = colour_balanced_weights(rgb, floor=0.0)
    assert w.sum() == pytest.approx(1.0)
    assert [w[:87].sum(), w[87:97].sum(), w[97:].sum()] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    # a colour held at the floor (5 of 100 pixels): the 3 dark pixels weigh 3/5, not 1
    w = colour_balanced_weights(rgb, floor=0.05)
    assert [w[:87].sum(), w[87:97].sum(), w[97:].sum()] == pytest.approx([1 / 2.6, 1 / 2.6, 0.6 / 2.6])


@pytest.fixture(scope="module")
def rare_purple_slide(tmp_path_factory):
    """A tifffile pyramid (1 µm/px): pink tissue with a purple disc of 4 % of its area, on white glass."""
    import tifffile

    rng = np.random.default_rng(11)
    img = np.full((2048, 2048, 3), 245, np.uint8)
    yy, xx = np.mgrid[:2048, :2048]
    tissue = (abs(yy - 1024) < 768) & (abs(xx - 1024) < 768)
    disc = (yy - 700) ** 2 + (xx - 1300) ** 2 < (0.04 * 1536 ** 2 / np.pi)
    img[tissue] = [225, 150, 195]
    img[tissue & disc] = [120, 60, 160]
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    path = str(tmp_path_factory.mktemp("rare") / "rare.tif")
    with tifffile.TiffWriter(path) as tw:
        for k in range(4):
            level = img[::2 ** k, ::2 ** k]
            tw.write(np.ascontiguousarray(level), tile=(256, 256), compression="deflate", photometric="rgb",
                     subfiletype=1 if k else 0, metadata=None, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    return path


def test_balanced_draws_put_rare_tissue_in_the_pool(rare_purple_slide):
    def purple_share(balance):
        patches = sample_tissue_patches(rare_purple_slide, 300, mpp=1.0, patch_px=16, rng=np.random.default_rng(3),
                                        workers=1, balance=balance).float().mean(dim=(2, 3))
        return float((patches[:, 0] < 175).float().mean())  # red: 225 pink, 120 purple

    uniform, half, balanced = purple_share(0.0), purple_share(0.5), purple_share(1.0)
    assert uniform < 0.1  # 4 % of the tissue (300 draws: 12 expected, sd 3.4)
    assert balanced > 0.3 and half > 0.15  # two colours drawn about equally often (edges blur the bins)
    with pytest.raises(ValueError, match="balance"):
        sample_tissue_patches(rare_purple_slide, 4, mpp=1.0, patch_px=16, rng=np.random.default_rng(0), balance=2)
