"""Tile plans, blend weights and row-by-row stitching for windowed inference.

A fine grid of ``height x width`` pixels is cut into *core* tiles whose edges lie on
coarse-cell boundaries (multiples of ``factor``). Each tile is predicted on its core
plus ``overlap_px`` pixels of context on every side (clipped to the grid). Why:
a prediction near a window edge lacks context (an interpolation kernel, a network's
receptive field), so each tile reaches past its core and neighbours overlap.

Blending: along each axis a raised-cosine ramp ``r(t) = (1 + sin(pi t / 2)) / 2``
(``t`` in [-1, 1]) of half-width ``overlap_px / 2`` is centred on every interior core
border. Since ``r(t) + r(-t) = 1`` and the ramps at the two ends of a core do not
overlap (every core is at least ``overlap_px`` long), the weights of all tiles sum to 1
at every pixel, and the 2-D weight (the product of the two 1-D ones) does too. The
outer ``overlap_px / 2`` of every tile, where edge effects live, gets weight 0; for a
method whose support is within that margin, the blended result is exactly the
whole-raster result whatever the tile size.

Coordinates here are fine pixels on the target grid; arrays are (band, row, col).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geosr.errors import InputError


@dataclass(frozen=True)
class Span:
    """A 1-D extent ``[start, stop)`` in fine pixels."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of ``n`` fine pixels is cut: core edges, read spans, blend spans.

    Attributes:
        n: axis length in fine pixels (a multiple of ``factor``).
        factor: coarse cell size in fine pixels.
        edges: core borders ``(0, e1, ..., n)``, multiples of ``factor``.
        overlap_px: context read on each side of a core (a multiple of ``factor``).
    """

    n: int
    factor: int
    edges: tuple[int, ...]
    overlap_px: int

    @property
    def count(self) -> int:
        return len(self.edges) - 1

    @property
    def ramp_px(self) -> float:
        """Half-width of the blend ramp around an interior core border."""
        return self.overlap_px / 2

    def core(self, i: int) -> Span:
        return Span(self.edges[i], self.edges[i + 1])

    def read(self, i: int) -> Span:
        """Core ``i`` plus ``overlap_px`` on each side, clipped to the axis."""
        c = self.core(i)
        return Span(max(0, c.start - self.overlap_px), min(self.n, c.stop + self.overlap_px))

    def blend(self, i: int) -> Span:
        """Where tile ``i`` has a non-zero weight (inside :meth:`read`)."""
        c = self.core(i)
        reach = math.ceil(self.ramp_px + 0.5) - 1  # pixel centres strictly inside the ramp
        return Span(max(0, c.start - reach), min(self.n, c.stop + reach))

    def weights(self, i: int) -> np.ndarray:
        """1-D weights of tile ``i`` over :meth:`blend` (float64, in (0, 1])."""
        span = self.blend(i)
        centre = np.arange(span.start, span.stop, dtype=np.float64) + 0.5
        w = np.ones(span.size, dtype=np.float64)
        rho = self.ramp_px
        c = self.core(i)
        if rho > 0:
            if c.start > 0:
                w *= ramp((centre - c.start) / rho)
            if c.stop < self.n:
                w *= ramp((c.stop - centre) / rho)
        else:  # no overlap: hard borders, each pixel belongs to its core only
            w[(centre < c.start) | (centre > c.stop)] = 0.0
        return w


def ramp(t: np.ndarray) -> np.ndarray:
    """Raised-cosine step from 0 (t <= -1) to 1 (t >= 1), with ``ramp(t) + ramp(-t) = 1``."""
    t = np.clip(t, -1.0, 1.0)
    return 0.5 + 0.5 * np.sin(0.5 * np.pi * t)


def core_edges(n_cells: int, tile_cells: int, overlap_cells: int) -> tuple[int, ...]:
    """Core borders along an axis of ``n_cells`` coarse cells, in coarse cells.

    Cores are ``tile_cells`` long; a last remainder shorter than ``overlap_cells`` is
    merged into the previous core so that every core can hold both of its ramps.
    """
    if n_cells <= 0:
        return (0,)
    edges = list(range(0, n_cells, tile_cells)) + [n_cells]
    if len(edges) > 2 and edges[-1] - edges[-2] < max(overlap_cells, 1):
        del edges[-2]
    return tuple(edges)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan` (fine-pixel windows on the target grid).

    Attributes:
        row, col: tile indices.
        core: the pixels this tile is responsible for (aligned to coarse cells).
        read: core plus overlap, clipped to the grid (aligned to coarse cells); the
            window to read and predict.
        blend: where the tile's blend weight is non-zero (inside ``read``).
    """

    row: int
    col: int
    core: Window
    read: Window
    blend: Window


