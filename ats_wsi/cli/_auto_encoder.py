"""``ats-wsi train``'s default feature net: an encoder pretrained on the training slides (SimCLR), frozen.

When neither a flag nor ``--config`` names a feature net, ``ats-wsi train
MANIFEST --out RUN`` first does what ``ats-wsi pretrain`` does on the
manifest's training slides (labels never read), into ``RUN/encoder/``, then
trains attention sampling on that encoder frozen, its features cached in
``RUN/encoder/cache``: the same as passing ``--feature-net
RUN/encoder/encoder.pt2 --feature-spec RUN/encoder/spec.json
--freeze-features --feature-cache RUN/encoder/cache``.

Why it is the default (docs/results/lesion-benchmark.md, round six): on a
lesion among look-alikes, the built-in feature net trained end to end from the
slide labels never told the lesion from a follicle (test AUC 0.69 at best),
while attention sampling on a frozen encoder learnt from the cohort's own
tissue finds it. ``--no-pretrain`` trains the built-in net end to end as
before; a foundation encoder (``--feature-spec uni``) replaces both.

Off by itself where it cannot apply, with one line on stderr saying so:
cross-validation (``--folds``/``--fold``: every fold would need its own
encoder), several processes (torchrun), patches from a pyramid level instead
of µm/px, and ``--resume`` (the checkpoint already names its encoder).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from ._common import positive_int, read_model_config

FOLDER = "encoder"
"""The run folder's subfolder the pretrained encoder is written to."""
# Flags that name or shape a feature net: any of them given means the user chose one.
_NET_FLAGS = ("feature_net", "feature_spec", "feature_kwargs", "feature_dim", "feature_weights", "feature_adapter",
              "feature_mean", "feature_std")
_NET_KEYS = ("feature_net", "feature_spec", "feature_kwargs", "feature_dim")


def register(p) -> None:
    """The pretraining flags of ``ats-wsi train`` (their own group)."""
    from ..encoders.simclr import SimCLRSettings
    from ..run.pretrain import PretrainSettings

    d, s = PretrainSettings(), SimCLRSettings()
    g = p.add_argument_group("the default encoder: pretrained on the training slides without labels "
                             "(see docs/training.md, 'The default encoder')")
    g.add_argument("--pretrain", action=argparse.BooleanOptionalAction, default=None,
                   help="pretrain a patch encoder on the training slides' tissue (SimCLR, labels unread) into "
                        "OUT/encoder and train on it frozen, its features cached (default: on when no flag or "
                        "--config names a feature net; --no-pretrain trains the built-in net end to end)")
    g.add_argument("--pretrain-patches", type=positive_int, default=d.n_patches, metavar="N",
                   help="random tissue patches read for pretraining")
    g.add_argument("--pretrain-steps", type=positive_int, default=s.steps, metavar="N",
                   help="SimCLR training steps")


def _config_names_a_net(args: argparse.Namespace) -> bool:
    """Whether ``--config`` sets a feature-net key."""
    return bool(args.config) and any(key in read_model_config(args.config) for key in _NET_KEYS)


def _cannot(args: argparse.Namespace) -> str | None:
    """Why pretraining cannot run with these flags (None: it can)."""
    if args.resume:
        return "--resume continues with the checkpoint's own feature net"
    if args.folds or args.fold is not None:
        return "cross-validation would need an encoder per fold; run `ats-wsi pretrain` on your cohort first"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "under torchrun every process would pretrain; run `ats-wsi pretrain` first"
    if args.patch_level is not None:
        return "--patch-level reads patches at a level; pretraining reads them at µm/px (--patch-mpp)"
    return None


def wanted(args: argparse.Namespace) -> tuple[bool, str | None]:
    """``(pretrain?, refusal)``: whether to pretrain, and the error line when ``--pretrain`` cannot be honoured.

    Prints one line on stderr when the default is off only because the flags rule it out.
    """
    named = any(getattr(args, key, None) is not None for key in _NET_FLAGS) or _config_names_a_net(args)
    why = _cannot(args)
    if args.pretrain is True:
        if named:
            return False, "--pretrain makes the feature net: drop it, or drop the flags that name a feature net"
        return (False, f"--pretrain: {why}") if why else (True, None)
    if args.pretrain is False or named:
        return False, None
    if why and not args.resume:
        print(f"note: the feature net trains end to end, without the pretrained default encoder: {why} "
              f"(docs/training.md, 'The default encoder')", file=sys.stderr, flush=True)
    return why is None, None


def pretrain_for_train(args: argparse.Namespace, config) -> dict:
    """Pretrain into ``OUT/encoder`` at the config's patch µm/px and size; point ``args`` at the encoder.

    Replaces an earlier ``OUT/encoder`` only under ``--overwrite`` (the caller has already refused a
    folder that holds a run without it). Returns ``pretrain.json``'s record.
    """
    from ..atomic import write_json_atomic
    from ..errors import RunExistsError
    from ..run.pretrain import PretrainSettings
    from ..encoders.simclr import SimCLRSettings
    from .pretrain import pretrain_with_bars

    out = Path(args.out) / FOLDER
    if out.exists():
        if not args.overwrite:
            raise RunExistsError(out, "holds an encoder pretrained for an earlier run; pass --overwrite to "
                                      "pretrain again, or use it with --feature-net/--feature-spec")
        shutil.rmtree(out)
    settings = PretrainSettings(n_patches=args.pretrain_patches, mpp=float(config.patch_mpp),
                                patch_px=int(config.patch_size), workers=max(1, args.io_threads),
                                simclr=SimCLRSettings(steps=args.pretrain_steps, seed=args.seed))
    print(f"pretraining a patch encoder on the training slides' tissue (SimCLR, {settings.n_patches} patches "
          f"of {settings.patch_px} px at {settings.mpp:g} µm/px, {settings.simclr.steps} steps) -> {out}; "
          f"--no-pretrain trains the built-in net end to end instead", flush=True)
    tmp = out.with_name(f".ats.tmp-{FOLDER}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result = pretrain_with_bars(args.manifest, tmp, settings, show=not args.no_progress)
        final = {"encoder": str((out / "encoder.pt2").resolve()), "spec": str((out / "spec.json").resolve())}
        spec = json.loads((tmp / "spec.json").read_text())
        spec["weights"] = final["encoder"]  # where the folder will be
        write_json_atomic(tmp / "spec.json", spec)
        result.update(final)
        write_json_atomic(tmp / "pretrain.json", result)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec = result["training"]
    print(f"encoder: SimCLR loss {rec['loss_first10']:.3f} -> {rec['loss_last10']:.3f} (chance "
          f"{rec['chance_loss']:.3f}), {result['read_seconds'] + rec['seconds']:.0f} s", flush=True)
    args.feature_net = str(out / "encoder.pt2")
    args.feature_spec = str(out / "spec.json")
    args.feature_frozen = True
    if args.feature_cache is None:
        args.feature_cache = str(out / "cache")
    return result


__all__ = ["FOLDER", "register", "wanted", "pretrain_for_train"]
