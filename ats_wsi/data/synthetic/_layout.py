"""Where things are on a slide: tissue, benign types and spots, on a coarse grid of nodes.

The grid has one node every ``_GRID`` level-0 px; node ``(i, j)`` sits at
``(y, x) = (i, j) * _GRID``. Spots (lesions and decoys) are analytic blobs.
Border widths and raggedness are in level-0 px at ``scale = 1`` and grow
with the layout's ``scale`` (level-0 px per 0.5 µm), like the textures.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._noise import _smooth_noise

_GRID = 64  # level-0 px between nodes of the layout grid
_TISSUE_RAGGED = 24.0  # level-0 px: how far fine noise moves the tissue border
_SPOT_RAGGED = 6.0  # level-0 px: same for lesion / decoy borders
_EDGE = 4.0  # level-0 px: width of a border at level 0 (at least one pixel at any level)
_BENIGN = ("stroma", "cellular", "adipose")
_TYPE_BIAS = (0.25, 0.0, -0.6)  # adipose rarer


@dataclasses.dataclass(frozen=True)
class _Spot:
    """A lesion or decoy: an analytic blob, radius(θ) = r0 (1 + Σ_j a_j cos(j θ + φ_j))."""

    kind: str
    cx: float
    cy: float
    r0: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]
    box: tuple[int, int, int, int]  # (x, y, w, h), level-0 px, holds every pixel of the spot
    ragged: float = _SPOT_RAGGED  # level-0 px: how far fine noise moves the border

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for j, (a, p) in enumerate(zip(self.amps, self.phases), start=2):
            r += np.float32(a) * np.cos(j * theta + np.float32(p))
        return np.float32(self.r0) * r

    def reach(self) -> float:
        """Largest distance from the centre any pixel of the spot can have, in level-0 px."""
        return self.r0 * (1 + sum(abs(a) for a in self.amps)) + self.ragged

    def area(self) -> float:
        """Area inside the mean outline (no ragged border), in level-0 px²: ∫ r(θ)² / 2 dθ."""
        return math.pi * self.r0 ** 2 * (1 + sum(a * a for a in self.amps) / 2)


def _make_spot(rng: np.random.Generator, kind: str, cx: float, cy: float, r0: float, width: int, height: int,
               ragged: float = _SPOT_RAGGED) -> _Spot:
    """A spot of mean radius r0 at (cx, cy) with a random outline, and its box clipped to the slide."""
    amps = tuple(float(a) for a in rng.normal(0, 0.07, 4))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 4))
    spot = _Spot(kind, cx, cy, r0, amps, phases, (0, 0, 0, 0), ragged)
    theta = np.linspace(0, 2 * np.pi, 1440, endpoint=False, dtype=np.float32)
    r = spot.radius(theta) + ragged
    x0 = max(0, math.floor(cx + float((r * np.cos(theta)).min())))
    x1 = min(width, math.ceil(cx + float((r * np.cos(theta)).max())) + 1)
    y0 = max(0, math.floor(cy + float((r * np.sin(theta)).min())))
    y1 = min(height, math.ceil(cy + float((r * np.sin(theta)).max())) + 1)
    return dataclasses.replace(spot, box=(x0, y0, x1 - x0, y1 - y0))


@dataclasses.dataclass
class _Layout:
    """Where tissue, benign types and spots are, on a grid of nodes every _GRID level-0 px.

    distance: float32 (rows, cols) approximate signed distance to the tissue
    border in level-0 px (> 0 inside tissue) at node (i, j) = (y, x) = (i, j) * _GRID;
    logits: float32 (3, rows, cols) benign-type scores (stroma, cellular, adipose).
    """

    width: int
    height: int
    distance: np.ndarray
    logits: np.ndarray
    spots: list[_Spot]
    tissue_fraction: float
    scale: int = 1  # level-0 px per 0.5 µm: border widths grow with it

    @property
    def tissue_ragged(self) -> float:
        """Level-0 px: how far fine noise moves the tissue border."""
        return _TISSUE_RAGGED * self.scale

    @property
    def edge(self) -> float:
        """Level-0 px: width of a border at level 0."""
        return _EDGE * self.scale

    @classmethod
    def make(cls, rng, width, height, mpp, n_lesions, n_decoys, lesion_size_um, attempts: int = 16, *,
             decoy_size_um=None, scale: int = 1) -> "_Layout":
        """A layout with exactly n_lesions lesions and n_decoys decoys inside its tissue.

        Draws new tissue until all spots fit (at most `attempts` times); the
        later attempts, which only small slides need, allow more tissue
        (up to 75 %) and smaller gaps between spots. decoy_size_um: (min,
        max) decoy diameter, None: lesion_size_um; scale: level-0 px per 0.5 µm.
        """
        rows, cols = height // _GRID + 2, width // _GRID + 2
        decoy_size_um = lesion_size_um if decoy_size_um is None else decoy_size_um
        size_px = {"lesion": (lesion_size_um[0] / mpp, lesion_size_um[1] / mpp),
                   "decoy": (decoy_size_um[0] / mpp, decoy_size_um[1] / mpp)}
        margin, ragged = (_TISSUE_RAGGED + _EDGE) * scale, _SPOT_RAGGED * scale
        for attempt in range(attempts):
            crowded = attempt >= attempts // 2
            target = rng.uniform(0.6, 0.75) if crowded else rng.uniform(0.35, 0.55)
            distance, fraction = _tissue_distance(rng, width, height, rows, cols, target)
            region = 600.0 / mpp / _GRID  # benign regions ~ 0.6 mm, with wiggly borders
            logits = np.stack([_smooth_noise(rng, (rows, cols), region)
                               + 0.3 * _smooth_noise(rng, (rows, cols), region / 5) + bias
                               for bias in _TYPE_BIAS]).astype(np.float32)
            spots: list[_Spot] = []
            for kind in ["lesion"] * n_lesions + ["decoy"] * n_decoys:
                spot = _place_spot(rng, kind, distance, size_px[kind], spots, width, height,
                                   0.15 if crowded else 0.5, margin, ragged)
                if spot is None:
                    break
                spots.append(spot)
            else:
                return cls(width, height, distance, logits, spots, fraction, scale)
        decoys = "" if decoy_size_um is lesion_size_um else f" (decoys {tuple(decoy_size_um)} µm)"
        raise ValueError(
            f"write_synthetic_slide: cannot fit {n_lesions} lesions and {n_decoys} decoys of {lesion_size_um} µm"
            f"{decoys} "
            f"inside the tissue of a {width} x {height} slide at {mpp} µm/px; "
            "use a larger slide, or fewer or smaller lesions")


def _tissue_distance(rng, width, height, rows, cols, target: float) -> tuple[np.ndarray, float]:
    """Signed distance-like field to the tissue border on the grid, and the tissue fraction (about `target`)."""
    y = (np.arange(rows, dtype=np.float32) * _GRID)[:, None]
    x = (np.arange(cols, dtype=np.float32) * _GRID)[None, :]
    short, area = min(width, height), math.sqrt(width * height)
    field = np.full((rows, cols), -2.0, np.float32)
    n_main = int(rng.integers(1, 4))
    blobs = [(rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height,
              rng.uniform(0.22, 0.36) * area / math.sqrt(n_main)) for _ in range(n_main)]
    blobs += [(rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height,
               rng.uniform(0.03, 0.07) * area) for _ in range(int(rng.integers(0, 5)))]
    for cx, cy, r in blobs:
        aspect, theta = rng.uniform(0.55, 1.0), rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        phi = np.arctan2(v, u)
        outline = 1 + sum(rng.normal(0, 0.12) / j * np.cos(j * phi + rng.uniform(0, 2 * np.pi)) for j in range(2, 6))
        field = np.maximum(field, 1 - np.hypot(u / r, v / (r * aspect)) / outline)
    field += 0.30 * _smooth_noise(rng, (rows, cols), 0.08 * short / _GRID)
    field += 0.10 * _smooth_noise(rng, (rows, cols), 0.02 * short / _GRID)
    border = np.minimum(np.minimum(x, width - x), np.minimum(y, height - y))
    field -= 3 * np.clip(1 - border / (0.04 * short), 0, 1)
    inside = (y < height) & (x < width)
    threshold = np.quantile(field[np.broadcast_to(inside, field.shape)], 1 - target)
    gy, gx = np.gradient(field, _GRID)
    slope = np.maximum(np.hypot(gy, gx), 1 / (0.25 * short))
    distance = ((field - threshold) / slope).astype(np.float32)
    fraction = float((distance > 0)[np.broadcast_to(inside, field.shape)].mean())
    return distance, fraction


def _place_spot(rng, kind, distance, size_px, spots, width, height, gap: float,
                margin: float = _TISSUE_RAGGED + _EDGE, ragged: float = _SPOT_RAGGED) -> _Spot | None:
    """A spot entirely inside tissue, `gap` times its radius away from the others, or None after many tries.

    margin: level-0 px every grid node under the spot stays inside the tissue border;
    ragged: level-0 px the spot's own border is moved by fine noise.
    """
    rows, cols = distance.shape
    candidates = np.flatnonzero(distance > margin)  # (distance is under-estimated deep inside)
    if len(candidates) == 0:
        return None
    for _ in range(500):
        r0 = rng.uniform(*size_px) / 2  # mean radius; the outline harmonics add or take ~10 %
        node = int(candidates[rng.integers(len(candidates))])
        cy = (node // cols + rng.uniform(-0.5, 0.5)) * _GRID
        cx = (node % cols + rng.uniform(-0.5, 0.5)) * _GRID
        spot = _make_spot(rng, kind, cx, cy, r0, width, height, ragged)
        x, y, w, h = spot.box
        if x <= 0 or y <= 0 or x + w >= width or y + h >= height:
            continue
        # the nodes that interpolate the box's pixels: all must be well inside tissue
        if distance[y // _GRID:(y + h - 1) // _GRID + 2, x // _GRID:(x + w - 1) // _GRID + 2].min() <= margin:
            continue
        if any(math.hypot(cx - s.cx, cy - s.cy) < spot.reach() + s.reach() + gap * r0 for s in spots):
            continue
        return spot
    return None
