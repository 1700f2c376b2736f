"""Fixtures of the encoder tests: tiny encoder files and synthetic slides (helpers: encoder_helpers.py)."""
from __future__ import annotations

import pytest
from encoder_helpers import save_export, save_torchscript, tiny_vit

from ats_wsi.data.synthetic import write_synthetic_slide


def pytest_configure(config):
    config.addinivalue_line("markers", "timm: needs timm (runs in .venv-timm, see scripts/test)")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """``{"torchscript": path, "export": path, "module": the TinyViT they hold}``."""
    folder = tmp_path_factory.mktemp("encoders")
    module = tiny_vit()
    return {"torchscript": save_torchscript(module, folder / "tiny.pt"),
            "export": save_export(module, folder / "tiny.pt2"), "module": module}


@pytest.fixture(scope="session")
def slides(tmp_path_factory):
    """Two synthetic slides at 0.5 µm/px (level 1 at 2.0 µm/px) and a manifest with a train and a val split."""
    folder = tmp_path_factory.mktemp("slides")
    paths = []
    for i in range(3):
        path = folder / f"s{i}.svs"
        write_synthetic_slide(path, 3072, 2560, n_lesions=i % 2, seed=i, mpp=0.5)
        paths.append(path)
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,split\n" + f"{paths[0]},0,train\n{paths[1]},1,train\n{paths[2]},0,val\n")
    return {"paths": paths, "manifest": manifest}
