"""predict_slides in process: resume keys, absolute paths, torch threads; and train's label check."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import ManifestError
from ats_wsi.classifier import save_checkpoint
from ats_wsi.classifier import ModelConfig, build_model
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.run.train import TrainSettings, train

TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "one.svs"
    write_synthetic_slide(path, 2048, 1536, n_lesions=0, seed=5)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(**TINY)))
    return path


def _run(checkpoint, slides, out, **kw):
    statuses = []
    rows, errors = predict_slides(slides, PredictSettings(checkpoint=str(checkpoint), out_dir=str(out), **kw),
                                  progress=lambda name, status: statuses.append(status))
    return rows, errors, statuses


def test_relative_paths_become_absolute_and_torch_threads_are_restored(checkpoint, slide, tmp_path, monkeypatch):
    monkeypatch.chdir(slide.parent)
    threads = torch.get_num_threads()
    rows, errors, statuses = _run(os.path.relpath(checkpoint), [slide.name], os.path.relpath(tmp_path / "out"),
                                  torch_threads=1)
    assert errors == [] and statuses == ["done"]
    assert rows[0]["slide"] == str(slide)  # as dask workers elsewhere need it
    assert torch.get_num_threads() == threads
    meta = json.loads((tmp_path / "out" / "maps" / "one.zarr" / ".zattrs").read_text())["ats_wsi"]
    assert meta["slide"] == str(slide)


def test_a_rerun_skips_only_what_the_same_settings_made(checkpoint, slide, tmp_path):
    out = tmp_path / "out"
    assert _run(checkpoint, [slide], out)[2] == ["done"]
    assert _run(checkpoint, [slide], out)[2] == ["skipped"]
    rows, _, statuses = _run(checkpoint, [slide], out, samples=2)
    assert statuses == ["done"] and rows[0]["patches_read"] == 2 * TINY["n_patches"]
    assert _run(checkpoint, [slide], out, samples=2)[2] == ["skipped"]
    assert _run(checkpoint, [slide], out, samples=2, seed=1)[2] == ["done"]


def test_train_rejects_labels_the_model_cannot_predict_before_reading_slides(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nnot-there-a.svs,0\nnot-there-b.svs,2\n")
    with pytest.raises(ManifestError, match=r"label 2, but the model has n_classes=2"):
        train(manifest, tmp_path / "run", ModelConfig(**TINY), TrainSettings(epochs=1), progress=False)
    assert not (tmp_path / "run").exists()
