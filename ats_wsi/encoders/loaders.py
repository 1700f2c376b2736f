"""Build an encoder's network from its spec, offline.

- ``timm``: ``timm.create_model(arch, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=WEIGHTS), **kwargs)``: timm loads the
  local file (safetensors or a state dict); nothing is downloaded.
- ``hf``: a local Hugging Face folder of a timm model (``config.json`` with
  ``architecture`` and ``model_args``, ``model.safetensors`` or
  ``pytorch_model.bin``), e.g. a snapshot in the hub cache.
- ``torchscript``: ``torch.jit.load(file)``; ``export``: ``torch.export.load(file).module()``
  (a ``.pt2``). Both need torch only: export once where timm works, run anywhere.

Where the weights are looked for, in order: the path given
(``--feature-weights``), the spec's ``weights``, and for a spec with a
``hub_id`` the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
``~/.cache/huggingface/hub``). A miss is a :class:`WeightsNotFoundError`
listing every place looked at.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import EncoderError, TimmUnavailableError, WeightsNotFoundError
from .spec import EncoderSpec

__all__ = ["build_backbone", "find_weights", "file_sha256", "timm_model", "RANDOM"]

RANDOM = "random"
"""``weights="random"``: the architecture untrained (tests and timing only)."""
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_CLASS_PREFIXES = ("timm.layers.", "torch.nn.")
_SHA_MEMO: dict[tuple, str] = {}


def hub_cache_dirs() -> list[Path]:
    """The local Hugging Face hub caches, as huggingface_hub would look for them."""
    out = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]) / "hub")
    out.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(out))


def _weights_in(folder: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _hub_snapshots(hub_id: str) -> list[Path]:
    """Snapshot folders of ``org/name`` in the local hub caches, the ``main`` ref's first."""
    found = []
    for cache in hub_cache_dirs():
        repo = cache / ("models--" + hub_id.replace("/", "--"))
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            found.append(snaps)
            continue
        ref = repo / "refs" / "main"
        main = ref.read_text().strip() if ref.is_file() else None
        found += sorted(snaps.iterdir(), key=lambda p: p.name != main)
    return found


