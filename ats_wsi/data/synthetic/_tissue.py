"""The texture bank: each tissue type as a periodic haematoxylin / eosin optical-density image.

Benign types (stroma, cellular, adipose) have a period of about 2048
level-0 px, the spots (lesion, decoy) about 1024 px (:func:`_periods`). They
are rendered once per process (:func:`_texture_bank`, about a second) from
the same seed for every slide; each slide recolours and shifts them
(:mod:`._stain`).

Every length here is in texture pixels of 0.5 µm. A bank drawn with
``scale = k`` draws every length (nuclei, fibres, cells, noise, periods) ``k``
times larger: the same tissue seen at ``0.5 / k`` µm/px, which box-averaged by
``k`` looks statistically like the ``scale = 1`` bank (not pixel for pixel:
the random draws differ). ``scale = 1`` is the original bank, bit for bit.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ._noise import _blur3, _fibres, _grf, _tex_grf, _upsample2, _worley_gap

_BANK_SEED = 0x5EED_A75  # textures are the same for every slide; slides recolour/shift them
_OD_MAX = 2.5  # optical density of code 255 in the stored H and E textures


def _periods(downsample: int) -> tuple[int, int]:
    """Texture periods (benign, spot) in level-0 px: about 2048 and 1024, multiples of a power of `downsample`."""
    def period(target: int) -> int:
        power = downsample ** int(math.floor(math.log(target, downsample) + 1e-9))
        return power * (target // power)

    return period(2048), period(1024)


def _nucleus_stamps(rng: np.random.Generator, count: int, radius, elongation, irregularity: float,
                    od, grain: float, rim: float, nucleolus: float, scale: int = 1) -> list[np.ndarray]:
    """Haematoxylin optical-density stamps (s, s) float32 of single nuclei, centred.

    radius: (min, max) semi-minor axis in px at scale 1; elongation: (min, max) major/minor;
    irregularity: std of the outline harmonics; od: (min, max) mean density;
    grain: chromatin texture amplitude; rim: extra density at the membrane;
    nucleolus: probability of a dark nucleolus; scale: px per px at scale 1.
    """
    stamps = []
    for _ in range(count):
        b = rng.uniform(*radius) * scale
        a = b * rng.uniform(*elongation)
        half = int(math.ceil(a * (1 + 3 * irregularity))) + 2
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        r = np.hypot(u / a, v / b)
        phi = np.arctan2(v / b, u / a)
        outline = np.ones_like(r)
        for j in (2, 3, 4, 5):
            outline += rng.normal(0, irregularity) / (j - 1) * np.cos(j * phi + rng.uniform(0, 2 * np.pi))
        depth = (outline - r) * b  # ~px inside the outline
        alpha = np.clip(depth + 0.5, 0, 1)
        texture = _blur3(rng.standard_normal(r.shape).astype(np.float32), times=scale * scale)
        texture /= texture.std() + 1e-6
        value = rng.uniform(*od) * (1 + grain * texture) + rim * np.exp(-0.5 * (depth / (1.2 * scale)) ** 2)
        if rng.random() < nucleolus:
            ny, nx = rng.uniform(-0.4, 0.4, 2) * b
            rn = rng.uniform(1.3, 2.3) * scale
            value += 0.8 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * rn * rn))
        stamps.append((alpha * np.clip(value, 0, None)).astype(np.float32))
    return stamps


def _jittered_points(rng: np.random.Generator, n: int, spacing: float, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """Points (ys, xs) on a jittered grid over a periodic n x n square, one per cell of ~`spacing` px.

    keep: optional (n, n) map of keep probabilities, looked up at each point.
    """
    cells = max(1, int(round(n / spacing)))
    size = n / cells
    gy, gx = np.mgrid[0:cells, 0:cells].astype(np.float32)
    ys = ((gy + rng.uniform(0.15, 0.85, gy.shape)) * size).ravel()
    xs = ((gx + rng.uniform(0.15, 0.85, gx.shape)) * size).ravel()
    if keep is not None:
        p = keep[ys.astype(int) % n, xs.astype(int) % n]
        chosen = rng.random(p.shape) < p
        ys, xs = ys[chosen], xs[chosen]
    return ys.astype(int) % n, xs.astype(int) % n


def _paste_periodic(n: int, stamps: list[np.ndarray], ys: np.ndarray, xs: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Max-composite randomly chosen stamps centred at (ys, xs) on a periodic n x n canvas."""
    pad = max(s.shape[0] for s in stamps) // 2 + 1
    big = np.zeros((n + 2 * pad, n + 2 * pad), np.float32)
    which = rng.integers(0, len(stamps), len(ys))
    for y, x, i in zip(ys.tolist(), xs.tolist(), which.tolist()):
        stamp = stamps[i]
        h = stamp.shape[0] // 2
        view = big[y + pad - h:y + pad + h + 1, x + pad - h:x + pad + h + 1]
        np.maximum(view, stamp, out=view)
    rows = big[pad:pad + n].copy()  # fold what fell off each edge back onto the other side
    np.maximum(rows[:pad], big[pad + n:], out=rows[:pad])
    np.maximum(rows[n - pad:], big[:pad], out=rows[n - pad:])
    out = rows[:, pad:pad + n].copy()
    np.maximum(out[:, :pad], rows[:, pad + n:], out=out[:, :pad])
    np.maximum(out[:, n - pad:], rows[:, :pad], out=out[:, n - pad:])
    return out


