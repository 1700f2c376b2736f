"""The README's Python snippets run as written, in order, on a real slide and a real checkpoint
(issue 25): a snippet that uses a closed slide or an undefined name fails here."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint
from ats_wsi.data.synthetic import write_synthetic_slide

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    write_synthetic_slide(tmp_path / "slide.svs", 1536, 1024, seed=1, lesion_size_um=(60.0, 120.0))
    config = ModelConfig(n_patches=4, patch_size=64, feature_dim=8, class_names=["normal", "tumor"])
    save_checkpoint(tmp_path / "run" / "best.pt", build_model(config), epoch=1)
    monkeypatch.chdir(tmp_path)
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(snippets) == 3
    spaces = []
    for code in snippets:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)  # each on its own: no name borrowed from another
        spaces.append(namespace)
    first, second, third = spaces
    assert tuple(first["batch"].shape) == (2, 3, 256, 256)
    assert first["region"].shape == (512, 512, 3)
    with first["ats_wsi"].open_slide("slide.svs") as slide:  # the patches are the slide's pixels
        want = slide.read_region((1024, 512), 0, (256, 256))
    np.testing.assert_array_equal(first["batch"][1].permute(1, 2, 0).numpy(), want)
    assert second["pred"].predicted_name in ("normal", "tumor")
    assert torch.isfinite(third["loss"]) and third["logits"].shape == (2, 2)
    with first["ats_wsi"].open_slide("slide.svs") as slide:
        assert capsys.readouterr().out.splitlines()[0] == f"{slide.backend} {slide.level_dimensions} {slide.mpp}"
