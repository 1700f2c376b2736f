"""Tiles: render and JPEG-encode any tile of any level of one slide from its layout and textures.

Every tile is first classified from the layout grid: pure background (one
pre-encoded tile, reused), pure interior of one benign type (a slice of the
periodic texture, encoded once and cached), or mixed (tissue or type border,
spot), which is rendered with vectorised numpy and encoded.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ._layout import _BENIGN, _GRID, _Layout, _Spot
from ._stain import _SlideTextures

_TYPE_RAMP = 0.015  # logit difference over which two benign types blend
_TYPE_NOISE = (0.02, -0.02, 0.0)  # fine noise added to each type's logit: ragged type borders
_CACHE_TILES = 1024  # encoded interior tiles kept per slide


def _left_node(coords, n_nodes: int):
    """Index of the grid node left of (or at) each level-0 coordinate, clamped to 0 .. n_nodes - 2."""
    return np.clip(np.floor(np.asarray(coords, np.float64) / _GRID), 0, n_nodes - 2).astype(np.intp)


def _node_span(first: float, last: float, n_nodes: int) -> tuple[int, int]:
    """First and last grid node used to interpolate level-0 coordinates first..last (increasing)."""
    return int(_left_node(first, n_nodes)), int(_left_node(last, n_nodes)) + 1


class _Bilinear:
    """Bilinear interpolation from grid nodes to the pixels of one tile, separable and BLAS-free.

    ys, xs: level-0 coordinates of the tile's pixel rows / cols (increasing);
    the grid has nodes every _GRID px; `rows`/`cols` are the node spans used.
    """

    def __init__(self, ys: np.ndarray, xs: np.ndarray, grid_shape: tuple[int, int]):
        self.iy, self.ty, y0, y1 = self._axis(ys, grid_shape[0])
        self.ix, self.tx, x0, x1 = self._axis(xs, grid_shape[1])
        self.rows, self.cols = slice(y0, y1 + 1), slice(x0, x1 + 1)

    @staticmethod
    def _axis(coords, n_nodes):
        i0 = _left_node(coords, n_nodes)
        t = np.clip(np.asarray(coords, np.float64) / _GRID - i0, 0, 1).astype(np.float32)
        lo, hi = int(i0[0]), int(i0[-1]) + 1
        return i0 - lo, t, lo, hi

    def __call__(self, grid: np.ndarray) -> np.ndarray:
        """Values float32 (len(ys), len(xs)) of `grid` (full node grid, rows x cols)."""
        sub = grid[self.rows, self.cols]
        along_x = sub[:, self.ix] * (1 - self.tx) + sub[:, self.ix + 1] * self.tx
        return along_x[self.iy] * (1 - self.ty)[:, None] + along_x[self.iy + 1] * self.ty[:, None]


def _range_reduce(grid: np.ndarray, spans_y, spans_x, reduce) -> np.ndarray:
    """reduce (np.min / np.max) of grid over the node span of every tile -> (tile rows, tile cols)."""
    by_col = np.stack([reduce(grid[:, a:b + 1], axis=1) for a, b in spans_x], axis=1)
    return np.stack([reduce(by_col[a:b + 1], axis=0) for a, b in spans_y], axis=0)


class _Renderer:
    """Renders and JPEG-encodes any tile of any level of one slide."""

    def __init__(self, rng, layout: _Layout, tile_size: int, downsample: int, n_levels: int, quality: int):
        self.layout = layout
        self.tile_size = tile_size
        self.downsample = downsample
        self.quality = int(quality)
        self.textures = _SlideTextures(rng, downsample, n_levels, tile_size, layout.scale)
        self.noise, self.background = self.textures.noise, self.textures.background
        self._background_tile = self._encode(np.broadcast_to(self.background, (tile_size, tile_size, 3)))
        self._cache: dict[tuple, bytes] = {}
        self._plans: dict[int, tuple] = {}

    # ---- per level: which tiles are background, plain interior of one type, or need rendering
    def _plan(self, level: int, cols: int, rows: int):
        if level not in self._plans:
            self._plans[level] = self._make_plan(level, cols, rows)
        return self._plans[level]

    def _make_plan(self, level: int, cols: int, rows: int):
        f, t = self.downsample**level, self.tile_size
        distance, logits = self.layout.distance, self.layout.logits
        n_rows, n_cols = distance.shape

        def spans(n_tiles, n_nodes):
            return [_node_span((i * t + 0.5) * f, ((i + 1) * t - 0.5) * f, n_nodes) for i in range(n_tiles)]

        span_y, span_x = spans(rows, n_rows), spans(cols, n_cols)
        edge = self.layout.tissue_ragged + max(self.layout.edge, f) / 2
        empty = _range_reduce(distance, span_y, span_x, np.max) < -edge
        full = _range_reduce(distance, span_y, span_x, np.min) > edge
        pure = np.full((rows, cols), -1, np.int8)
        for a in range(len(_BENIGN)):
            margin = np.full((rows, cols), np.inf, np.float32)
            for b in range(len(_BENIGN)):
                if b != a:
                    margin = np.minimum(margin, _range_reduce(logits[a] - logits[b], span_y, span_x, np.min))
            pure[margin >= _TYPE_RAMP + 2 * max(map(abs, _TYPE_NOISE))] = a
        touched = np.zeros((rows, cols), bool)
        reach = t * f
        for spot in self.layout.spots:
            x, y, w, h = spot.box
            touched[max(0, y // reach):(y + h) // reach + 1, max(0, x // reach):(x + w) // reach + 1] = True
        return empty, full & (pure >= 0) & ~touched, pure

    def encoded_tiles(self, level: int, width: int, height: int) -> Iterator[bytes]:
        """JPEG bytes of every tile of a level, row by row (what tifffile writes)."""
        t = self.tile_size
        cols, rows = -(-width // t), -(-height // t)
        empty, plain, pure = self._plan(level, cols, rows)
        for row in range(rows):
            for col in range(cols):
                if empty[row, col]:
                    yield self._background_tile
                elif plain[row, col]:
                    yield self._plain_tile(level, row, col, int(pure[row, col]))
                else:
                    yield self._encode(self.render(level, col, row, int(pure[row, col])))

    def _plain_tile(self, level: int, row: int, col: int, kind: int) -> bytes:
        t = self.tile_size
        texture = self.textures[_BENIGN[kind]]
        key = (level, kind, *texture.start(level, row * t, col * t))
        data = self._cache.get(key)
        if data is None:
            data = self._encode(texture.window(level, row * t, col * t, t, t))
            if len(self._cache) < _CACHE_TILES:
                self._cache[key] = data
        return data

    def _encode(self, tile: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=self.quality, colorspace="RGB",
                                       outcolorspace="YCBCR", subsampling=(2, 2))

    def render(self, level: int, col: int, row: int, kind: int = -1) -> np.ndarray:
        """Pixels uint8 (tile, tile, 3) of tile (col, row) at `level`, from the procedural model.

        kind: the benign type that covers the whole tile, if the plan knows one, else -1.
        """
        f, t = self.downsample**level, self.tile_size
        ys = (row * t + np.arange(t) + 0.5) * f  # level-0 centres of the tile's pixels, float64
        xs = (col * t + np.arange(t) + 0.5) * f
        interp = _Bilinear(ys, xs, self.layout.distance.shape)
        top, left = row * t, col * t
        noise = self.noise.window(level, top, left, t, t)
        edge = max(self.layout.edge, f)

        if kind >= 0:
            base = self.textures[_BENIGN[kind]].window(level, top, left, t, t).astype(np.float32)
        else:
            base = self._mix_types(level, top, left, interp, noise)

        for spot in self.layout.spots:
            self._add_spot(base, spot, level, top, left, ys, xs, noise, edge)

        ragged = self.layout.tissue_ragged
        if self.layout.distance[interp.rows, interp.cols].min() <= ragged + edge / 2:
            tissue = np.clip(0.5 + (interp(self.layout.distance) + ragged * noise) / edge, 0, 1)
            base = self.background + tissue[..., None] * (base - self.background)
        base += 0.5  # round: every value is a convex mix of uint8 values, so in [0.5, 255.5]
        return base.astype(np.uint8)

    def _mix_types(self, level, top, left, interp: "_Bilinear", noise) -> np.ndarray:
        """Blend of the benign textures float32 (t, t, 3) over a tile where the type changes.

        Weights: each type's score (logit + its share of the fine noise) ramps
        from 0 to 1 within _TYPE_RAMP of the best score; weights sum to 1.
        """
        t, ramp = self.tile_size, np.float32(_TYPE_RAMP)
        logits = self.layout.logits[:, interp.rows, interp.cols]
        bound = 2 * max(map(abs, _TYPE_NOISE))
        best_low = max(g.min() for g in logits)  # the winner scores at least this (minus noise) everywhere
        present = [a for a in range(len(_BENIGN)) if logits[a].max() + bound >= best_low - _TYPE_RAMP]
        window = [self.textures[_BENIGN[a]].window(level, top, left, t, t) for a in present]
        scores = [interp(self.layout.logits[a]) + np.float32(_TYPE_NOISE[a]) * noise for a in present]
        if len(present) == 1:
            return window[0].astype(np.float32)
        if len(present) == 2:  # the usual border: one blend
            u = np.clip((scores[0] - scores[1]) / ramp, -1, 1)
            w = (1 + np.minimum(u, 0)) / (2 - np.abs(u))  # weight of the first type
            base = window[1].astype(np.float32)
            base += w[..., None] * (window[0] - base)
            return base
        best = np.maximum.reduce(scores)
        weights = [np.clip(1 - (best - s) / ramp, 0, 1) for s in scores]
        total = sum(weights)
        base = np.zeros((t, t, 3), np.float32)
        for w, image in zip(weights, window):
            base += (w / total)[..., None] * image
        return base

    def _add_spot(self, base, spot: _Spot, level, top, left, ys, xs, noise, edge) -> None:
        """Blend the spot's texture into `base` (in place) where the tile's pixels fall inside it.

        top, left: the tile's first pixel at `level`; ys, xs: level-0 centres of its rows / cols.
        """
        x, y, w, h = spot.box
        rows = np.flatnonzero((ys >= y) & (ys < y + h))
        cols = np.flatnonzero((xs >= x) & (xs < x + w))
        if len(rows) == 0 or len(cols) == 0:
            return
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        dy = (ys[r0:r1] - spot.cy).astype(np.float32)[:, None]
        dx = (xs[c0:c1] - spot.cx).astype(np.float32)[None, :]
        inside = spot.radius(np.arctan2(dy, dx)) - np.hypot(dy, dx) + spot.ragged * noise[r0:r1, c0:c1]
        mask = np.clip(0.5 + inside / edge, 0, 1)[..., None]
        texture = self.textures[spot.kind].window(level, top + r0, left + c0, r1 - r0, c1 - c0)
        region = base[r0:r1, c0:c1]
        region += mask * (texture - region)

    def thumbnail(self, level: int, width: int, height: int, max_side: int) -> np.ndarray:
        """The whole slide rendered at `level` (<= 1024 px), box-reduced to at most `max_side` px."""
        f, t = self.downsample**level, self.tile_size
        w, h = max(1, width // f), max(1, height // f)
        image = np.empty((-(-h // t) * t, -(-w // t) * t, 3), np.uint8)
        for row in range(image.shape[0] // t):
            for col in range(image.shape[1] // t):
                image[row * t:(row + 1) * t, col * t:(col + 1) * t] = self.render(level, col, row)
        image = image[:h, :w]
        k = max(1, -(-max(w, h) // max_side))
        h2, w2 = max(1, h // k), max(1, w // k)
        return np.rint(image[:h2 * k, :w2 * k].reshape(h2, k, w2, k, 3).mean(axis=(1, 3))).astype(np.uint8)
