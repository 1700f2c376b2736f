"""Checkpoints: weights + full config + normalisation + code version.

A checkpoint is a ``torch.save`` dict of tensors and plain values only, so it
loads with ``weights_only=True`` (no pickled code is ever executed).
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError, EncoderError, TimmUnavailableError
from ..atomic import atomic_path
from .config import ModelConfig
from .network import SlideClassifier, build_model

__all__ = ["save_checkpoint", "load_model", "load_weights", "read_checkpoint", "checkpoint_id", "stored_threshold"]

FORMAT = "ats-wsi-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: SlideClassifier,
    *,
    epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    metrics: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination file (``.pt``).
        model: the classifier (a DDP wrapper's ``.module`` too).
        epoch: epochs completed.
        optimizer: saved for ``--resume`` when given.
        metrics: last epoch's metrics (plain numbers).
        train_config: the training settings (plain values), for the record.
    """
    model = getattr(model, "module", model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ats_wsi_version": __version__,
        "torch_version": str(torch.__version__),
        "config": model.config.to_dict(),
        "attention_cell_um_xy": model.attention_cell_um_xy(),  # None: the low view is set as a downsample
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "train_config": dict(train_config or {}),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, checked; raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise CheckpointError(path, f"not a readable checkpoint ({_short_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not an ats-wsi checkpoint (no 'format' marker)")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(path, f"checkpoint format {version!r} is newer than this ats-wsi reads")
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(path, "its model config is missing or not a dict of settings")
    _check_tensors(path, payload.get("state_dict"), "weights")
    optimizer = payload.get("optimizer")
    if optimizer is not None:
        state = optimizer.get("state") if isinstance(optimizer, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(path, "its optimizer state is not one torch.optim saves")
        for key, values in state.items():
            _check_tensors(path, values, f"optimizer state {key!r}")
    return payload


def _check_tensors(path: Path, tensors, what: str) -> None:
    """Refuse a state that is not a dict of tensors, or a floating tensor holding NaN or inf."""
    if not isinstance(tensors, dict):
        raise CheckpointError(path, f"its {what} are missing or not a dict of tensors")
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(path, f"its {what}: tensor {key!r} holds {bad} NaN or inf value(s) of "
                                        f"{value.numel()}: a diverged or damaged run; use an earlier checkpoint")


def load_weights(path: str | os.PathLike, model: SlideClassifier, payload: dict[str, Any],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a checkpoint's weights (and optimizer state) into a model built from its config.

    Raises:
        CheckpointError: a tensor of another shape, a key missing or extra,
            an optimizer state that does not fit the parameters.
    """
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(path, f"weights do not fit the config ({_first_line(exc)})") from None
    if optimizer is None or "optimizer" not in payload:
        return
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(path, f"its optimizer state does not fit the model ({_first_line(exc)})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    raise CheckpointError(path, f"its optimizer state {name!r} is shaped {tuple(value.shape)} "
                                                f"for a parameter of {tuple(param.shape)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _short_reason(exc: Exception) -> str:
    """One line of why torch.load failed (not its paragraph about ``weights_only``)."""
    text = str(exc)
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
        detail = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        return "not a torch file of tensors and plain values" + (f": {detail}" if detail else "")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else f"{type(exc).__name__}: empty or cut short"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", *,
               feature_weights: str | os.PathLike | None = None) -> SlideClassifier:
    """The classifier of a checkpoint, in eval mode on ``device``.

    Args:
        path: the checkpoint.
        device: where the model goes.
        feature_weights: where the weights of a pretrained encoder are on
            this machine (a frozen encoder is not stored in the checkpoint:
            its spec names the file and its sha256, checked here).

    Raises:
        CheckpointError: the file is missing, is not an ats-wsi checkpoint, or
            its weights do not fit its config.
        EncoderError: the encoder's weights are missing (the error says
            where it looked) or are not the ones it was trained with.
    """
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"], path=path)
    except CheckpointError:
        raise
    except Exception as exc:  # a config of the wrong types: TypeError, ValueError, ...
        raise CheckpointError(path, f"its model config is not valid ({type(exc).__name__}: {exc})") from None
    if feature_weights is not None and config.feature_spec is not None:
        config.feature_spec = {**config.feature_spec, "weights": os.fspath(feature_weights)}
    try:  # a fine-tuned encoder's weights come from the state dict; a frozen one's from its file
        model = build_model(config, encoder_weights=False)
    except TimmUnavailableError as exc:  # a library missing here, not a bad file: name the checkpoint needing it
        raise TimmUnavailableError(path, exc.reason) from None
    except EncoderError:
        raise
    except Exception as exc:  # noqa: BLE001 - a config that loads but cannot build (bad kwargs, missing timm, ...)
        raise CheckpointError(path, f"its model config does not build a model ({type(exc).__name__}: {exc})") \
            from None
    load_weights(path, model, payload)
    model.threshold = stored_threshold(payload, config)
    return model.to(device).eval()


def stored_threshold(payload: dict, config: ModelConfig) -> float | None:
    """The decision threshold on P(class 1) a checkpoint stores (``metrics.val_threshold``: Youden's J
    on the validation slides, chosen in training) for a two-class classifier; None when there is
    none (no validation split, more classes, another task, an older file)."""
    value = (payload.get("metrics") or {}).get("val_threshold")
    if config.task != "classification" or config.n_classes != 2 or isinstance(value, bool) \
            or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return float(value)


def checkpoint_id(path: str | os.PathLike) -> str:
    """A short content hash of a checkpoint file (identifies it in results)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
