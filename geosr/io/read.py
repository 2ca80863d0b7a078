"""The only module that opens paths: raster inspection, aligned windowed reads, writers.

Reads go through GDAL's warper (:class:`rasterio.vrt.WarpedVRT`) onto a target
:class:`~geosr.grid.Grid`, one window at a time, so memory follows the window size and
not the raster size. Values come back as float32 with NaN where the source is nodata,
masked or non-finite: nodata is a mask, never a number used in arithmetic.

Writers produce a temporary file next to the final one and move it into place only when
complete (:func:`atomic_path`, :func:`atomic_dir`), so an interrupted run never leaves a
half-written output under the final name.
"""


from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geosr.constraints import ValidRange, from_cf
from geosr.errors import (
    GridError,
    RasterReadError,
)
from geosr.grid import Bounds, Grid, crs_string

log = logging.getLogger(__name__)


_DATE_KEYS = ("DATE_TIME", "NETCDF_DIM_time", "NETCDF_DIM_valid_time", "time", "TIME", "date",
              "DATE")


_WARNED_LONLAT: set[str] = set()


def _assumed_lonlat(src: rasterio.DatasetReader) -> CRS | None:
    """CF NetCDF on a latitude/longitude grid without a grid_mapping means WGS 84 degrees."""
    if src.driver not in ("netCDF", "HDF5", "GRIB") or src.transform.is_identity:
        return None
    left, bottom, right, top = _north_up_bounds(src)
    if -180.5 <= left < right <= 360.5 and -90.5 <= bottom and top <= 90.5:
        if src.name not in _WARNED_LONLAT:  # readers reopen the file: say it once
            _WARNED_LONLAT.add(src.name)
            log.warning("%s declares no CRS but has a latitude/longitude grid; assuming "
                        "EPSG:4326", src.name)
        return CRS.from_epsg(4326)
    return None


def _north_up_bounds(src: rasterio.DatasetReader) -> Bounds:
    """(left, bottom, right, top) with left < right and bottom < top, whatever the raster's
    orientation (a south-up raster has a positive y pixel size and rasterio's bounds then
    have bottom > top)."""
    left, bottom, right, top = src.bounds
    return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def source_crs(src: rasterio.DatasetReader) -> CRS | None:
    """The CRS to read ``src`` in: its own, or WGS 84 for a lon/lat NetCDF without one.

    Geographic rasters whose longitudes reach 180 (0..360 grids, or a -180..180 file
    whose extent touches or crosses the antimeridian) get PROJ's ``+lon_wrap`` centred on the
    raster, so that the inverse transforms GDAL's warper makes from the grid back to the
    source land in the source's own longitude range instead of -180..180 (where such a
    raster has no pixels, or only its western half).
    """
    crs = src.crs if src.crs is not None else _assumed_lonlat(src)
    if crs is None or not crs.is_geographic:
        return crs
    left, _, right, _ = _north_up_bounds(src)
    step = abs(src.transform.a) + abs(src.transform.b)
    if left > -180.0 + step and right < 180.0 - step:  # clear of the antimeridian
        return crs
    centre = round((left + right) / 2.0, 6)
    return CRS.from_dict({**crs.to_dict(), "lon_wrap": centre})


GDAL_CACHE_MB = 128
"""GDAL's block cache defaults to 5% of RAM; a fixed size keeps peak memory flat."""


