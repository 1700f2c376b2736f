"""The survival and regression parts of ``ats-wsi predict``: the manifest's outcome cells beside
each prediction, ``metrics.json`` and its table, and the figure (docs/cli.md)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ._common import format_table

__all__ = ["register", "columns", "outcomes", "report", "LABELS"]

LABELS = {"c_index": "Harrell's C-index", "uno_c": "Uno's C-index", "mae": "MAE", "rmse": "RMSE", "r2": "R²",
          "pearson": "Pearson r", "spearman": "Spearman ρ"}


def register(p) -> None:
    """``--risk-groups`` (survival checkpoints)."""
    from ..outcomes.survival_metrics import RISK_GROUPS

    p.add_argument("--risk-groups", choices=list(RISK_GROUPS), default="median",
                   help="survival checkpoints: risk groups of km.png and the log-rank test (median split or "
                        "tertiles of the predicted risk)")
    p.add_argument("--horizons", type=_horizons, default=(), metavar="T,T,...",
                   help="survival checkpoints: time-dependent AUC at these times, in the manifest's unit "
                        "(e.g. 12,36,60 months; default: none)")
    for flag, what in (("--time-column", "survival: the manifest's follow-up time column"),
                       ("--event-column", "survival: the manifest's event column"),
                       ("--target-column", "regression: the manifest's target column")):
        p.add_argument(flag, help=f"{what} (default: the column the checkpoint was trained with, else found by "
                                  f"name; see docs/cli.md)")


def _horizons(text: str) -> tuple[float, ...]:
    """argparse type: positive finite times, comma-separated (at most 32)."""
    import argparse
    import math

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of times") from None
    if not values or len(values) > 32 or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 32 times > 0, e.g. 12,36,60")
    return values


@lru_cache(maxsize=4)
def _trained_columns(checkpoint: str) -> tuple[tuple[str, str | None], ...]:
    from ..classifier.checkpoint import read_checkpoint

    train = read_checkpoint(checkpoint).get("train_config") or {}
    return tuple((k, train.get(k)) for k in ("time_column", "event_column", "target_column"))


def columns(args, model) -> dict[str, str | None]:
    """The manifest's outcome columns for a survival or regression checkpoint: the flags, else the
    columns it was trained with (its ``train_config``); ``{}`` for a classifier."""
    if model is None or model.config.task == "classification":
        return {}
    given = {k: getattr(args, k, None) for k in ("time_column", "event_column", "target_column")}
    if all(v is not None for v in given.values()):
        return given
    trained = dict(_trained_columns(str(args.checkpoint)))
    return {k: v if v is not None else trained.get(k) for k, v in given.items()}


def outcomes(args, model, slides) -> list[dict] | None:
    """Each slide's outcome cells from the manifests (``time``/``event`` or ``target``; empty
    where not given), or None for a classifier or without a manifest."""
    from ..data.manifest import is_manifest, read_cohort

    task = model.config.task
    if task == "classification" or not any(is_manifest(a) for a in args.slides):
        return None
    keys = ("time", "event") if task == "survival" else ("target",)
    found: dict[str, dict] = {}
    for item in args.slides:
        if is_manifest(item):
            for r in read_cohort(item, require_labels=False, task=task, **columns(args, model)).split(args.split):
                found.setdefault(str(r.path), {k: "" if getattr(r, k) is None else getattr(r, k) for k in keys})
    return [found.get(str(path), dict.fromkeys(keys, "")) for path in slides]


def report(args, rows, errors, config) -> None:
    """metrics.json, the figure and the printed table of a survival or regression model's rows."""
    from ..run.outcome_metrics import write_outcome_metrics

    out = Path(args.out)
    per = write_outcome_metrics(out, rows, config.task, resamples=args.bootstrap, seed=0,
                                groups=getattr(args, "risk_groups", "median"), horizons=getattr(args, "horizons", ()),
                                extra={"failed": len(errors), "checkpoint": str(args.checkpoint)})
    for split, m in per.items():
        figure = out / m["figure"] if "figure" in m else None
        _print(m, f"split {split}: " if split else "", out / "metrics.json", figure)
    if errors:
        print(f"({len(errors)} slide(s) failed and are not counted)")


def _print(m, head: str, path: Path, figure: Path | None) -> None:
    b = m["bootstrap"]
    what = f"{m['n']} slide(s), {m['events']} event(s)" if m["task"] == "survival" else f"{m['n']} slide(s)"
    print(f"\n{head}{m['task']} metrics of {what} -> {path} (95% intervals: {b['resamples']} bootstrap "
          f"resamples, seed {b['seed']})")

    def num(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    keys = ("c_index", "uno_c") if m["task"] == "survival" else ("mae", "rmse", "r2", "pearson", "spearman")
    table = [[LABELS[k], num(m[k]["value"]), f"[{num(m[k]['ci_low'])}, {num(m[k]['ci_high'])}]"] for k in keys]
    table += [[f"AUC at time {h}", num(v["value"]), f"[{num(v['ci_low'])}, {num(v['ci_high'])}]"]
              for h, v in m.get("time_auc", {}).items()]
    print(format_table(table, ["metric", "value", "95% CI"]))
    if m["task"] == "survival":
        g = m["risk_groups"]
        print(f"risk groups ({g['how']}): n {g['n']}, events {g['events']}, log-rank p = {num(g['logrank_p'])}")
    if figure is not None:
        print(f"figure: {figure}")
