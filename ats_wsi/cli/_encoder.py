"""Flags of a pretrained patch encoder (issue 17), for ``train`` and ``predict``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import floats

FILE_SUFFIXES = {".pt2": "export", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
                 ".jit": "torchscript", ".torchscript": "torchscript"}


def register_train(p) -> None:
    """The encoder flags of ``ats-wsi train`` (their own group)."""
    from ..encoders import list_specs

    g = p.add_argument_group("pretrained patch encoder (the feature net; see docs/encoders.md)")
    g.add_argument("--feature-spec", metavar="FILE|NAME",
                   help=f"an encoder and its input contract: a registered name ({', '.join(list_specs())}) or a "
                        "JSON spec file; sets --patch-mpp, --patch-size and --feature-dim from the spec")
    g.add_argument("--feature-weights", metavar="PATH",
                   help="the encoder's weights: a safetensors / state-dict file or a local Hugging Face folder "
                        "(default: the spec's, then the local Hugging Face cache; nothing is downloaded)")
    g.add_argument("--freeze-features", dest="feature_frozen", action="store_true", default=None,
                   help="keep the encoder frozen: eval mode, no gradients, weights unchanged (and left out of "
                        "the checkpoints); the attention net and the head train")
    g.add_argument("--feature-adapter", type=int, metavar="N",
                   help="a trainable adapter of width N between encoder and head (default: none)")
    g.add_argument("--feature-mean", type=floats(3), metavar="R,G,B",
                   help="normalisation mean of a built-in feature net's input (default: --mean)")
    g.add_argument("--feature-std", type=floats(3), metavar="R,G,B",
                   help="normalisation std of a built-in feature net's input (default: --std)")
    register_cache(g)


def register_predict(p) -> None:
    """The encoder flags of ``ats-wsi predict``."""
    g = p.add_argument_group("pretrained patch encoder")
    g.add_argument("--feature-weights", metavar="PATH",
                   help="where the checkpoint's encoder weights are on this machine (checked by sha256)")
    register_cache(g)


def register_cache(g) -> None:
    g.add_argument("--feature-cache", metavar="DIR",
                   help="keep a frozen encoder's features per patch box in DIR (and in memory), so later "
                        "epochs, --samples K and later runs encode only boxes never drawn before")


def is_encoder_file(value: str | None) -> bool:
    """Whether ``--feature-net`` names a TorchScript / .pt2 file rather than a net."""
    return bool(value) and ":" not in value and Path(value).suffix.lower() in FILE_SUFFIXES


def apply(args: argparse.Namespace, base: dict) -> None:
    """Put the encoder flags into the model config dict (raises ConfigError / EncoderError)."""
    from ..encoders import load_spec
    from ..errors import ConfigError

    net = getattr(args, "feature_net", None)
    spec_arg = getattr(args, "feature_spec", None)
    for key in ("feature_frozen", "feature_adapter", "feature_mean", "feature_std"):
        value = getattr(args, key, None)
        if value is not None:
            base[key] = list(value) if isinstance(value, tuple) else value
    if base.get("feature_adapter") is not None and base["feature_adapter"] < 0:
        raise ConfigError(None, f"--feature-adapter must be >= 0, got {base['feature_adapter']}")
    if spec_arg is None and not is_encoder_file(net):
        if getattr(args, "feature_weights", None):
            raise ConfigError(None, "--feature-weights needs an encoder: give --feature-spec FILE|NAME")
        return
    if spec_arg is None:
        raise ConfigError(None, f"--feature-net {net}: an encoder file needs --feature-spec FILE|NAME for its "
                                f"input contract (µm/px, size, mean/std, dimension)")
    spec = load_spec(spec_arg)
    if is_encoder_file(net):
        spec = spec.replace(source=FILE_SUFFIXES[Path(net).suffix.lower()], weights=str(Path(net).resolve()),
                            weights_sha256=None)
    elif getattr(args, "feature_weights", None):
        spec = spec.replace(weights=str(Path(args.feature_weights).expanduser().resolve()), weights_sha256=None)
    checks = (("--feature-dim", getattr(args, "feature_dim", None), spec.dim),
              ("--patch-size", getattr(args, "patch_size", None), spec.patch_px),
              ("--patch-mpp", base.get("patch_mpp"), spec.mpp))
    for flag, given, wanted in checks:
        if given is not None and abs(float(given) - float(wanted)) > 1e-9 * max(1.0, abs(float(wanted))):
            raise ConfigError(None, f"{flag} {given:g} contradicts encoder {spec.name!r}, which takes "
                                    f"{spec.describe()}")
    if getattr(args, "patch_level", None) is not None:
        raise ConfigError(None, f"--patch-level: encoder {spec.name!r} reads patches at {spec.mpp:g} µm/px, "
                                f"not at a level")
    base.update(feature_spec=spec.to_dict(), feature_net=f"encoder:{spec.name}", feature_dim=spec.dim,
                patch_mpp=spec.mpp, patch_size=spec.patch_px)


def apply_resolution(args: argparse.Namespace, base: dict) -> None:
    """Put --patch-mpp / --patch-magnification / --mpp-tolerance into the config dict."""
    mpp = getattr(args, "patch_mpp", None)
    magnification = getattr(args, "patch_magnification", None)
    for flag, value in (("--patch-mpp", mpp), ("--patch-magnification", magnification)):
        if value is not None and not 0 < value < float("inf"):
            raise SystemExit(f"ats-wsi train: {flag} must be a number > 0, got {value}")
    if magnification is not None:
        from ..slide.resolution import magnification_to_mpp

        mpp = magnification_to_mpp(magnification)
    if mpp is not None:
        if args.patch_level is not None:
            raise SystemExit("ats-wsi train: give --patch-level or --patch-mpp/--patch-magnification, not both")
        base["patch_mpp"] = mpp
    elif args.patch_level is not None:
        base["patch_mpp"] = None  # an explicit level replaces a config file's µm/px
    if getattr(args, "mpp_tolerance", None) is not None:
        if not 0 <= args.mpp_tolerance < 1:
            raise SystemExit(f"ats-wsi train: --mpp-tolerance must be in [0, 1), got {args.mpp_tolerance}")
        base["mpp_tolerance"] = args.mpp_tolerance


def cache_note(metrics) -> str:
    """`` cache hits/lookups`` for an epoch line (empty without a cache)."""
    hits, misses = getattr(metrics, "feature_hits", 0), getattr(metrics, "feature_misses", 0)
    if not hits and not misses:
        return ""
    return f"  cache {hits}/{hits + misses} hits"


__all__ = ["register_train", "register_predict", "apply", "apply_resolution", "is_encoder_file", "cache_note"]