def gdal_env(**options) -> rasterio.Env:
    """GDAL settings for geosr's work: bounded block cache, multi-threaded codecs.

    The cache size is given in bytes: rasterio hands an integer ``GDAL_CACHEMAX`` to
    ``GDALSetCacheMax64`` as it is, so ``256`` meant a 256-byte cache (every block read
    decoded again for each scanline that touches it).
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20, **options)


@dataclass(frozen=True)
class RasterInfo:
    """What geosr needs to know about a source raster before reading it.

    Attributes:
        path: the path or GDAL dataset name as given.
        crs: CRS string (``EPSG:nnnn`` or WKT).
        bounds: (left, bottom, right, top) in ``crs`` units.
        width, height, count: size in pixels and bands.
        res: (x, y) pixel size in ``crs`` units.
        dtype: numpy dtype name of band 1.
        nodata: declared nodata value or None.
        units: per-band units ('' when unknown).
        dates: per-band date/time tag ('' when unknown).
        descriptions: per-band descriptions ('' when none).
        long_names: per-band CF ``long_name`` ('' when none).
        variable: the NetCDF variable's name ('' for other formats).
        transform: the source's own pixel-to-CRS transform.
        packed: whether bands carry a scale/offset (values are ``raw * scale + offset``).
        valid_range: band 1's CF ``valid_range`` (or ``valid_min``/``valid_max``) in
            unpacked values, else a geosr output's ``GEOSR_VALID_RANGE``; None when not
            declared.
    """

    path: str
    crs: str
    bounds: Bounds
    width: int
    height: int
    count: int
    res: tuple[float, float]
    dtype: str
    nodata: float | None
    units: tuple[str, ...] = field(default_factory=tuple)
    dates: tuple[str, ...] = field(default_factory=tuple)
    descriptions: tuple[str, ...] = field(default_factory=tuple)
    long_names: tuple[str, ...] = field(default_factory=tuple)
    variable: str = ""
    transform: rasterio.Affine | None = None
    packed: bool = False
    valid_range: ValidRange | None = None
    domain_shift: str = ""  # a geosr output's GEOSR_DOMAIN_SHIFT tag

    @property
    def north_up(self) -> bool:
        """Rows run north to south, without rotation: a plain windowed read then matches
        a north-up grid (south-up or rotated sources go through the warper)."""
        t = self.transform
        return t is None or (t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0)

    @property
    def rotated(self) -> bool:
        t = self.transform
        return t is not None and (t.b != 0 or t.d != 0)


def _reason(e: Exception) -> str:
    """First line of a GDAL error, or of its cause when rasterio only says "see previous"."""
    text = str(e).strip()
    if e.__cause__ is not None and (not text or "previous exception" in text):
        text = str(e.__cause__).strip() or text
    return text.splitlines()[0] if text else type(e).__name__


def _is_gdal_name(path: str) -> bool:
    return ":" in path and path.split(":", 1)[0].isupper() and not Path(path).exists()


_CONTAINER_DRIVERS = {".nc": "NETCDF", ".nc4": "NETCDF", ".cdf": "NETCDF", ".netcdf": "NETCDF",
                      ".h5": "HDF5", ".hdf5": "HDF5", ".he5": "HDF5"}


_SUBDATASET_RE = re.compile(r'^(NETCDF|HDF5):"?(.+?)"?:([^:"]+)$', re.IGNORECASE)


def gdal_name(path: str | os.PathLike) -> str:
    """The dataset name GDAL opens for a path a user gave.

    A variable of a NetCDF/HDF5 file may be given as ``file.nc:var`` (the documented
    form), as GDAL's ``NETCDF:"file.nc":var``, or as the lower-case ``netcdf:file.nc:var``
    that rasterio lists among a file's subdatasets; all become ``NETCDF:"file.nc":var``.
    Anything else is returned as given.
    """
    path = str(path)
    if Path(path).exists():
        return path
    m = _SUBDATASET_RE.match(path)
    if m:
        return f'{m.group(1).upper()}:"{m.group(2)}":{m.group(3)}'
    head, sep, var = path.rpartition(":")
    driver = _CONTAINER_DRIVERS.get(Path(head).suffix.lower()) if sep else None
    if driver and var and Path(head).is_file():
        return f'{driver}:"{head}":{var}'
    return path


def container_file(path: str | os.PathLike) -> str:
    """The file part of a path or GDAL subdataset name (``NETCDF:"f.nc":v`` -> ``f.nc``)."""
    name = gdal_name(path)
    m = _SUBDATASET_RE.match(name)
    return m.group(2) if m else name


def _variables(subdatasets: list[str]) -> list[str]:
    return [s.rsplit(":", 1)[-1] for s in subdatasets]


@contextlib.contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for reading, turning every failure into a one-line :class:`RasterReadError`.

    NetCDF/HDF5 variables may be named ``file.nc:var`` (see :func:`gdal_name`); a file
    that holds a single data variable opens as that variable.
    """
    path = str(path)
    name = gdal_name(path)
    file_part = container_file(name)
    if (_SUBDATASET_RE.match(name) or not _is_gdal_name(name)) and not Path(file_part).exists():
        raise RasterReadError(f"{file_part}: file not found; expected an existing raster file")
    if Path(name).is_dir():
        raise RasterReadError(f"{path}: is a folder; expected a raster file")
    try:
        with warnings.catch_warnings():  # a container has no geotransform: not news
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name)
    except RasterioIOError as e:
        reason = str(e).splitlines()[0] if str(e) else "unreadable"
        if _SUBDATASET_RE.match(name):
            with contextlib.suppress(RasterioError):
                with rasterio.open(file_part) as container:
                    found = _variables(list(container.subdatasets or []))
                if found:
                    raise RasterReadError(
                        f"{path}: no variable {name.rsplit(':', 1)[-1]!r} in {file_part}; "
                        f"expected one of: {', '.join(found)} (e.g. {file_part}:{found[0]})"
                    ) from e
        raise RasterReadError(f"{path}: not a readable raster ({reason}); expected a GeoTIFF, "
                              "NetCDF or other GDAL-readable raster") from e
    if src.count == 0 and list(src.subdatasets or []):
        subs = list(src.subdatasets)
        src.close()
        if len(subs) > 1:
            found = _variables(subs)
            shown = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
            raise RasterReadError(f"{path}: holds {len(subs)} variables ({shown}); expected "
                                  f"one, picked as FILE:VARIABLE, e.g. {path}:{found[0]}")
        src = rasterio.open(subs[0])
    try:
        yield src
    finally:
        src.close()


