"""``ats-wsi train``: train an attention-sampling slide classifier from a manifest."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from . import _auto_encoder, _encoder, _exports
from ._common import (HelpFormatter, LibraryLog, check_device, classes, error, floats, int_in, json_object,
                      positive_int, read_model_config, transient_bars)
from ._epoch_line import busy_note, flat_after_exploring, read_ahead_note, spread_note

_CONFIG_FLAGS = ("attention_net", "attention_kwargs", "feature_net", "feature_kwargs", "feature_dim", "n_patches",
                 "predict_patches",
                 "patch_size", "patch_level", "replace", "entropy", "min_tissue", "tile_aligned", "mean", "std",
                 "sampler", "smoothing", "temperature", "instance_head", "readout", "zoom_mpp", "zoom_regions", "zoom_size",
                 "task", "survival_loss", "n_bins")
# The model `ats-wsi train` builds when no flag or --config says otherwise (docs/training.md says why
# each is what it is). Library users get ModelConfig's own defaults; these are the CLI's.
MODEL_DEFAULTS = {"low_mpp": 8.0, "patch_mpp": 0.5, "patch_size": 128, "n_patches": 32, "instance_head": True, "temperature": 0.25,
                  "attention_kwargs": {"hidden": 8, "layers": 3, "pool": 4}, "entropy": 0.0}
# A one-stage model predicts (and validates) with this many times its training draws (docs/training.md,
# "Patches at prediction").
PREDICT_FACTOR = 4
# ... and for the built-in feature net (not for an encoder or another net).
FEATURE_DEFAULTS = {"feature_kwargs": {"widths": [16, 32, 64], "stem_stride": 2, "norm": "none"},
                    "feature_dim": 32}
# The training defaults (TrainSettings keys).
TRAIN_DEFAULTS = {"epochs": 30, "lr": 3e-3, "attention_lr": 1e-2, "schedule": "cosine", "batch_size": 6,
                  "select": "last", "explore": 1.0, "explore_epochs": 6, "explore_patches": 64,
                  "instance_weight": 1.0, "distill_weight": 1.0, "distill": "rank",
                  "distill_temperature": None}
# With the instance memory (a frozen feature net), the distillation runs over it at a sharper target
# (--distill-memory, --distill-temperature): docs/training.md, "A flat attention map".
MEMORY_DISTILL_TEMPERATURE = 0.25
# Patches a slide the instance loss remembers when the feature net is frozen (--instance-memory).
INSTANCE_MEMORY = 1024
# ModelConfig keys whose flag is not --the-key-with-dashes (tests/cli/test_cli_basics.py checks every key has one).
FLAG_OF_KEY = {"n_classes": "--classes", "class_names": "--classes", "feature_frozen": "--freeze-features",
              "n_bins": "--time-bins", "time_bins": "--time-bins", "target_mean": "--target-column",
              "target_std": "--target-column"}


def register(sub) -> None:
    """Add ``train`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("train", help="train an attention-sampling slide classifier", formatter_class=HelpFormatter)
    from ..classifier import ModelConfig

    p.add_argument("manifest", help="CSV or TSV with a header: path, label (integers or class names), "
                                    "optional split (train/val/test), slide_id, mpp; see docs/cli.md")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv, config.json, train.log")
    p.add_argument("--config", help="JSON file of model settings, the keys of ModelConfig (flags below override it)")
    _register_model(p, ModelConfig(**{**MODEL_DEFAULTS, **FEATURE_DEFAULTS, "low_downsample": None}))
    _register_resolution(p)
    _register_zoom(p)
    _encoder.register_train(p)
    _auto_encoder.register(p)
    _register_training(p)
    _register_aids(p)
    _register_task(p)
    _exports.register_roi(p)
    p.set_defaults(func=run)


def _register_task(p) -> None:
    """What the slide head predicts, and k-fold cross-validation (docs/training.md, "Survival and regression")."""
    from ..data.folds import MAX_FOLDS

    g = p.add_argument_group("task and cross-validation (see docs/training.md)")
    g.add_argument("--task", choices=["classification", "survival", "regression"],
                   help="classification (labels), survival (time and event columns) or regression (a numeric "
                        "target column); stored in the checkpoint (default: classification)")
    g.add_argument("--survival-loss", choices=["nll", "cox"],
                   help="nll: discrete-time hazards over --time-bins quantile bins of the training event times; "
                        "cox: the Cox partial likelihood over each batch (default: nll)")
    g.add_argument("--time-bins", type=positive_int, dest="n_bins", metavar="N",
                   help="bins of the nll survival head (default: 4)")
    g.add_argument("--time-column", help="the manifest's follow-up time column (default: time, OS.time, "
                                         "survival_months, ...)")
    g.add_argument("--event-column", help="the manifest's event column, 1 = event, 0 = censored (default: event, OS, "
                                          "status, ...; censorship is read inverted)")
    g.add_argument("--target-column", help="the manifest's regression target (default: target, value, score, y, "
                                           "label)")
    folds = g.add_mutually_exclusive_group()
    folds.add_argument("--fold", type=int, metavar="K", help="the manifest's split column holds fold numbers: test "
                                                             "on fold K, validate on the next fold, train on the rest")
    folds.add_argument("--folds", type=int_in(2, MAX_FOLDS), metavar="N",
                       help="make N folds stratified by class (survival: by event), save them in OUT/folds.csv and "
                            "train each into OUT/fold-K; a summary of the folds at the end")


def _register_model(p, d) -> None:
    """The model flags; ``d`` is the default ModelConfig (its values shown in --help)."""
    g = p.add_argument_group("model (each flag overrides --config; see docs/training.md for the defaults)")
    g.add_argument("--attention-net", help=f"attention net name in ats_wsi.nets (default: {d.attention_net})")
    g.add_argument("--attention-kwargs", type=json_object,
                   help=f"attention net arguments as JSON (default: {json.dumps(d.attention_kwargs)})")
    g.add_argument("--feature-net", help=f"feature net name: feature-small, feature-medium, timm:resnet18, ..., "
                                         f"or an encoder file PATH.pt (TorchScript) / PATH.pt2 (torch.export) "
                                         f"with --feature-spec (default: {d.feature_net})")
    g.add_argument("--feature-kwargs", type=json_object,
                   help=f"feature net arguments as JSON (default for {d.feature_net}: {json.dumps(d.feature_kwargs)})")
    g.add_argument("--feature-dim", type=positive_int, help=f"features per patch (default: {d.feature_dim})")
    g.add_argument("--classes", type=classes, dest="classes", metavar="N|NAME,NAME,...",
                   help="the number of classes (labels 0..N-1), or the class names in label order (labels "
                        "written as names are then numbered in this order; default: the manifest's names "
                        f"sorted, or {d.n_classes} classes for integer labels)")
    g.add_argument("--n-patches", type=positive_int, help=f"patches drawn per slide (default: {d.n_patches})")
    g.add_argument("--predict-patches", type=positive_int,
                   help=f"patches drawn per slide in validation and by `ats-wsi predict` (default: {PREDICT_FACTOR} x "
                        f"--n-patches, {PREDICT_FACTOR * d.n_patches} by default; a zoom model: --n-patches)")
    g.add_argument("--patch-size", type=int, help="patch side in pixels of --patch-level (or at --patch-mpp) "
                                                     f"(default: {d.patch_size})")
    g.add_argument("--patch-level", type=int, help="pyramid level patches are read from, instead of --patch-mpp")
    low = g.add_mutually_exclusive_group()
    low.add_argument("--low-downsample", type=float,
                     help="attention input resolution as a downsample of level 0, instead of --low-mpp")
    low.add_argument("--low-mpp", type=float, help=f"attention input resolution in µm/px (default: {d.low_mpp:g})")
    g.add_argument("--replace", action=argparse.BooleanOptionalAction, default=None,
                   help="sample with replacement (default: without)")
    g.add_argument("--entropy", type=float, help=f"entropy regulariser weight (default: {d.entropy:g})")
    g.add_argument("--min-tissue", type=float, help="fraction of tissue a low-view cell needs to be drawn "
                                                    f"(the tissue threshold; default: {d.min_tissue:g})")
    g.add_argument("--tile-aligned", action=argparse.BooleanOptionalAction, default=None,
                   help="snap patches to the grid of multiples of --patch-size (default: no)")
    g.add_argument("--mean", type=floats(3), metavar="R,G,B",
                   help=f"pixel normalisation mean (default: {','.join(f'{v:g}' for v in d.mean)})")
    g.add_argument("--std", type=floats(3), metavar="R,G,B",
                   help=f"pixel normalisation std (default: {','.join(f'{v:g}' for v in d.std)})")


def _register_zoom(p) -> None:
    """Attention that zooms (docs/zoom.md): all three flags, or none (a one-stage model)."""
    g = p.add_argument_group("attention that zooms (two stages; docs/zoom.md; stored in the checkpoint)")
    g.add_argument("--zoom-mpp", type=float, metavar="M",
                   help="µm/px of the regions the second attention stage sees (e.g. 2); with --zoom-regions "
                        "and --zoom-size; --n-patches is then the patches drawn per region")
    g.add_argument("--zoom-regions", type=int, metavar="N", help="regions drawn per slide by the first stage (n1)")
    g.add_argument("--zoom-size", type=float, metavar="UM", help="side of a region in µm (e.g. 256)")


def _register_training(p) -> None:
    """The training flags."""
    from ..run.selection import SELECT

    g = p.add_argument_group("training")
    d = TRAIN_DEFAULTS
    g.add_argument("--epochs", type=positive_int, default=d["epochs"],
                   help="epochs to train (in all, with --resume)")
    g.add_argument("--lr", type=float, default=d["lr"], help="learning rate (AdamW)")
    g.add_argument("--attention-lr", type=float, default=d["attention_lr"],
                   help="separate learning rate for the attention net (its own param group)")
    g.add_argument("--schedule", choices=["constant", "cosine"], default=d["schedule"],
                   help="learning-rate schedule over the epochs")
    g.add_argument("--batch-size", type=positive_int, default=d["batch_size"],
                   help="slides per optimiser step (the total over processes under torchrun)")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=0, help="seed of the model, the order and the draws")
    g.add_argument("--io-threads", type=int, default=2, help="tile-decoding threads")
    g.add_argument("--open-threads", type=positive_int, default=4,
                   help="threads that open and check every slide before the first epoch")
    g.add_argument("--skip-unreadable", action="store_true",
                   help="train on the slides that open and pass the checks, and on without a slide that fails in an "
                        "epoch; list the others in OUT/skipped.csv (default: name them and stop)")
    g.add_argument("--check-tiles", type=int, default=16, metavar="N",
                   help="tiles per slide decoded before the first epoch, under tissue at the level patches are read "
                        "from (at most 5 s per slide; 0: none)")
    g.add_argument("--allow-duplicates", action="store_true",
                   help="train although a slide is on several rows (same path, hard link or content; default: an "
                        "error listing them)")
    g.add_argument("--mpp", type=float, help="level-0 µm/px of every slide, overriding its metadata (for TIFFs "
                                             "without one; a manifest's mpp column wins)")
    g.add_argument("--select", choices=SELECT, default=d["select"],
                   help="the validation number best.pt is chosen by (ties: lower loss, then later epoch), or last: "
                        "the last epoch (docs/training.md, \"Patches at prediction, which epoch\")")
    g.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                   help="balanced: weight each slide's loss by n / (classes x slides of its class)")
    again = g.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT from its last.pt (or newest checkpoints/epoch-NNN.pt)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in OUT (its checkpoints, metrics and logs; other files stay)")
    g.add_argument("--read-ahead", action=argparse.BooleanOptionalAction, default=None,
                   help="prepare the next slide of a batch (attention, draws, patch reads) in a background thread "
                        "while one trains; the same draws and pixels, so the same weights (default: on with a CUDA "
                        "--device, off on CPU, where it measured no gain; never under torchrun, for zoom models, "
                        "for an attention net with BatchNorm or dropout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")


def _register_aids(p) -> None:
    """Sampler, exploration and per-patch losses (docs/training.md says why each default is what it is)."""
    g = p.add_argument_group("what to draw and how the attention learns (see docs/training.md)")
    g.add_argument("--sampler", choices=["attention", "uniform"],
                   help="attention: draw from the attention map; uniform: uniformly over tissue cells, "
                        "everything else the same (the random-patch baseline; default: attention)")
    g.add_argument("--smoothing", type=float,
                   help="share of the attention spread uniformly over tissue at prediction (default: 0)")
    g.add_argument("--temperature", type=float,
                   help="attention softmax temperature: < 1 sharpens the map (default: "
                        f"{MODEL_DEFAULTS['temperature']:g})")
    g.add_argument("--instance-head", action=argparse.BooleanOptionalAction, default=None,
                   help="a per-patch classifier beside the slide head (needed by the per-patch losses)")
    g.add_argument("--readout", choices=["head", "top"],
                   help="how predictions (and validation) read a slide's probabilities: "
                        "head (the slide head over the estimate) or top (the instance head's most positive drawn "
                        "patch; default: top with the instance head, else head)")
    d = TRAIN_DEFAULTS
    g.add_argument("--explore", type=float, default=d["explore"],
                   help="attention smoothing in epoch 1 (1: uniform over tissue), annealed to --smoothing over "
                        "--explore-epochs")
    g.add_argument("--explore-epochs", type=int, default=d["explore_epochs"], help="epochs of exploration (0: none)")
    g.add_argument("--explore-patches", type=int, default=d["explore_patches"],
                   help="patches drawn per slide while exploring (0: --n-patches)")
    g.add_argument("--instance-weight", type=float, default=d["instance_weight"],
                   help="weight of the per-patch multiple-instance loss (needs the instance head)")
    g.add_argument("--distill-weight", type=float, default=d["distill_weight"],
                   help="weight of the loss that trains the attention to predict the per-patch scores")
    g.add_argument("--distill", choices=["bce", "rank"], default=d["distill"],
                   help="how the attention learns the per-patch scores: bce (absolute) or rank (within each "
                        "slide, which cells a finding would be in)")
    g.add_argument("--distill-temperature", type=float, default=d["distill_temperature"], metavar="T",
                   help="rank: the per-patch log-odds are divided by T before the attention learns them; "
                        "below 1 the draws concentrate on the likeliest regions (default: "
                        f"{MEMORY_DISTILL_TEMPERATURE:g} with --distill-memory, else 1)")
    g.add_argument("--instance-memory", type=int, default=None, metavar="N",
                   help="with a frozen feature net, the instance loss ranks up to N distinct patches each slide has "
                        "shown, not only this step's draws, and a positive slide trains the one least like any "
                        f"negative slide's patch (default: {INSTANCE_MEMORY} when frozen, else 0)")
    g.add_argument("--distill-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="with the instance memory, the attention learns the ranking of every remembered patch of "
                        "the slide, not only this step's draws (default: on with the instance memory)")
    g.add_argument("--negative-class", default=None, metavar="LABEL|NAME",
                   help="the class meaning 'nothing found' for the per-patch losses (default: the first class)")


def _register_resolution(p) -> None:
    """Patches at a physical resolution (issue 16): --patch-mpp / --patch-magnification, --mpp-tolerance."""
    g = p.add_argument_group("patch resolution (instead of --patch-level; stored in the checkpoint)")
    res = g.add_mutually_exclusive_group()
    res.add_argument("--patch-mpp", type=float,
                     help=f"read patches at this µm/px from every slide (--patch-size is then in pixels at it; "
                          f"default: {MODEL_DEFAULTS['patch_mpp']:g})")
    res.add_argument("--patch-magnification", type=float,
                     help="the same as an objective magnification: µm/px = 10 / magnification (20 -> 0.5)")
    g.add_argument("--mpp-tolerance", type=float, help="relative tolerance of --patch-mpp (default 0.05)")


def model_config(args: argparse.Namespace):
    """The ModelConfig of ``--config`` with the model flags applied over it."""
    from ..classifier import ModelConfig

    base = read_model_config(args.config) if args.config else {}
    for key in _CONFIG_FLAGS:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if isinstance(args.classes, int):
        base.update(n_classes=args.classes, class_names=None)
    elif args.classes is not None:
        base.update(n_classes=len(args.classes), class_names=list(args.classes))
    if args.low_downsample is not None:
        base.update(low_downsample=args.low_downsample, low_mpp=None)
    if args.low_mpp is not None:
        base.update(low_mpp=args.low_mpp, low_downsample=None)
    _encoder.apply_resolution(args, base)
    _encoder.apply(args, base)
    if base.get("task", "classification") != "classification" and "instance_head" not in base:
        base["instance_head"] = False  # its per-patch losses need classes
    _apply_defaults(base)
    if "readout" not in base:  # the instance head's top patch where there is one (docs/training.md, "The readout")
        top = base.get("instance_head") and base.get("task", "classification") == "classification"
        base["readout"] = "top" if top else "head"
    return ModelConfig.from_user(base, source=args.config)


def _apply_defaults(base: dict) -> None:
    """Fill the CLI's model defaults into ``base`` where neither --config nor a flag set the key
    (or its alternative: a low downsample, a patch level, an encoder's own contract)."""
    for key, value in MODEL_DEFAULTS.items():
        if key in base:
            continue
        if key == "low_mpp" and base.get("low_downsample") is not None:
            continue
        if key == "attention_kwargs" and base.get("attention_net", "attention-small") != "attention-small":
            continue
        base[key] = json.loads(json.dumps(value))
    if base.get("low_mpp") is not None:
        base.setdefault("low_downsample", None)
    if "predict_patches" not in base and base.get("zoom_mpp") is None and isinstance(base["n_patches"], int):
        base["predict_patches"] = min(PREDICT_FACTOR * base["n_patches"], 1 << 16)
    if base.get("feature_net", "feature-small") == "feature-small" and base.get("feature_spec") is None:
        for key, value in FEATURE_DEFAULTS.items():
            base.setdefault(key, json.loads(json.dumps(value)))



def _checked_aids(args: argparse.Namespace, config, names: list[str], *, frozen: bool,
                  build: bool = True) -> tuple[dict | None, str | None]:
    """``(aids, None)``: the model ``config`` builds (unknown net names or arguments fail there, with
    their message) and the aid flags hold for it with a ``frozen`` feature net; else ``(None, message)``."""
    from ..classifier import build_model
    from ..errors import ConfigError, EncoderError

    if build:
        try:
            build_model(config)
        except (ValueError, TypeError, ImportError, EncoderError) as exc:
            return None, f"ats-wsi train: bad model settings: {exc}"
    try:
        return _aid_settings(args, names, config.n_classes if not names else len(names), bool(config.instance_head),
                             frozen, config.negative_class), None
    except ConfigError as exc:
        return None, f"ats-wsi train: {exc}"


def _aid_settings(args: argparse.Namespace, names: list[str], n_classes: int, instance_head: bool = True,
                  frozen: bool = False, negative: int = 0) -> dict:
    """The exploration and per-patch loss settings of the flags (TrainSettings keys)."""
    from ..errors import ConfigError

    out = {key: getattr(args, key) for key in ("explore", "explore_epochs", "explore_patches",
                                               "instance_weight", "distill_weight", "distill",
                                               "distill_temperature")}
    out["explore_patches"] = out["explore_patches"] or None
    tau = out["distill_temperature"]
    if tau is not None and not (math.isfinite(tau) and 0.01 <= tau <= 100):
        raise ConfigError(None, f"--distill-temperature {tau:g} must be between 0.01 and 100 (1: the instance "
                                "head's odds as they are; below 1: sharper)")
    memory = getattr(args, "instance_memory", None)
    if memory is not None and (memory < 0 or memory > 1 << 20):
        raise ConfigError(None, f"--instance-memory {memory} must be between 0 and {1 << 20} patches a slide")
    if memory and not frozen:
        raise ConfigError(None, f"--instance-memory {memory} needs a frozen feature net: add --freeze-features "
                                "(with --feature-net/--encoder) or pass --instance-memory 0")
    out["instance_memory"] = (INSTANCE_MEMORY if frozen and instance_head else 0) if memory is None else memory
    out["negative_class"] = _negative_class(args.negative_class, names, n_classes, negative)
    wants = getattr(args, "distill_memory", None)
    if wants and not out["instance_memory"]:
        raise ConfigError(None, "--distill-memory needs the instance memory (a frozen feature net with the instance "
                                "head, --instance-memory N > 0): drop --distill-memory")
    out["distill_memory"] = bool(out["instance_memory"]) if wants is None else bool(wants)
    if tau is None:
        out["distill_temperature"] = MEMORY_DISTILL_TEMPERATURE if out["distill_memory"] else 1.0
    if not instance_head:  # --no-instance-head: the per-patch losses are off unless asked for (then an error)
        out["instance_memory"] = 0
        for key, flag in (("instance_weight", "--instance-weight"), ("distill_weight", "--distill-weight")):
            if out[key] and out[key] != TRAIN_DEFAULTS[key]:
                raise ConfigError(None, f"{flag} {out[key]:g} needs the instance head: drop --no-instance-head "
                                        f"or pass {flag} 0")
            out[key] = 0.0
    return out


def _zoom_settings(args: argparse.Namespace, aids: dict) -> str | None:
    """Training settings of a two-stage model: exploration draws no more cells per region than
    ``--n-patches`` unless asked (returns why the settings are refused, or None: none are)."""
    if aids["explore_patches"] == TRAIN_DEFAULTS["explore_patches"]:  # 64 per region would be n1 x 64 patches
        aids["explore_patches"] = None
    return None


def _negative_class(value: str | None, names: list[str], n_classes: int, default: int = 0) -> int:
    """``--negative-class`` as a label number: a class name of the config, or an integer (``default``
    when not given: the model config's ``negative_class``)."""
    from ..errors import ConfigError

    if value is None:
        return default
    if value in names:
        return names.index(value)
    try:
        label = int(value)
    except ValueError:
        raise ConfigError(None, f"--negative-class {value!r} is neither a class name {names} nor a label number") \
            from None
    if not 0 <= label < n_classes:
        raise ConfigError(None, f"--negative-class {label} is not a label of the {n_classes} classes")
    return label


def run(args: argparse.Namespace) -> int:
    """Train, printing one line per epoch."""
    from ..run.outdir import prepare_run_folder
    from ..run.train import TrainSettings, train

    from ..data.manifest import read_cohort
    from ..errors import ConfigError, EncoderError

    bad = check_device("train", args.device)
    if bad:
        return error(bad)
    if args.mpp is not None and not 0 < args.mpp < float("inf"):
        return error(f"ats-wsi train: --mpp must be a number > 0, got {args.mpp}")
    try:
        config = model_config(args)
    except (ConfigError, EncoderError) as exc:
        return error(f"ats-wsi train: bad model settings: {exc}")
    names = list(config.class_names or [])
    columns = {"time_column": args.time_column, "event_column": args.event_column, "target_column": args.target_column}
    if config.task == "survival":
        from ..outcomes.survival_metrics import lifelines

        lifelines()  # MissingExtraError (one line, exit 1) before any work
    if not args.resume:
        cohort = read_cohort(args.manifest, classes=config.class_names, task=config.task, **columns)  # fails here
        names = names or list(cohort.class_names or [])
        if isinstance(args.classes, int) and cohort.class_names and args.classes != len(cohort.class_names):
            return error(f"ats-wsi train: --classes {args.classes}, but the manifest's labels are "
                         f"{len(cohort.class_names)} class names {cohort.class_names}")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes under torchrun
    if args.batch_size % world:
        return error(f"ats-wsi train: --batch-size {args.batch_size} must be a multiple of the {world} "
                     f"processes (it is the total batch)")
    pretrain, refused = _auto_encoder.wanted(args)
    if refused:
        return error(f"ats-wsi train: {refused}")
    if pretrain:  # the default encoder (docs/training.md, "The default encoder"); a run there is refused first
        _, bad = _checked_aids(args, config, names, frozen=True)  # what fails with any encoder fails before it
        if bad:
            return error(bad)
        if not args.overwrite:
            prepare_run_folder(args.out, resume=False, overwrite=False)
        _auto_encoder.pretrain_for_train(args, config)
        config = model_config(args)
    aids, bad = _checked_aids(args, config, names, frozen=bool(config.feature_frozen), build=not args.resume)
    if bad:  # (on resume the checkpoint's config is used: nothing to build)
        return error(bad)
    if aids["negative_class"] != config.negative_class:  # the readout's "nothing found", as the losses'
        config = dataclasses.replace(config, negative_class=aids["negative_class"])
    if config.zoom:
        bad = _zoom_settings(args, aids)
        if bad:
            return error(f"ats-wsi train: {bad}")
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                             seed=args.seed, workers=args.io_threads, attention_lr=args.attention_lr,
                             schedule=args.schedule, select=args.select,
                             class_weights=None if args.class_weights == "none" else args.class_weights,
                             skip_unreadable=args.skip_unreadable, open_threads=args.open_threads,
                             check_tiles=max(0, args.check_tiles), allow_duplicates=args.allow_duplicates, mpp=args.mpp,
                             feature_cache=args.feature_cache, fold=args.fold, **columns, **aids,
                             **_exports.roi_settings(args),
                             read_ahead=str(args.device).startswith("cuda") if args.read_ahead is None else args.read_ahead)
    note = read_ahead_note(config, world) if args.read_ahead else None
    if note and int(os.environ.get("RANK", "0")) == 0:  # asked for: say once why it cannot be
        print(note, file=sys.stderr)
    if config.task != "classification" and args.select == "accuracy":
        return error(f"ats-wsi train: --select accuracy is for classifiers; a {config.task} model is chosen by "
                     f"auc (its {'C-index' if config.task == 'survival' else 'R²'}) or loss")
    score = {"classification": "val_auc", "survival": "val_c_index", "regression": "val_r2"}[config.task]

    warned = []

    def report(m):
        accuracy = f"  acc {m.train_acc:.3f}" if config.task == "classification" else ""
        val_accuracy = f"  val_acc {m.val_acc:.3f}" if config.task == "classification" else ""
        print(f"epoch {m.epoch:3d}  loss {m.train_loss:.4f}{accuracy}  val_loss {m.val_loss:.4f}{val_accuracy}  "
              f"{score} {m.val_auc:.3f}  {m.seconds:.1f}s{busy_note(m)}{_encoder.cache_note(m)}{spread_note(m)}", flush=True)
        if not warned and flat_after_exploring(m, settings.explore_epochs):
            warned.append(m.epoch)  # once a run: the first epoch the map is flat once exploration is over
            pull = (f"; --entropy {config.entropy:g} pulls the map flat: try --entropy 0" if config.entropy else "")
            print(f"warning: the attention map is flat (logit sd {m.attention_sd:.4f} over tissue in epoch "
                  f"{m.epoch}): the draws are uniform from now on{pull}; or try another --seed "
                  "(docs/training.md, 'A flat attention map')", file=sys.stderr, flush=True)

    def show_cohort(summary):
        print(summary.text(), flush=True)
        if summary.resumed_from is not None:
            print(f"resumed from epoch {summary.resumed_from}", flush=True)

    out, speaks = Path(args.out), int(os.environ.get("RANK", "0")) == 0  # under torchrun, one process speaks
    if args.folds:
        from ._folds import train_folds

        return train_folds(args, config, settings, report, show_cohort)
    with LibraryLog(out / "train.log") as log:
        try:
            train(args.manifest, out, config, settings, resume=args.resume, overwrite=args.overwrite,
                  progress=transient_bars(not args.no_progress), on_epoch=report, on_cohort=show_cohort)
        finally:
            if speaks and log.summary("train"):
                print(log.summary("train"), file=sys.stderr)
    if speaks:
        skipped = out / "skipped.csv"
        if skipped.is_file():
            n = sum(1 for _ in skipped.open(encoding="utf-8")) - 1
            if n:
                print(f"{n} unreadable slide(s) skipped -> {skipped}")
        print(f"checkpoints in {out / 'checkpoints'}; last: {out / 'last.pt'}; best ({args.select}): "
              f"{out / 'best.pt'}")
    return 0


__all__ = ["register", "run", "model_config"]
