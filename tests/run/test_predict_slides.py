"""predict_slides in process: resume keys, absolute paths, torch threads; and train's label check."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import ManifestError
from ats_wsi.classifier import ModelConfig
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.run.train import TrainSettings, train

from run_helpers import TINY


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "one.svs"
    write_synthetic_slide(path, 2048, 1536, n_lesions=0, seed=5)
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


def test_ats_wsi_predict_builds_the_checkpoint_model_once(checkpoint, slide, tmp_path, monkeypatch):
    """The CLI loads the checkpoint and hands the model down: a frozen foundation encoder would
    otherwise be built and its weights read twice. The results equal a run that loads its own."""
    import ats_wsi.classifier.checkpoint as ckpt
    from ats_wsi.cli import main

    built = []
    real = ckpt.build_model
    monkeypatch.setattr(ckpt, "build_model", lambda *a, **kw: built.append(1) or real(*a, **kw))
    for listed in (str(slide), _manifest(tmp_path, slide)):  # a folder of slides, and a manifest
        built.clear()
        out = tmp_path / f"cli-{len(listed)}"
        assert main(["predict", str(checkpoint), listed, "--out", str(out), "--no-progress"]) == 0
        assert len(built) == 1
    rows, errors, _ = _run(checkpoint, [slide], tmp_path / "own")
    with open(out / "predictions.csv", newline="") as fh:
        cli_row = next(csv.DictReader(fh))
    assert errors == [] and (cli_row["p0"], cli_row["p1"]) == (rows[0]["p0"], rows[0]["p1"])


def _manifest(folder, slide) -> str:
    path = folder / "manifest.csv"
    path.write_text(f"path,label\n{slide},0\n")
    return str(path)


def test_on_result_gives_typed_results_and_a_rerun_reads_the_same_back(checkpoint, slide, tmp_path):
    """A fresh slide's result carries its prediction; a skipped one is read back from its done
    marker and map, and answers the same (the demo scores either)."""
    from ats_wsi.run.results import ResultsFolder

    out, runs = tmp_path / "out", []
    for _ in range(2):
        got = []
        predict_slides([slide], PredictSettings(checkpoint=str(checkpoint), out_dir=str(out), samples=2),
                       on_result=got.append)
        runs.append(got[0])
    fresh, again = runs
    assert fresh.prediction is not None and again.prediction is None
    folder = ResultsFolder(out)
    assert fresh.folder == again.folder == folder and fresh.name == again.name == "one"
    assert folder.map("one").is_dir() and folder.overlay("one").is_file() and folder.marker("one").is_file()
    assert folder.map_of(slide) == folder.map("one") and folder.overlays() == [folder.overlay("one")]
    assert fresh.row["outputs"] == again.row["outputs"]
    assert fresh.predicted == again.predicted == int(fresh.prediction.predicted)
    assert (fresh.boxes_xywh == again.boxes_xywh).all() and fresh.boxes_xywh.shape == (2 * TINY["n_patches"], 4)
    assert fresh.top_cell_xywh() == again.top_cell_xywh()
    assert again.fraction_read == pytest.approx(fresh.fraction_read, abs=1e-6)
    assert again.seconds == pytest.approx(fresh.seconds, abs=1e-3)
