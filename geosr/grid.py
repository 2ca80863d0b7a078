"""Grids: the fine target grid, its exactly nested coarse twin, and how they are chosen.

A :class:`Grid` is a frozen value (CRS, affine transform, width, height). The fine grid
has square pixels of ``res_m`` metres in a projected CRS; its origin is snapped to a
multiple of the *coarse* pixel (``factor * res_m``), so two runs over neighbouring
areas line up pixel for pixel at both scales, and its extent is a whole number of
coarse cells. Every coarse cell therefore covers exactly ``factor x factor`` fine cells,
which is what makes aggregation, conservation and training pairs exact.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geosr.errors import GridError

log = logging.getLogger(__name__)

Bounds = tuple[float, float, float, float]  # (left, bottom, right, top)

MIN_FACTOR = 2
MAX_FACTOR = 64
MIN_RES_M = 1.0
MAX_RES_M = 100_000.0
MAX_PIXELS = 4_000_000_000  # a 63k x 63k fine grid; beyond that a typo is more likely
_EPS = 1e-6


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Attributes:
        crs: CRS as a string GDAL and pyproj accept (``EPSG:2056`` or WKT).
        transform: affine pixel-to-CRS transform (north-up: ``b == d == 0``, ``e < 0``).
        width: columns.
        height: rows.
    """

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> float:
        """Pixel size in CRS units (metres for geosr's grids)."""
        return float(self.transform.a)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> Bounds:
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height,
                left + self.transform.a * self.width, top)

    @property
    def rio_crs(self) -> CRS:
        return CRS.from_user_input(self.crs)

    def coarsen(self, factor: int) -> Grid:
        """The nested grid whose pixels are ``factor x factor`` blocks of this one."""
        if self.width % factor or self.height % factor:
            raise GridError(
                f"grid {self.width}x{self.height} px is not a whole number of "
                f"{factor}x{factor} blocks"
            )
        return Grid(self.crs, self.transform @ Affine.scale(factor), self.width // factor,
                    self.height // factor)

    def refine(self, factor: int) -> Grid:
        """The grid whose pixels split each of this grid's pixels into ``factor x factor``."""
        return Grid(self.crs, self.transform @ Affine.scale(1 / factor), self.width * factor,
                    self.height * factor)

    def subgrid(self, window: Window) -> Grid:
        """The grid covering ``window`` (row/col offsets may lie outside this grid)."""
        return Grid(self.crs, self.transform @ Affine.translation(window.col_off, window.row_off),
                    int(window.width), int(window.height))

    def same_as(self, other: Grid, tol: float = 1e-6) -> bool:
        """Same CRS, shape and transform (within ``tol`` of a pixel)."""
        if (self.width, self.height) != (other.width, other.height):
            return False
        if not self.rio_crs == other.rio_crs:
            return False
        return self.transform.almost_equals(other.transform, precision=tol * abs(self.res))

    def to_dict(self) -> dict:
        return {"crs": self.crs, "transform": list(self.transform)[:6], "width": self.width,
                "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        try:
            return cls(str(d["crs"]), Affine(*[float(v) for v in d["transform"][:6]]),
                       int(d["width"]), int(d["height"]))
        except (KeyError, TypeError, ValueError) as e:
            raise GridError(f"grid description {d!r} is invalid ({e}); expected keys "
                            "crs, transform (6 numbers), width, height") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Grid:
        return cls.from_dict(json.loads(text))


def crs_string(crs: CRS | str) -> str:
    """A compact, round-trippable CRS string: ``EPSG:nnnn`` when exact, else WKT."""
    crs = CRS.from_user_input(crs)
    if "lon_wrap" in (crs.to_proj4() or ""):
        return crs.to_wkt()  # EPSG:4326 would drop the wrap; GDAL's WKT keeps it
    epsg = crs.to_epsg(confidence_threshold=100)
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def check_res(res_m: float) -> float:
    """Validate a fine resolution in metres."""
    if not (isinstance(res_m, (int, float)) and math.isfinite(res_m)) or not (
        MIN_RES_M <= res_m <= MAX_RES_M
    ):
        raise GridError(f"--res {res_m!r} m is out of range; expected a resolution between "
                        f"{MIN_RES_M:g} and {MAX_RES_M:g} metres (e.g. --res 500)")
    return float(res_m)


def check_factor(factor: int | float) -> int:
    """Validate an integer coarse/fine factor in [2, 64]."""
    if isinstance(factor, float) and not factor.is_integer():
        raise GridError(f"--factor {factor!r} is not an integer; expected a whole number "
                        f"from {MIN_FACTOR} to {MAX_FACTOR}")
    if not MIN_FACTOR <= int(factor) <= MAX_FACTOR:
        raise GridError(f"--factor {factor!r} is out of range; expected a whole number from "
                        f"{MIN_FACTOR} to {MAX_FACTOR} (e.g. 20 for 10 km -> 500 m)")
    return int(factor)


def choose_crs(src_crs: CRS | str, src_bounds: Bounds, user_crs: str | None = None) -> str:
    """Pick the fine grid's projected CRS.

    ``user_crs`` wins (it must be projected, in metres); else the source's CRS if it is
    projected in metres; else the UTM zone of the data's centre (a local
    Lambert azimuthal equal-area CRS above 84°N / below 80°S where UTM is undefined).

    Args:
        src_crs: CRS of the reference input.
        src_bounds: reference input bounds in ``src_crs`` units.
        user_crs: the ``--crs`` option, if given.
    """
    if user_crs is not None:
        try:
            crs = CRS.from_user_input(user_crs)
        except Exception as e:
            raise GridError(f"--crs {user_crs!r} is not a CRS GDAL understands ({e}); "
                            "expected e.g. EPSG:3035 or a WKT/PROJ string") from e
        if not crs.is_projected:
            raise GridError(f"--crs {user_crs!r} is geographic; expected a projected CRS in "
                            "metres (e.g. a UTM zone or EPSG:3035)")
        if not in_metres(crs):
            raise GridError(f"--crs {user_crs!r} does not use metres; expected a projected "
                            "CRS in metres")
        return crs_string(crs)
    src = CRS.from_user_input(src_crs)
    if src.is_projected and in_metres(src):
        return crs_string(src)
    if src.is_geographic:  # 0..360 and antimeridian-crossing extents stay in one piece
        lon_lat = src_bounds
    else:
        lon_lat = transform_bounds(src, "EPSG:4326", *src_bounds, densify_pts=21)
    lon = ((lon_lat[0] + lon_lat[2]) / 2 + 180.0) % 360.0 - 180.0
    lat = (lon_lat[1] + lon_lat[3]) / 2
    if -80 <= lat <= 84:
        infos = query_utm_crs_info(
            datum_name="WGS 84",
            area_of_interest=AreaOfInterest(lon, lat, lon, lat),
        )
        if infos:
            code = f"{infos[0].auth_name}:{infos[0].code}"
            log.info("input CRS is geographic; using %s for the fine grid", code)
            return code
    laea = ProjCRS.from_proj4(f"+proj=laea +lat_0={lat:.4f} +lon_0={lon:.4f} +datum=WGS84 +units=m")
    log.info("input CRS is geographic; using a local equal-area CRS for the fine grid")
    return laea.to_wkt()


def in_metres(crs: CRS) -> bool:
    try:
        units = (crs.linear_units or "").lower()
    except Exception:  # pragma: no cover - exotic CRS
        return False
    return units in ("metre", "meter", "m", "metres", "meters")


def footprint(src_crs: CRS | str, src_bounds: Bounds, dst_crs: str) -> Bounds:
    """Bounds of a source footprint in ``dst_crs`` (densified edges, so curved edges fit)."""
    try:
        return tuple(transform_bounds(CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs),
                                      *src_bounds, densify_pts=21))
    except Exception as e:
        raise GridError(
            f"cannot transform bounds {src_bounds} from {src_crs} to {dst_crs}: {e}"
        ) from e


def native_cell_m(src_crs: CRS | str, src_bounds: Bounds, width: int, height: int,
                  dst_crs: str) -> float:
    """Mean native cell size of a raster, in metres of ``dst_crs`` (area-equivalent square)."""
    left, bottom, right, top = footprint(src_crs, src_bounds, dst_crs)
    return math.sqrt(abs((right - left) * (top - bottom)) / max(width * height, 1))


def derive_factor(native_m: float, res_m: float) -> int:
    """Integer factor nearest to the native coarse cell size over the fine resolution."""
    raw = native_m / res_m
    factor = max(1, round(raw))
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise GridError(
            f"coarse cell of {native_m:.0f} m at --res {res_m:g} m gives factor {raw:.1f}; "
            f"expected {MIN_FACTOR}..{MAX_FACTOR}: pass --factor or a different --res")
    if abs(raw - factor) / raw > 0.1:
        log.warning("coarse cell %.0f m / res %.0f m = %.2f, rounded to factor %d", native_m,
                    res_m, raw, factor)
    return factor


def snap_grid(bounds: Bounds, *, crs: str, res_m: float, factor: int) -> Grid:
    """The fine grid covering ``bounds``, snapped outward to whole coarse cells.

    The origin is a multiple of ``factor * res_m`` in ``crs`` coordinates (like
    ``gdalwarp -tap`` at the coarse scale), so independent runs line up at both scales.

    Args:
        bounds: area to cover, in ``crs`` units (metres).
        crs: projected CRS of the grid.
        res_m: fine pixel size in metres.
        factor: coarse pixel = ``factor * res_m``.
    """
    res_m = check_res(res_m)
    factor = check_factor(factor)
    left, bottom, right, top = bounds
    if not all(math.isfinite(v) for v in bounds) or right <= left or top <= bottom:
        raise GridError(f"bounds {bounds} are empty or invalid; expected left < right and "
                        "bottom < top")
    cell = res_m * factor
    left = math.floor(left / cell + _EPS) * cell
    bottom = math.floor(bottom / cell + _EPS) * cell
    right = math.ceil(right / cell - _EPS) * cell
    top = math.ceil(top / cell - _EPS) * cell
    ncx = max(1, round((right - left) / cell))
    ncy = max(1, round((top - bottom) / cell))
    width, height = ncx * factor, ncy * factor
    if width * height > MAX_PIXELS:
        raise GridError(f"--res {res_m:g} m over {right - left:.0f} x {top - bottom:.0f} m gives "
                        f"a {width} x {height} px grid (> {MAX_PIXELS:.0e} px); expected a "
                        "coarser --res or smaller --bounds")
    return Grid(crs, Affine(res_m, 0.0, left, 0.0, -res_m, top), width, height)


def intersect(a: Bounds, b: Bounds) -> Bounds | None:
    """Intersection of two bounds, or None when they do not overlap."""
    left, bottom = max(a[0], b[0]), max(a[1], b[1])
    right, top = min(a[2], b[2]), min(a[3], b[3])
    if right <= left or top <= bottom:
        return None
    return (left, bottom, right, top)


def overlap_fraction(area: Bounds, other: Bounds) -> float:
    """Fraction of ``area`` covered by ``other`` (bounding-box areas, same CRS)."""
    inter = intersect(area, other)
    if inter is None:
        return 0.0
    total = (area[2] - area[0]) * (area[3] - area[1])
    return ((inter[2] - inter[0]) * (inter[3] - inter[1])) / total if total > 0 else 0.0
