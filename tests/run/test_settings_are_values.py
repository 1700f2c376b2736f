"""Settings are values: predict_slides and SlideInput leave what they are given as it was
(absolute paths, checkpoint id and run id live in the run's own copy; a lent slide keeps its µm/px)."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from ats_wsi.classifier import ModelConfig, SlideInput, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import ResolutionError
from ats_wsi.run.outdir import holding_results_folder
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.slide import open_slide

TINY = dict(n_patches=2, patch_size=64, feature_dim=8, low_downsample=16.0)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "one.svs"
    write_synthetic_slide(path, 1536, 1024, n_lesions=0, seed=5, mpp=0.5)
    return path


def test_predict_slides_leaves_the_callers_settings_as_given(slide, tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model(ModelConfig(**TINY)))
    monkeypatch.chdir(tmp_path)
    settings = PredictSettings(checkpoint="model.pt", out_dir="out")
    given = dataclasses.asdict(settings)
    rows, errors = predict_slides([slide], settings)
    assert errors == [] and len(rows) == 1 and (tmp_path / "out" / "predictions.csv").is_file()
    assert dataclasses.asdict(settings) == given  # relative paths, no checkpoint id, no run id


def test_the_lock_decorator_hands_the_run_a_copy_with_a_run_id(tmp_path):
    seen = []

    @holding_results_folder
    def run(slides, settings):
        seen.append(settings)

    given = PredictSettings(checkpoint="x.pt", out_dir=str(tmp_path / "out"))
    run([], given)
    run([], dataclasses.replace(given, run_id="0123456789ab"))
    assert given.run_id == "" and len(seen[0].run_id) == 12 and seen[0] is not given
    assert seen[1].run_id == "0123456789ab"  # a given id is kept


def test_a_lent_slide_keeps_its_mpp(slide):
    config = ModelConfig(**TINY)
    with open_slide(slide) as lent:
        with pytest.raises(ResolutionError, match=r"open_slide\(path, mpp=0.25\)"):
            SlideInput(lent, config, mpp=0.25)
        assert lent.mpp == 0.5 and not lent.mpp_given
        with SlideInput(lent, config, mpp=0.5) as item:  # the µm/px it already has: nothing to change
            assert item.slide is lent
    with SlideInput(os.fspath(slide), config, mpp=0.25) as item:  # a path: opened here, with the given µm/px
        assert item.slide.mpp == 0.25 and item.slide.mpp_given
