"""``ats-wsi train --folds N``: stratified folds, a run per fold, the test folds predicted, a summary."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from ._common import LibraryLog, format_table

__all__ = ["train_folds"]


def train_folds(args, config, settings, report, show_cohort) -> int:
    """Train every fold of ``--folds`` into ``OUT/fold-K``, predict its test fold, print the summary."""
    from ..run.kfold import FoldResult, SCORE_OF, fold_score, make_fold_manifest, test_fold, write_fold_summary
    from ..run.train import train

    out = Path(args.out)
    folds_csv, folds = make_fold_manifest(args.manifest, out, args.folds, task=config.task,
                                          classes=config.class_names, seed=args.seed,
                                          time_column=args.time_column, event_column=args.event_column,
                                          target_column=args.target_column)
    print(f"{len(folds)} slides in {args.folds} folds (stratified by "
          f"{ {'survival': 'event', 'regression': 'target quartile'}.get(config.task, 'class') }) -> {folds_csv}",
          flush=True)
    results = []
    for k in range(args.folds):
        fold_out = out / f"fold-{k}"
        print(f"\nfold {k}: test fold {k}, val fold {(k + 1) % args.folds}, train the others -> {fold_out}", flush=True)
        fold_settings = replace(settings, fold=k, time_column=None, event_column=None, target_column=None)
        with LibraryLog(fold_out / "train.log") as log:
            try:
                train(folds_csv, fold_out, config, fold_settings, resume=args.resume, overwrite=args.overwrite,
                      progress=not args.no_progress, on_epoch=report, on_cohort=show_cohort)
            finally:
                if log.summary("train"):
                    print(log.summary("train"), file=sys.stderr)
        metrics, n_test = test_fold(folds_csv, k, fold_out, device=args.device, seed=args.seed,
                                    workers=args.io_threads)
        got = fold_score(metrics, config.task)
        n = [folds.count(f) for f in range(args.folds)]
        val = (k + 1) % args.folds if args.folds > 2 else None
        results.append(FoldResult(k, str(fold_out), sum(n) - n[k] - (n[val] if val is not None else 0),
                                  n[val] if val is not None else 0, n_test, SCORE_OF[config.task], **got))
        print(f"fold {k}: test {SCORE_OF[config.task]} {got['value']:.3f} -> {fold_out / 'test' / 'metrics.json'}",
              flush=True)
    summary = write_fold_summary(out, results)

    def num(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    print(f"\n{args.folds}-fold cross-validation: test-fold {summary['metric']} per fold -> "
          f"{out / 'folds-summary.csv'}")
    print(format_table([[str(r.fold), str(r.n_train), str(r.n_val), str(r.n_test), num(r.value),
                         f"[{num(r.ci_low)}, {num(r.ci_high)}]"] for r in results],
                       ["fold", "train", "val", "test", summary["metric"], "95% CI"]))
    print(f"mean ± sd over the folds: {num(summary['mean'])} ± {num(summary['sd'])}")
    return 0
