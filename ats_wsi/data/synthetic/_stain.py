"""One slide's appearance: the bank textures recoloured with its stains, turned, shifted, at every level.

Stain variation between slides is a per-slide lookup table from
(H code, E code) to RGB; level ``k`` of a texture is the exact box-average
of level 0 over ``downsample**k`` pixels.
"""
from __future__ import annotations

import math

import numpy as np

from ._tissue import _OD_MAX, _TEXTURES, _periods, _texture_bank


def _stain_lut(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-slide stain colours: RGB uint8 (65536, 3) for each (H code << 8 | E code), and the background RGB."""
    haem = np.array([0.60, 0.76, 0.26]) * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.15)
    eosin = np.array([0.08, 0.90, 0.40]) * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.15)
    white = rng.uniform(238, 250)
    od = np.arange(256) * (_OD_MAX / 255)
    total = od[:, None, None] * haem + od[None, :, None] * eosin
    lut = np.clip(np.rint(white * np.exp(-total)), 0, 255).astype(np.uint8).reshape(65536, 3)
    background = np.clip(np.rint(white * np.array([0.99, 0.985, 0.995]) - rng.uniform(0, 4, 3)), 0, 255)
    return lut, background.astype(np.uint8)


class _Texture:
    """One texture on one slide at every level: wrapped periodic arrays that tiles are sliced from.

    levels[k] is (P_k + tile, P_k + tile[, 3]) so that any tile-sized window
    starting inside the period is a plain slice; periods[k] = P_k;
    shifts[k] = this slide's (row, col) offset into the period at level k.
    """

    def __init__(self, image: np.ndarray, shift: tuple[int, int], n_levels: int, downsample: int, tile: int):
        self.levels, self.periods, self.shifts = [], [], []
        for k in range(n_levels):
            if k > 0:
                image = _box_reduce(image, downsample)
            p = image.shape[0]
            sy, sx = (round(shift[0] / downsample**k) % p, round(shift[1] / downsample**k) % p)
            self.levels.append(_wrap_pad(image, tile))
            self.periods.append(p)
            self.shifts.append((sy, sx))

    def start(self, level: int, y: int, x: int) -> tuple[int, int]:
        """Where the window for level-`level` pixel (y, x) starts in levels[level]."""
        p = self.periods[level]
        sy, sx = self.shifts[level]
        return (y + sy) % p, (x + sx) % p

    def window(self, level: int, y: int, x: int, rows: int, cols: int) -> np.ndarray:
        r, c = self.start(level, y, x)
        return self.levels[level][r:r + rows, c:c + cols]


def _wrap_pad(image: np.ndarray, extra: int) -> np.ndarray:
    """The periodic image extended by `extra` rows and cols (wrapping around), (P + extra, P + extra, ...)."""
    p = image.shape[0]
    out = np.empty((p + extra, p + extra, *image.shape[2:]), image.dtype)
    for y in range(0, p + extra, p):
        for x in range(0, p + extra, p):
            h, w = min(p, p + extra - y), min(p, p + extra - x)
            out[y:y + h, x:x + w] = image[:h, :w]
    return out


def _box_reduce(image: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (period divisible by f), or the mean (1 x 1 period) once it is not."""
    p = image.shape[0]
    if p % f:
        means = image.mean(axis=(0, 1), keepdims=True, dtype=np.float32)
    else:
        means = np.zeros((p // f, p // f, *image.shape[2:]), np.float32)
        for i in range(f):
            for j in range(f):
                means += image[i::f, j::f]
        means *= np.float32(1 / (f * f))
    return np.rint(means).astype(np.uint8) if image.dtype == np.uint8 else means


def _as_rgba32(lut: np.ndarray) -> np.ndarray:
    """An RGB uint8 (n, 3) table as uint32 (n,) whose bytes are R, G, B, 0."""
    rgba = np.zeros((len(lut), 4), np.uint8)
    rgba[:, :3] = lut
    return rgba.view(np.uint32).ravel()


class _SlideTextures:
    """This slide's textures by name, each built on first use (types a slide lacks cost nothing).

    A texture is a bank texture recoloured with this slide's stains, turned by
    a multiple of 90 degrees, maybe mirrored, and shifted; all these choices
    are drawn up front, so the pixels do not depend on the order of use.
    Also: `noise` (fine edge noise, a _Texture) and `background` (RGB uint8).
    scale: level-0 px per 0.5 µm of tissue (the texture bank's scale).
    """

    def __init__(self, rng: np.random.Generator, downsample: int, n_levels: int, tile: int, scale: int = 1):
        benign_period, spot_period = _periods(downsample)
        if scale == 1:
            self._bank = _texture_bank(benign_period, spot_period)
        else:
            self._bank = _texture_bank(benign_period * scale, spot_period * scale, scale)
        spot_period = self._bank["noise"].shape[0]
        lut, self.background = _stain_lut(rng)
        def shift(period: int) -> tuple[int, int]:
            # a multiple of every level's downsample (where the period allows), so levels stay aligned
            unit = math.gcd(period, downsample ** (n_levels - 1))
            return tuple(int(v) * unit for v in rng.integers(0, period // unit, 2))

        self._pose = {name: (int(rng.integers(0, 4)), bool(rng.random() < 0.5), shift(self._bank[name].shape[0]))
                      for name in _TEXTURES}
        noise_shift = shift(spot_period)
        self._levels = (n_levels, downsample, tile)
        self.noise = _Texture(self._bank["noise"], noise_shift, *self._levels)
        # decoys take the lesion's mean colour, so that the two look alike at low resolution
        delta = self._mean_colour("lesion", lut) - self._mean_colour("decoy", lut)
        decoy_lut = np.clip(np.rint(lut + delta), 0, 255).astype(np.uint8)
        self._luts = {name: _as_rgba32(decoy_lut if name == "decoy" else lut) for name in _TEXTURES}
        self._built: dict[str, _Texture] = {}

    def _mean_colour(self, name: str, lut: np.ndarray) -> np.ndarray:
        hist = self._bank[name + ".hist"]
        return hist @ lut.astype(np.float64) / hist.sum()

    def __getitem__(self, name: str) -> "_Texture":
        if name not in self._built:
            turns, mirror, shift = self._pose[name]
            codes = np.rot90(self._bank[name], turns)
            rgba = self._luts[name][codes[:, ::-1] if mirror else codes]  # a 4-byte gather is ~10x faster
            rgba = rgba[..., None].view(np.uint8)
            image = np.empty((*codes.shape, 3), np.uint8)
            for c in range(3):  # plane by plane: ~5x faster than copying rgba[..., :3]
                image[..., c] = rgba[..., c]
            self._built[name] = _Texture(image, shift, *self._levels)
        return self._built[name]
