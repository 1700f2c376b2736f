"""Pathology patch encoders and their input contracts, as data.

Each entry is the keyword set of an :class:`~ats_wsi.encoders.EncoderSpec`.
The weights of these models are gated on the Hugging Face hub: nothing here
downloads them. Point ``weights`` at a local file or folder
(``--feature-weights``), or keep them in the local Hugging Face cache
(``hub_id`` is looked up there).

Where the figures come from: the model cards' usage code (timm ids and
keyword arguments, mean/std, input size, precision, pooling), cross-checked
where possible against public loaders that copy them (TRIDENT, STAMP,
LazySlide). A field named in an entry's ``unverified`` was NOT checked against
the model card when this table was written: treat it as a best guess and
check the card before relying on it. Entries with ``source="none"`` cannot be
built by timm here (CONCH is an open_clip/CoCa model; Phikon a transformers
ViT; CTransPath a Swin with a custom stem from an old timm fork): export them
once where their own package works (``torch.jit.save`` or ``torch.export``)
and pass the file (``--feature-net PATH``); the entry then supplies the
contract.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import EncoderError
from .spec import EncoderSpec

__all__ = ["REGISTRY", "get_spec", "list_specs", "load_spec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

REGISTRY: dict[str, dict[str, Any]] = {
    "uni": dict(
        source="timm", arch="vit_large_patch16_224", hub_id="MahmoodLab/UNI",
        kwargs=dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
        mpp=0.5, patch_px=224, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="float32", pooling="model", dim=1024,
        card="https://huggingface.co/MahmoodLab/UNI",
        unverified=("dtype",),
        notes="ViT-L/16 (DINOv2), CLS token. 20x (0.5 µm/px). The card's example runs in float32."),
    "uni2-h": dict(
        source="timm", arch="vit_giant_patch14_224", hub_id="MahmoodLab/UNI2-h",
        kwargs=dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                    mlp_ratio=2.66667 * 2, no_embed_class=True, mlp_layer="timm.layers.SwiGLUPacked",
                    act_layer="torch.nn.SiLU", reg_tokens=8, dynamic_img_size=True),
        mpp=0.5, patch_px=224, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="bfloat16", pooling="model", dim=1536,
        card="https://huggingface.co/MahmoodLab/UNI2-h",
        unverified=("mpp", "dtype"),
        notes="ViT-H/14-like with 8 registers; kwargs as in the card's timm snippet."),
    "conch": dict(
        source="none", hub_id="MahmoodLab/CONCH",
        mpp=0.5, patch_px=512, input_px=448, mean=CLIP_MEAN, std=CLIP_STD,
        dtype="float32", pooling="model", dim=512,
        card="https://huggingface.co/MahmoodLab/CONCH",
        unverified=("mpp", "patch_px", "input_px", "dtype"),
        notes="CoCa ViT-B/16 image tower (conch package, open_clip): export "
              "model.encode_image(x, proj_contrast=False, normalize=False) and pass the file. "
              "512 px patches resized to 448 is TRIDENT's usage as remembered, not checked."),
    "virchow2": dict(
        source="timm", arch="vit_huge_patch14_224", hub_id="paige-ai/Virchow2",
        kwargs=dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4, no_embed_class=True,
                    global_pool="", mlp_layer="timm.layers.SwiGLUPacked", act_layer="torch.nn.SiLU",
                    dynamic_img_size=True),
        mpp=0.5, patch_px=224, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="float16", pooling="cls+mean", prefix_tokens=5, dim=2560,
        card="https://huggingface.co/paige-ai/Virchow2",
        unverified=("kwargs", "mpp"),
        notes="Embedding = CLS token (1280) ⊕ mean of the patch tokens (1280), registers (tokens 1-4) "
              "left out, as in the card. The card builds it from the hub config "
              "(timm.create_model('hf-hub:paige-ai/Virchow2', mlp_layer=SwiGLUPacked, act_layer=SiLU)): "
              "prefer a local hub folder (source 'hf'), which carries that config; the kwargs here "
              "are a transcription. Trained on mixed magnifications; 0.5 µm/px is the usual choice."),
    "h-optimus-0": dict(
        source="timm", arch="vit_giant_patch14_reg4_dinov2", hub_id="bioptimus/H-optimus-0",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        mpp=0.5, patch_px=224, input_px=224, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
        dtype="float16", pooling="model", dim=1536,
        card="https://huggingface.co/bioptimus/H-optimus-0",
        unverified=("arch",),
        notes="Card: 224 px at 0.5 µm/px, these mean/std, fp16 autocast recommended. The card loads "
              "'hf-hub:bioptimus/H-optimus-0' (its config names the architecture): prefer a local hub "
              "folder (source 'hf'); 'arch' here is a guess at that name."),
    "h-optimus-1": dict(
        source="timm", arch="vit_giant_patch14_reg4_dinov2", hub_id="bioptimus/H-optimus-1",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        mpp=0.5, patch_px=224, input_px=224, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
        dtype="float16", pooling="model", dim=1536,
        card="https://huggingface.co/bioptimus/H-optimus-1",
        unverified=("arch", "mean", "std", "mpp"),
        notes="Assumed to share H-optimus-0's contract (public loaders use the same mean/std); "
              "not checked against its own card."),
    "prov-gigapath": dict(
        source="timm", arch="vit_giant_patch14_dinov2", hub_id="prov-gigapath/prov-gigapath",
        kwargs=dict(img_size=224, in_chans=3),
        mpp=0.5, patch_px=256, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="float32", pooling="model", dim=1536,
        card="https://huggingface.co/prov-gigapath/prov-gigapath",
        unverified=("arch", "kwargs", "patch_px", "dtype"),
        notes="Tile encoder. The card's transform is Resize(256) + CenterCrop(224) on 256 px tiles at "
              "20x; here the 256 px patch is resized to 224 (no crop). Prefer a local hub folder "
              "(source 'hf') for the architecture."),
    "phikon": dict(
        source="none", hub_id="owkin/phikon",
        mpp=0.5, patch_px=224, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="float32", pooling="model", dim=768,
        card="https://huggingface.co/owkin/phikon",
        unverified=("dtype",),
        notes="transformers ViTModel (ViT-B/16, iBOT): the feature is last_hidden_state[:, 0] (CLS). "
              "Export a wrapper returning it and pass the file."),
    "ctranspath": dict(
        source="none",
        mpp=1.0, patch_px=224, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dtype="float32", pooling="model", dim=768,
        card="https://github.com/Xiyue-Wang/TransPath",
        unverified=("dim", "dtype"),
        notes="Swin-T with a convolutional stem at 10x (1.0 µm/px), built with a patched old timm: "
              "export it (torch.jit / torch.export) and pass the file."),
}


def get_spec(name: str) -> EncoderSpec:
    """The registered spec ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in REGISTRY:
        raise EncoderError(None, f"unknown encoder {name!r}; registered: {sorted(REGISTRY)} "
                                 f"(or give a JSON spec file)")
    return EncoderSpec(name=key, **REGISTRY[key])


