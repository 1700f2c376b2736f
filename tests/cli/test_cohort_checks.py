"""`ats-wsi train` checks and summarises a cohort written the way people write manifests
(issue 25): label case and typos, the cohort summary, run folders refused, replaced or
resumed; `ats-wsi info CHECKPOINT` and `ats-wsi info --check`."""
from __future__ import annotations

import json

import numpy as np
import tifffile
from cli_helpers import TRAIN_ARGS, TRAIN_ENV, cli, explain

from ats_wsi.classifier import read_checkpoint


def _messy(folder, slide_set, labels, splits=("Train", "Validation", "Train", "Train", "Test", "Train")):
    """``Slide ID,Slide Path,Diagnosis,Split`` with relative paths and labels as typed."""
    lines = ["Slide ID,Slide Path,Diagnosis,Split"]
    for i, (path, label, split) in enumerate(zip(slide_set.slides, labels, splits)):
        lines.append(f"S{i},{path},{label},{split}")
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _names(slide_set, spellings):
    """Each slide's label (0/1 of the set) spelled as ``spellings[label][i % len]``."""
    return [spellings[lab][i % len(spellings[lab])] for i, lab in enumerate(slide_set.labels)]


def test_a_messy_manifest_with_a_typo_is_refused_naming_rows_then_trains_with_a_summary(slide_set, tmp_path):
    typo = _names(slide_set, {0: ["normal", "Normal", "normal "], 1: ["TUMOR", "tumor"]})
    first_tumor = slide_set.labels.index(1)
    typo[first_tumor] = "Tumour"
    manifest = _messy(tmp_path, slide_set, typo)
    out = tmp_path / "run"
    proc = cli("train", manifest, "--out", out, "--epochs", "1", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, explain(proc)
    assert f"label 'Tumour' (1 row(s), line(s) {first_tumor + 2}) looks like a typo of 'TUMOR'" in proc.stderr
    assert not out.exists()  # refused before the run folder is made

    manifest = _messy(tmp_path, slide_set, _names(slide_set, {0: ["normal", "Normal", "normal "],
                                                              1: ["TUMOR", "tumor"]}))
    proc = cli("train", manifest, "--out", out, "--epochs", "1", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert read_checkpoint(out / "last.pt")["config"]["class_names"] == ["normal", "tumor"]
    summary = json.loads((out / "cohort.json").read_text())
    want: dict = {}
    for label, split in zip(slide_set.labels, ("train", "val", "train", "train", "test", "train")):
        per = want.setdefault(split, {})
        name = ["normal", "tumor"][label]
        per[name] = per.get(name, 0) + 1
    assert summary["slides"] == want and summary["classes"] == ["normal", "tumor"]
    assert [(g["scanner"], g["mpp"], g["slides"], g["patch_levels"]) for g in summary["groups"]] == [
        ("aperio", 0.5, 5, [0])]  # train and val slides; the test slide is not opened
    assert (out / "cohort.txt").read_text().strip() in proc.stdout
    assert "  normal " in proc.stdout and "scanner groups" in proc.stdout


def test_a_run_folder_is_refused_then_resumed_or_overwritten(run_2_epochs, slide_set, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_2_epochs, run)
    proc = cli("train", slide_set.manifest, "--out", run, "--epochs", "2", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.strip().startswith(f"ats-wsi train: RunExistsError: {run}: holds a training run (last.pt")
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert (run / "last.pt").read_bytes() == (run_2_epochs / "last.pt").read_bytes()  # untouched

    proc = cli("train", slide_set.manifest, "--out", run, "--epochs", "3", "--resume", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert "resumed from epoch 2" in proc.stdout and "epoch   3" in proc.stdout and "epoch   2 " not in proc.stdout

    proc = cli("train", slide_set.manifest, "--out", run, "--epochs", "1", "--overwrite", *TRAIN_ARGS, env=TRAIN_ENV)
    assert proc.returncode == 0, explain(proc)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-001.pt"]
    assert read_checkpoint(run / "last.pt")["epoch"] == 1


def test_info_describes_a_checkpoint(checkpoint):
    proc = cli("info", checkpoint)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    payload = read_checkpoint(checkpoint)
    assert lines[0] == f"checkpoint: {checkpoint}"
    assert "classes: 2: 0, 1" in lines
    assert "low view: downsample 16.0 of level 0 (µm/px follows each slide)" in lines
    assert "patches: 64 px of level 0 (µm/px follows each slide)" in lines
    assert "epoch: 1" in lines
    c = payload["config"]
    assert (f"task: slide classification by attention sampling (attention draws of {c['n_patches']} patches in "
            f"training, {c['predict_patches']} in prediction)") in lines
    assert f"validation: loss {payload['metrics']['val_loss']:.4g}, accuracy {payload['metrics']['val_acc']:.4g}" \
           in proc.stdout
    threshold = payload["metrics"]["val_threshold"]
    decided = [line for line in lines if line.startswith("predicted: ")]
    if threshold == threshold:  # a validation split: predict decides at its threshold
        assert decided == [f"predicted: 1 when P(1) >= {threshold:.3f} (Youden's J on the validation slides), else 0"]
    else:
        assert decided == []
    bad = checkpoint.parent / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = cli("info", bad)
    assert proc.returncode == 1 and "CheckpointError" in proc.stderr and "Traceback" not in proc.stderr


def test_info_check_decodes_tiles_and_lists_a_slide_with_a_broken_one(slide_set, tmp_path):
    src = slide_set.slides[0]
    with tifffile.TiffFile(src) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(src.read_bytes())
    data[offset + count // 2: offset + count - 2] = np.random.default_rng(1).integers(
        0, 256, count - 2 - count // 2, np.uint8).tobytes()
    broken = tmp_path / "broken.svs"
    broken.write_bytes(bytes(data))
    proc = cli("info", broken)  # opening reads no level-0 tile: it looks fine
    assert proc.returncode == 0, explain(proc)
    proc = cli("info", "--check", "8", broken, slide_set.slides[1])
    assert proc.returncode == 1, explain(proc)
    assert f"{broken}: CorruptSlideError: level 0 tile (0, 0) has broken JPEG data" in proc.stderr
    assert "8 of " in proc.stdout and str(slide_set.slides[1]) in proc.stdout
