"""A synthetic slide's ground truth: the ``SyntheticSlide`` record and its ``<stem>.lesions.json`` file."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ...atomic import write_text_atomic
from ...errors import GroundTruthError


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    Attributes:
        path: the slide file.
        width, height: level-0 size in pixels.
        mpp: µm per level-0 pixel.
        label: 1 if the slide has lesions, else 0.
        lesions: lesion boxes ``(x, y, w, h)`` in level-0 pixels.
        tissue_fraction: fraction of the slide covered by tissue (from the layout grid).
        decoys: benign dark spots ``(x, y, w, h)`` in level-0 pixels.
        level_dimensions: ``(w, h)`` of each pyramid level.
        seed: the seed that made it.
    """

    path: Path
    width: int
    height: int
    mpp: float
    label: int
    lesions: list[tuple[int, int, int, int]]
    tissue_fraction: float
    decoys: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)
    level_dimensions: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    seed: int = 0


def truth_path(slide_path: Path) -> Path:
    """``<stem>.lesions.json`` beside a slide: where its ground truth is kept."""
    return slide_path.with_name(slide_path.stem + ".lesions.json")


def write_ground_truth(slide: SyntheticSlide, params: dict) -> None:
    """Write ``<stem>.lesions.json`` beside the slide, atomically; ``params``: the arguments that made it."""
    data = {
        "file": slide.path.name,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "label": slide.label,
        "seed": slide.seed,
        "lesions": [list(b) for b in slide.lesions],
        "decoys": [list(b) for b in slide.decoys],
        "tissue_fraction": round(slide.tissue_fraction, 6),
        "level_dimensions": [list(d) for d in slide.level_dimensions],
        "params": params,
    }
    write_text_atomic(truth_path(slide.path), json.dumps(data, indent=1))


def load_synthetic_slide(path: str | os.PathLike) -> SyntheticSlide:
    """The ground truth of a synthetic slide, read from ``<stem>.lesions.json``.

    Args:
        path: the slide, or its ``<stem>.lesions.json``.

    Raises:
        FileNotFoundError: there is no ground truth beside the slide.
        GroundTruthError: the ground-truth file is not one this module wrote
            (also a ``ValueError``); it names the file.
    """
    path = Path(path)
    truth = path if path.name.endswith(".lesions.json") else truth_path(path)
    try:
        data = json.loads(truth.read_text())
        return SyntheticSlide(
            path=truth.with_name(data["file"]),
            width=int(data["width"]), height=int(data["height"]), mpp=float(data["mpp"]),
            label=int(data["label"]), lesions=[tuple(map(int, b)) for b in data["lesions"]],
            tissue_fraction=float(data["tissue_fraction"]),
            decoys=[tuple(map(int, b)) for b in data["decoys"]],
            level_dimensions=[tuple(map(int, d)) for d in data["level_dimensions"]],
            seed=int(data["seed"]),
        )
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise GroundTruthError(truth, f"not a synthetic-slide ground truth ({err!r})") from err


def load_lesions(path: str | os.PathLike) -> list[tuple[int, int, int, int]]:
    """Lesion boxes ``(x, y, w, h)`` in level-0 pixels of a synthetic slide.

    Args:
        path: the slide, or its ``<stem>.lesions.json``.
    """
    return load_synthetic_slide(path).lesions
