"""ModelConfig checks itself: a library user who writes ModelConfig(...) meets the same rules
as a --config file or a checkpoint, as one typed error naming every broken key."""
from __future__ import annotations

import numpy as np
import pytest

from ats_wsi.classifier import ModelConfig
from ats_wsi.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("kw, says", [
    (dict(n_patches=0), "'n_patches' must be in 1..65536, got 0"),
    (dict(predict_patches=0), "'predict_patches' must be in 1..65536, got 0"),
    (dict(predict_patches=1 << 17), "'predict_patches' must be in 1..65536"),
    (dict(predict_patches=2.5), "'predict_patches': expected an integer, got 2.5"),
    (dict(predict_patches=4096, zoom_mpp=2.0, zoom_regions=32, zoom_size=256.0, patch_mpp=0.5),
     "'zoom_regions' (--zoom-regions) x 'predict_patches' (--predict-patches) = 32 x 4096"),
    (dict(patch_size="128"), "'patch_size': expected an integer, got '128'"),
    (dict(patch_size=10**6), "'patch_size' must be in 1..4096"),
    (dict(replace=1), "'replace': expected true or false"),
    (dict(low_downsample=0.5), "'low_downsample' must be a finite number >= 1"),
    (dict(patch_mpp=1e-7), "'patch_mpp' must be µm/px in 0.01..1000"),
    (dict(std=(0.5, 0.0, 0.5)), "'std' must be 3 numbers > 0"),
    (dict(class_names=["only one"]), "'class_names' has 1 names but 'n_classes' is 2"),
])
def test_a_config_built_in_code_is_checked(kw, says):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**kw)
    assert says in str(info.value)


def test_every_problem_is_named_at_once_and_good_values_pass():
    with pytest.raises(ConfigError, match=r"'feature_dim'.*'n_patches'"):
        ModelConfig(n_patches=-1, feature_dim=0)
    cfg = ModelConfig(n_patches=np.int64(8), low_downsample=np.float32(32), mean=[0.1, 0.2, 0.3])
    assert cfg.n_patches == 8 and ModelConfig.from_dict(cfg.to_dict()).mean == (0.1, 0.2, 0.3)


def test_a_checkpoint_and_a_user_file_keep_their_own_error_types():
    with pytest.raises(CheckpointError, match="model.pt: its model config is out of range.*'n_patches'"):
        ModelConfig.from_dict({"n_patches": 0}, path="model.pt")
    with pytest.raises(ConfigError, match=r"^cfg.json: 'patch_size' must be in 1..4096, got 5000$"):
        ModelConfig.from_user({"patch_size": 5000}, source="cfg.json")
