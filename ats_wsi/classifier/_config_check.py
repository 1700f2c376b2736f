"""Checks of a model config a person wrote: unknown keys, value types, the low-view pair.

Types are read from :class:`~ats_wsi.classifier.ModelConfig`'s annotations,
so a field added there is checked here without more code.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any

from ..errors import ConfigError
from ..slide.resolution import MAX_MPP, MIN_MPP

POSITIVE = {"n_classes", "feature_dim", "n_patches", "predict_patches", "patch_size"}
MOST = {"n_classes": 1 << 16, "feature_dim": 1 << 16, "n_patches": 1 << 16, "predict_patches": 1 << 16,
        "patch_size": 4096}
"""Largest value of each size: each one sizes memory (a patch of 4096² is 48 MiB)."""
IGNORED_WITH = {"patch_level": "patch_mpp"}
"""Keys a config may leave None where the other key is set (it is ignored then)."""
PAIRS = (("low_mpp", "low_downsample"),)
"""(a, b): setting ``a`` without ``b`` clears ``b``'s default; setting both is an error."""


def _kind(value: Any, annotation: str) -> str | None:
    """None if ``value`` fits the annotation, else what was expected."""
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None:
        return None if "None" in options else "a value (not null)"
    wanted = []
    for opt in options:
        if opt == "None":
            continue
        if opt == "bool":
            if isinstance(value, bool):
                return None
            wanted.append("true or false")
        elif opt == "int":
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return None
            wanted.append("an integer")
        elif opt == "float":
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return None
            wanted.append("a number")
        elif opt == "str":
            if isinstance(value, str):
                return None
            wanted.append("a string")
        elif opt.startswith("dict"):
            if isinstance(value, dict):
                return None
            wanted.append("an object {...}")
        elif opt.startswith("tuple[float"):
            n = opt.count("float")
            if isinstance(value, (list, tuple)) and len(value) == n and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return None
            wanted.append(f"a list of {n} numbers")
        elif opt.startswith("list[str"):
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return None
            wanted.append("a list of strings")
        else:  # an annotation this check does not know: let the dataclass take it
            return None
    return " or ".join(wanted)


def check_user_config(cls, data: Any, source=None) -> dict[str, Any]:
    """``data`` checked and completed for ``cls.from_dict``; raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(source, f"a model config must be a JSON object of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"unknown key {key!r}{hint}; the keys are {sorted(fields)}")
            continue
        wrong = _kind(data[key], fields[key].type)
        if wrong:
            problems.append(f"key {key!r}: expected {wrong}, got {data[key]!r}")
        elif key in POSITIVE and data[key] is not None and data[key] < 1:
            problems.append(f"key {key!r}: must be >= 1, got {data[key]!r}")
    if problems:
        raise ConfigError(source, "; ".join(problems))
    out = dict(data)
    for a, b in PAIRS:
        if out.get(a) is not None and out.get(b) is not None:
            raise ConfigError(source, f"keys {a!r} and {b!r} are alternatives: set only one "
                                      f"(got {a}={out[a]!r}, {b}={out[b]!r})")
        if out.get(a) is not None:
            out[b] = None
    if out.get("class_names") is not None and "n_classes" in out and len(out["class_names"]) != out["n_classes"]:
        raise ConfigError(source, f"key 'class_names' has {len(out['class_names'])} names but "
                                  f"'n_classes' is {out['n_classes']}")
    if out.get("class_names") is not None:
        out["n_classes"] = len(out["class_names"])
    return out


def config_problems(config) -> list[str]:
    """Every rule a built config breaks (what :meth:`ModelConfig.__post_init__` checks):
    :func:`range_problems`, then, for the keys those do not name, a value of another type
    than its field's or a size below 1."""
    problems = range_problems(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if any(p.startswith(f"{f.name!r}") for p in problems) or (
                f.name in IGNORED_WITH and value is None and getattr(config, IGNORED_WITH[f.name]) is not None):
            continue
        wrong = _kind(value, f.type)
        if wrong:
            problems.append(f"{f.name!r}: expected {wrong}, got {value!r}")
        elif f.name in POSITIVE and value is not None and value < 1:
            problems.append(f"{f.name!r}: must be >= 1, got {value!r}")
    return problems


def range_problems(config) -> list[str]:
    """What is out of range in a built config (sizes, resolutions, normalisation, class names).

    Checked for a config a person wrote and for one a checkpoint holds: every
    number that sizes memory or divides pixels, before anything is built.
    """
    problems = []
    for key, most in MOST.items():
        value = getattr(config, key)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and not 1 <= value <= most:
            problems.append(f"{key!r} must be in 1..{most}, got {value!r}")
    low = config.low_downsample
    if low is not None and not (isinstance(low, numbers.Real) and 1 <= low < math.inf):
        problems.append(f"'low_downsample' must be a finite number >= 1 (level-0 pixels per low-view pixel; "
                        f"16 to 64 are usual), got {low!r}")
    for key in ("low_mpp", "patch_mpp"):
        value = getattr(config, key)
        if value is not None and not (isinstance(value, numbers.Real) and MIN_MPP <= value <= MAX_MPP):
            problems.append(f"{key!r} must be µm/px in {MIN_MPP:g}..{MAX_MPP:g}, got {value!r}")
    for key in ("mean", "std", "feature_mean", "feature_std"):
        value = getattr(config, key)
        if value is None and key.startswith("feature"):
            continue
        values = tuple(value) if isinstance(value, (list, tuple)) else ()
        if len(values) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                       and math.isfinite(v) for v in values):
            problems.append(f"{key!r} must be 3 finite numbers (one per RGB channel), got {value!r}")
        elif key.endswith("std") and not all(v > 0 for v in values):
            problems.append(f"{key!r} must be 3 numbers > 0 (pixels are divided by it), got {value!r}")
    problems += zoom_problems(config)
    names = config.class_names
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != config.n_classes):
        count = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        problems.append(f"'class_names' has {count} names but 'n_classes' is {config.n_classes!r}")
    return problems


