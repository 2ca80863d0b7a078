"""Alignment rules shared by ``prepare`` and ``downscale``: grid planning, resampling
choice, coverage checks, block means and running statistics.

Both verbs put their inputs on the same grids with the same rules, so a model trained
on a prepared dataset sees identical inputs at inference time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geosr.arrays import block_mean  # noqa: F401 - still importable from here
from geosr.dataset.manifest import LayerStats
from geosr.errors import GridError
from geosr.grid import (
    MAX_FACTOR,
    MIN_FACTOR,
    Bounds,
    Grid,
    check_factor,
    check_res,
    choose_crs,
    crs_string,
    derive_factor,
    footprint,
    in_metres,
    intersect,
    native_cell_m,
    overlap_fraction,
    snap_grid,
)
from geosr.io.read import RasterInfo

log = logging.getLogger(__name__)

_EPS = 1e-6  # of a cell: edges closer than this to a cell edge are on it


def plan_grids(ref: RasterInfo, *, res_m: float = 500.0, factor: int | None = None,
               crs: str | None = None, bounds: Bounds | None = None,
               ref_is_coarse: bool = True, aux: Sequence[RasterInfo] = (),
               clip_to_aux: bool = False, factor_from: str = "--factor") -> tuple[Grid, Grid]:
    """Plan the fine grid and its coarse twin around a reference raster.

    A coarse input whose own grid can be the coarse grid keeps it (:func:`native_coarse`):
    its cells are the coarse cells, so no coarse value is resampled and conservation holds
    against the user's own cells. Otherwise the coarse grid is snapped to multiples of
    the coarse cell in the grid CRS (:func:`geosr.grid.snap_grid`) and the input is
    resampled onto it, area-weighted; a warning says so and why.

    Args:
        ref: the reference raster (the coarse input, or the fine target without one).
        res_m: fine resolution in metres.
        factor: coarse/fine ratio; derived from ``ref``'s native cell size when None
            and ``ref_is_coarse``.
        crs: user CRS for the grids (projected, metres); default from ``ref``, else from
            the first projected ``aux``.
        bounds: (left, bottom, right, top) in the grid CRS to restrict the area.
        ref_is_coarse: whether ``ref`` is a coarse input (else a fine target).
        aux: aux rasters: a projected one gives the CRS for a geographic ``ref``.
        clip_to_aux: limit the area to where every aux covers ``ref`` (with a warning
            when that drops part of ``ref``).
        factor_from: what fixed ``factor`` (``--factor`` or a model), for messages.

    Returns:
        (fine grid, coarse grid).
    """
    res_m = check_res(res_m)
    if factor is not None:
        factor = check_factor(factor)
    dst_crs = grid_crs(ref, aux, crs)
    area = footprint(ref.crs, ref.bounds, dst_crs)
    if bounds is not None:
        left, bottom, right, top = bounds
        if not all(math.isfinite(v) for v in bounds) or left >= right or bottom >= top:
            raise GridError(f"--bounds {tuple(bounds)}: expected four finite numbers LEFT "
                            "BOTTOM RIGHT TOP with left < right and bottom < top, in the grid "
                            "CRS")
        clipped = intersect(area, tuple(bounds))
        if clipped is None:
            raise GridError(f"--bounds {tuple(bounds)} do not overlap {ref.path} (its footprint "
                            f"in {dst_crs} is {tuple(round(v) for v in area)}); expected bounds "
                            "in the grid CRS that overlap the input")
        area = clipped
    if clip_to_aux:
        area = _clip_to_aux(ref, area, aux, dst_crs)
    native = native_coarse(ref, dst_crs, res_m) if ref_is_coarse else None
    reason = _why_resampled(ref, dst_crs, res_m) if ref_is_coarse and native is None else ""
    if native is not None and factor is not None and native[1] != factor:
        reason = (f"its cells of {native[1] * res_m:g} m differ from {factor_from} "
                  f"{factor} x {res_m:g} m = {factor * res_m:g} m")
        native = None
    if native is not None:
        coarse = _clip_native(native[0], area)
        return coarse.refine(native[1]), coarse
    if factor is None:
        if not ref_is_coarse:
            raise GridError("--factor is required when no coarse input is given (the coarse "
                            "grid is then made from the target); e.g. --factor 20")
        factor = derive_factor(native_cell_m(ref.crs, ref.bounds, ref.width, ref.height, dst_crs),
                               res_m)
    factor = check_factor(factor)
    if reason:
        log.warning("COARSE %s: %s; it is resampled (area-weighted) onto %g m cells in %s",
                    ref.path, reason, factor * res_m, _crs_label(dst_crs))
    fine = snap_grid(area, crs=dst_crs, res_m=res_m, factor=factor)
    return fine, fine.coarsen(factor)


def grid_crs(ref: RasterInfo, aux: Sequence[RasterInfo], user_crs: str | None) -> str:
    """``--crs``; else ``ref``'s if projected; else a projected aux's; else a local UTM."""
    if user_crs is not None:
        crs = choose_crs(ref.crs, ref.bounds, user_crs)
        _warn_if_far(ref, crs, user_crs)
        return crs
    if user_crs is None and not CRS.from_user_input(ref.crs).is_projected:
        for a in aux:
            acrs = CRS.from_user_input(a.crs)
            if acrs.is_projected and in_metres(acrs):
                log.info("%s is geographic; the grid takes the CRS of --aux %s (%s)", ref.path,
                         a.path, _crs_label(a.crs))
                return choose_crs(a.crs, a.bounds)
    return choose_crs(ref.crs, ref.bounds, user_crs)


_WARNED_FAR: set[tuple[str, str]] = set()


def _warn_if_far(ref: RasterInfo, crs: str, option: str) -> None:
    """One warning when the data lie outside ``--crs``'s area of use (e.g. UTM zone 1 for
    data at 9 deg E): such a grid distorts distances and areas badly."""
    from pyproj import CRS as ProjCRS

    area = ProjCRS.from_user_input(crs).area_of_use
    if area is None:
        return
    lon0, lat0, lon1, lat1 = transform_bounds(CRS.from_user_input(ref.crs), "EPSG:4326",
                                              *ref.bounds, densify_pts=21)
    lon, lat = (lon0 + lon1) / 2, (lat0 + lat1) / 2
    w, s, e, n = area.west, area.south, area.east, area.north
    inside_lon = (w <= lon <= e) if w <= e else (lon >= w or lon <= e)
    margin = 2.0  # degrees: a little outside a zone is ordinary practice
    near_lon = inside_lon or min(abs(lon - w), abs(lon - e), 360 - abs(lon - w),
                                 360 - abs(lon - e)) <= margin
    key = (ref.path, option)
    if (not near_lon or not (s - margin <= lat <= n + margin)) and key not in _WARNED_FAR:
        _WARNED_FAR.add(key)
        log.warning("--crs %s is meant for %.0f..%.0f E, %.0f..%.0f N, but %s lies at %.1f E, "
                    "%.1f N: distances and areas will be distorted; expected a CRS for the "
                    "data's area (or omit --crs)", option, w, e, s, n, ref.path, lon, lat)


def _crs_label(crs: str) -> str:
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else (c.name or "a custom CRS")


def native_coarse(ref: RasterInfo, dst_crs: str, res_m: float) -> tuple[Grid, int] | None:
    """The input's own grid as the coarse grid, and its factor, when it can be one.

    That is when the input is in the grid CRS, not rotated (north-up or south-up), with
    square cells that are a whole multiple (to 1e-6) of ``res_m``, from 2 to 64 times.
    The grid is north-up, on the input's cell edges; its cell is exactly
    ``factor * res_m`` (a file's 11999.99999995 m is 12 km).
    """
    if ref.transform is None or ref.rotated:
        return None
    if CRS.from_user_input(ref.crs) != CRS.from_user_input(dst_crs):
        return None
    cx, cy = ref.res
    if not math.isclose(cx, cy, rel_tol=1e-6):
        return None
    k = cx / res_m
    factor = round(k)
    if not MIN_FACTOR <= factor <= MAX_FACTOR or abs(k - factor) > 1e-6 * k:
        return None
    left, _, _, top = ref.bounds
    cell = factor * res_m
    grid = Grid(crs_string(dst_crs), Affine(cell, 0.0, left, 0.0, -cell, top), ref.width,
                ref.height)
    return grid, factor


def _why_resampled(ref: RasterInfo, dst_crs: str, res_m: float) -> str:
    """Why a coarse input cannot keep its own grid ('' when it can)."""
    src = CRS.from_user_input(ref.crs)
    if src.is_geographic:
        return "its grid is in longitude/latitude"
    if src != CRS.from_user_input(dst_crs):
        return f"its CRS differs from the grid's ({_crs_label(dst_crs)})"
    if ref.rotated:
        return "its grid is rotated"
    if not math.isclose(ref.res[0], ref.res[1], rel_tol=1e-6):
        return f"its cells are not square ({ref.res[0]:g} x {ref.res[1]:g} m)"
    return (f"its {ref.res[0]:g} m cells are not a whole multiple (2-64) of --res "
            f"{res_m:g} m")


def _clip_native(grid: Grid, area: Bounds) -> Grid:
    """The whole cells of ``grid`` that meet ``area`` (same CRS)."""
    left, bottom, right, top = grid.bounds
    cell = grid.res
    c0 = max(0, math.floor((area[0] - left) / cell + _EPS))
    c1 = min(grid.width, math.ceil((area[2] - left) / cell - _EPS))
    r0 = max(0, math.floor((top - area[3]) / cell + _EPS))
    r1 = min(grid.height, math.ceil((top - area[1]) / cell - _EPS))
    if c1 <= c0 or r1 <= r0:
        raise GridError(f"the area {tuple(round(v) for v in area)} holds no whole coarse cell "
                        "of the input; expected a larger area")
    return grid.subgrid(Window(c0, r0, c1 - c0, r1 - r0))


def _clip_to_aux(ref: RasterInfo, area: Bounds, aux: Sequence[RasterInfo], crs: str) -> Bounds:
    """``area`` limited to the aux footprints, with a warning when that drops much of it."""
    clipped = area
    for a in aux:
        inter = intersect(clipped, footprint(a.crs, a.bounds, crs))
        if inter is None:
            return area  # no overlap: check_coverage names the layer
        clipped = inter
    kept = overlap_fraction(area, clipped)
    if kept < 0.99:
        names = " and ".join(a.path for a in aux
                             if overlap_fraction(area, footprint(a.crs, a.bounds, crs)) < 0.99)
        log.warning("--aux %s covers %.0f%% of COARSE %s; the output covers only where both "
                    "have data (pass --bounds to choose the area)", names, 100 * kept, ref.path)
    return clipped


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
    if not info.north_up or CRS.from_user_input(info.crs) != grid.rio_crs:
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
