"""Fixtures for the napari plugin tests: small pyramidal TIFF slides written here.

The slides are written with tifffile as Aperio-style (SVS-like) pyramids: page
0 is level 0 with an Aperio description carrying the mpp, the following pages
are the lower levels. They are non-square on purpose, so a swapped (x, y)
shows up as a wrong shape or position.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ats_wsi.data.synthetic import aperio_description

MPP = 0.5
TISSUE_RGB = (226, 150, 196)  # H&E-like pink
LESION_RGB = (96, 32, 112)  # dense, dark purple
BACKGROUND_RGB = (244, 244, 244)


@dataclass(frozen=True)
class TestSlide:
    """A slide written by the fixtures, with what the tests need to know about it."""

    __test__ = False  # not a test class, despite its name

    path: Path
    width: int
    height: int
    mpp: float
    downsamples: tuple[int, ...]
    lesion_xywh: tuple[int, int, int, int] | None = None

    def level_shape(self, level: int) -> tuple[int, int, int]:
        d = self.downsamples[level]
        return (self.height // d, self.width // d, 3)


def write_tiff_pyramid(
    path: Path, levels: list, *, mpp: float = MPP, tile: int = 256, bigtiff: bool = False
) -> None:
    """Write an Aperio-style tiled pyramid (the page layout of a real SVS).

    Page 0 is level 0 (tiled, Aperio description with the mpp, TIFF
    resolution), page 1 a stripped thumbnail (made from the last level),
    pages 2.. the lower levels (tiled): the layout openslide's Aperio driver
    and tifffile's SVS series both expect.

    Args:
        path: destination ``*.svs``.
        levels: one entry per level, from level 0 down: either a uint8
            (rows, cols, 3) array (written deflate-compressed), or a
            (rows, cols) shape, written as a sparse level whose tiles are
            empty (zero byte counts, read as zeros), which costs no disk and
            no time however large.
        mpp: µm per level-0 pixel.
        tile: tile edge in pixels.
    """
    import tifffile

    shape0 = levels[0].shape[:2] if isinstance(levels[0], np.ndarray) else levels[0]
    thumbnail = levels[-1] if isinstance(levels[-1], np.ndarray) else np.zeros((*levels[-1], 3), np.uint8)
    common = dict(photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        _write_level(
            tif, levels[0], tile, **common,
            description=aperio_description(shape0[1], shape0[0], mpp=mpp, tile=tile, quality=90, app_mag=20),
            resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
        )
        tif.write(thumbnail, compression="deflate", rowsperstrip=16, **common)
        for level in levels[1:]:
            _write_level(tif, level, tile, **common)


def _write_level(tif, level, tile: int, **kwargs) -> None:
    if isinstance(level, np.ndarray):
        tif.write(level, tile=(tile, tile), compression="deflate", **kwargs)
        return
    rows, cols = level
    n_tiles = -(-rows // tile) * -(-cols // tile)
    # tifffile takes the dtype from the first tile, so that one is written
    # (zeros); the others are None: empty, with zero byte counts.
    first = np.zeros((tile, tile, 3), np.uint8)
    tiles = itertools.chain([first], itertools.repeat(None, n_tiles - 1))
    tif.write(tiles, shape=(rows, cols, 3), dtype=np.uint8, tile=(tile, tile), **kwargs)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def tissue_image(width: int, height: int, lesion_xywh=None, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): background with a pink tissue blob and an optional lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (0.45 * width)) ** 2 + ((yy - height / 2) / (0.45 * height)) ** 2 < 1
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    noise = rng.integers(-12, 13, size=(height, width, 1))
    image[inside] = np.clip(np.array(TISSUE_RGB) + noise[inside], 0, 255).astype(np.uint8)
    if lesion_xywh is not None:
        x, y, w, h = lesion_xywh
        patch = np.clip(np.array(LESION_RGB) + noise[y : y + h, x : x + w], 0, 255)
        image[y : y + h, x : x + w] = patch.astype(np.uint8)
    return image


def write_tissue_slide(path: Path, width: int, height: int, *, lesion_xywh=None, downsamples=(1, 4, 16)):
    image = tissue_image(width, height, lesion_xywh)
    write_tiff_pyramid(path, [image if d == 1 else _downsample(image, d) for d in downsamples])
    return TestSlide(path, width, height, MPP, tuple(downsamples), lesion_xywh)


@pytest.fixture(scope="session")
def lesion_slide(tmp_path_factory) -> TestSlide:
    """A 2048 × 1536 SVS-like slide (3 levels, mpp 0.5) with one 256² lesion."""
    folder = tmp_path_factory.mktemp("lesion")
    return write_tissue_slide(folder / "lesion.svs", 2048, 1536, lesion_xywh=(1280, 384, 256, 256))


@pytest.fixture(scope="session")
def huge_slide(tmp_path_factory) -> TestSlide:
    """An 80 000 × 80 000 slide that costs almost nothing on disk.

    Levels 0-2 (80 000², 20 000², 5 000²) are sparse (every tile empty);
    levels 3-4 (1 250², 312²) hold real pixels, so what napari shows when
    zoomed out is a real image. Reading any of the big levels whole would
    take gigabytes: a reader that is not lazy fails the time/memory bounds.
    """
    folder = tmp_path_factory.mktemp("huge")
    side, downsamples = 80_000, (1, 4, 16, 64, 256)
    small = tissue_image(side // 64, side // 64)
    levels = [
        (side // d, side // d) if d <= 16 else (small if d == 64 else _downsample(small, 4))
        for d in downsamples
    ]
    path = folder / "huge.svs"
    write_tiff_pyramid(path, levels, bigtiff=True)
    return TestSlide(path, side, side, MPP, downsamples)


# --------------------------------------------------------------------------- a real checkpoint

CLASS_NAMES = ("normal", "tumour")
PROBABILITIES = (0.2, 0.8)
DARKNESS_CELL = 8  # low-view pixels per attention cell (the net's average pooling)
DARKNESS_PATCH = 64  # level-0 pixels per patch side


def darkness_model(class_names=CLASS_NAMES):
    """A real, tiny ``SlideClassifier`` whose weights are set by hand, not trained.

    Its attention net averages the low view (1/16 of level 0) over 8 × 8-pixel
    cells (128 level-0 pixels) and scores each cell by its darkness, steeply
    (``4 · (6 − Σ_c normalised pixel)``: ~21 logits more for the dark lesion
    than for pink tissue), so its attention peaks on the lesion of
    ``lesion_slide`` and its draws land there. The head ignores the features
    (zero weights) and its bias gives the probabilities ``PROBABILITIES``.
    Everything else (the feature net, sampling, reading patches) is the real
    model's, run by the real ``load_model`` / ``SlideClassifier.predict``.
    """
    import torch

    from ats_wsi.classifier import ModelConfig, build_model

    config = ModelConfig(
        n_classes=len(PROBABILITIES),
        attention_kwargs=dict(hidden=1, layers=1, pool=DARKNESS_CELL),
        feature_kwargs=dict(widths=(4,)),
        feature_dim=4,
        n_patches=4,
        patch_size=DARKNESS_PATCH,
        low_downsample=16.0,
        class_names=None if class_names is None else list(class_names),
    )
    torch.manual_seed(0)
    model = build_model(config)
    pool, conv, _relu, out = model.sampler.attention_net[-1].body
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 1, 1] = -1.0  # centre tap only: minus the sum of the channels
        conv.bias.fill_(6.0)  # normalised pixels lie in [-2, 2]: keeps the ReLU open
        out.weight.fill_(4.0)
        out.bias.zero_()
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor(PROBABILITIES)))
    return model


def write_darkness_checkpoint(path: Path, class_names=CLASS_NAMES) -> Path:
    """Save :func:`darkness_model` with the real ``save_checkpoint``."""
    from ats_wsi.classifier import save_checkpoint

    return save_checkpoint(path, darkness_model(class_names))


@dataclass(frozen=True)
class Darkness:
    """The darkness checkpoint and what the tests know of its predictions."""

    checkpoint: Path
    class_names: tuple[str, ...] = CLASS_NAMES
    probabilities: tuple[float, ...] = PROBABILITIES
    patch_size: int = DARKNESS_PATCH
    cell_size: int = 16 * DARKNESS_CELL  # level-0 pixels per attention cell
    write = staticmethod(write_darkness_checkpoint)  # write(path, class_names=...): another one


@pytest.fixture(scope="session")
def darkness(tmp_path_factory) -> Darkness:
    """A real checkpoint of :func:`darkness_model` (see there), and its numbers."""
    return Darkness(write_darkness_checkpoint(tmp_path_factory.mktemp("model") / "darkness.pt"))