ZOOM_KEYS = {"zoom_mpp": "--zoom-mpp", "zoom_regions": "--zoom-regions", "zoom_size": "--zoom-size"}
"""The keys of attention that zooms and their ``ats-wsi train`` flags (messages name both)."""
ZOOM_EXCLUDES = {"tile_aligned": "tile-aligned patches (--tile-aligned)"}
"""Settings a two-stage model does not take yet, and how a person sets them."""


def zoom_problems(config) -> list[str]:
    """What is wrong with the zoom keys of a built config (none set: a one-stage model, nothing to check).

    The three keys go together; ``zoom_mpp`` is µm/px like ``patch_mpp`` (which
    a two-stage model needs); ``zoom_size`` is a region's side in µm, at most
    :data:`~ats_wsi.patches.zoom_source.MAX_REGION_SIDE` pixels at ``zoom_mpp``;
    ``zoom_regions · n_patches`` (and ``· predict_patches``) patches per slide are at most 65 536.
    """
    from ..patches.zoom_source import MAX_REGION_SIDE

    given = {k: getattr(config, k) for k in ZOOM_KEYS}
    if all(v is None for v in given.values()):
        return []
    flags = lambda keys: ", ".join(f"{k!r} ({ZOOM_KEYS[k]})" for k in keys)  # noqa: E731
    missing = [k for k, v in given.items() if v is None]
    if missing:
        return [f"{flags(missing)} missing: attention that zooms needs all of {flags(ZOOM_KEYS)} "
                f"(or none of them, for a one-stage model)"]
    problems = []
    mpp, regions, size = given["zoom_mpp"], given["zoom_regions"], given["zoom_size"]
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not (real(mpp) and MIN_MPP <= mpp <= MAX_MPP):
        problems.append(f"{flags(['zoom_mpp'])} must be µm/px in {MIN_MPP:g}..{MAX_MPP:g} "
                        f"(2 is usual: nuclei of a few pixels), got {mpp!r}")
    if not (isinstance(regions, numbers.Integral) and not isinstance(regions, bool) and 1 <= regions <= 1 << 16):
        problems.append(f"{flags(['zoom_regions'])} must be an integer in 1..65536 (regions drawn per slide), "
                        f"got {regions!r}")
    else:
        for key, flag in (("n_patches", "--n-patches"), ("predict_patches", "--predict-patches")):
            value = getattr(config, key)
            if isinstance(value, numbers.Integral) and regions * value > 1 << 16:
                problems.append(f"{flags(['zoom_regions'])} x {key!r} ({flag}) = {regions} x {value} "
                                f"patches per slide; at most 65536: lower one of them")
    if not (real(size) and size > 0):
        problems.append(f"{flags(['zoom_size'])} must be a region's side in µm > 0, got {size!r}")
    elif real(mpp) and mpp > 0 and not 1 <= math.floor(size / mpp + 0.5) <= MAX_REGION_SIDE:
        problems.append(f"{flags(['zoom_size'])} {size:g} µm at {flags(['zoom_mpp'])} {mpp:g} µm/px is a region "
                        f"of {math.floor(size / mpp + 0.5)} px a side; it must be 1..{MAX_REGION_SIDE} px "
                        f"(raise --zoom-mpp or lower --zoom-size)")
    if config.patch_mpp is None:
        problems.append("attention that zooms reads its patches by µm/px: set 'patch_mpp' (--patch-mpp), "
                        "not a patch level")
    if config.sampler != "attention":
        problems.append(f"a two-stage model draws by attention: 'sampler' must be 'attention', "
                        f"got {config.sampler!r}")
    for key, what in ZOOM_EXCLUDES.items():
        if getattr(config, key) not in (None, False):
            problems.append(f"attention that zooms does not take {what} yet: unset {key!r} or the zoom keys")
    return problems