def raster_info(path: str | os.PathLike) -> RasterInfo:
    """Inspect a raster and check it is georeferenced and has bands.

    Values are described as the file means them: units from the band's unit type, a
    GeoTIFF ``UNIT`` tag or the CF ``units`` attribute; dates from CF time (decoded with
    its units and calendar), GRIB valid times or ``DATE_TIME`` tags, as ISO 8601 text.
    """
    path = str(path)
    with open_raster(path) as src:
        if src.count == 0:
            raise RasterReadError(f"{path}: has no raster bands; expected at least one band")
        crs_obj = source_crs(src)
        if crs_obj is None:
            raise GridError(f"{path}: has no CRS; expected a georeferenced raster (assign one "
                            "with gdal_edit.py -a_srs EPSG:xxxx)")
        if src.transform.is_identity or src.transform == rasterio.Affine.identity():
            raise GridError(f"{path}: has no geotransform; expected a georeferenced raster "
                            "with a pixel-to-map transform")
        if src.transform.b != 0 or src.transform.d != 0:
            log.info("%s is rotated; it will be warped onto a north-up grid", path)
        band_tags = [src.tags(b) for b in range(1, src.count + 1)]
        units = tuple((u or t.get("UNIT") or t.get("units")
                       or t.get("GRIB_UNIT", "").strip("[] ") or "").strip()
                      for u, t in zip(src.units or ("",) * src.count, band_tags, strict=True))
        units = tuple(_temperature_degree(u, t.get("long_name", "") or t.get("standard_name", ""),
                                          path) for u, t in zip(units, band_tags, strict=True))
        ds_tags = src.tags()
        dates = band_dates(ds_tags, band_tags)
        desc = tuple((d or "") for d in (src.descriptions or ("",) * src.count))
        long_names = tuple(t.get("long_name", "") for t in band_tags)
        try:
            crs = crs_string(crs_obj)
        except Exception as e:
            raise GridError(f"{path}: CRS cannot be interpreted ({e}); expected a valid CRS") from e
        t = src.transform
        return RasterInfo(
            path=path, crs=crs, bounds=_north_up_bounds(src), width=src.width,
            height=src.height, count=src.count, res=(abs(t.a), abs(t.e)), dtype=src.dtypes[0],
            nodata=src.nodata, units=units, dates=dates, descriptions=desc,
            long_names=long_names, variable=band_tags[0].get("NETCDF_VARNAME", ""),
            transform=t, packed=_is_packed(src),
            valid_range=from_cf(band_tags[0], scale=src.scales[0], offset=src.offsets[0])
            or _geosr_range(ds_tags),
            domain_shift=ds_tags.get("GEOSR_DOMAIN_SHIFT", ""),
        )


_BARE_DEGREE = ("degree", "degrees", "deg")


def _temperature_degree(unit: str, long_name: str, path: str) -> str:
    """``degC`` for a bare ``degree`` on a field whose long name says temperature.

    MeteoSwiss's gridded analyses (TabsM, TmaxD...) label temperature ``degree``, which
    UDUNITS reads as an angle; with a temperature long name it can only mean Celsius
    (said once in the log). Anything else is left as it is.
    """
    if unit.strip().lower() in _BARE_DEGREE and "temperature" in long_name.lower():
        log.info("%s: units 'degree' with long name %r read as degC", path, long_name)
        return "degC"
    return unit