def find_weights(spec: EncoderSpec, given: str | os.PathLike | None = None) -> Path | str:
    """The weights file (or folder, for ``hf``; the model file, for files) of ``spec``.

    Returns:
        A path, or :data:`RANDOM` when the spec (or ``given``) says ``"random"``.

    Raises:
        WeightsNotFoundError: nowhere to be found; the message lists where it looked.
    """
    looked: list[str] = []
    for candidate in (given, spec.weights):
        if candidate is None:
            continue
        if str(candidate) == RANDOM:
            return RANDOM
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            inside = _weights_in(path)
            if spec.source == "hf" and (path / "config.json").is_file() or inside is not None:
                return path if spec.source == "hf" else inside
            looked.append(f"{path} (a folder without {' / '.join(WEIGHT_NAMES)})")
        else:
            looked.append(f"{path} (no such file)")
    if spec.hub_id and spec.source in ("timm", "hf"):
        for snap in _hub_snapshots(spec.hub_id):
            inside = _weights_in(snap) if snap.is_dir() else None
            if inside is not None:
                return snap if spec.source == "hf" else inside
            looked.append(f"{snap} (no weights file)" if snap.is_dir() else f"{snap} (not there)")
    hint = ("give --feature-weights PATH (a weights file or a local Hugging Face folder)"
            if spec.source in ("timm", "hf") else "give --feature-net PATH (a TorchScript or .pt2 file)")
    raise WeightsNotFoundError(None, f"no weights for encoder {spec.name!r} on this machine (nothing is "
                                     f"downloaded); looked at: {'; '.join(looked) or 'nothing given'}; {hint}")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content (remembered per path, size and mtime in this process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def build_backbone(spec: EncoderSpec, weights: str | os.PathLike | None = None, *,
                   pretrained: bool = True) -> tuple[nn.Module, EncoderSpec]:
    """The encoder's network and the spec with its weights' place and hash filled in.

    Args:
        spec: the encoder spec.
        weights: where the weights are (overrides ``spec.weights``).
        pretrained: False builds a timm architecture without reading any
            weights (a checkpoint that carries fine-tuned weights fills them).

    Raises:
        WeightsNotFoundError: no weights file where it looked.
        EncoderError: timm missing, a file torch cannot load, a weights file
            whose hash differs from the one the spec recorded.
    """
    if spec.source == "none":
        raise EncoderError(None, f"encoder {spec.name!r} cannot be built here ({spec.notes}); "
                                 f"pass an exported file with --feature-net PATH.pt|PATH.pt2")
    if spec.source in ("torchscript", "export"):
        path = find_weights(spec, weights)
        if path == RANDOM:
            raise EncoderError(None, f"encoder {spec.name!r}: a {spec.source} file cannot be 'random'")
        return _load_file(spec, Path(path)), _resolved(spec, path)
    if not pretrained and spec.source == "timm":
        return _timm(spec, None, None), spec
    path = find_weights(spec, weights)
    if path == RANDOM:
        return _timm(spec, None, None), spec.replace(weights=RANDOM, weights_sha256=None)
    path = Path(path)
    config = None
    if spec.source == "hf":
        config, path = _hf_folder(path)
        if not pretrained:  # the architecture from the folder's config; the weights from a checkpoint
            return _timm(spec, None, config), spec
    return _timm(spec, path, config), _resolved(spec, path)


def _resolved(spec: EncoderSpec, path: Path | str) -> EncoderSpec:
    digest = file_sha256(path)
    if spec.weights_sha256 and spec.weights_sha256 != digest:
        raise EncoderError(path, f"these weights are not the ones encoder {spec.name!r} was recorded with "
                                 f"(sha256 {digest[:16]}…, expected {spec.weights_sha256[:16]}…): the features "
                                 f"would differ from the ones the model was trained on")
    return spec.replace(weights=str(Path(path).resolve()), weights_sha256=digest)


def _hf_folder(folder: Path) -> tuple[dict, Path]:
    """``(config.json, weights file)`` of a local Hugging Face folder of a timm model."""
    if folder.is_file():  # a weights file given for an hf spec: its folder holds the config
        weights, folder = folder, folder.parent
    else:
        weights = _weights_in(folder)
    cfg_path = folder / "config.json"
    if weights is None or not cfg_path.is_file():
        raise WeightsNotFoundError(folder, f"not a Hugging Face timm folder: needs config.json and one of "
                                           f"{WEIGHT_NAMES}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderError(cfg_path, f"unreadable config.json ({error})") from None
    return config, weights


def timm_model(arch: str, **kwargs) -> nn.Module:
    """``timm.create_model(arch, **kwargs)``: the one place ats-wsi imports timm.

    Both roads to a timm network come through here: an encoder built from its
    spec (:func:`build_backbone`) and a ``"timm:<name>"`` feature net
    (:func:`ats_wsi.nets.create_feature_net`). Errors of ``create_model`` itself
    (an unknown name, bad keywords) reach the caller unchanged.

    Raises:
        TimmUnavailableError: timm is not installed or does not import (a
            torchvision that does not match torch fails on import with all
            sorts of errors); an :class:`EncoderError` and an ``ImportError``.
    """
    try:
        timm = importlib.import_module("timm")
    except Exception as error:  # noqa: BLE001 - a broken torchvision fails on import with any error
        raise TimmUnavailableError(None, f"timm model {arch!r} needs timm, which could not be imported "
                                         f"({type(error).__name__}: {error}); install it (`pip install timm`, "
                                         f"or the extra `pip install 'ats-wsi[encoders]'`) with a torchvision "
                                         f"that matches torch, or export the encoder once where timm works and "
                                         f"pass the file with --feature-net PATH.pt2") from error
    return timm.create_model(arch, **kwargs)


def _class_kwargs(kwargs: dict) -> dict:
    """JSON kwargs with ``"timm.layers.X"`` / ``"torch.nn.X"`` strings made into those classes."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith(_CLASS_PREFIXES):
            module, _, name = value.rpartition(".")
            try:
                value = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as error:
                raise EncoderError(None, f"kwargs {key!r}: cannot resolve {value!r} ({error})") from None
        out[key] = value
    return out


def _timm(spec: EncoderSpec, weights: Path | None, hf_config: dict | None) -> nn.Module:
    kwargs = dict((hf_config or {}).get("model_args", {}))
    kwargs.update(_class_kwargs(spec.kwargs))
    arch = spec.arch or (hf_config or {}).get("architecture")
    if not arch:
        raise EncoderError(None, f"encoder {spec.name!r}: no timm architecture (spec 'arch' or the "
                                 f"folder's config.json 'architecture')")
    kwargs.setdefault("num_classes", 0)
    try:
        if weights is None:
            return timm_model(arch, pretrained=False, **kwargs)
        return timm_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
    except EncoderError:
        raise
    except Exception as error:  # noqa: BLE001 - timm raises RuntimeError, KeyError, ... on a bad file
        raise EncoderError(weights, f"timm could not build {arch!r} with these weights "
                                    f"({type(error).__name__}: {str(error)[:300]})") from None


def _load_file(spec: EncoderSpec, path: Path) -> nn.Module:
    try:
        if spec.source == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        return torch.export.load(str(path)).module()
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        kind = "TorchScript (torch.jit.save)" if spec.source == "torchscript" else "torch.export (.pt2)"
        raise EncoderError(path, f"not a loadable {kind} file ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None
