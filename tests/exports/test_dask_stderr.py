"""Batch predict on a local dask cluster: a failed slide is one line on stderr (the recorded error),
not a worker's "Compute Failed" log with its traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide


def test_a_failed_slide_is_one_line_without_worker_tracebacks(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_synthetic_slide(folder / "good.svs", 1024, 768, seed=1, lesion_size_um=(40.0, 80.0))
    (folder / "bad.svs").write_bytes(os.urandom(30_000))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model(ModelConfig(n_patches=4, patch_size=64, feature_dim=8,
                                                                   low_downsample=16.0)))
    proc = subprocess.run([sys.executable, "-m", "ats_wsi.cli", "predict", str(tmp_path / "model.pt"), str(folder),
                           "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"1 slide(s) failed -> {tmp_path / 'out' / 'errors.csv'}",
        f"  {folder / 'bad.svs'}: CorruptSlideError: has a slide extension (.svs) but is not a slide any backend "
        "reads (no TIFF header, and not a format openslide recognises)"], proc.stderr