def _geosr_range(tags: dict) -> ValidRange | None:
    """The range a geosr output records in its ``GEOSR_VALID_RANGE`` tag, if any."""
    text = tags.get("GEOSR_VALID_RANGE")
    try:
        return ValidRange.parse(text) if text else None
    except ValueError:
        return None


def _is_packed(src: rasterio.DatasetReader) -> bool:
    return any(sc != 1.0 or off != 0.0 for sc, off in zip(src.scales, src.offsets, strict=True))


def band_dates(ds_tags: dict, band_tags: list[dict]) -> tuple[str, ...]:
    """Per-band ISO 8601 dates from GDAL metadata ('' when a band has none).

    CF NetCDF bands carry the raw time offset (``NETCDF_DIM_time=1525132800``) and the
    dataset the time variable's ``units`` and ``calendar`` (``time#units``); cftime
    decodes them, any calendar included (noleap, 360_day...). GRIB bands carry
    ``GRIB_VALID_TIME`` in seconds since 1970; GeoTIFFs a ``DATE_TIME`` tag.
    """
    raw: dict[str, list[tuple[int, float]]] = {}
    out = [""] * len(band_tags)
    for i, tags in enumerate(band_tags):
        for key, value in tags.items():
            if not key.startswith("NETCDF_DIM_"):
                continue
            dim = key[len("NETCDF_DIM_"):]
            if "since" in ds_tags.get(f"{dim}#units", ""):
                with contextlib.suppress(ValueError):
                    raw.setdefault(dim, []).append((i, float(value)))
        if not any(key.startswith("NETCDF_DIM_") and key[11:] in raw for key in tags):
            grib = tags.get("GRIB_VALID_TIME", "").split()
            if grib and grib[0].lstrip("-").isdigit():
                out[i] = _iso(np.datetime64(int(grib[0]), "s"))
                continue
            for key in _DATE_KEYS:
                if tags.get(key):
                    out[i] = str(tags[key])
                    break
    for dim, pairs in raw.items():
        try:
            import cftime

            values = cftime.num2date([v for _, v in pairs], ds_tags[f"{dim}#units"],
                                     calendar=ds_tags.get(f"{dim}#calendar", "standard"))
        except (ValueError, TypeError) as e:
            log.warning("CF time %r could not be decoded (%s); dates are kept as numbers",
                        ds_tags[f"{dim}#units"], e)
            for i, v in pairs:
                out[i] = f"{v:g}"
            continue
        for (i, _), when in zip(pairs, values, strict=True):
            out[i] = _iso(when)
    return tuple(out)


def _iso(when) -> str:
    """ISO 8601 without microseconds for datetimes, numpy datetime64 and cftime dates."""
    if isinstance(when, np.datetime64):
        return str(when.astype("datetime64[s]"))
    text = when.isoformat()
    return text.split(".")[0]


