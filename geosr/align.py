"""Alignment rules shared by ``prepare`` and ``downscale``: grid planning, resampling
choice, coverage checks, block means and running statistics.

Both verbs put their inputs on the same grids with the same rules, so a model trained
on a prepared dataset sees identical inputs at inference time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr.errors import GridError
from geosr.grid import (
    Bounds,
    Grid,
    check_factor,
    check_res,
    choose_crs,
    derive_factor,
    footprint,
    intersect,
    native_cell_m,
    overlap_fraction,
    snap_grid,
)
from geosr.io import RasterInfo
from geosr.manifest import LayerStats

log = logging.getLogger(__name__)


def plan_grids(ref: RasterInfo, *, res_m: float = 500.0, factor: int | None = None,
               crs: str | None = None, bounds: Bounds | None = None,
               ref_is_coarse: bool = True) -> tuple[Grid, Grid]:
    """Plan the fine grid and its coarse twin around a reference raster.

    Args:
        ref: the reference raster (the coarse input, or the fine target without one).
        res_m: fine resolution in metres.
        factor: coarse/fine ratio; derived from ``ref``'s native cell size when None
            and ``ref_is_coarse``.
        crs: user CRS for the grids (projected, metres); default from ``ref``.
        bounds: (left, bottom, right, top) in the grid CRS to restrict the area.
        ref_is_coarse: whether ``ref`` is a coarse input (else a fine target).

    Returns:
        (fine grid, coarse grid).
    """
    res_m = check_res(res_m)
    dst_crs = choose_crs(ref.crs, ref.bounds, crs)
    area = footprint(ref.crs, ref.bounds, dst_crs)
    if factor is None:
        if not ref_is_coarse:
            raise GridError("--factor is required when no coarse input is given (the coarse "
                            "grid is then made from the target); e.g. --factor 20")
        factor = derive_factor(native_cell_m(ref.crs, ref.bounds, ref.width, ref.height, dst_crs),
                               res_m)
    factor = check_factor(factor)
    if bounds is not None:
        clipped = intersect(area, tuple(bounds))
        if clipped is None:
            raise GridError(f"--bounds {tuple(bounds)} do not overlap {ref.path} (its footprint "
                            f"in {dst_crs} is {tuple(round(v) for v in area)}); expected bounds "
                            "in the grid CRS that overlap the input")
        area = clipped
    fine = snap_grid(area, crs=dst_crs, res_m=res_m, factor=factor)
    return fine, fine.coarsen(factor)


def check_coverage(info: RasterInfo, grid: Grid, *, option: str,
                   area: Bounds | None = None) -> float:
    """Fraction of ``area`` (default: the grid) covered by ``info``'s footprint.

    No overlap is an input error; partial cover is a warning (cells outside are nodata).
    Pass the reference input's footprint as ``area`` so that the outward snapping of the
    grid to whole coarse cells does not count as missing cover.
    """
    fp = footprint(info.crs, info.bounds, grid.crs)
    frac = overlap_fraction(grid.bounds, fp)
    if frac > 0 and area is not None:
        inner = intersect(grid.bounds, area)
        frac = overlap_fraction(inner, fp) if inner else frac
    if frac <= 0.0:
        raise GridError(f"{option} {info.path}: does not overlap the grid (overlap 0%; raster "
                        f"footprint {tuple(round(v) for v in fp)} vs grid "
                        f"{tuple(round(v) for v in grid.bounds)} in {grid.crs}); expected "
                        "rasters over the same area")
    if frac < 0.99:
        log.warning("%s %s covers %.0f%% of the area; outside it that layer is nodata", option,
                    info.path, 100 * frac)
    return frac


def is_aligned(info: RasterInfo, grid: Grid) -> bool:
    """True when the source pixels coincide with the grid's (same CRS, res and phase)."""
    from rasterio.crs import CRS

    if CRS.from_user_input(info.crs) != grid.rio_crs:
        return False
    if not (math.isclose(info.res[0], grid.res, rel_tol=1e-9) and
            math.isclose(info.res[1], grid.res, rel_tol=1e-9)):
        return False
    dx = (info.bounds[0] - grid.bounds[0]) / grid.res
    dy = (info.bounds[3] - grid.bounds[3]) / grid.res
    return abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6


def resampling_for(info: RasterInfo, grid: Grid, *, categorical: bool = False,
                   coarse_input: bool = False) -> Resampling:
    """Resampling for a source onto ``grid``.

    Coarse inputs: area-weighted average (GDAL >= 3.1 weights by overlap area). Aligned
    sources: nearest (exact copy). Finer sources: average (continuous) or mode
    (categorical). Coarser sources: bilinear (continuous) or nearest (categorical).
    """
    if is_aligned(info, grid):
        return Resampling.nearest
    if coarse_input and not categorical:
        return Resampling.average
    src_m = native_cell_m(info.crs, info.bounds, info.width, info.height, grid.crs)
    finer = src_m < 0.75 * grid.res
    if categorical:
        return Resampling.mode if finer else Resampling.nearest
    return Resampling.average if finer else Resampling.bilinear


def iter_windows(grid: Grid, block_px: int) -> Iterator[Window]:
    """Row-major windows of at most ``block_px`` x ``block_px`` covering ``grid``."""
    for row in range(0, grid.height, block_px):
        for col in range(0, grid.width, block_px):
            yield Window(col, row, min(block_px, grid.width - col),
                         min(block_px, grid.height - row))


def block_mean(fine: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the valid (non-NaN) cells in each ``factor x factor`` block.

    Args:
        fine: array ``(..., H, W)`` with ``H`` and ``W`` multiples of ``factor``.

    Returns:
        ``(..., H // factor, W // factor)`` float32; NaN where a block has no valid cell.
    """
    *lead, h, w = fine.shape
    if h % factor or w % factor:
        raise ValueError(f"block_mean: shape {fine.shape} is not a multiple of factor {factor}")
    blocks = fine.reshape(*lead, h // factor, factor, w // factor, factor).astype(np.float64)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(-3, -1))
    count = valid.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)


class RunningStats:
    """Mean/std/min/max over the valid cells of many windows (float64, one pass)."""

    def __init__(self) -> None:
        self.n = 0
        self.total = 0
        self.s = 0.0
        self.ss = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def update(self, arr: np.ndarray) -> None:
        self.total += arr.size
        v = arr[np.isfinite(arr)].astype(np.float64)
        if v.size:
            self.n += v.size
            self.s += float(v.sum())
            self.ss += float((v * v).sum())
            self.lo = min(self.lo, float(v.min()))
            self.hi = max(self.hi, float(v.max()))

    def result(self) -> LayerStats:
        if self.n == 0:
            return LayerStats(mean=float("nan"), std=float("nan"), min=float("nan"),
                              max=float("nan"), count=0, valid_fraction=0.0)
        mean = self.s / self.n
        var = max(self.ss / self.n - mean * mean, 0.0)
        return LayerStats(mean=mean, std=math.sqrt(var), min=self.lo, max=self.hi, count=self.n,
                          valid_fraction=self.n / max(self.total, 1))
