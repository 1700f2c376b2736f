"""Megapixel MNIST: the paper's synthetic benchmark, rendered on the fly.

Each image is a large black canvas with five handwritten digits on it:
three of one class (the label, i.e. the majority class) and two of two other,
distinct classes, plus, in the "hard" setting, 50 clutter patterns made of two
straight strokes each. The digits are real handwriting that ships inside
scikit-learn (``sklearn.datasets.load_digits``: 1797 images of 8 x 8 pixels,
17 grey levels), resampled to MNIST's geometry (a 20 x 20 digit centred in a
28 x 28 box; see :func:`digit_bank`), so nothing is downloaded at run time.

Nothing is stored per image: image ``i`` is a pure function of
``(seed, split, i)``. :meth:`MegaMNIST.layout` draws its layout (digit
classes, source digits, positions, clutter strokes) from a random generator
seeded with that triple, and :meth:`MegaMNIST.render` paints it. 10 000
images therefore cost no disk and only the shared digit bank (~5.6 MB) in
memory.

Coordinates follow the project's convention: ``(x, y)`` top-left corners in
pixels of the full-resolution image, sizes as ``(width, height)``; arrays are
``(row, col) = (y, x)``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DIGIT_BOX",
    "DIGIT_SIZE",
    "SETTINGS",
    "Layout",
    "MegaMNIST",
    "Setting",
    "digit_bank",
    "digit_pool",
]

DIGIT_BOX = 28
"""Side of a digit's box in pixels (MNIST's 28 x 28)."""
DIGIT_SIZE = 20
"""Side of the digit inside its box (MNIST centres a 20 x 20 digit in 28 x 28)."""
N_DIGITS = 5
N_MAJORITY = 3
N_CLASSES = 10
TEST_FRACTION = 0.25
"""Share of each class's source digits kept for the test split."""
_POOL_SEED = 20190503  # fixes the train/test split of source digits, whatever the dataset seed
_SPLITS = {"train": 0, "test": 1}
_MAX_TRIES = 500  # per layout attempt (rejection sampling of positions)
_MAX_RESTARTS = 200
MIN_SIDE = 4 * DIGIT_BOX
"""Smallest image side: five 28-px digits still fit at random without jamming."""


@dataclass(frozen=True)
class Setting:
    """Size and clutter of one Megapixel-MNIST setting.

    Attributes:
        width, height: image size in pixels.
        n_noise: clutter patterns per image (two strokes each in a 28 x 28 box).
    """

    width: int
    height: int
    n_noise: int


SETTINGS = {
    # the reference's "easy" dataset: 500 x 500, no clutter
    "easy": Setting(width=500, height=500, n_noise=0),
    # the paper's dataset: 1500 x 1500 with 50 clutter patterns
    "hard": Setting(width=1500, height=1500, n_noise=50),
}


@dataclass(frozen=True)
class Layout:
    """Everything that defines one image; :meth:`MegaMNIST.render` paints it.

    Attributes:
        label: the majority class (int in 0..9).
        classes: int64 [5], class of each digit; the first three equal ``label``,
            the last two are distinct from each other and from ``label``.
        digit_ids: int64 [5], index of each source digit in
            ``sklearn.datasets.load_digits()`` (see :func:`digit_bank`).
        digit_xy: int64 [5, 2], top-left (x, y) of each 28 x 28 digit box.
        noise_xy: int64 [k, 2], top-left (x, y) of each 28 x 28 clutter box.
        noise_strokes: float32 [k, 2, 4], two strokes per clutter box as
            (x0, y0, x1, y1) in the box's own pixels.
        noise_level: float32 [k], grey level of each clutter pattern.
        size: (width, height) of the image.
    """

    label: int
    classes: np.ndarray
    digit_ids: np.ndarray
    digit_xy: np.ndarray
    noise_xy: np.ndarray
    noise_strokes: np.ndarray
    noise_level: np.ndarray
    size: tuple[int, int]

    @property
    def boxes(self) -> np.ndarray:
        """int64 [5, 4]: each digit's box as (x, y, width, height)."""
        wh = np.full((len(self.digit_xy), 2), DIGIT_BOX, dtype=np.int64)
        return np.concatenate([self.digit_xy, wh], axis=1)


