"""A picture of a two-stage (zoom) prediction's second stage: the sheet of its drawn regions.

On the slide's overlay a region of a few hundred µm is a few thumbnail pixels
wide, so its stage-2 map cannot be seen there. :func:`render_zoom_sheet` draws
each region the first stage drew (in draw order) as its own tile: the region's
pixels read from the slide, its stage-2 map blended over them on the overlay's
absolute scale (:func:`~ats_wsi.outputs.attention_scale`: attention x the cells
of that region's map, 1 = uniform; the same colours as the overlay's stage-1
map), its drawn patches as cyan outlines, and a caption with the region's
stage-1 attention on the same scale.

The sheet is at most :data:`MAX_SHEET_SIDE` pixels a side: a grid that would be
larger is drawn with smaller tiles (never below :data:`MIN_TILE`; more regions
than fit then are refused). ``ats-wsi predict`` writes the sheet of a zoom
model's first sampling as ``overlays/NAME.zoom.png`` (:func:`prediction_zoom_sheet`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from .errors import SheetError
from .outputs import blend_heatmap, draw_colorbar

if TYPE_CHECKING:
    from .zoom import ZoomRecord

__all__ = ["MAX_SHEET_SIDE", "MIN_TILE", "SheetLayout", "zoom_sheet_layout", "region_tile", "render_zoom_sheet",
           "prediction_zoom_sheet"]

MAX_SHEET_SIDE = 4096
"""Most pixels a zoom sheet has a side (width and height), checked before it is allocated."""

MIN_TILE = 32
"""Smallest tile a sheet is shrunk to so that it fits in :data:`MAX_SHEET_SIDE`; below it the sheet is refused."""

GAP = 4
"""White pixels between tiles and around the grid."""

CAPTION_BAND = 15
"""Rows under each tile for its caption."""

TITLE_BAND = 26
"""Rows above the grid for the title (none without a title)."""

COLORBAR_BAND = 52
"""Rows under the grid for the colour bar (:func:`~ats_wsi.outputs.draw_colorbar` takes at most 49)."""

MIN_WIDTH = 320
"""Narrowest sheet: room for the colour bar and its caption however few tiles there are."""

_CYAN = (0, 255, 255)
_WHITE = (255, 255, 255)


class SheetLayout(NamedTuple):
    """Where a zoom sheet's parts lie, in sheet pixels.

    Attributes:
        tile: side of a tile (the ``tile`` asked for, or smaller so the sheet fits).
        columns, rows: the grid of tiles (``columns`` at most the regions).
        width, height: the sheet's size.
        top: rows above the grid (:data:`TITLE_BAND` with a title, else 0).
    """

    tile: int
    columns: int
    rows: int
    width: int
    height: int
    top: int

    def tile_xy(self, k: int) -> tuple[int, int]:
        """``(x, y)`` of the top-left pixel of tile ``k`` (region ``k + 1``, grid filled row by row)."""
        row, col = divmod(int(k), self.columns)
        return GAP + col * (self.tile + GAP), self.top + GAP + row * (self.tile + CAPTION_BAND + GAP)


def zoom_sheet_layout(n_regions: int, *, tile: int = 192, columns: int = 4, title: bool = False) -> SheetLayout:
    """The layout of a sheet of ``n_regions`` tiles, shrunk to fit :data:`MAX_SHEET_SIDE`.

    The sheet is ``max(MIN_WIDTH, columns * tile + (columns + 1) * GAP)``
    pixels wide and ``top + rows * (tile + CAPTION_BAND) + (rows + 1) * GAP +
    COLORBAR_BAND`` high, ``columns = min(columns, n_regions)``,
    ``rows = ceil(n_regions / columns)``.

    Args:
        n_regions: tiles to lay out (>= 1).
        tile: wanted side of a tile in pixels (>= 1); smaller when the sheet would not fit.
        columns: tiles a row (>= 1).
        title: whether the sheet has a title band.

    Raises:
        SheetError: a count below 1, or tiles that would have to be under :data:`MIN_TILE`.
    """
    n, tile, columns = (_count(v, name) for v, name in ((n_regions, "regions"), (tile, "tile"), (columns, "columns")))
    cols = min(columns, n)
    rows = -(-n // cols)
    top = TITLE_BAND if title else 0
    fit_w = (MAX_SHEET_SIDE - (cols + 1) * GAP) // cols
    fit_h = (MAX_SHEET_SIDE - top - COLORBAR_BAND - (rows + 1) * GAP) // rows - CAPTION_BAND
    side = min(tile, fit_w, fit_h)
    if side < MIN_TILE:
        raise SheetError(f"{n} regions in {cols} columns do not fit in {MAX_SHEET_SIDE} x {MAX_SHEET_SIDE} pixels "
                         f"with tiles of at least {MIN_TILE} px; draw fewer regions or more columns")
    width = max(MIN_WIDTH, cols * side + (cols + 1) * GAP)
    height = top + rows * (side + CAPTION_BAND) + (rows + 1) * GAP + COLORBAR_BAND
    return SheetLayout(side, cols, rows, width, height, top)


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SheetError(f"a zoom sheet needs {name} to be an integer >= 1, got {value!r}")
    return int(value)


def region_tile(slide, box_xywh: Sequence[float], tile: int) -> np.ndarray:
    """A region of the slide as a ``tile`` x ``tile`` picture.

    Read at the pyramid level (:attr:`~ats_wsi.slide.Slide.pyramid`, computed
    levels included) whose downsample is the largest not above
    ``max(w, h) / tile``, the part of the box inside the slide only; the rest
    is white. Resized to ``tile`` x ``tile`` with PIL's ``BOX`` filter.

    Args:
        slide: an open :class:`~ats_wsi.slide.Slide`.
        box_xywh: ``(x, y, w, h)`` of the region in level-0 pixels (``w, h > 0``).
        tile: side of the picture in pixels.

    Returns:
        uint8 ``(tile, tile, 3)`` RGB.
    """
    from PIL import Image

    x, y, w, h = (float(v) for v in box_xywh)
    target = max(w, h) / tile
    levels = [(lv.downsample, k) for k, lv in enumerate(slide.pyramid) if lv.downsample <= target * (1 + 1e-9)]
    ds, level = max(levels) if levels else (slide.pyramid[0].downsample, 0)
    lv = slide.pyramid[level]
    canvas = Image.new("RGB", (max(1, round(w / ds)), max(1, round(h / ds))), _WHITE)
    width0, height0 = slide.dimensions
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width0)), min(y + h, float(height0))
    if x1 > x0 and y1 > y0:
        lx, ly = math.floor(round(x0) / ds + 0.5), math.floor(round(y0) / ds + 0.5)  # read_region's level pixel
        rw = min(round((x1 - x0) / ds), lv.width - lx)
        rh = min(round((y1 - y0) / ds), lv.height - ly)
        if rw > 0 and rh > 0:
            pixels = slide.read_region((round(x0), round(y0)), level, (rw, rh))
            canvas.paste(Image.fromarray(pixels), (round((x0 - x) / ds), round((y0 - y) / ds)))
    return np.asarray(canvas.resize((tile, tile), Image.Resampling.BOX))


def _blend_map(image, record: ZoomRecord, r: int, alpha: float):
    """``image`` (region ``r``'s tile) with its stage-2 map over it (:func:`~ats_wsi.outputs.blend_heatmap`)."""
    tile = image.size[0]
    x, y, w, h = (float(v) for v in record.region_boxes[r])
    sx, sy = tile / w, tile / h
    values = np.asarray(record.zoom_attention[r], dtype=np.float32)
    cw, ch = (float(v) for v in record.zoom_cell_size_xy)
    ox, oy = (float(v) for v in record.zoom_origin_xy[r])
    extent = (max(1, round(values.shape[1] * cw * sx)), max(1, round(values.shape[0] * ch * sy)))
    return blend_heatmap(image, values, extent, (round((ox - x) * sx), round((oy - y) * sy)), alpha)


def render_zoom_sheet(slide, record: ZoomRecord, *, tile: int = 192, columns: int = 4, alpha: float = 0.5,
                      title: str | None = None):
    """Draw the regions a zoom drew, each with its stage-2 map and patches, as one sheet.

    Tile ``k`` (row by row, in draw order) is region ``k + 1``: its pixels
    (:func:`region_tile`), its stage-2 map blended over them on the
    overlay's absolute scale (attention x the cells of its own map, 0 to
    :data:`~ats_wsi.outputs.ATTENTION_SCALE_MAX`; the opacity grows from 0 at
    no attention to ``alpha`` at the top of the scale, so a uniform map
    paints almost nothing), its drawn patches as 1-pixel cyan outlines, and
    under it the caption ``region K  stage 1: X.Xx uniform`` (its stage-1
    probability x the stage-1 map's cells; ``x`` as the default font has no
    multiplication sign). The title, if any, is on a band above the grid, the
    colour bar on a band below it (:func:`zoom_sheet_layout` gives the sizes).

    Args:
        slide: the open :class:`~ats_wsi.slide.Slide` the record was drawn on.
        record: one sampling's :class:`~ats_wsi.zoom.ZoomRecord`.
        tile: side of a tile in pixels; smaller when the sheet would exceed
            :data:`MAX_SHEET_SIDE` a side (refused under :data:`MIN_TILE`).
        columns: tiles a row.
        alpha: opacity of the map at the top of the scale, in [0, 1].
        title: text for the band above the grid (None: no band).

    Returns:
        A ``PIL.Image.Image`` (RGB).

    Raises:
        SheetError: no regions, a bad ``tile``/``columns``/``alpha``, or more regions than fit.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not 0.0 <= float(alpha) <= 1.0:
        raise SheetError(f"a zoom sheet's alpha must lie in [0, 1], got {alpha!r}")
    boxes = np.asarray(record.region_boxes, dtype=np.float64).reshape(-1, 4)
    layout = zoom_sheet_layout(len(boxes), tile=tile, columns=columns, title=bool(title))
    side = layout.tile
    sheet = Image.new("RGB", (layout.width, layout.height), _WHITE)
    draw = ImageDraw.Draw(sheet)
    caption_font = ImageFont.load_default(size=11)
    for r, (x, y, w, h) in enumerate(boxes):
        image = _blend_map(Image.fromarray(region_tile(slide, (x, y, w, h), side)), record, r, float(alpha))
        _outline_patches(ImageDraw.Draw(image), np.asarray(record.patch_boxes[r], dtype=np.float64).reshape(-1, 4),
                         (x, y), (side / w, side / h))
        left, top = layout.tile_xy(r)
        sheet.paste(image, (left, top))
        stage1 = float(record.region_probability[r]) * int(record.stage1_cells)
        caption = Image.new("RGB", (side, CAPTION_BAND), _WHITE)  # clipped to its tile's width
        ImageDraw.Draw(caption).text((0, 1), f"region {r + 1}  stage 1: {stage1:.1f}x uniform", fill=(0, 0, 0),
                                     font=caption_font)
        sheet.paste(caption, (left, top + side))
    if title:
        draw.text((GAP + 2, 5), title, fill=(0, 0, 0), font=ImageFont.load_default(size=16))
    draw_colorbar(draw, layout.width, layout.height)
    return sheet


def _outline_patches(draw, patches: np.ndarray, corner, scale) -> None:
    """Each patch box (level-0 xywh) as a cyan outline on its region's tile, inside the box's pixels."""
    (x, y), (sx, sy) = corner, scale
    for px, py, pw, ph in patches:
        x0, y0 = round((px - x) * sx), round((py - y) * sy)
        x1, y1 = max(x0, round((px + pw - x) * sx) - 1), max(y0, round((py + ph - y) * sy) - 1)
        draw.rectangle([x0, y0, x1, y1], outline=_CYAN, width=1)


def prediction_zoom_sheet(slide, zoom: Sequence[ZoomRecord], title: str | None = None, *, tile: int = 192):
    """The sheet ``ats-wsi predict`` writes for a zoom model: its first sampling's regions.

    The grid is about square (``max(4, ceil(sqrt(n1)))`` columns), so a few
    hundred regions keep full tiles; when even :data:`MIN_TILE` tiles would
    not fit, only the first regions that do are drawn and the title says so.

    Args:
        slide: the open slide.
        zoom: the prediction's records, one per sampling (``SlidePrediction.zoom``).
        title: what the overlay says (``SlidePrediction.title``), to which the sheet adds its own words.
        tile: side of a tile in pixels.

    Returns:
        A ``PIL.Image.Image`` (RGB): :func:`render_zoom_sheet`.
    """
    record = zoom[0]
    n1 = len(record.region_boxes)
    shown, too_many = n1, n1 + 1  # the most regions that fit: a bisection (more regions never fit better)
    if not _fits(n1, tile):
        shown, too_many = 1, n1
        while too_many - shown > 1:
            mid = (shown + too_many) // 2
            shown, too_many = (mid, too_many) if _fits(mid, tile) else (shown, mid)
    words = f"stage 2: the {n1} regions drawn" if shown == n1 else f"stage 2: regions 1-{shown} of {n1} drawn"
    words += f" (sampling 1 of {len(zoom)})" if len(zoom) > 1 else ""
    if shown < n1:
        record = type(record)(record.region_boxes[:shown], record.region_probability[:shown], record.stage1_cells,
                              record.zoom_attention[:shown], record.zoom_cell_size_xy, record.zoom_origin_xy[:shown],
                              record.patch_boxes[:shown], record.patch_probability[:shown])
    return render_zoom_sheet(slide, record, tile=tile, columns=_columns(shown),
                             title=f"{title}  |  {words}" if title else words)


def _columns(n: int) -> int:
    return max(4, math.isqrt(n - 1) + 1)  # ceil(sqrt(n))


def _fits(n: int, tile: int) -> bool:
    try:
        zoom_sheet_layout(n, tile=tile, columns=_columns(n), title=True)
    except SheetError:
        return False
    return True