class AlignedReader:
    """Reads a source raster warped onto a grid, window by window.

    Use as a context manager. ``read(window)`` returns ``(bands, rows, cols)`` float32
    with NaN for nodata/masked/non-finite cells. Windows may extend past the grid: cells
    outside the source are NaN.

    Args:
        path: source raster.
        grid: destination grid.
        resampling: GDAL resampling used by the warper.
    """

    def __init__(self, path: str | os.PathLike, grid: Grid, resampling: Resampling):
        self.path = str(path)
        self.grid = grid
        self.resampling = resampling
        self._stack = contextlib.ExitStack()
        self._warned_inf = False

    def __enter__(self) -> AlignedReader:
        src = self._stack.enter_context(open_raster(self.path))
        self.count = src.count
        self._unpack = _unpacker(src)
        src_crs = source_crs(src)
        src_nodata = src.nodata
        if src_nodata is None and np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            src_nodata = float("nan")
        try:
            self._vrt = self._stack.enter_context(WarpedVRT(
                src, src_crs=src_crs, crs=self.grid.rio_crs, transform=self.grid.transform,
                width=self.grid.width, height=self.grid.height, resampling=self.resampling,
                src_nodata=src_nodata, nodata=float("nan"), dtype="float32",
                warp_mem_limit=256, warp_extras={"NUM_THREADS": "ALL_CPUS"},
            ))
        except RasterioError as e:
            self._stack.close()
            raise GridError(
                f"{self.path}: cannot be warped onto the {self.grid.crs} grid ({e})"
            ) from e
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def read(
        self, window: Window | None = None, bands: list[int] | int | None = None
    ) -> np.ndarray:
        """Read ``bands`` (1-based; default all) in ``window`` (default whole grid)."""
        if window is None:
            window = Window(0, 0, self.grid.width, self.grid.height)
        if bands is None:
            bands = list(range(1, self.count + 1))
        elif isinstance(bands, int):
            bands = [bands]
        # WarpedVRT refuses boundless reads: read the part inside the grid, pad with NaN.
        c0, r0 = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        out = np.full((len(bands), h, w), np.nan, dtype=np.float32)
        cc0, rr0 = max(c0, 0), max(r0, 0)
        cc1, rr1 = min(c0 + w, self.grid.width), min(r0 + h, self.grid.height)
        if cc1 <= cc0 or rr1 <= rr0:
            return out
        inner = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        try:
            arr = self._vrt.read(bands, window=inner, masked=True)
        except RasterioIOError as e:
            raise RasterReadError(f"{self.path}: read failed ({_reason(e)}); the file "
                                  "may be truncated or corrupt") from e
        except RasterioError as e:
            raise RasterReadError(f"{self.path}: read failed ({e})") from e
        out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = arr.filled(np.nan)
        self._unpack(out, bands)
        inf = np.isinf(out)
        if inf.any():
            if not self._warned_inf:
                log.warning("%s holds infinite values; they are treated as nodata", self.path)
                self._warned_inf = True
            out[inf] = np.nan
        return out


def _unpacker(src: rasterio.DatasetReader):
    """A function applying ``src``'s per-band scale/offset to ``(bands, rows, cols)`` in place.

    Why after warping: GDAL's warper moves raw (packed) values; every resampling geosr
    uses (nearest, bilinear, average, mode) commutes with ``raw * scale + offset``, and
    nodata is matched on the raw values, as CF ``_FillValue`` is defined.
    """
    scales = np.asarray(src.scales, np.float64)
    offsets = np.asarray(src.offsets, np.float64)
    if np.all(scales == 1.0) and np.all(offsets == 0.0):
        return lambda arr, bands: arr

    def unpack(arr: np.ndarray, bands: list[int]) -> np.ndarray:
        for k, b in enumerate(bands):
            if scales[b - 1] != 1.0 or offsets[b - 1] != 0.0:
                arr[k] = arr[k] * scales[b - 1] + offsets[b - 1]
        return arr

    return unpack


def read_full(path: str | os.PathLike, bands: list[int] | None = None) -> tuple[np.ndarray, Grid]:
    """Read a (small, already aligned) raster whole as float32 with NaN nodata, and its grid."""
    with open_raster(path) as src:
        bands = bands or list(range(1, src.count + 1))
        arr = src.read(bands, masked=True).astype(np.float32)
        grid = Grid(crs_string(src.crs), src.transform, src.width, src.height)
        out = _unpacker(src)(arr.filled(np.nan), bands)
    out[~np.isfinite(out)] = np.nan
    return out, grid


class OnGridReader:
    """Reads a source that already lies on ``grid``'s pixel lattice, without warping.

    Same interface and values as :class:`AlignedReader` (``read(window, bands)`` ->
    float32, NaN nodata, NaN outside the source), for a source with the grid's CRS,
    pixel size and pixel phase (only its origin/extent may differ): a plain windowed
    read, about 3x faster than going through GDAL's warper. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, grid: Grid):
        self.path = str(path)
        self.grid = grid
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> OnGridReader:
        src = self._src = self._stack.enter_context(open_raster(self.path))
        self.count = src.count
        self._dc = round((self.grid.transform.c - src.transform.c) / self.grid.res)
        self._dr = round((src.transform.f - self.grid.transform.f) / self.grid.res)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def read(
        self, window: Window | None = None, bands: list[int] | int | None = None
    ) -> np.ndarray:
        """Read ``bands`` (1-based; default all) in ``window`` of the grid (default whole)."""
        if window is None:
            window = Window(0, 0, self.grid.width, self.grid.height)
        if bands is None:
            bands = list(range(1, self.count + 1))
        shifted = Window(int(window.col_off) + self._dc, int(window.row_off) + self._dr,
                         int(window.width), int(window.height))
        return read_window(self._src, shifted, bands)


def open_reader(path: str | os.PathLike, grid: Grid,
                resampling: Resampling | None) -> AlignedReader | OnGridReader:
    """A reader of ``path`` on ``grid``, not yet entered: a direct :class:`OnGridReader`
    for a source on the grid's lattice (``resampling`` None), else the warper."""
    if resampling is None:
        return OnGridReader(path, grid)
    return AlignedReader(path, grid, resampling)