@dataclass(frozen=True)
class TilePlan:
    """Overlapping tiles covering a fine grid; see the module docstring.

    Attributes:
        height, width: fine grid size in pixels (multiples of ``factor``).
        factor: fine pixels per coarse cell.
        tile_px: core size in fine pixels (a multiple of ``factor``; edge cores may be
            up to ``overlap_px`` longer).
        overlap_px: context on each side of a core, in fine pixels (a multiple of ``factor``).
    """

    height: int
    width: int
    factor: int
    tile_px: int
    overlap_px: int
    rows: AxisPlan
    cols: AxisPlan

    def __len__(self) -> int:
        return self.rows.count * self.cols.count

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile cols)."""
        return (self.rows.count, self.cols.count)

    def tile(self, i: int, j: int) -> Tile:
        rc, cc = self.rows.core(i), self.cols.core(j)
        rr, cr = self.rows.read(i), self.cols.read(j)
        rb, cb = self.rows.blend(i), self.cols.blend(j)
        return Tile(
            row=i, col=j,
            core=Window(cc.start, rc.start, cc.size, rc.size),
            read=Window(cr.start, rr.start, cr.size, rr.size),
            blend=Window(cb.start, rb.start, cb.size, rb.size),
        )

    def tiles(self) -> Iterator[Tile]:
        """Row-major order."""
        for i in range(self.rows.count):
            for j in range(self.cols.count):
                yield self.tile(i, j)

    def row_tiles(self, i: int) -> list[Tile]:
        return [self.tile(i, j) for j in range(self.cols.count)]

    def coarse(self, window: Window) -> Window:
        """A coarse-aligned fine window expressed in coarse cells."""
        f = self.factor
        return Window(int(window.col_off) // f, int(window.row_off) // f, int(window.width) // f,
                      int(window.height) // f)

    def weights(self, tile: Tile) -> np.ndarray:
        """2-D blend weights of ``tile`` over ``tile.blend`` (float32)."""
        wy = self.rows.weights(tile.row)
        wx = self.cols.weights(tile.col)
        return np.outer(wy, wx).astype(np.float32)


def plan_tiles(height: int, width: int, *, factor: int, tile_px: int, overlap_px: int) -> TilePlan:
    """Plan overlapping tiles over a ``height x width`` fine grid.

    Args:
        height, width: fine grid size in pixels; multiples of ``factor``.
        factor: fine pixels per coarse cell.
        tile_px: requested core size in fine pixels; rounded to whole coarse cells.
        overlap_px: requested context per side in fine pixels; rounded up to whole
            coarse cells. Must not exceed ``tile_px``.

    Raises:
        InputError: ``tile_px < overlap_px``, or non-positive sizes.
    """
    if tile_px <= 0:
        raise InputError(f"--tile {tile_px}: expected a positive tile size in pixels (e.g. 512)")
    if overlap_px < 0:
        raise InputError(f"--overlap {overlap_px}: expected zero or a positive number of pixels")
    if tile_px < overlap_px:
        raise InputError(f"--tile {tile_px} is smaller than --overlap {overlap_px}; expected a "
                         f"tile of at least the overlap (e.g. --tile {max(512, 4 * overlap_px)})")
    if height % factor or width % factor:
        raise ValueError(f"grid {width}x{height} is not a whole number of {factor}-px cells")
    overlap_c = math.ceil(overlap_px / factor)
    tile_c = max(1, overlap_c, round(tile_px / factor))
    rows = AxisPlan(height, factor, tuple(e * factor for e in
                                          core_edges(height // factor, tile_c, overlap_c)),
                    overlap_c * factor)
    cols = AxisPlan(width, factor, tuple(e * factor for e in
                                         core_edges(width // factor, tile_c, overlap_c)),
                    overlap_c * factor)
    return TilePlan(height, width, factor, tile_c * factor, overlap_c * factor, rows, cols)


class RowStitcher:
    """Accumulates weighted tile predictions one tile row at a time.

    Tiles of tile row ``i`` are added with :meth:`add`; :meth:`finish_row` then returns
    the rows of the grid that no later tile touches, as ``(row_off, array)`` with
    ``row_off`` and the row count multiples of ``factor`` (whole coarse rows, so a
    per-coarse-cell correction can be applied before writing). The array is a view into
    the stitcher's buffer, valid (and writable) until the next :meth:`add` or
    :meth:`finish_row`: no full-width copy is made. Memory: one buffer of
    ``bands x (tile + overlap + 3 x factor) x width`` float32.

    A pixel is NaN when any tile with a non-zero weight predicts NaN there.
    """

    def __init__(self, plan: TilePlan, bands: int):
        self.plan = plan
        self.bands = bands
        rows = plan.rows
        tallest = max(rows.blend(i).size for i in range(rows.count))
        self._buf = np.zeros((bands, tallest + 2 * plan.factor, plan.width), dtype=np.float32)
        self._top = 0  # grid row of buffer row 0
        self._row = 0  # next tile row expected
        self._handed = 0  # rows handed out by finish_row, dropped on the next call

    def _drop_handed(self) -> None:
        n = self._handed
        if n:
            keep = self._buf.shape[1] - n
            self._buf[:, :keep] = self._buf[:, n:]
            self._buf[:, keep:] = 0.0
            self._top += n
            self._handed = 0

    def add(self, tile: Tile, pred: np.ndarray) -> None:
        """Add ``pred`` (``(bands, read rows, read cols)``) of ``tile`` with its weights."""
        if tile.row != self._row:
            raise ValueError(f"tile row {tile.row} added while stitching row {self._row}")
        self._drop_handed()
        w = self.plan.weights(tile)
        r0 = int(tile.blend.row_off - tile.read.row_off)
        c0 = int(tile.blend.col_off - tile.read.col_off)
        h, wd = w.shape
        b0 = int(tile.blend.row_off) - self._top
        cb = int(tile.blend.col_off)
        target = self._buf[:, b0:b0 + h, cb:cb + wd]
        for k in range(self.bands):  # per band: no (bands x h x w) temporary
            target[k] += pred[k, r0:r0 + h, c0:c0 + wd] * w

    def finish_row(self) -> tuple[int, np.ndarray] | None:
        """Close the current tile row; return the completed grid rows (a view), if any."""
        self._drop_handed()
        i = self._row
        self._row += 1
        rows = self.plan.rows
        f = self.plan.factor
        if i + 1 < rows.count:
            limit = (rows.blend(i + 1).start // f) * f
        else:
            limit = self.plan.height
        n = limit - self._top
        if n <= 0:
            return None
        self._handed = n
        return self._top, self._buf[:, :n]
