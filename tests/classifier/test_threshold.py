"""The predicted class of a two-class model: P(class 1) >= the checkpoint's validation threshold
(Youden's J, chosen in training), or a threshold given for a run; the arg-max without one."""
import math

import numpy as np
import pytest
import torch

from ats_wsi.classifier import ModelConfig, build_model, load_model
from ats_wsi.classifier.checkpoint import save_checkpoint, stored_threshold

TINY = dict(n_patches=4, patch_size=32, feature_dim=6, low_downsample=8.0)


def test_decide_cuts_two_classes_at_the_threshold_and_takes_the_argmax_without_one():
    model = build_model(ModelConfig(**TINY))
    assert model.threshold is None
    assert model.decide([0.7, 0.3]) == 0 and model.decide([0.4, 0.6]) == 1
    model.threshold = 0.25
    assert model.decide([0.7, 0.3]) == 1 and model.decide([0.76, 0.24]) == 0
    assert model.decide([0.75, 0.25]) == 1  # at the threshold: class 1 (P >= T, as the operating point)
    three = build_model(ModelConfig(**TINY, n_classes=3))
    three.threshold = 0.01  # never used beyond two classes
    assert three.decide([0.5, 0.2, 0.3]) == 0


def test_sampling_sets_the_threshold_for_a_block_and_restores_it():
    model = build_model(ModelConfig(**TINY))
    model.threshold = 0.8
    with model.sampling(None, threshold=0.1):
        assert model.threshold == 0.1
    assert model.threshold == 0.8
    with pytest.raises(RuntimeError), model.sampling(None, threshold=0.3):
        raise RuntimeError
    assert model.threshold == 0.8
    with model.sampling(None):  # not given: the model's own
        assert model.threshold == 0.8


@pytest.mark.parametrize("metrics, n_classes, want", [
    ({"val_threshold": 0.82}, 2, 0.82),
    ({"val_threshold": 0}, 2, 0.0),
    ({"val_threshold": float("nan")}, 2, None),  # no validation split
    ({}, 2, None),  # an older checkpoint
    ({"val_threshold": 1.5}, 2, None),  # not a probability
    ({"val_threshold": True}, 2, None),
    ({"val_threshold": 0.4}, 3, None),  # more classes: the arg-max
])
def test_the_stored_threshold_is_a_finite_probability_of_a_two_class_model(metrics, n_classes, want):
    config = ModelConfig(**TINY, n_classes=n_classes)
    assert stored_threshold({"metrics": metrics}, config) == want


def test_load_model_decides_at_the_checkpoints_threshold_and_predict_can_override_it(tmp_path, svs_jpeg):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    p1 = float(model.predict(svs_jpeg.path, seed=3).probabilities[1])
    below, above = max(p1 - 0.01, 0.0), min(p1 + 0.01, 1.0)
    save_checkpoint(tmp_path / "a.pt", model, metrics={"val_threshold": above})
    save_checkpoint(tmp_path / "b.pt", model, metrics={"val_threshold": float("nan")})
    loaded = load_model(tmp_path / "a.pt")
    assert loaded.threshold == above
    pred = loaded.predict(svs_jpeg.path, seed=3)
    assert math.isclose(pred.probabilities[1], p1, abs_tol=1e-6)
    assert pred.predicted == 0  # P(class 1) just under the stored threshold
    assert loaded.predict(svs_jpeg.path, seed=3, threshold=below).predicted == 1
    assert loaded.threshold == above  # restored after the call
    plain = load_model(tmp_path / "b.pt")
    assert plain.threshold is None
    assert plain.predict(svs_jpeg.path, seed=3).predicted == int(np.argmax(pred.probabilities))


def test_info_names_the_decision_rule_of_a_checkpoint_with_a_threshold(tmp_path):
    from ats_wsi.cli.info import checkpoint_lines

    model = build_model(ModelConfig(**TINY, class_names=["normal", "tumor"]))
    save_checkpoint(tmp_path / "a.pt", model, metrics={"val_threshold": 0.8204})
    save_checkpoint(tmp_path / "b.pt", model, metrics={"val_threshold": float("nan")})
    rule = "predicted: tumor when P(tumor) >= 0.820 (Youden's J on the validation slides), else normal"
    assert rule in checkpoint_lines(tmp_path / "a.pt")
    assert not any(line.startswith("predicted:") for line in checkpoint_lines(tmp_path / "b.pt"))