class ReaderCache:
    """Open readers kept per thread, one per ``(path, grid, resampling)``.

    GDAL dataset handles must not be shared between threads, and opening a warper for
    every window would cost more than reading it: each thread opens its own reader once
    and reuses it. :meth:`close` closes every reader of every thread (call it when the
    threads are done). Also a context manager.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[AlignedReader | OnGridReader] = []

    def get(self, path: str | os.PathLike, grid: Grid,
            resampling: Resampling | None) -> AlignedReader | OnGridReader:
        """This thread's open reader (see :func:`open_reader`), opened on first use."""
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        key = (str(path), grid, resampling)
        rd = cache.get(key)
        if rd is None:
            rd = open_reader(path, grid, resampling).__enter__()
            cache[key] = rd
            with self._lock:
                self._open.append(rd)
        return rd

    def close(self) -> None:
        with self._lock:
            for rd in self._open:
                rd.__exit__(None, None, None)
            self._open.clear()

    def __enter__(self) -> ReaderCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_window(src: rasterio.DatasetReader | str | os.PathLike, window: Window,
                bands: list[int] | int | None = None) -> np.ndarray:
    """Read ``bands`` (1-based; default all) of an aligned raster in ``window``.

    ``src`` is a dataset opened with :func:`open_raster` (keep it open for many reads) or a
    path. Returns ``(bands, rows, cols)`` float32 with NaN for nodata/non-finite cells;
    parts of the window outside the raster are NaN, so windows may carry a halo past the
    edge. No warping: the file must already be on the grid the window refers to (the
    layers of a prepared dataset are).
    """
    if not isinstance(src, rasterio.io.DatasetReaderBase):
        with open_raster(src) as opened:
            return read_window(opened, window, bands)
    if bands is None:
        bands = list(range(1, src.count + 1))
    elif isinstance(bands, int):
        bands = [bands]
    c0, r0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    out = np.full((len(bands), h, w), np.nan, dtype=np.float32)
    cc0, rr0 = max(c0, 0), max(r0, 0)
    cc1, rr1 = min(c0 + w, src.width), min(r0 + h, src.height)
    if cc1 <= cc0 or rr1 <= rr0:
        return out
    try:
        arr = src.read(bands, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0), masked=True)
    except RasterioError as e:
        raise RasterReadError(f"{src.name}: read failed ({_reason(e)}); the file "
                              "may be truncated or corrupt") from e
    part = _unpacker(src)(arr.astype(np.float32).filled(np.nan), bands)
    part[~np.isfinite(part)] = np.nan
    out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = part
    return out


MAX_DETECTED_CLASSES = 32
"""A raster with this many distinct integer values or fewer (and no units) reads as classes."""


DETECT_MAX_PX = 1 << 20
"""Pixels of the decimated read that counts distinct values (nearest, ~1M px)."""


_CLASS_WORDS = re.compile(r"(?<![a-z])(class|categor|land[ _-]?(cover|use|type)|lulc)")


_CLASS_TAGS = ("long_name", "standard_name", "description", "DESCRIPTION", "NAME", "name")


def _pam_band1(path: str) -> str:
    """Band 1 of a GDAL ``.aux.xml`` sidecar as text ('' when there is none)."""
    side = Path(f"{path}.aux.xml")
    if not side.is_file():
        return ""
    try:
        text = side.read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r'<PAMRasterBand band="1">(.*?)</PAMRasterBand>', text, re.S)
    return m.group(1) if m else ""


def _decimated_band1(src: rasterio.DatasetReader, path: str) -> np.ma.MaskedArray:
    """Band 1 read at about :data:`DETECT_MAX_PX` pixels (nearest), masked where nodata."""
    scale = max(1.0, (src.width * src.height / DETECT_MAX_PX) ** 0.5)
    shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    try:
        return src.read(1, out_shape=shape, masked=True, resampling=Resampling.nearest)
    except RasterioError as e:
        raise RasterReadError(f"{path}: read failed ({_reason(e)}); the file may be "
                              "truncated or corrupt") from e