def list_specs() -> list[str]:
    """Names of the registered encoders."""
    return sorted(REGISTRY)


def load_spec(value: str | os.PathLike | dict | EncoderSpec) -> EncoderSpec:
    """A spec from a registry name, a JSON file, a dict or a spec.

    A JSON spec (or dict) with ``"base": "<registry name>"`` starts from that
    entry and overrides the fields it gives.

    Raises:
        EncoderError: unknown name, unreadable file, bad fields.
    """
    if isinstance(value, EncoderSpec):
        return value
    path = None
    if isinstance(value, dict):
        data = dict(value)
    else:
        text = os.fspath(value)
        if text.lower() in REGISTRY:
            return get_spec(text)
        path = Path(text)
        if not path.is_file():
            raise EncoderError(path, f"no such encoder spec file, and not a registered encoder; "
                                     f"registered: {sorted(REGISTRY)}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EncoderError(path, f"not a readable JSON encoder spec ({error})") from None
    if not isinstance(data, dict):
        raise EncoderError(path, f"an encoder spec must be a JSON object, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if base not in REGISTRY:
            raise EncoderError(path, f"'base': {base!r} is not a registered encoder; registered: {sorted(REGISTRY)}")
        data = {**get_spec(base).to_dict(), **data}
    data.setdefault("name", path.stem if path is not None else "custom")
    return EncoderSpec.from_dict(data, path)
