"""Periodic noise fields the textures and the layout are built from (numpy only).

Every field here is float32 (rows, cols), zero mean and unit std unless said
otherwise; "periodic" fields wrap around, so a texture made of them tiles.
"""
from __future__ import annotations

import math

import numpy as np


def _grf(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Periodic Gaussian random field, float32 (rows, cols), zero mean, unit std, smooth over `sigma` px.

    Very smooth fields are drawn on a grid 2**j times coarser and upsampled
    linearly (periodic), which is much cheaper and looks the same.
    """
    rows, cols = shape
    j = 0
    while sigma / 2 ** (j + 1) >= 3 and rows % 2 ** (j + 1) == 0 and cols % 2 ** (j + 1) == 0:
        j += 1
    small = (rows >> j, cols >> j)
    white = rng.standard_normal(small, dtype=np.float32)
    ky = np.fft.fftfreq(small[0]).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(small[1]).astype(np.float32)[None, :]
    filt = np.exp(np.float32(-2 * np.pi**2 * (sigma / 2**j) ** 2) * (kx * kx + ky * ky))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=small).astype(np.float32)
    for _ in range(j):
        field = _upsample2(field)
    field -= field.mean()
    field /= field.std() + np.float32(1e-12)
    return field


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Periodic linear x2 upsampling of a 2-D array."""
    rows = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    rows[0::2] = a
    rows[1::2] = 0.5 * (a + np.roll(a, -1, 0))
    out = np.empty((rows.shape[0], 2 * a.shape[1]), a.dtype)
    out[:, 0::2] = rows
    out[:, 1::2] = 0.5 * (rows + np.roll(rows, -1, 1))
    return out


def _tex_grf(rng: np.random.Generator, n: int, sigma: float, scale: int = 1) -> np.ndarray:
    """Periodic noise (n, n) for a texture. Fine noise (sigma < 8 * scale px) is drawn with a period of at
    most 1024 * scale px and repeated (saves memory; such a repeat cannot be seen); coarser noise is not.
    scale: texture px per 0.5 µm (1 for textures drawn at 0.5 µm/px)."""
    m = n
    while m > 1024 * scale and m % 2 == 0 and sigma < 8 * scale:
        m //= 2
    return np.tile(_grf(rng, (m, m), sigma), (n // m, n // m))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Non-periodic smooth noise (rows, cols), unit std: a periodic field on a larger grid, cropped."""
    pad = int(math.ceil(3 * sigma))
    big = _grf(rng, (shape[0] + 2 * pad, shape[1] + 2 * pad), max(sigma, 0.5))
    return big[pad:pad + shape[0], pad:pad + shape[1]]


def _fibres(rng: np.random.Generator, n: int, spacing: float, length: float, scale: int = 1) -> np.ndarray:
    """Periodic wavy fibre field (n, n) float32, unit std.

    Oriented band-pass noise whose orientation varies smoothly, then warped
    by a smooth displacement so that fibres bend. Built one orientation at a
    time to bound memory. spacing, length: px; scale: texture px per 0.5 µm
    (sets the size of the orientation patches and of the warp).
    """
    spectrum = np.fft.rfft2(rng.standard_normal((n, n), dtype=np.float32))
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    out = np.zeros((n, n), np.float32)
    total = np.zeros((n, n), np.float32)
    for a in np.linspace(0, np.pi, 4, endpoint=False) + rng.uniform(0, np.pi / 4):
        k_along = kx * np.float32(np.cos(a)) + ky * np.float32(np.sin(a))
        k_across = -kx * np.float32(np.sin(a)) + ky * np.float32(np.cos(a))
        filt = np.exp(-0.5 * (k_along * length) ** 2 - 0.5 * ((np.abs(k_across) - 1 / spacing) * spacing * 1.6) ** 2)
        del k_along, k_across
        band = np.fft.irfft2(spectrum * filt, s=(n, n)).astype(np.float32)
        del filt
        band /= band.std() + np.float32(1e-12)
        weight = np.exp(1.5 * _grf(rng, (n, n), 70.0 * scale))  # where this orientation dominates
        band *= weight
        out += band
        total += weight
    out /= total
    del total, band, weight
    warp = 9 * scale, 24.0 * scale  # px: amplitude and smoothness of the bend
    rows = (np.arange(n, dtype=np.int32)[:, None] + np.rint(warp[0] * _grf(rng, (n, n), warp[1])).astype(np.int32)) % n
    cols = (np.arange(n, dtype=np.int32)[None, :] + np.rint(warp[0] * _grf(rng, (n, n), warp[1])).astype(np.int32)) % n
    rows *= n
    rows += cols
    del cols
    out = out.ravel()[rows]
    out /= out.std() + np.float32(1e-12)
    return out


def _worley_gap(rng: np.random.Generator, n: int, spacing: float) -> np.ndarray:
    """F2 - F1 cell-distance field (n, n) float32 of a periodic jittered point grid (small at cell borders)."""
    cells = max(2, int(round(n / spacing)))
    size = n / cells
    jitter_y, jitter_x = rng.uniform(0.1, 0.9, (2, cells, cells)).astype(np.float32)
    coord = (np.arange(n, dtype=np.float32) + 0.5) / np.float32(size)  # in cell units, same for rows and cols
    cell = np.floor(coord).astype(int)
    d1 = np.full((n, n), np.inf, np.float32)
    d2 = np.full((n, n), np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = (cell + dy)[:, None], (cell + dx)[None, :]  # neighbour cell, not wrapped
            py = ny + jitter_y[ny % cells, nx % cells]
            px = nx + jitter_x[ny % cells, nx % cells]
            d = np.hypot(py - coord[:, None], px - coord[None, :])
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
    return (d2 - d1) * np.float32(size)


def _blur3(a: np.ndarray, times: int = 1) -> np.ndarray:
    """3 x 3 box blur with edge padding (small arrays), applied `times` times (the blur's width grows as
    sqrt(times): 4 times is a blur twice as wide)."""
    for _ in range(times):
        p = np.pad(a, 1, mode="edge")
        a = sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9
    return a