def band1_overview(path: str | os.PathLike) -> np.ndarray:
    """Band 1 of a raster at about a million pixels, float, NaN where nodata, values as the
    file means them (scale/offset applied): enough to tell an empty or constant layer."""
    with open_raster(path) as src:
        arr = _decimated_band1(src, str(path)).astype(np.float64).filled(np.nan)
        arr = _unpacker(src)(arr[None], [1])[0]
    arr[~np.isfinite(arr)] = np.nan
    return arr


SAMPLE_BLOCKS = 4
"""Blocks of band 1 that :func:`band1_sample` reads, spread over the raster."""


def band1_sample(path: str | os.PathLike) -> np.ndarray:
    """Band 1's values in at most :data:`SAMPLE_BLOCKS` of its blocks, spread evenly over
    the raster (float, NaN where nodata, unpacked), flattened.

    Why: a decimated read (:func:`band1_overview`) decodes every block of a file without
    overviews (2.6 s for an 8000^2 deflate DEM); a few blocks tell a layer with data and
    detail at once. An empty or constant sample says nothing about the rest: callers
    then look at the overview.
    """
    with open_raster(path) as src:
        bh, bw = src.block_shapes[0]
        ny, nx = -(-src.height // bh), -(-src.width // bw)
        k = max(1, math.ceil(math.sqrt(ny * nx / SAMPLE_BLOCKS)))
        parts = []
        for by in range(k // 2 % ny, ny, k):
            for bx in range(k // 2 % nx, nx, k):
                win = Window(bx * bw, by * bh, min(bw, src.width - bx * bw),
                             min(bh, src.height - by * bh))
                try:
                    arr = src.read([1], window=win, masked=True)
                except RasterioError as e:
                    raise RasterReadError(f"{path}: read failed ({_reason(e)}); the file may "
                                          "be truncated or corrupt") from e
                parts.append(_unpacker(src)(arr.astype(np.float64).filled(np.nan), [1]).ravel())
    out = np.concatenate(parts) if parts else np.zeros(0)
    out[~np.isfinite(out)] = np.nan
    return out


def class_raster_reason(path: str | os.PathLike) -> str | None:
    """Why band 1 of ``path`` looks like a class raster (land cover...), or None.

    Only integer rasters qualify; then any of: a colour table, category names or a
    raster attribute table (in a ``.aux.xml`` sidecar), CF ``flag_values``, a band
    description or name tag that speaks of classes, categories, land cover/use, or at
    most :data:`MAX_DETECTED_CLASSES` distinct values in a decimated read of a band
    without units. An int16 DEM has hundreds of distinct values and is not detected.

    Returns:
        A short reason for a log line, e.g. ``"uint8 with 11 distinct values"``.
    """
    path = str(path)
    with open_raster(path) as src:
        if src.count == 0:
            return None
        dtype = src.dtypes[0]
        if not np.issubdtype(np.dtype(dtype), np.integer):
            return None
        try:
            if src.colormap(1):
                return f"{dtype} with a colour table"
        except ValueError:  # no colour table
            pass
        pam = _pam_band1(path)
        if "<CategoryNames>" in pam:
            return f"{dtype} with category names"
        if "<GDALRasterAttributeTable" in pam:
            return f"{dtype} with a raster attribute table"
        tags = {**src.tags(), **src.tags(1)}
        if any(k.endswith(("flag_values", "flag_meanings")) for k in tags):
            return f"{dtype} with CF flag_values"
        desc = (src.descriptions[0] if src.descriptions else None) or ""
        for what, text in (("band description", desc),
                           *((f"{k} tag", tags[k]) for k in _CLASS_TAGS if k in tags)):
            if text and _CLASS_WORDS.search(str(text).lower()):
                return f"{dtype}, {what} {str(text)[:40]!r}"
        if src.units and src.units[0]:
            return None  # a quantity with units (m, K...), however few its values
        arr = _decimated_band1(src, path)
        values = np.unique(arr.compressed())
        if 1 < values.size <= MAX_DETECTED_CLASSES:
            return f"{dtype} with {values.size} distinct values"
    return None
