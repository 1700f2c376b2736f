"""Reference computations the slide tests compare against (plain numpy, no reader code)."""
from __future__ import annotations

import numpy as np

TIFF_SLIDES = ["tiff_pyramid_deflate", "ome_tiff_lzw", "svs_jpeg", "svs_jpeg2000", "tiff_flat",
               "tiff_strips", "vips_jpeg", "vips_deflate"]
ZARR_SLIDES = ["ome_zarr_v04", "ome_zarr_v05", "zarr_levels"]
ALL_SLIDES = TIFF_SLIDES + ZARR_SLIDES
LOSSLESS_SLIDES = ["tiff_pyramid_deflate", "ome_tiff_lzw", "svs_jpeg2000", "tiff_flat", "tiff_strips",
                   "vips_deflate", *ZARR_SLIDES]
JPEG_SLIDES = ["svs_jpeg", "vips_jpeg"]
OPENSLIDE_SLIDES = ["tiff_pyramid_deflate", "ome_tiff_lzw", "svs_jpeg", "svs_jpeg2000", "tiff_flat",
                    "vips_jpeg", "vips_deflate"]
FILL = 0  # the documented fill value, restated so a change to it must be deliberate


def crop(ref: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """ref[y:y+h, x:x+w] with everything outside ref set to FILL (x, y may be negative)."""
    out = np.full((h, w, ref.shape[2]), FILL, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, ref.shape[1]), min(y + h, ref.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = ref[y0:y1, x0:x1]
    return out


def to_level(x0: int, downsample: float) -> int:
    """The documented level-0 -> level pixel rule: nearest pixel, halves up."""
    return int(np.floor(x0 / downsample + 0.5))


def half_mean(img: np.ndarray) -> np.ndarray:
    """2 x 2 block mean, rounded half up, odd last row / column dropped."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    a = img[:h, :w].astype(np.uint16)
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def computed_pyramid(level0: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """level0 followed by n_levels - 1 successive half_means."""
    out = [level0]
    while len(out) < n_levels:
        out.append(half_mean(out[-1]))
    return out


def edge_boxes(width: int, height: int, tw: int, th: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) boxes in level pixels that cross tile edges, the slide's edges, or lie outside."""
    return [
        (0, 0, 1, 1),
        (tw - 7, th - 5, 15, 11),  # the corner where four tiles meet
        (tw - 1, 0, 2 * tw + 3, 9),  # across three tile columns
        (width - 10, height - 6, 25, 17),  # over the bottom-right corner
        (-13, -9, 40, 30),  # over the top-left corner
        (width - 3, 5, 3, th + 2),  # last three columns, across a tile row
        (width + 5, height + 5, 8, 8),  # fully outside
        (-50, 3, 20, 4),  # fully outside, left
        (max(0, width // 2 - 40), max(0, height // 2 - 30), 80, 60),
    ]
