"""The feature cache on a folder it cannot trust (issue 26): tampered, broken or foreign
shards are misses (recomputed, rewritten, counted), never a hang, an error row or NaN;
a warm cache reads no pixels and says so; a full disk names the cache folder."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_helpers import spec_dict

from ats_wsi.classifier import ModelConfig, build_model
from ats_wsi.encoders import FeatureCache, attach_feature_cache
from ats_wsi.errors import OutputError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _model(tiny_files):
    spec = spec_dict("export", tiny_files["export"])
    torch.manual_seed(0)
    return build_model(ModelConfig(n_patches=4, patch_size=spec["patch_px"], patch_mpp=spec["mpp"],
                                   low_downsample=16.0, feature_spec=spec, feature_frozen=True,
                                   feature_dim=spec["dim"], attention_kwargs={"hidden": 4, "layers": 1, "pool": 4}))


def _predict(model, slide):
    return model.predict(slide, samples=2, seed=3, workers=1)


def _shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.npz") if p.is_file())


def test_a_warm_cache_reads_no_pixels_and_counts_none(tiny_files, slides, tmp_path):
    model, slide = _model(tiny_files), slides["paths"][0]
    attach_feature_cache(model, tmp_path / "cache")
    cold = _predict(model, slide)
    box_w, box_h = cold.boxes_xywh[0, 2:]
    assert cold.patches_read > 0 and cold.pixels_read == cold.patches_read * box_w * box_h
    attach_feature_cache(model, FeatureCache(tmp_path / "cache"))
    warm = _predict(model, slide)
    assert warm.patches_read == 0 and warm.pixels_read == 0  # it was 8 boxes' worth before issue 26
    assert (warm.probabilities == cold.probabilities).all()


@pytest.mark.parametrize("damage", ["nan", "truncated", "empty", "wider"])
def test_untrusted_shards_are_recomputed_rewritten_and_counted(tiny_files, slides, tmp_path, damage):
    model, slide, folder = _model(tiny_files), slides["paths"][0], tmp_path / "cache"
    plain = _predict(model, slide)
    attach_feature_cache(model, folder)
    _predict(model, slide)
    shards = _shards(folder)
    assert shards
    for shard in shards:
        with np.load(shard) as data:
            boxes, features = data["boxes"], data["features"]
        if damage == "nan":
            np.savez(shard.with_suffix(""), boxes=boxes, features=np.full_like(features, np.nan))
        elif damage == "truncated":
            shard.write_bytes(shard.read_bytes()[:200])
        elif damage == "empty":
            shard.write_bytes(b"")
        else:
            np.savez(shard.with_suffix(""), boxes=boxes, features=np.ones((len(boxes), features.shape[1] + 2)))
    os.mkfifo(shards[0].parent / "fifo.npz")  # never opened (np.load would wait for a writer for ever)
    cache = attach_feature_cache(model, FeatureCache(folder))
    again = _predict(model, slide)
    stats = cache.take_stats()
    assert np.array_equal(again.probabilities, plain.probabilities), "a tampered shard changed the prediction"
    assert stats["broken"] == len(shards) + 1 and stats["hits"] == 0 and stats["misses"] > 0
    assert all(not p.exists() for p in shards)  # the broken files are gone, the FIFO is left alone
    assert (shards[0].parent / "fifo.npz").exists()
    cache = attach_feature_cache(model, FeatureCache(folder))  # a later run trusts the rewritten shards
    third = _predict(model, slide)
    stats = cache.take_stats()
    assert stats["misses"] == 0 and stats["broken"] == 1 and third.patches_read == 0
    assert np.array_equal(third.probabilities, plain.probabilities)


@contextlib.contextmanager
def _tmpfs(target: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")
    target.mkdir(parents=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {got.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_full_disk_under_the_cache_names_the_cache_folder(tmp_path):
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        cache = FeatureCache(disk / "cache")
        boxes = np.arange(4000 * 4).reshape(-1, 4)
        with pytest.raises(OutputError) as info:
            cache.put("g", boxes, np.ones((len(boxes), 16), np.float32))  # 320 KB: more than the disk
        assert info.value.path == str(disk / "cache")
        assert "feature cache folder: no space left" in str(info.value) and "--feature-cache" in str(info.value)
