"""Training read-ahead within a batch (:mod:`ats_wsi.run.train_ahead`): the same draws, the same pixels,
so the same weights and metrics bit for bit, whoever read the patches."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from ats_wsi.classifier import ModelConfig, read_checkpoint
from ats_wsi.run.train import TrainSettings, train
from ats_wsi.run.train_ahead import TrainAhead, read_ahead_refusal

from run_helpers import TINY

# The metrics that depend on the clock, not on what was learnt.
TIMED = {"seconds", "encoder_busy", "read_ahead_slides", "read_wait"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Five real slides (4 train, 1 val) of 2048..2560 x 1536..1920 px."""
    from ats_wsi.data.synthetic import make_slide_set

    folder = tmp_path_factory.mktemp("ahead_slides")
    with open(make_slide_set(folder / "set", n_slides=5, size=((2048, 1536), (2560, 1920)), seed=3,
                             lesion_size_um=(60.0, 120.0)), newline="") as fh:
        rows = list(csv.DictReader(fh))
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{r['path']},{r['label']},{'val' if i == 1 else 'train'}\n"
                                                       for i, r in enumerate(rows)))
    return manifest


def _train(manifest, out: Path, read_ahead: bool, epochs: int = 2):
    """Two epochs of the tiny model, batches of 3 slides (then 1): ``(history, state_dict)``."""
    settings = TrainSettings(epochs=epochs, batch_size=3, workers=1, check_tiles=0, seed=0, read_ahead=read_ahead)
    history = train(manifest, out, ModelConfig(**TINY), settings)
    return history, read_checkpoint(out / "last.pt")["state_dict"]


def _same_learning(a, b) -> None:
    (history_a, weights_a), (history_b, weights_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for m_a, m_b in zip(history_a, history_b, strict=True):
        learnt = {k: repr(v) for k, v in dataclasses.asdict(m_a).items() if k not in TIMED}  # repr: NaN == NaN
        assert learnt == {k: repr(v) for k, v in dataclasses.asdict(m_b).items() if k not in TIMED}


@pytest.fixture(scope="module")
def serial(manifest, tmp_path_factory):
    """The run without read-ahead, the reference the others must equal."""
    return _train(manifest, tmp_path_factory.mktemp("serial") / "run", read_ahead=False)


def test_read_ahead_trains_the_same_weights_and_metrics_bit_for_bit(manifest, serial, tmp_path):
    ahead = _train(manifest, tmp_path / "run", read_ahead=True)
    _same_learning(ahead, serial)
    # batches of [3, 1] slides: the 2nd and 3rd slide of the first batch are read ahead, every epoch
    assert [m.read_ahead_slides for m in ahead[0]] == [2, 2]
    assert [m.read_ahead_slides for m in serial[0]] == [0, 0]
    assert all(m.read_wait >= 0 for m in ahead[0] + serial[0])


def test_prepared_boxes_that_do_not_match_the_draws_are_read_again(manifest, serial, tmp_path, monkeypatch):
    prepare = TrainAhead._prepare

    def wrong(self, item, seed):  # pixels of other boxes (shifted one pixel), and garbage at that
        prepared = prepare(self, item, seed)
        prepared.source._reads = [(xy + 1, wh, torch.zeros_like(p)) for xy, wh, p in prepared.source._reads]
        return prepared

    monkeypatch.setattr(TrainAhead, "_prepare", wrong)
    missed = _train(manifest, tmp_path / "run", read_ahead=True)
    _same_learning(missed, serial)
    assert [m.read_ahead_slides for m in missed[0]] == [0, 0]


def test_a_slide_prepared_under_another_key_is_dropped_and_made_again(manifest, tmp_path):
    from ats_wsi.classifier import SlideInputs, build_model

    config = ModelConfig(**TINY)
    model = build_model(config).train()
    path = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]][0]
    with SlideInputs(config, workers=1) as inputs:
        ahead = TrainAhead(model, "cpu")
        ahead.start(1, inputs[path], seed=5)
        prepared = ahead.take(2, inputs[path])  # not what was prepared: made here, nothing read ahead
        assert not prepared.ahead and prepared.source._reads == []
        ahead.start(3, inputs[path], seed=5)
        assert ahead.take(3, inputs[path]).ahead
        ahead.start(4, inputs[path], seed=5)
        ahead.drain()  # before the optimiser step: nothing left pending
        assert ahead._pending is None


def test_patches_over_the_bound_are_not_read_ahead(manifest):
    from ats_wsi.classifier import SlideInputs, build_model

    config = ModelConfig(**TINY)
    model = build_model(config).train()
    path = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]][0]
    with SlideInputs(config, workers=1) as inputs:
        small = TrainAhead(model, "cpu", read_bytes=4 * 3 * 64 * 64 - 1)  # one byte short of 4 patches of 64²
        small.start(0, inputs[path], seed=5)
        assert small.take(0, inputs[path]).source._reads == []
        fits = TrainAhead(model, "cpu", read_bytes=4 * 3 * 64 * 64)
        fits.start(0, inputs[path], seed=5)
        assert len(fits.take(0, inputs[path]).source._reads) == 1


def test_runs_that_cannot_read_ahead_say_why():
    plain = ModelConfig(**TINY)
    assert read_ahead_refusal(plain) is None
    assert "torchrun" in read_ahead_refusal(plain, distributed=True)
    assert "zoom" in read_ahead_refusal(dataclasses.replace(plain, zoom_mpp=2.0, zoom_regions=2, zoom_size=256.0,
                                                            patch_mpp=0.5))
    batchnorm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    assert "BatchNorm2d" in read_ahead_refusal(plain, attention_net=batchnorm)
    assert "Dropout" in read_ahead_refusal(plain, attention_net=nn.Sequential(nn.Dropout(0.1)))


def test_the_cli_flag_notes_a_refusal_only_when_asked(capsys):
    from ats_wsi.cli import build_parser
    from ats_wsi.cli.train import read_ahead_note

    parse = build_parser().parse_args
    base = ["train", "manifest.csv", "--out", "run"]
    assert parse(base).read_ahead is None  # the default: on, and silent where it cannot be
    assert parse([*base, "--read-ahead"]).read_ahead is True
    assert parse([*base, "--no-read-ahead"]).read_ahead is False
    plain = ModelConfig(**TINY)
    assert read_ahead_note(plain) is None
    note = read_ahead_note(plain, world=2)
    assert note.startswith("ats-wsi train: --read-ahead is off for this run: ") and "\n" not in note
