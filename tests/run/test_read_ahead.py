"""Read-ahead in batch prediction: the same bits as one slide at a time, failures recorded, a bounded
queue, and the encoder's busy fraction in the run's summary."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.errors import ConfigError
from ats_wsi.run.predict import PredictSettings, predict_slides
from ats_wsi.run.read_ahead import MAX_READ_AHEAD, ReadAhead

from run_helpers import TINY


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Four tiny slides (JPEG SVS) and, third, a file that is not a slide."""
    folder = tmp_path_factory.mktemp("slides")
    paths = []
    for i, (w, h) in enumerate([(1024, 768), (768, 1024), (896, 640), (1024, 896)]):
        paths.append(folder / f"s{i}.svs")
        write_synthetic_slide(paths[-1], w, h, n_lesions=0, n_decoys=0, seed=10 + i)
    bad = folder / "broken.svs"
    bad.write_bytes(b"not a slide at all" * 64)
    return paths[:2] + [bad] + paths[2:]


def _predict(checkpoint, slides, out, **kw):
    got, summary = {}, {}
    rows, errors = predict_slides(slides, PredictSettings(checkpoint=str(checkpoint), out_dir=str(out), **kw),
                                  on_result=lambda r: got.__setitem__(r.name, r.prediction),
                                  on_summary=summary.update)
    return rows, errors, got, summary


def test_read_ahead_2_predicts_the_bits_of_one_slide_at_a_time_and_records_the_broken_slide(checkpoint, slides,
                                                                                            tmp_path):
    serial = _predict(checkpoint, slides, tmp_path / "serial", read_ahead=0, samples=2)
    ahead = _predict(checkpoint, slides, tmp_path / "ahead", read_ahead=2, samples=2)
    for rows, errors, preds, summary in (serial, ahead):
        assert [r["name"] for r in rows] == ["s0", "s1", "s2", "s3"]  # the broken third slide did not stop the run
        assert [(e["name"], e["error"]) for e in errors] == [("broken", "CorruptSlideError")]
        assert summary["predicted"] == 4 and summary["failed"] == 1
    assert serial[3]["read_ahead"] == 0 and ahead[3]["read_ahead"] == 2
    for name, a in serial[2].items():
        b = ahead[2][name]
        assert np.array_equal(a.probabilities, b.probabilities)  # bit for bit
        assert np.array_equal(a.boxes_xywh, b.boxes_xywh) and len(a.boxes_xywh) == 2 * TINY["n_patches"]
        assert np.array_equal(a.attention, b.attention)
        assert np.array_equal(a.patch_features, b.patch_features)
        assert a.patches_read == b.patches_read == 2 * TINY["n_patches"]
    assert [r["p0"] for r in serial[0]] == [r["p0"] for r in ahead[0]]


def test_the_pipeline_gives_what_predict_gives_for_a_slide(checkpoint, slides, tmp_path):
    """SlideClassifier.predict (prepare then finish in one call) and a read-ahead run agree."""
    from ats_wsi.classifier import load_model

    _, _, preds, _ = _predict(checkpoint, slides[:2], tmp_path / "out", read_ahead=1, seed=3)
    model = load_model(checkpoint)
    one = model.predict(slides[1], seed=3)
    assert np.array_equal(one.probabilities, preds["s1"].probabilities)
    assert np.array_equal(one.boxes_xywh, preds["s1"].boxes_xywh)


def test_run_json_holds_the_encoder_busy_fraction(checkpoint, slides, tmp_path):
    out = tmp_path / "out"
    _, _, _, summary = _predict(checkpoint, slides[:2], out, read_ahead=1)
    written = json.loads((out / "run.json").read_text())
    assert written == summary
    assert 0 < written["encoder_busy"] <= 1  # the encoder ran, and not longer than the run
    assert 0 < written["encoder_seconds"] <= written["wall_seconds"]
    assert 1 <= written["read_ahead_peak"] <= 1
    again = _predict(checkpoint, slides[:2], out, read_ahead=1)[3]  # all skipped: nothing encoded
    assert again["skipped"] == 2 and again["encoder_seconds"] == 0 and again["encoder_busy"] == 0


def test_read_ahead_outside_its_bounds_is_a_typed_error_before_any_work(checkpoint, slides, tmp_path):
    for bad in (MAX_READ_AHEAD + 1, -1, 1.5, True):
        with pytest.raises(ConfigError, match=r"read_ahead must be a whole number of slides in 0\.\.8"):
            _predict(checkpoint, slides[:1], tmp_path / "out", read_ahead=bad)
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_the_cli_refuses_a_read_ahead_above_8_in_one_line_with_exit_2(capsys):
    from ats_wsi.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["predict", "model.pt", "slide.svs", "--out", "x", "--read-ahead", "9"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --read-ahead: must be in 0..8, got 9" in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_the_queue_holds_at_most_depth_items_ahead_and_keeps_the_order():
    prepared_at, lock = [], threading.Lock()

    def prepare(i):
        with lock:
            prepared_at.append(i)
        if i == 3:
            raise ValueError("slide 3 is broken")
        return i * 10

    with ReadAhead(range(8), prepare, 2) as pipeline:
        out = []
        for i, value in pipeline:
            want = min(len(out) + 1 + 2, 8)  # a slow finish: the thread fills its 2 places ahead
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with lock:
                    if len(prepared_at) >= want:
                        break
                time.sleep(0.005)
            with lock:
                ahead = len(prepared_at) - len(out) - 1  # prepared, not handed out, beside the one held
            assert ahead <= 2
            out.append((i, value))
    assert pipeline.peak == 2  # it did read ahead, and never further
    assert [i for i, _ in out] == list(range(8))
    assert [v for i, v in out if i != 3] == [i * 10 for i in range(8) if i != 3]
    assert isinstance(out[3][1], ValueError)


def test_a_stopped_pipeline_discards_what_it_prepared_ahead():
    discarded, calls = [], []
    with ReadAhead(range(6), lambda i: calls.append(i) or i, 3, discard=discarded.append) as pipeline:
        for i, _ in pipeline:
            deadline = time.monotonic() + 10
            while len(calls) < 4 and time.monotonic() < deadline:  # let the thread fill its 3 places
                time.sleep(0.01)
            break
    assert discarded == [1, 2, 3]  # prepared ahead, never handed out: released
    assert pipeline.peak == 3


def test_read_ahead_0_prepares_each_item_when_it_is_asked_for():
    calls = []
    pipeline = ReadAhead(range(3), lambda i: calls.append(i) or i, 0)
    seen = []
    for i, _ in pipeline:
        seen.append(list(calls))
    assert seen == [[0], [0, 1], [0, 1, 2]] and pipeline.peak == 0


def test_a_prepared_slide_closes_the_input_it_made_once_and_leaves_a_lent_one_open(checkpoint, slides):
    from ats_wsi.classifier import SlideInput, load_model
    from ats_wsi.errors import SlideError

    model = load_model(checkpoint)
    prepared = model.prepare(slides[0], seed=1)
    item = prepared.item
    prediction = model.finish(prepared)  # finish closes what prepare opened ...
    assert not prepared.own
    with pytest.raises(SlideError, match="the slide is closed"):
        item.slide.read_region((0, 0), 0, (8, 8))
    prepared.close()  # ... and a second close (a pipeline's own cleanup) does nothing
    assert prediction.patches_read > 0
    with SlideInput(slides[0], model.config) as lent:
        model.finish(model.prepare(lent, seed=1))
        assert lent.slide.read_region((0, 0), 0, (8, 8)).shape[:2] == (8, 8)  # a lent input stays the caller's