@functools.lru_cache(maxsize=1)
def digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits, resampled to MNIST's geometry.

    Each 8 x 8 digit (grey levels 0..16) is scaled to [0, 1], upsampled to
    20 x 20 with bicubic interpolation (PIL), contrast-stretched
    (``clip((v - 0.1) / 0.6, 0, 1)``: bicubic's faint halo and ringing go to 0,
    stroke cores saturate to 1, as in MNIST's mostly black-and-white digits)
    and centred in a 28 x 28 box with a 4-pixel black margin.

    Returns:
        images: float32 [1797, 28, 28] in [0, 1], (row, col).
        labels: int64 [1797], the digit classes.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is a dev extra, not a core dependency
        raise ImportError(
            "Megapixel MNIST draws its digits from scikit-learn's bundled "
            "`load_digits`; install scikit-learn (pip install scikit-learn)"
        ) from err
    from PIL import Image

    digits = load_digits()
    small = digits.images.astype(np.float32) / 16.0  # [n, 8, 8]
    images = np.zeros((len(small), DIGIT_BOX, DIGIT_BOX), dtype=np.float32)
    margin = (DIGIT_BOX - DIGIT_SIZE) // 2
    for k, img in enumerate(small):
        big = Image.fromarray(img).resize((DIGIT_SIZE, DIGIT_SIZE), Image.BICUBIC)
        big = np.clip((np.asarray(big) - 0.1) / 0.6, 0.0, 1.0)
        images[k, margin:margin + DIGIT_SIZE, margin:margin + DIGIT_SIZE] = big
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=2)
def digit_pool(split: str) -> tuple[np.ndarray, ...]:
    """Indices of the source digits a split may use, per class.

    The 1797 digits are split once, by a fixed permutation within each class
    (independent of any dataset seed): 25 % of each class go to "test", the
    rest to "train", so test images are made of digits never seen in
    training.

    Args:
        split: "train" or "test".

    Returns:
        A tuple of 10 int64 arrays; entry ``c`` holds the indices (into
        :func:`digit_bank`) of the split's digits of class ``c``.
    """
    _check_split(split)
    _, labels = digit_bank()
    rng = np.random.default_rng(_POOL_SEED)
    pools = []
    for c in range(N_CLASSES):
        ids = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(TEST_FRACTION * len(ids)))
        chosen = np.sort(ids[:n_test] if split == "test" else ids[n_test:])
        chosen.setflags(write=False)
        pools.append(chosen)
    return tuple(pools)


