"""The K highest-attention sampled patches of a slide as PNG, and one contact sheet.

``patches/<name>/NN_x<X>_y<Y>.png`` holds the patch drawn with the NN-th
highest attention (01 = highest; a cell drawn twice appears once), read from
the slide at the level nearest the model's patch resolution and resized to
the patch's pixel size, so it shows what the feature net saw.
``patches/<name>/sheet.png`` puts them side by side, each captioned with its
rank, attention (× cells, the unit of the overlay) and level-0 (x, y).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["MAX_EXPORT_PATCHES", "top_patches", "read_patch", "write_top_patches", "patch_file_names"]

MAX_EXPORT_PATCHES = 256
"""At most this many patches per slide (``--export-patches``): bounds the files and the sheet's memory."""

MAX_SHEET_PATCH_PX = 256
"""Patches larger than this are shrunk to it on the contact sheet (the PNGs keep their size)."""


def top_patches(boxes_xywh: np.ndarray, box_attention: np.ndarray, k: int) -> list[int]:
    """Indices into ``boxes_xywh`` of the ``k`` distinct boxes with the highest attention.

    Args:
        boxes_xywh: int [n, 4] level-0 (x, y, w, h), in draw order.
        box_attention: float [n], each box's attention.
        k: how many (>= 1).

    Returns:
        Up to ``k`` indices, highest attention first; ties and repeats of a box
        keep the earliest draw.
    """
    boxes = np.asarray(boxes_xywh).reshape(-1, 4)
    order = np.argsort(-np.asarray(box_attention, dtype=np.float64), kind="stable")
    seen, chosen = set(), []
    for i in order.tolist():
        key = tuple(int(v) for v in boxes[i])
        if key not in seen:
            seen.add(key)
            chosen.append(i)
            if len(chosen) == k:
                break
    return chosen


def read_patch(slide, box_xywh, patch_px: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3): the level-0 box read at the level nearest ``patch_px`` and resized to it.

    Args:
        slide: an open :class:`~ats_wsi.slide.Slide`.
        box_xywh: (x, y, w, h) in level-0 pixels.
        patch_px: (w, h) of the result, the patch as the feature net saw it.
    """
    from PIL import Image

    x, y, w, h = (int(v) for v in box_xywh)
    level = slide.get_best_level_for_downsample(w / max(patch_px[0], 1))
    ds = slide.level_downsamples[level]
    size = (max(1, int(round(w / ds))), max(1, int(round(h / ds))))
    pixels = slide.read_region((x, y), level, size)
    if size != tuple(patch_px):
        pixels = np.asarray(Image.fromarray(pixels).resize(tuple(patch_px), Image.BILINEAR))
    return pixels


def patch_file_names(boxes_xywh: np.ndarray, chosen: list[int]) -> list[str]:
    """``NN_x<X>_y<Y>.png`` per chosen box (rank NN from 01)."""
    width = max(2, len(str(len(chosen))))
    return [f"{rank + 1:0{width}d}_x{int(boxes_xywh[i][0])}_y{int(boxes_xywh[i][1])}.png"
            for rank, i in enumerate(chosen)]


def write_top_patches(folder: str | os.PathLike, slide, prediction, k: int, patch_px: tuple[int, int]) -> Path:
    """Write the ``k`` top-attention patches and ``sheet.png`` into ``folder`` (atomically, as one folder).

    Args:
        folder: ``patches/<name>``; replaced as a whole.
        slide: the open slide the prediction was made on.
        prediction: a :class:`~ats_wsi.classifier.SlidePrediction`.
        k: patches to write, 1 .. :data:`MAX_EXPORT_PATCHES`.
        patch_px: (w, h) of a patch as the feature net saw it.
    """
    from PIL import Image

    k = max(1, min(int(k), MAX_EXPORT_PATCHES))
    boxes = np.asarray(prediction.boxes_xywh).reshape(-1, 4)
    chosen = top_patches(boxes, prediction.box_attention, k)
    cells = float(np.asarray(prediction.attention).size)
    names = patch_file_names(boxes, chosen)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        tiles = []
        for i, file_name in zip(chosen, names):
            pixels = read_patch(slide, boxes[i], patch_px)
            Image.fromarray(pixels).save(tmp / file_name, format="PNG")
            tiles.append((Image.fromarray(pixels), float(prediction.box_attention[i]) * cells, boxes[i]))
        _contact_sheet(tiles).save(tmp / "sheet.png", format="PNG")
    return Path(folder)


def _contact_sheet(tiles):
    """The patches in a grid, each over a caption ``#rank  a=attention×cells`` / ``x=.. y=..``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    cols = max(1, min(len(tiles), int(np.ceil(np.sqrt(len(tiles))))))
    rows = max(1, -(-len(tiles) // cols))
    side = max(1, min(MAX_SHEET_PATCH_PX, max((t[0].width for t in tiles), default=1)))
    caption_h, cell_w = 30, max(side, 110)  # small patches still get a readable caption
    sheet = Image.new("RGB", (cols * (cell_w + 4) + 4, rows * (side + caption_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for rank, (image, attention, (x, y, _, _)) in enumerate(tiles):
        r, c = divmod(rank, cols)
        left, top = 4 + c * (cell_w + 4), 4 + r * (side + caption_h + 4)
        sheet.paste(image.resize((side, side), Image.BILINEAR) if image.width != side else image, (left, top))
        draw.text((left, top + side + 1), f"#{rank + 1}  a={attention:.2f}", fill=(0, 0, 0), font=font)
        draw.text((left, top + side + 14), f"x={int(x)} y={int(y)}", fill=(0, 0, 0), font=font)
    return sheet
