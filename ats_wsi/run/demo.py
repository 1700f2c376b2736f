"""The end-to-end demo: synthetic slides -> train -> predict held-out slides -> report.

Everything is real: the slides are Aperio-style JPEG TIFFs on disk, patches
are read from them by :class:`~ats_wsi.patches.PatchReader`, the model is an
:class:`~ats_wsi.model.AttentionSampler`, results are written by
``predict_slides`` exactly as ``ats-wsi predict`` writes them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..classifier import ModelConfig
from ..data.manifest import read_manifest
from ..data.synthetic import load_lesions, make_slide_set
from ._progress import ProgressFactory
from .outdir import epoch_checkpoints
from .predict import PredictSettings, predict_slides
from .results import ResultsFolder, SlideResult
from .train import TrainSettings, train

__all__ = ["DemoSettings", "DemoReport", "run_demo", "format_report", "demo_model_config"]


@dataclass
class DemoSettings:
    """The demo's knobs; the defaults are the README's run."""

    out: str = "ats-wsi-demo"
    n_slides: int = 48
    size: tuple[int, int] = (4096, 3072)
    epochs: int = 90
    # Six slides a step: a step of one slide has one label, so the gradient of
    # the (large, label-independent) mean feature flips sign every step and
    # drowns the lesion-vs-decoy signal; mixed batches cancel it.
    batch_size: int = 6
    lr: float = 3e-3
    # The attention net learns faster than the feature net (10x lr): once the
    # features tell lesion from decoy, it moves the draws onto the spots.
    attention_lr: float | None = 1e-2
    schedule: str = "cosine"
    lesion_size_um: tuple[float, float] = (400.0, 800.0)
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    samples: int = 1

    def __post_init__(self):
        if self.quick:
            self.n_slides, self.size, self.epochs = min(self.n_slides, 16), (3072, 2048), min(self.epochs, 2)


def demo_model_config() -> ModelConfig:
    """The small model the demo trains on CPU.

    The feature net has no normalisation layers: BatchNorm over the dozen
    patches of one slide differs between training and inference, and
    GroupNorm (2 channels a group) followed by global average pooling makes
    every patch's pooled features almost the same whatever its content, so
    the net sits on a long plateau before it tells lesion from decoy.
    """
    return ModelConfig(
        n_classes=2,
        attention_net="attention-small",
        attention_kwargs={"hidden": 8, "layers": 3, "pool": 4},
        feature_net="feature-small",
        feature_kwargs={"widths": [16, 32, 64], "stem_stride": 2, "norm": "none"},
        feature_dim=32,
        n_patches=12,
        patch_size=128,
        patch_level=0,
        low_downsample=16.0,
        replace=False,
        entropy=0.01,
        class_names=["benign", "lesion"],
    )


@dataclass
class DemoReport:
    """What the demo measured."""

    n_train: int
    n_val: int
    n_test: int
    accuracy: float
    seconds_per_slide: float
    fraction_read: float
    patch_lesion_hit_rate: float
    top_cell_on_lesion: float
    overlays: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    results_dir: str = ""
    errors: int = 0


def _overlaps(box, lesions) -> bool:
    x, y, w, h = box
    return any(x < lx + lw and lx < x + w and y < ly + lh and ly < y + h for lx, ly, lw, lh in lesions)


def run_demo(settings: DemoSettings, log: Callable[[str], None] = lambda _msg: None,
             progress: ProgressFactory | None = None) -> DemoReport:
    """Run the whole demo into ``settings.out`` and return its report.

    ``log`` gets each step's line; ``progress`` makes the training's bars (see
    :mod:`ats_wsi.run._progress`; ``ats-wsi demo`` draws tqdm bars).
    """
    out = Path(settings.out)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    log(f"[1/3] writing {settings.n_slides} synthetic slides ({settings.size[0]} x {settings.size[1]}) to {out / 'slides'}")
    # One dark spot per slide: a lesion in positives, a benign decoy in negatives.
    # Both look alike at low resolution; only level-0 texture tells them apart.
    manifest = make_slide_set(out / "slides", n_slides=settings.n_slides, size=settings.size, seed=settings.seed,
                              n_spots=(1, 1), n_lesions=(1, 1), lesion_size_um=settings.lesion_size_um,
                              n_levels=3)
    timings["slides"] = time.perf_counter() - t

    t = time.perf_counter()
    train_settings = TrainSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                                   attention_lr=settings.attention_lr, schedule=settings.schedule,
                                   device=settings.device, seed=settings.seed)
    log(f"[2/3] training for {settings.epochs} epochs (run folder {out / 'run'})")
    run = out / "run"
    resume = (run / "last.pt").is_file() or bool(epoch_checkpoints(run))
    if resume:
        log("      resuming from the last checkpoint in the run folder")
    # a run stopped before its first checkpoint is started again
    train(manifest, run, demo_model_config(), train_settings, resume=resume, overwrite=not resume, progress=progress,
          on_epoch=lambda m: log(f"      epoch {m.epoch:2d}: loss {m.train_loss:.3f}, train acc {m.train_acc:.2f}, "
                                 f"val acc {m.val_acc:.2f} ({m.seconds:.0f} s)"))
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    cohort = read_manifest(manifest)  # read once: every split
    test = [r for r in cohort if r.split == "test"]
    folder = ResultsFolder(out / "results")
    log(f"[3/3] predicting {len(test)} held-out slides into {folder.root}")
    pred = PredictSettings(checkpoint=str(run / "best.pt"), out_dir=str(folder.root),
                           samples=settings.samples, device=settings.device, seed=settings.seed)
    results: list[SlideResult] = []
    _, errors = predict_slides([str(r.path) for r in test], pred, on_result=results.append)
    order = {str(r.path): i for i, r in enumerate(test)}
    results.sort(key=lambda r: order[r.path])  # input order (skipped slides come first)
    timings["predict"] = time.perf_counter() - t

    return DemoReport(
        n_train=sum(r.split == "train" for r in cohort), n_val=sum(r.split == "val" for r in cohort),
        n_test=len(test),
        overlays=[str(p) for p in folder.overlays()],
        timings=timings,
        results_dir=str(folder.root),
        errors=len(errors),
        **_score(results, {str(r.path): r.label for r in test}),
    )


def _score(results: list[SlideResult], labels: dict[str, int]) -> dict[str, float]:
    """Accuracy, cost and where the attention went, from ``predict_slides``' finished slides."""
    correct, hits, boxes, top_hits, positives, secs, frac = 0, 0, 0, 0, 0, [], []
    for result in results:
        label = labels[result.path]
        correct += int(result.predicted == label)
        secs.append(result.seconds)
        frac.append(result.fraction_read)
        if label != 1:
            continue
        lesions = load_lesions(result.path)
        for box in result.boxes_xywh.tolist():
            boxes += 1
            hits += int(_overlaps(box, lesions))
        top_hits += int(_overlaps(result.top_cell_xywh(), lesions))
        positives += 1
    return dict(
        accuracy=correct / max(len(results), 1),
        seconds_per_slide=float(np.mean(secs)) if secs else float("nan"),
        fraction_read=float(np.mean(frac)) if frac else float("nan"),
        patch_lesion_hit_rate=hits / max(boxes, 1),
        top_cell_on_lesion=top_hits / max(positives, 1),
    )