class MegaMNIST:
    """A Megapixel-MNIST dataset whose images are rendered when asked for.

    Args:
        n: number of images.
        setting: "easy" (500 x 500, no clutter) or "hard" (1500 x 1500, 50
            clutter patterns): see :data:`SETTINGS`.
        seed: the dataset seed; image ``i`` depends only on
            ``(seed, split, i)``.
        split: "train" or "test"; each draws from its own pool of source
            digits (:func:`digit_pool`).
        size: optional (width, height) overriding the setting's size.
        n_noise: optional number of clutter patterns overriding the setting's.

    ``ds[i]`` returns ``(image, label)``: image is a float32 torch tensor
    [1, H, W] in [0, 1], label an int. ``ds.layout(i)`` gives the digit boxes
    and classes behind it, ``ds.render(i)`` the image as a numpy array.
    """

    def __init__(
        self,
        n: int,
        setting: str = "easy",
        seed: int = 0,
        split: str = "train",
        *,
        size: tuple[int, int] | None = None,
        n_noise: int | None = None,
    ):
        if setting not in SETTINGS:
            raise ValueError(f"unknown Megapixel-MNIST setting {setting!r}; use one of {sorted(SETTINGS)}")
        _check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        base = SETTINGS[setting]
        width, height = size if size is not None else (base.width, base.height)
        if min(width, height) < MIN_SIDE:
            raise ValueError(f"image size {width} x {height} is too small: each side needs >= {MIN_SIDE} px")
        self.n = int(n)
        self.setting = setting
        self.seed = int(seed)
        self.split = split
        self.size = (int(width), int(height))
        self.n_noise = base.n_noise if n_noise is None else int(n_noise)
        self._pools = digit_pool(split)
        self._bank, _ = digit_bank()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, rows, cols) = (1, height, width) of every image."""
        return (1, self.size[1], self.size[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        image = self.render(i)
        return torch.from_numpy(image), self.layout(i).label

    def __repr__(self) -> str:
        w, h = self.size
        return (
            f"MegaMNIST(n={self.n}, setting={self.setting!r}, seed={self.seed}, "
            f"split={self.split!r}, size=({w}, {h}), n_noise={self.n_noise})"
        )

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a MegaMNIST of {self.n} images")
        return i

    def layout(self, i: int) -> Layout:
        """The layout of image ``i``: classes, source digits, positions, clutter."""
        i = self._index(i)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], i])
        label = int(rng.integers(N_CLASSES))
        others = rng.choice(np.delete(np.arange(N_CLASSES), label), size=N_DIGITS - N_MAJORITY, replace=False)
        classes = np.concatenate([np.full(N_MAJORITY, label), others]).astype(np.int64)
        digit_ids = np.array([rng.choice(self._pools[c]) for c in classes], dtype=np.int64)
        digit_xy = _place_apart(rng, N_DIGITS, self.size)
        noise_xy = _place_outside(rng, self.n_noise, self.size, digit_xy)
        noise_strokes = _strokes(rng, self.n_noise)
        noise_level = rng.uniform(0.8, 1.0, size=self.n_noise).astype(np.float32)
        return Layout(label, classes, digit_ids, digit_xy, noise_xy, noise_strokes, noise_level, self.size)

    def render(self, i: int | Layout) -> np.ndarray:
        """Paint image ``i`` (or a given layout).

        Returns:
            float32 [1, H, W] in [0, 1], (channel, row, col); a new array each
            call (nothing is cached).
        """
        layout = i if isinstance(i, Layout) else self.layout(i)
        width, height = layout.size
        image = np.zeros((1, height, width), dtype=np.float32)
        canvas = image[0]
        patterns = _draw_strokes(layout.noise_strokes, layout.noise_level)
        for (x, y), pattern in zip(layout.noise_xy, patterns):
            box = canvas[y:y + DIGIT_BOX, x:x + DIGIT_BOX]
            np.maximum(box, pattern, out=box)
        for (x, y), k in zip(layout.digit_xy, layout.digit_ids):
            canvas[y:y + DIGIT_BOX, x:x + DIGIT_BOX] = self._bank[k]
        return image


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")


def _overlaps(xy: np.ndarray, others: np.ndarray) -> np.ndarray:
    """bool [len(xy)]: does each 28-px box at ``xy`` [m, 2] overlap any box in ``others`` [k, 2]?"""
    if len(others) == 0:
        return np.zeros(len(xy), dtype=bool)
    gap = np.abs(xy[:, None, :] - others[None, :, :])
    return (gap < DIGIT_BOX).all(axis=2).any(axis=1)


def _place_apart(rng: np.random.Generator, k: int, size: tuple[int, int]) -> np.ndarray:
    """int64 [k, 2]: top-left (x, y) of k pairwise non-overlapping 28-px boxes inside ``size``.

    Rejection sampling, box by box; a layout that jams (no room left for the
    next box) is dropped and drawn again.
    """
    width, height = size
    for _ in range(_MAX_RESTARTS):
        placed = np.zeros((0, 2), dtype=np.int64)
        for _ in range(_MAX_TRIES):
            xy = np.stack([rng.integers(0, width - DIGIT_BOX + 1), rng.integers(0, height - DIGIT_BOX + 1)])
            if not _overlaps(xy[None], placed)[0]:
                placed = np.concatenate([placed, xy[None].astype(np.int64)])
                if len(placed) == k:
                    return placed
    raise ValueError(f"could not place {k} non-overlapping {DIGIT_BOX}-px digits in {width} x {height}")


def _place_outside(rng: np.random.Generator, k: int, size: tuple[int, int], avoid: np.ndarray) -> np.ndarray:
    """int64 [k, 2]: top-left (x, y) of k 28-px boxes that overlap no box of ``avoid``.

    Clutter boxes may overlap each other (they are combined with max), never a digit.
    """
    width, height = size
    out = np.zeros((0, 2), dtype=np.int64)
    for _ in range(_MAX_TRIES):
        if len(out) >= k:
            return out[:k]
        need = k - len(out)
        xy = np.stack(
            [rng.integers(0, width - DIGIT_BOX + 1, size=need), rng.integers(0, height - DIGIT_BOX + 1, size=need)],
            axis=1,
        ).astype(np.int64)
        out = np.concatenate([out, xy[~_overlaps(xy, avoid)]])
    if len(out) >= k:
        return out[:k]
    raise ValueError(f"could not place {k} clutter boxes clear of the digits in {width} x {height}")


def _strokes(rng: np.random.Generator, k: int) -> np.ndarray:
    """float32 [k, 2, 4]: two random straight strokes (x0, y0, x1, y1) per 28-px clutter box.

    Each stroke passes near the box centre at a uniform random angle and is
    10-20 px long, so a pattern is digit-sized and digit-thick but is no digit.
    """
    centre = DIGIT_BOX / 2 + rng.uniform(-5, 5, size=(k, 2, 2))
    angle = rng.uniform(0, np.pi, size=(k, 2))
    half = rng.uniform(5, 10, size=(k, 2))
    d = np.stack([np.cos(angle), np.sin(angle)], axis=-1) * half[..., None]
    strokes = np.concatenate([centre - d, centre + d], axis=-1)
    return np.clip(strokes, 2, DIGIT_BOX - 3).astype(np.float32)


_STROKE_HALF_WIDTH = 1.75  # px: close to the resampled digits' stroke half-width


def _draw_strokes(strokes: np.ndarray, level: np.ndarray) -> np.ndarray:
    """float32 [k, 28, 28]: anti-aliased clutter patterns, (row, col).

    Args:
        strokes: float32 [k, s, 4], (x0, y0, x1, y1) in box pixels.
        level: float32 [k], grey level of each pattern.
    """
    if len(strokes) == 0:
        return np.zeros((0, DIGIT_BOX, DIGIT_BOX), dtype=np.float32)
    rows, cols = np.mgrid[0:DIGIT_BOX, 0:DIGIT_BOX].astype(np.float32)
    p = np.stack([cols, rows], axis=-1)  # (x, y) of each pixel, [28, 28, 2]
    a, b = strokes[..., None, None, 0:2], strokes[..., None, None, 2:4]  # [k, s, 1, 1, 2]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0, 1)
    dist = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)  # [k, s, 28, 28]
    ink = np.clip(_STROKE_HALF_WIDTH + 0.5 - dist, 0, 1).max(axis=1)
    return (ink * level[:, None, None]).astype(np.float32)
