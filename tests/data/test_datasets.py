"""SlideDataset and collate_slides: manifests, low views, masks, DataLoader workers."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ats_wsi import open_slide
from ats_wsi.data import SlideDataset, SlideRef, collate_slides
from ats_wsi.errors import ManifestError
from ats_wsi.slide import FILL_VALUE


@pytest.fixture
def manifest(tmp_path, vips_jpeg, tiff_pyramid_deflate, svs_jpeg):
    """A manifest in its own folder with relative paths:
    a.tif = vips_jpeg (5000 x 3000, levels 1, 2, 4, ...), b.tif = tiff_pyramid_deflate
    (2999 x 1999, levels 1, 2, 4, 8), c.svs = svs_jpeg (4000 x 2400, levels 1, 4, 16)."""
    folder = tmp_path / "set"
    (folder / "slides").mkdir(parents=True)
    for name, sf in (("a.tif", vips_jpeg), ("b.tif", tiff_pyramid_deflate), ("c.svs", svs_jpeg)):
        shutil.copy(sf.path, folder / "slides" / name)
    path = folder / "manifest.csv"
    path.write_text("path,label,split\nslides/a.tif,1,train\nslides/b.tif,0,train\nslides/c.svs,1,val\n")
    return path


def test_items_hold_the_low_view_its_mask_label_and_a_slide_ref(manifest):
    dataset = SlideDataset(manifest, low_downsample=8)
    assert len(dataset) == 3 and dataset.labels == [1, 0, 1]
    item = dataset[0]
    path = str((manifest.parent / "slides" / "a.tif").resolve())
    assert item["path"] == path and item["label"] == 1 and item["backend"] == "tifffile"
    assert item["slide"] == SlideRef(path, "tifffile")
    assert item["downsample"] == 8.0 and item["level"] == 3
    assert item["low"].dtype == torch.uint8 and item["low"].shape == (3, 375, 625)
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (375, 625)
    with open_slide(path) as slide:
        np.testing.assert_array_equal(item["low"].permute(1, 2, 0).numpy(), slide.read_level(3))
    assert 0.1 < item["mask"].float().mean() < 0.9  # tissue and glass both present
    dataset.close()


def test_a_level_more_than_1_percent_off_is_resampled_to_the_exact_downsample(manifest):
    dataset = SlideDataset(manifest, low_downsample=10)  # nearest level: 8 (25 % off)
    item = dataset[0]
    assert item["downsample"] == 10.0 and item["low"].shape == (3, 300, 500)
    assert item["mask"].shape == (300, 500)
    near = SlideDataset(manifest, low_downsample=4.03)[2]  # svs level 1 is 4.0: within 1 %, kept
    assert near["downsample"] == 4.0 and near["low"].shape == (3, 600, 1000) and near["level"] == 1


def test_low_mpp_picks_the_downsample_from_each_slides_resolution(manifest):
    item = SlideDataset(manifest, low_mpp=4.0)[0]  # 0.25 µm/px at level 0: downsample 16
    # level 4 is 312 x 187 (libvips floors): downsample 16.03, within 1 % of 16, so kept as it is
    with open_slide(item["path"]) as slide:
        assert item["downsample"] == slide.level_downsamples[4] and item["level"] == 4
        assert item["low"].shape == (3, 187, 312) and slide.level_dimensions[4] == (312, 187)


def test_split_keeps_only_its_rows(manifest):
    assert [i["label"] for i in SlideDataset(manifest, low_downsample=16, split="val")] == [1]


@pytest.mark.parametrize("text, match", [
    ("file,label\na.tif,1\n", "missing column"),
    ("path,label\nslides/a.tif,yes\n", "not a non-negative integer"),
    ("path,label\n,1\n", "empty path"),
    ("path,label\nslides/nope.tif,1\n", "do not exist"),
])
def test_bad_manifests_are_manifest_errors(manifest, text, match):
    bad = manifest.parent / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ManifestError, match=match):
        SlideDataset(bad, low_downsample=8)


def test_exactly_one_resolution_is_asked_for(manifest):
    with pytest.raises(TypeError):
        SlideDataset(manifest)
    with pytest.raises(TypeError):
        SlideDataset(manifest, low_downsample=8, low_mpp=2.0)
    with pytest.raises(ManifestError):
        SlideDataset(manifest.parent / "missing.csv", low_downsample=8)


def test_collate_pads_to_the_largest_view_and_masks_the_padding(manifest):
    dataset = SlideDataset(manifest, low_downsample=16)
    items = [dataset[i] for i in range(3)]
    batch = collate_slides(items)
    shapes = [tuple(i["low"].shape[-2:]) for i in items]
    height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
    assert batch["low"].shape == (3, 3, height, width) and batch["mask"].shape == (3, height, width)
    assert batch["shape"].tolist() == [list(s) for s in shapes]
    assert batch["label"].tolist() == [1, 0, 1] and batch["downsample"].dtype == torch.float64
    for b, (h, w) in enumerate(shapes):
        torch.testing.assert_close(batch["low"][b, :, :h, :w], items[b]["low"])
        torch.testing.assert_close(batch["mask"][b, :h, :w], items[b]["mask"])
        assert (batch["low"][b, :, h:] == FILL_VALUE).all() and (batch["low"][b, :, :, w:] == FILL_VALUE).all()
        assert not batch["mask"][b, h:].any() and not batch["mask"][b, :, w:].any()
    assert [r.path for r in batch["slide"]] == batch["path"]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_with_two_worker_processes_gives_the_in_process_batches(manifest, context):
    dataset = SlideDataset(manifest, low_downsample=16)
    expected = collate_slides([dataset[i] for i in range(3)])  # the main process now holds open slides
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_slides,
                        multiprocessing_context=context)
    (batch,) = list(loader)
    for key in ("low", "mask", "shape", "label", "downsample", "level"):
        torch.testing.assert_close(batch[key], expected[key], rtol=0, atol=0)
    assert batch["path"] == expected["path"] and batch["slide"] == expected["slide"]
    with batch["slide"][1].open() as slide:  # the ref opens the slide where the patches are read
        assert slide.dimensions == (2999, 1999)
    dataset.close()


def test_the_pickled_dataset_carries_no_open_slide(manifest):
    dataset = SlideDataset(manifest, low_downsample=16)
    dataset[0]
    assert len(dataset._open) == 1
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone._open) == 0
    torch.testing.assert_close(clone[0]["low"], dataset[0]["low"])
    dataset.close()
    clone.close()
