"""Training read-ahead with a frozen encoder's feature cache: only the boxes the cache lacks are read
ahead, the cache's own lookup decides, and the run is the same bit for bit as without read-ahead."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from encoder_helpers import spec_dict

from ats_wsi.classifier import ModelConfig, read_checkpoint
from ats_wsi.encoders import FeatureCache
from ats_wsi.run.train import TrainSettings, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_holds_answers_without_counting_or_reading(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    boxes = np.array([[0, 0, 32, 32], [32, 0, 32, 32]])
    cache.put("g/s-x", boxes[:1], np.ones((1, 4), np.float32))
    assert cache.holds("g/s-x", boxes) == [True, False]
    assert cache.holds("other", boxes) == [False, False]
    assert cache.take_stats()["hits"] == 0 and cache.take_stats()["misses"] == 0


def test_a_cached_frozen_encoder_trains_the_same_with_and_without_read_ahead(tiny_files, slides, tmp_path):
    spec = spec_dict("export", tiny_files["export"])
    config = ModelConfig(n_patches=4, patch_size=spec["patch_px"], patch_mpp=spec["mpp"], low_downsample=16.0,
                         feature_spec=spec, feature_frozen=True, feature_dim=spec["dim"], feature_adapter=8,
                         attention_kwargs={"hidden": 4, "layers": 1, "pool": 4})
    runs = {}
    for ahead in (False, True):
        settings = TrainSettings(epochs=2, batch_size=2, lr=1e-2, workers=1, check_tiles=0, read_ahead=ahead,
                                 feature_cache=str(tmp_path / f"cache-{ahead}"))
        history = train(slides["manifest"], tmp_path / f"run-{ahead}", config, settings, progress=False)
        runs[ahead] = history, read_checkpoint(tmp_path / f"run-{ahead}" / "last.pt")["state_dict"]
    (serial, w_serial), (ahead, w_ahead) = runs[False], runs[True]
    assert all(torch.equal(w_serial[k], w_ahead[k]) for k in w_serial)
    for a, b in zip(serial, ahead, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "feature_hits", "feature_misses"):
            x, y = getattr(a, key), getattr(b, key)
            assert x == y or (math.isnan(x) and math.isnan(y)), key
    # epoch 1: the cache is empty, the second slide of the batch is read ahead and its misses served from it
    assert ahead[0].read_ahead_slides == 1 and serial[0].read_ahead_slides == 0