def format_report(r: DemoReport) -> str:
    """The demo's report as the lines ``ats-wsi demo`` prints."""
    lines = [
        "",
        "ats-wsi demo report",
        "-------------------",
        f"slides                 train {r.n_train}, val {r.n_val}, held-out test {r.n_test}",
        f"held-out accuracy      {r.accuracy:.1%}",
        f"seconds per slide      {r.seconds_per_slide:.2f} (prediction, incl. reading)",
        f"pixels read            {r.fraction_read:.3%} of each slide's level-0 pixels",
        f"patches on a lesion    {r.patch_lesion_hit_rate:.1%} of sampled patches in positive slides",
        f"top attention on lesion {r.top_cell_on_lesion:.1%} of positive slides",
        f"time                   slides {r.timings.get('slides', 0):.0f} s, train {r.timings.get('train', 0):.0f} s, "
        f"predict {r.timings.get('predict', 0):.0f} s",
        f"results                {r.results_dir}/predictions.csv (maps/*.zarr, overlays/*.png)",
    ]
    if r.errors:
        lines.append(f"errors                 {r.errors} slide(s), see {r.results_dir}/errors.csv")
    lines += ["overlays:"] + [f"  {p}" for p in r.overlays[:6]] + (["  ..."] if len(r.overlays) > 6 else [])
    return "\n".join(lines)