def _with_nuclei(h: np.ndarray, e: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei replace the cytoplasm under them: H takes the max, E fades."""
    cover = np.clip(nuclei / 0.3, 0, 1)
    return np.maximum(h, nuclei), e * (1 - 0.6 * cover)


def _stroma(rng: np.random.Generator, n: int, s: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pink wavy collagen bundles with sparse spindle nuclei (s: the bank's scale)."""
    e = _fibres(rng, n, spacing=11.0 * s, length=140.0 * s, scale=s)  # built in place below: memory, not speed
    e *= -2.2
    e += 0.2
    np.exp(e, out=e)
    e += 1
    np.reciprocal(e, out=e)  # strands in (0, 1)
    e *= np.clip(1.1 + 0.45 * _tex_grf(rng, n, 45.0 * s, s), 0.15, 1.0)  # looser between bundles
    e *= 0.62
    e += 0.12
    e += 0.04 * _tex_grf(rng, n, 3.0 * s, s)
    h = np.full((n, n), 0.05, np.float32)
    stamps = _nucleus_stamps(rng, 48, radius=(2.2, 3.2), elongation=(2.8, 4.5), irregularity=0.04,
                             od=(0.75, 1.05), grain=0.15, rim=0.0, nucleolus=0.0, scale=s)
    count = n * n // (2600 * s * s)
    ys, xs = rng.integers(0, n, count), rng.integers(0, n, count)
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


def _cellular(rng: np.random.Generator, n: int, s: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Nests of round purple nuclei in pink-purple cytoplasm, with small empty lumina."""
    in_nest = _tex_grf(rng, n, 32.0 * s, s)
    in_nest += 0.5
    in_nest *= -4
    np.exp(in_nest, out=in_nest)
    in_nest += 1
    np.reciprocal(in_nest, out=in_nest)
    e = _tex_grf(rng, n, 4.0 * s, s)
    e *= 0.4
    e += 1
    e *= 0.25 * (1 - in_nest)
    e += 0.22 + 0.14 * in_nest
    h = 0.06 + 0.08 * in_nest
    stamps = _nucleus_stamps(rng, 64, radius=(4.6, 6.2), elongation=(1.0, 1.35), irregularity=0.05,
                             od=(0.55, 0.8), grain=0.25, rim=0.12, nucleolus=0.15, scale=s)
    in_nest *= 0.85
    in_nest += 0.05
    ys, xs = _jittered_points(rng, n, 16.0 * s, keep=in_nest)
    del in_nest
    h, e = _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))
    lumen = np.clip((_tex_grf(rng, n, 14.0 * s, s) - 1.7) * 3, 0, 1)
    lumen *= -0.9
    lumen += 1
    h *= lumen
    e *= lumen
    return h, e


def _adipose(rng: np.random.Generator, n: int, s: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Large empty fat cells with thin pink membranes (period at most 1024 * s px, repeated)."""
    m = n
    while m > 1024 * s and m % 2 == 0:
        m //= 2
    gap = _upsample2(_worley_gap(rng, m // 2, 44.0 * s)) * 2  # F2 - F1 distance, full-resolution px
    membrane = np.clip((3.2 * s - gap) / (1.6 * s), 0, 1)
    e = (0.02 + 0.5 * membrane).astype(np.float32)
    h = (0.01 + 0.06 * membrane).astype(np.float32)
    stamps = _nucleus_stamps(rng, 16, radius=(1.8, 2.4), elongation=(2.5, 3.5), irregularity=0.03,
                             od=(0.7, 0.9), grain=0.1, rim=0.0, nucleolus=0.0, scale=s)
    ys, xs = np.nonzero(membrane > 0.9)
    pick = rng.choice(len(ys), size=min(len(ys), m * m // (40000 * s * s)), replace=False)
    h, e = _with_nuclei(h, e, _paste_periodic(m, stamps, ys[pick], xs[pick], rng))
    return np.tile(h, (n // m, n // m)), np.tile(e, (n // m, n // m))


def _decoy(rng: np.random.Generator, n: int, s: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A dense lymphoid-like aggregate: small, round, uniformly dark nuclei."""
    e = (0.16 + 0.04 * _tex_grf(rng, n, 5.0 * s, s)).astype(np.float32)
    h = (0.10 + 0.03 * _tex_grf(rng, n, 5.0 * s, s)).astype(np.float32)
    stamps = _nucleus_stamps(rng, 48, radius=(4.4, 5.8), elongation=(1.0, 1.15), irregularity=0.03,
                             od=(1.05, 1.35), grain=0.08, rim=0.0, nucleolus=0.0, scale=s)
    # patchy density, so that at low resolution the aggregate is as mottled as a lesion
    keep = np.clip(0.72 + 0.3 * _tex_grf(rng, n, 14.0 * s, s), 0, 1)
    ys, xs = _jittered_points(rng, n, 13.0 * s, keep=keep)
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


def _lesion(rng: np.random.Generator, n: int, s: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crowded, large, pleomorphic nuclei with coarse chromatin, a dark rim and nucleoli."""
    e = (0.26 + 0.06 * _tex_grf(rng, n, 6.0 * s, s)).astype(np.float32)
    h = (0.18 + 0.05 * _tex_grf(rng, n, 6.0 * s, s)).astype(np.float32)
    stamps = _nucleus_stamps(rng, 96, radius=(8.0, 12.0), elongation=(1.0, 1.5), irregularity=0.12,
                             od=(0.55, 1.05), grain=0.45, rim=0.35, nucleolus=0.7, scale=s)
    ys, xs = _jittered_points(rng, n, 25.0 * s, keep=np.full((n, n), 0.95, np.float32))
    return _with_nuclei(h, e, _paste_periodic(n, stamps, ys, xs, rng))


_TEXTURES = {"stroma": _stroma, "cellular": _cellular, "adipose": _adipose, "decoy": _decoy, "lesion": _lesion}


@functools.lru_cache(maxsize=2)
def _texture_bank(benign_period: int, spot_period: int, scale: int = 1) -> dict[str, np.ndarray]:
    """Stain codes of every texture, uint16 (P, P): (H code << 8) | E code, codes = OD / 2.5 * 255.

    Periods in px as drawn (the scale-1 periods times ``scale``); scale:
    texture px per 0.5 µm (module docstring). Rendered once per process
    and scale (about a second at scale 1, four at scale 2). Also holds each texture's
    code histogram '<name>.hist' (int64 (65536,), for mean colours without
    recolouring) and the fine edge noise 'noise' (float32 in [-1, 1], spot period).
    """
    bank: dict[str, np.ndarray] = {}
    for i, (name, make) in enumerate(_TEXTURES.items()):
        rng = np.random.default_rng(np.random.SeedSequence([_BANK_SEED, i]))
        n = spot_period if name in ("decoy", "lesion") else benign_period
        h, e = make(rng, n, scale)
        hc = np.clip(np.rint(h * (255 / _OD_MAX)), 0, 255).astype(np.uint16)
        ec = np.clip(np.rint(e * (255 / _OD_MAX)), 0, 255).astype(np.uint16)
        bank[name] = (hc << 8) | ec
        bank[name + ".hist"] = np.bincount(bank[name].ravel(), minlength=65536)
    rng = np.random.default_rng(np.random.SeedSequence([_BANK_SEED, len(_TEXTURES)]))
    bank["noise"] = np.clip(_grf(rng, (spot_period, spot_period), 5.0 * scale) / 2.2, -1, 1)
    return bank
