"""The timm path for real: a ViT-S/16 with random weights saved to a local safetensors file,
loaded through a spec (and a Hugging Face folder), gives the embedding of the module it was
saved from. Runs where timm imports (.venv-timm, made by scripts/test); skipped elsewhere."""
from __future__ import annotations

import json

import pytest
import torch

timm = pytest.importorskip("timm", exc_type=ImportError)
safetensors_torch = pytest.importorskip("safetensors.torch")

from ats_wsi.encoders import build_encoder  # noqa: E402

pytestmark = pytest.mark.timm
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    folder = tmp_path_factory.mktemp("vit")
    safetensors_torch.save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224",
                                                    "model_args": {"img_size": 224}}))
    return model, folder


def _spec(**kw):
    return {"name": "vit-s", "source": "timm", "arch": "vit_small_patch16_224", "mpp": 0.5, "patch_px": 224,
            "input_px": 224, "mean": MEAN, "std": STD, "dim": 384, **kw}


def _pixels():
    return torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def _reference(model, pixels, tokens=False):
    x = (pixels.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_features(x) if tokens else model(x)


def test_a_timm_vit_loaded_from_a_local_file_gives_the_embedding_of_its_module(vit):
    model, folder = vit
    encoder = build_encoder(_spec(weights=str(folder / "model.safetensors")), frozen=True)
    with torch.no_grad():
        out = encoder(_pixels())
    assert out.shape == (3, 384)
    assert torch.equal(out, _reference(model, _pixels()))
    assert encoder.spec.weights_sha256  # recorded for the checkpoint


def test_a_local_hugging_face_folder_of_a_timm_model_loads_alike(vit):
    model, folder = vit
    encoder = build_encoder(_spec(source="hf", arch=None, weights=str(folder)))
    with torch.no_grad():
        assert torch.equal(encoder(_pixels()), _reference(model, _pixels()))


def test_cls_and_mean_pooling_comes_from_timm_forward_features(vit):
    model, folder = vit
    encoder = build_encoder(_spec(weights=str(folder / "model.safetensors"), pooling="cls+mean", dim=768))
    tokens = _reference(model, _pixels(), tokens=True)
    want = torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(1)], -1)
    with torch.no_grad():
        assert torch.allclose(encoder(_pixels()), want, atol=1e-5)


def test_an_encoder_exported_where_timm_works_runs_from_the_pt2_alone(vit, tmp_path):
    model, _ = vit
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(model, (torch.rand(2, 3, 224, 224),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "vit.pt2"))
    encoder = build_encoder(_spec(source="export", weights=str(tmp_path / "vit.pt2")))
    with torch.no_grad():
        assert torch.allclose(encoder(_pixels()), _reference(model, _pixels()), atol=1e-5)
