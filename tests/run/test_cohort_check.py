"""The cohort checked before training (issue 25), on real slide files: duplicates by path,
hard link and content; one class or a class without training slides; a broken level-0 JPEG
tile found by the check before training or recorded when met in an epoch; a libvips TIFF
without resolution tags reported with its fix; a run folder refused, replaced or resumed."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ats_wsi.classifier import ModelConfig, SlideInputs
from ats_wsi.data.manifest import read_cohort
from ats_wsi.data.synthetic import make_slide_set
from ats_wsi.errors import CheckpointError, RunExistsError
from ats_wsi.run.preflight import SlideChecks, check_slides
from ats_wsi.run.unreadable import UnreadableSlides
from ats_wsi.run.cohort_check import CohortError, check_cohort, duplicate_problems
from ats_wsi.run.outdir import prepare_run_folder
from ats_wsi.run.train import TrainSettings, train

TINY = dict(n_patches=2, patch_size=32, feature_dim=4, low_downsample=16, patch_level=0,
            attention_kwargs={}, feature_kwargs={})


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[tuple[Path, int]]:
    """Four small synthetic Aperio slides (JPEG tiles of 256), two per class."""
    folder = tmp_path_factory.mktemp("cohort_slides")
    manifest = make_slide_set(folder, n_slides=4, size=(1024, 768), seed=5, val_fraction=0, test_fraction=0,
                              lesion_size_um=(40.0, 80.0), n_lesions=(1, 1), n_spots=(1, 2))
    with open(manifest, newline="") as fh:
        return [(Path(r["path"]), int(r["label"])) for r in csv.DictReader(fh)]


def _manifest(path: Path, rows) -> Path:
    path.write_text("path,label,split\n" + "".join(f"{p},{lab},{split}\n" for p, lab, split in rows))
    return path


def break_tiles(src: Path, dst: Path, tiles=None) -> Path:
    """A copy of ``src`` with random bytes over the second half of level-0 JPEG tiles (all by default)."""
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for i in (range(len(spans)) if tiles is None else tiles):
        offset, count = spans[i]
        data[offset + count // 2: offset + count - 2] = rng.integers(0, 256, count - 2 - count // 2, np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_the_same_slide_by_path_hard_link_or_content_is_an_error_listing_its_rows(slides, tmp_path):
    (a, la), (b, lb), (c, lc), (d, ld) = slides
    link = tmp_path / "link.svs"
    os.link(b, link)
    copy = Path(shutil.copyfile(c, tmp_path / "copy.svs"))
    manifest = _manifest(tmp_path / "m.csv", [(a, la, "train"), (a, la, "train"), (b, lb, "train"), (link, lb, "val"),
                                              (c, 0, "train"), (copy, 1, "test"), (d, ld, "train")])
    rows = read_cohort(manifest).rows
    found = duplicate_problems(manifest, rows)
    assert found == [f"{manifest}: lines 2, 3: the same path 2 times in train: {a}",
                     f"{manifest}: lines 4, 5: the same file (a hard link or a symlink) in train and val: {b}",
                     f"{manifest}: lines 6, 7: files with the same content in train and test, with labels '0' and '1': "
                     f"{c}"]
    with pytest.raises(CohortError) as info:
        check_cohort(manifest, rows, 2, None)
    assert all(line in str(info.value) for line in found) and "--allow-duplicates" in str(info.value)
    assert check_cohort(manifest, rows, 2, None, allow_duplicates=True) == found
    # different slides of equal size are no duplicates
    assert duplicate_problems(manifest, read_cohort(_manifest(tmp_path / "n.csv", [(s, lab, "train")
                                                                                   for s, lab in slides])).rows) == []


def test_one_class_or_a_class_without_training_slides_is_an_error(slides, tmp_path):
    (a, _), (b, _), (c, _), _ = slides
    one = read_cohort(_manifest(tmp_path / "one.csv", [(a, "tumor", "train"), (b, "tumor", "train"),
                                                        (c, "normal", "val")]))
    with pytest.raises(CohortError, match=r"one.csv: split 'train' has only class 'tumor'; a classifier needs"):
        check_cohort(one.path, one.rows, 2, one.class_names)
    absent = read_cohort(_manifest(tmp_path / "absent.csv", [(a, "tumor", "train"), (b, "normal", "train"),
                                                              (c, "stroma", "test")]))
    with pytest.raises(CohortError, match=r"class 'stroma' has no slide in split 'train' \(1 in other splits\)"):
        check_cohort(absent.path, absent.rows, 3, absent.class_names)


def test_a_broken_level0_tile_is_found_before_training_and_the_others_pass(slides, tmp_path):
    (a, la), (b, lb), _, _ = slides
    broken = break_tiles(a, tmp_path / "broken.svs", tiles=[9])  # one tile under tissue
    manifest = _manifest(tmp_path / "m.csv", [(broken, la, "train"), (b, lb, "train")])
    rows = read_cohort(manifest).rows
    config = ModelConfig(**TINY)
    with SlideInputs(config) as inputs:
        bad, _ = check_slides(rows, inputs, checks=SlideChecks(tiles=64, physical=False))
        assert [u.row.path for u in bad] == [broken]
        assert bad[0].reason.startswith("CorruptSlideError: level 0 tile (1, 2) has broken JPEG data")
    with SlideInputs(config) as inputs:  # without decoding tiles it opens fine: what happened before
        assert check_slides(rows, inputs)[0] == []


def test_a_libvips_tiff_without_resolution_tags_is_reported_with_the_fix(tmp_path, slides):
    pyvips = pytest.importorskip("pyvips")
    img = np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    path = tmp_path / "noreso.tif"
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(str(path), tile=True, pyramid=True,
                                                                     compression="jpeg", tile_width=256, tile_height=256)
    manifest = _manifest(tmp_path / "m.csv", [(path, 0, "train"), (slides[1][0], 1, "train")])
    config = ModelConfig(**{**TINY, "low_downsample": None, "low_mpp": 8.0, "patch_level": None, "patch_mpp": 0.5})
    with SlideInputs(config) as inputs:
        bad, _ = check_slides(read_cohort(manifest).rows, inputs, checks=SlideChecks(tiles=0, physical=True))
    assert [u.row.path for u in bad] == [path]
    reason = bad[0].reason
    assert reason.startswith("level-0 µm/px 1000 is outside what scanners produce (0.1-20;")
    assert "mpp column" in reason and "--mpp" in reason and "upsample" not in reason
    # with the true µm/px given in the manifest, it passes
    given = tmp_path / "given.csv"
    given.write_text(f"path,label,mpp\n{path},0,0.5\n{slides[1][0]},1,\n")
    rows = read_cohort(given).rows
    with SlideInputs(config, mpp={str(r.path): r.mpp for r in rows if r.mpp}) as inputs:
        assert check_slides(rows, inputs, checks=SlideChecks(tiles=0, physical=True))[0] == []


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 1, "batch_size": 2, "workers": 1, "open_threads": 2, **kw})


def test_a_slide_that_breaks_in_an_epoch_is_skipped_and_recorded_or_stops_the_run(slides, tmp_path):
    (a, la), *rest = slides
    broken = break_tiles(a, tmp_path / "broken.svs")  # every level-0 tile: any patch read fails
    manifest = _manifest(tmp_path / "m.csv", [(broken, la, "train")] + [(p, lab, "train") for p, lab in rest])
    config = ModelConfig(**TINY)
    with pytest.raises(UnreadableSlides) as info:
        train(manifest, tmp_path / "stop", config, _settings(check_tiles=0), progress=False)
    assert f"line 2: {broken}: in epoch 1: CorruptSlideError: " in str(info.value)
    history = train(manifest, tmp_path / "skip", config, _settings(check_tiles=0, skip_unreadable=True),
                    progress=False)
    assert len(history) == 1 and history[0].train_acc == history[0].train_acc  # trained on the other three
    with open(tmp_path / "skip" / "skipped.csv", newline="") as fh:
        skipped = list(csv.DictReader(fh))
    assert [(r["line"], r["path"]) for r in skipped] == [("2", str(broken))]
    assert skipped[0]["reason"].startswith("in epoch 1: CorruptSlideError: ")


def test_a_run_folder_is_refused_unless_resumed_or_overwritten(slides, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", [(p, lab, "train") for p, lab in slides])
    out = tmp_path / "run"
    config = ModelConfig(**TINY)
    train(manifest, out, config, _settings(), progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="holds a training run .*pass --resume to continue it, --overwrite"):
        train(manifest, out, config, _settings(), progress=False)
    # killed before its first last.pt: resumes from the newest epoch checkpoint, its temporaries removed
    (out / "last.pt").unlink()
    stale = out / "checkpoints" / ".ats.tmp-0123456789ab-deadbeef"
    stale.write_bytes(b"half a checkpoint")
    seen = []
    history = train(manifest, out, config, _settings(epochs=2), resume=True, progress=False,
                    on_cohort=lambda s: seen.append(s.resumed_from))
    assert seen == [1] and [m.epoch for m in history] == [1, 2] and not stale.exists()
    removed = prepare_run_folder(out, resume=False, overwrite=True)
    assert sorted(removed) == sorted(["last.pt", "best.pt", "metrics.csv", "config.json", "cohort.json", "cohort.txt",
                                      "checkpoints/epoch-001.pt", "checkpoints/epoch-002.pt"])
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="cannot resume: no last.pt and no checkpoints/epoch-NNN.pt"):
        train(manifest, out, config, _settings(), resume=True, progress=False)


def test_a_cohort_of_two_resolutions_trained_in_pixels_is_summarised_with_a_warning(slides, tmp_path):
    fine = make_slide_set(tmp_path / "fine", n_slides=2, size=(1024, 768), seed=6, val_fraction=0, test_fraction=0,
                          lesion_size_um=(20.0, 40.0), n_lesions=(1, 1), n_spots=(1, 2), mpp=0.25)
    with open(fine, newline="") as fh:
        more = [(Path(r["path"]), int(r["label"])) for r in csv.DictReader(fh)]
    rows = [(p, lab, "train") for p, lab in slides[:2] + more] + [(slides[2][0], slides[2][1], "test")]
    manifest = _manifest(tmp_path / "m.csv", rows)
    seen = []
    train(manifest, tmp_path / "run", ModelConfig(**TINY), _settings(check_tiles=4), progress=False,
          on_cohort=seen.append)
    [summary] = seen
    assert [(g.scanner, g.mpp, g.slides, g.patch_levels) for g in summary.groups] == [
        ("aperio", 0.25, 2, [0]), ("aperio", 0.5, 2, [0])]
    assert summary.slides == {"train": {"0": sum(lab == 0 for _, lab, _ in rows[:4]),
                                        "1": sum(lab == 1 for _, lab, _ in rows[:4])},
                              "test": {str(slides[2][1]): 1}}
    assert summary.warnings[0] == (
        "patches are read in pixels of level 0 and the slides come in 2 resolutions (aperio @ 0.25 µm/px: 2 "
        "slide(s); aperio @ 0.5 µm/px: 2 slide(s)): a patch covers 8 µm on one and 16 µm on another, a shortcut "
        "when a class comes mostly from one scanner; use --patch-mpp")
    assert summary.warnings[1].startswith("the low view is a downsample of level 0 and the slides come in 2 "
                                          "resolutions") and len(summary.warnings) == 2
    assert (tmp_path / "run" / "cohort.txt").read_text() == summary.text() + "\n"


def test_many_unreadable_slides_are_counted_and_the_first_twenty_listed(tmp_path):
    rows = [(tmp_path / f"missing-{i}.svs", i % 2, "train") for i in range(2000)]
    manifest = _manifest(tmp_path / "m.csv", rows)
    read = read_cohort(manifest).rows
    with SlideInputs(ModelConfig(**TINY)) as inputs:
        bad, _ = check_slides(read, inputs, threads=2)
    text = str(UnreadableSlides(manifest, bad, len(read)))
    assert text.startswith(f"{manifest}: 2000 of 2000 slide(s) cannot be read (--skip-unreadable trains on the "
                           f"others):\n  line 2: {tmp_path / 'missing-0.svs'}: SlideNotFoundError")
    assert f"line 21: {tmp_path / 'missing-19.svs'}" in text and "line 22:" not in text
    assert text.endswith("  ... and 1980 more") and len(text.splitlines()) == 22


def test_a_slide_without_any_mpp_is_named_with_the_fix_when_the_model_reads_in_mpp(tmp_path, slides):
    img = np.random.default_rng(0).integers(0, 255, (512, 768, 3), dtype=np.uint8)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb")  # no resolution tags at all
    manifest = _manifest(tmp_path / "m.csv", [(path, 0, "train"), (slides[1][0], 1, "train")])
    rows = read_cohort(manifest).rows
    config = ModelConfig(**{**TINY, "low_downsample": None, "low_mpp": 8.0, "patch_level": None, "patch_mpp": 0.5})
    with SlideInputs(config) as inputs:
        bad, _ = check_slides(rows, inputs, checks=SlideChecks(tiles=0, physical=True))
    assert [u.reason for u in bad] == [
        "ResolutionError: the slide has no µm/px in its metadata and the model reads in µm/px: give the true µm/px "
        "in the manifest's mpp column, or --mpp for every slide"]
    assert "cannot be read or used" in str(UnreadableSlides(manifest, bad, 2))


class _Bar:
    """A progress bar that records what run/ told it (the CLI's is a tqdm)."""

    def __init__(self, log, total, desc, unit):
        self.log, self.done = log, 0
        log.append(("open", total, desc, unit))

    def update(self, n=1):
        self.done += n

    def set_postfix(self, **values):
        self.log.append(("postfix", sorted(values)))

    def close(self):
        self.log.append(("close", self.done))


def test_train_reports_progress_through_the_callback_and_draws_nothing(slides, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", [(p, lab, "train") for p, lab in slides])
    log = []
    train(manifest, tmp_path / "run", ModelConfig(**TINY), _settings(epochs=2, check_tiles=0),
          progress=lambda total, desc, unit: _Bar(log, total, desc, unit))
    batches = -(-len(slides) // 2)
    opened = [e for e in log if e[0] in ("open", "close")]
    assert opened == [("open", len(slides), "checking slides", "slide"), ("close", len(slides)),
                      ("open", batches, "epoch 1/2", "batch"), ("close", batches),
                      ("open", batches, "epoch 2/2", "batch"), ("close", batches)]
    assert ("postfix", ["acc", "loss"]) in log
