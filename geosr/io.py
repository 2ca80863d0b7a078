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
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geosr.errors import (
    GeosrError,
    GridError,
    InputError,
    OutputExistsError,
    ProcessingError,
    RasterReadError,
)
from geosr.grid import Bounds, Grid, crs_string

log = logging.getLogger(__name__)

TMP_TAG = ".geosr-tmp"
"""Marker in the names of temporary outputs; such files are never final results."""

_DATE_KEYS = ("DATE_TIME", "NETCDF_DIM_time", "NETCDF_DIM_valid_time", "time", "TIME", "date",
              "DATE")


def _assumed_lonlat(src: rasterio.DatasetReader) -> CRS | None:
    """CF NetCDF on a latitude/longitude grid without a grid_mapping means WGS 84 degrees."""
    if src.driver not in ("netCDF", "HDF5", "GRIB") or src.transform.is_identity:
        return None
    left, bottom, right, top = src.bounds
    if -180.5 <= left < right <= 360.5 and -90.5 <= min(bottom, top) and max(bottom, top) <= 90.5:
        log.warning("%s declares no CRS but has a latitude/longitude grid; assuming EPSG:4326",
                    src.name)
        return CRS.from_epsg(4326)
    return None


GDAL_CACHE_MB = 256
"""GDAL's block cache defaults to 5% of RAM; a fixed size keeps peak memory flat."""


def gdal_env(**options) -> rasterio.Env:
    """GDAL settings for geosr's work: bounded block cache, multi-threaded codecs."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, **options)


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


def _reason(e: Exception) -> str:
    """First line of a GDAL error, or of its cause when rasterio only says "see previous"."""
    text = str(e).strip()
    if e.__cause__ is not None and (not text or "previous exception" in text):
        text = str(e.__cause__).strip() or text
    return text.splitlines()[0] if text else type(e).__name__


def _is_gdal_name(path: str) -> bool:
    return ":" in path and path.split(":", 1)[0].isupper() and not Path(path).exists()


@contextlib.contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for reading, turning every failure into a one-line :class:`RasterReadError`."""
    path = str(path)
    if not _is_gdal_name(path) and not Path(path).exists():
        raise RasterReadError(f"{path}: file not found; expected an existing raster file")
    if Path(path).is_dir():
        raise RasterReadError(f"{path}: is a folder; expected a raster file")
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        reason = str(e).splitlines()[0] if str(e) else "unreadable"
        raise RasterReadError(f"{path}: not a readable raster ({reason}); expected a GeoTIFF, "
                              "NetCDF or other GDAL-readable raster") from e
    try:
        yield src
    finally:
        src.close()


def raster_info(path: str | os.PathLike) -> RasterInfo:
    """Inspect a raster and check it is georeferenced and has bands."""
    path = str(path)
    with open_raster(path) as src:
        if src.count == 0:
            subs = list(getattr(src, "subdatasets", []) or [])
            if subs:
                shown = ", ".join(subs[:4]) + (" ..." if len(subs) > 4 else "")
                raise RasterReadError(f"{path}: holds {len(subs)} variables and no bands; pick one "
                                      f"as a GDAL name, e.g. {subs[0]} (found: {shown})")
            raise RasterReadError(f"{path}: has no raster bands; expected at least one band")
        crs_obj = src.crs if src.crs is not None else _assumed_lonlat(src)
        if crs_obj is None:
            raise GridError(f"{path}: has no CRS; expected a georeferenced raster (assign one "
                            "with gdal_edit.py -a_srs EPSG:xxxx)")
        if src.transform.is_identity or src.transform == rasterio.Affine.identity():
            raise GridError(f"{path}: has no geotransform; expected a georeferenced raster "
                            "with a pixel-to-map transform")
        if src.transform.b != 0 or src.transform.d != 0:
            log.info("%s is rotated; it will be warped onto a north-up grid", path)
        units = tuple((u or "") for u in (src.units or ("",) * src.count))
        dates = tuple(_band_date(src, b) for b in range(1, src.count + 1))
        desc = tuple((d or "") for d in (src.descriptions or ("",) * src.count))
        try:
            crs = crs_string(crs_obj)
        except Exception as e:
            raise GridError(f"{path}: CRS cannot be interpreted ({e}); expected a valid CRS") from e
        return RasterInfo(
            path=path, crs=crs, bounds=tuple(src.bounds), width=src.width, height=src.height,
            count=src.count, res=(abs(src.transform.a), abs(src.transform.e)),
            dtype=src.dtypes[0], nodata=src.nodata, units=units, dates=dates, descriptions=desc,
        )


def _band_date(src: rasterio.DatasetReader, band: int) -> str:
    tags = src.tags(band)
    for key in _DATE_KEYS:
        if tags.get(key):
            return str(tags[key])
    return ""


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
        src_crs = None if src.crs is not None else _assumed_lonlat(src)
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
        inf = np.isinf(out)
        if inf.any():
            if not self._warned_inf:
                log.warning("%s holds infinite values; they are treated as nodata", self.path)
                self._warned_inf = True
            out[inf] = np.nan
        return out


def gtiff_profile(grid: Grid, count: int, *, block: int = 256) -> dict:
    """Profile for an aligned float32 GeoTIFF: tiled, deflate + float predictor, NaN nodata."""
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count,
        "dtype": "float32", "crs": grid.rio_crs, "transform": grid.transform,
        "nodata": float("nan"), "compress": "deflate", "predictor": 3, "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }
    if grid.width >= 16 and grid.height >= 16:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    return profile


def open_writer(path: str | os.PathLike, grid: Grid, count: int, *,
                descriptions: list[str] | None = None, units: list[str] | None = None,
                tags: dict | None = None) -> rasterio.io.DatasetWriter:
    """Create a float32 GeoTIFF on ``grid`` for windowed writing (caller closes it)."""
    try:
        dst = rasterio.open(path, "w", **gtiff_profile(grid, count))
    except RasterioError as e:
        raise ProcessingError(f"{path}: cannot create ({e})") from e
    for b in range(1, count + 1):
        if descriptions and descriptions[b - 1]:
            dst.set_band_description(b, descriptions[b - 1])
        if units and units[b - 1]:
            dst.set_band_unit(b, units[b - 1])
    if tags:
        dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return dst


def read_full(path: str | os.PathLike, bands: list[int] | None = None) -> tuple[np.ndarray, Grid]:
    """Read a (small, already aligned) raster whole as float32 with NaN nodata, and its grid."""
    with open_raster(path) as src:
        arr = src.read(bands or list(range(1, src.count + 1)), masked=True).astype(np.float32)
        grid = Grid(crs_string(src.crs), src.transform, src.width, src.height)
    out = arr.filled(np.nan)
    out[~np.isfinite(out)] = np.nan
    return out, grid


def _check_parent(final: Path) -> None:
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{final}: output folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputError(f"{final}: {parent} is not a folder; expected an output folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{final}: output folder {parent} is not writable; choose another")


def check_output_file(final: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any work) when ``final`` cannot or must not be written."""
    final = Path(final)
    _check_parent(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final}: already exists; pass --overwrite to replace it")
    if final.is_dir():
        raise InputError(f"{final}: is a folder; expected a file name for the output")
    return final


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only on success.

    The temporary name starts with a dot and contains ``.geosr-tmp`` so that listings
    and globs for ``*.tif`` do not pick it up; it is removed on any failure, including
    KeyboardInterrupt.
    """
    final = check_output_file(final, overwrite=overwrite)
    tmp = final.with_name(f".{final.stem}{TMP_TAG}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        if final.exists() and not overwrite:
            raise OutputExistsError(
                f"{final}: appeared while working; pass --overwrite to replace it"
            )
        os.replace(tmp, final)
    except ProcessingError as e:
        # Name the user's file, not the temporary one (or its siblings) that is gone now.
        names_tmp = re.compile(re.escape(str(tmp.with_suffix(""))) + r"[^\s:;,()]*")
        if not names_tmp.search(str(e)):
            raise
        raise ProcessingError(f"{names_tmp.sub(str(final), str(e))}; nothing was left under "
                              "that name") from e
    except OSError as e:
        if isinstance(e, GeosrError):
            raise
        raise ProcessingError(f"{final}: writing failed ({e.strerror or e}); nothing was left "
                              "under that name") from e
    finally:
        for p in (tmp, Path(str(tmp) + ".aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def check_output_dir(final: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any work) when folder ``final`` cannot or must not be written."""
    final = Path(final)
    _check_parent(final)
    if final.exists():
        if not final.is_dir():
            raise InputError(f"{final}: exists and is not a folder; expected a folder name")
        if any(final.iterdir()) and not overwrite:
            raise OutputExistsError(f"{final}: folder exists and is not empty; pass --overwrite "
                                    "to replace it")
    return final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; move it into place only on success.

    An existing empty ``final`` is replaced; a non-empty one only with ``overwrite``.
    """
    final = check_output_dir(final, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_TAG}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        if isinstance(e, GeosrError):
            raise
        raise ProcessingError(f"{final}: writing failed ({e.strerror or e}); nothing was left "
                              "under that name") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


COG_OPTIONS = {
    "COMPRESS": "DEFLATE", "PREDICTOR": "FLOATING_POINT", "BLOCKSIZE": "512",
    "OVERVIEW_RESAMPLING": "AVERAGE", "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
}

COG_PIXEL_TILE_MAX_BYTES = 32 << 20
"""Largest pixel-interleaved COG tile (one block of every band); beyond, bands are
interleaved by band. GDAL's COG driver (before GDAL 3.11) writes only pixel-interleaved
tiles and holds a few whole tiles while copying, so its memory grows with the band count:
a 744-band float32 output has 780 MB tiles and peaked at 2.4 GB. 32 MiB keeps up to 32
float32 bands pixel-interleaved at 512 px blocks."""


def translate_to_cog(src_path: str | os.PathLike, dst_path: str | os.PathLike, **options) -> None:
    """Copy a GeoTIFF to a Cloud-Optimized GeoTIFF: tiled, internal overviews, IFDs first.

    Pixel-interleaved through GDAL's COG driver while one tile of all bands fits in
    :data:`COG_PIXEL_TILE_MAX_BYTES`; band-interleaved beyond (:func:`_copy_band_cog`), so
    that memory does not grow with the band count. GDAL builds the overviews (average);
    band descriptions, units and tags are carried over from the source. ``options`` are
    COG driver creation options (e.g. ``LEVEL``). A band-interleaved copy adds the
    overviews to ``src_path`` first (a stage file, deleted afterwards).
    """
    opts = {**COG_OPTIONS, **{k.upper(): str(v) for k, v in options.items()}}
    try:
        with rasterio.open(src_path) as src:
            tile = src.count * int(opts["BLOCKSIZE"]) ** 2 * np.dtype(src.dtypes[0]).itemsize
        if tile <= COG_PIXEL_TILE_MAX_BYTES:
            rasterio.shutil.copy(str(src_path), str(dst_path), driver="COG", **opts)
        else:
            _copy_band_cog(src_path, dst_path, opts)
    except (RasterioError, CPLE_BaseError) as e:
        raise ProcessingError(f"{dst_path}: COG writing failed ({_reason(e)}); check free "
                              "disk space and file-size limits") from e
    check_written(dst_path)


def _copy_band_cog(src_path: str | os.PathLike, dst_path: str | os.PathLike,
                   opts: dict[str, str]) -> None:
    """A band-interleaved COG, made the way GDAL's COG driver makes its layout.

    Overviews are built into ``src_path`` (as many levels as the COG driver makes: halving
    until the smallest fits one block; same resampling, band by band), then GTiff's
    ``COPY_SRC_OVERVIEWS`` writes all IFDs first and the data from the smallest overview
    to full resolution, a band at a time. The result passes GDAL's COG validator; GDAL
    3.10 writes its "ghost" layout header (``LAYOUT=COG``) only for pixel interleaving.
    """
    block = int(opts["BLOCKSIZE"])
    with rasterio.open(src_path, "r+") as src:
        factors: list[int] = []
        w, h = src.width, src.height
        while w > block or h > block:
            w, h = max(1, w // 2), max(1, h // 2)
            factors.append(2 ** (len(factors) + 1))
        if factors:
            src.build_overviews(factors, Resampling[opts["OVERVIEW_RESAMPLING"].lower()])
    predictor = {"FLOATING_POINT": "3", "STANDARD": "2"}.get(opts["PREDICTOR"].upper(),
                                                              opts["PREDICTOR"])
    gtiff = {"COPY_SRC_OVERVIEWS": "YES", "TILED": "YES", "BLOCKXSIZE": str(block),
             "BLOCKYSIZE": str(block), "INTERLEAVE": "BAND", "COMPRESS": opts["COMPRESS"],
             "PREDICTOR": predictor, "BIGTIFF": opts["BIGTIFF"],
             "NUM_THREADS": opts["NUM_THREADS"]}
    level_key = {"DEFLATE": "ZLEVEL", "ZSTD": "ZSTD_LEVEL", "LZMA": "LZMA_PRESET"}.get(
        opts["COMPRESS"].upper())
    if "LEVEL" in opts and level_key:
        gtiff[level_key] = opts["LEVEL"]
    rasterio.shutil.copy(str(src_path), str(dst_path), driver="GTiff", **gtiff)


def check_written(path: str | os.PathLike) -> None:
    """Raise :class:`ProcessingError` unless the GeoTIFF at ``path`` is complete.

    Why: with multi-threaded compression (``NUM_THREADS``) GDAL reports a failed write
    (full disk, file-size limit) only in its log and closes the file as if all were
    well, leaving a truncated file. A complete file opens and holds every block of
    band 1 and the last block of every band (the end of the data) inside the file.
    """
    path = Path(path)
    hint = "check free disk space and file-size limits"
    try:
        size = path.stat().st_size
        with rasterio.open(path) as src:
            (bh, bw), (h, w) = src.block_shapes[0], src.shape
            ny, nx = -(-h // bh), -(-w // bw)
            if src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) is None:
                return  # not a GeoTIFF: nothing to check
            blocks = [(1, x, y) for y in range(ny) for x in range(nx)]
            blocks += [(b, nx - 1, ny - 1) for b in range(2, src.count + 1)]
            for b, x, y in blocks:
                off = int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b) or 0)
                n = int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b) or 0)
                if off <= 0 or off + n > size:
                    raise ProcessingError(f"{path}: incomplete after writing (band {b} block "
                                          f"{x},{y} is missing or past the end of the {size}-"
                                          f"byte file); {hint}")
    except (RasterioError, CPLE_BaseError, OSError) as e:
        raise ProcessingError(f"{path}: cannot be read back after writing ({_reason(e)}); "
                              f"{hint}") from e


def open_stream_writer(path: str | os.PathLike, grid: Grid, count: int, *, block: int = 512,
                       block_rows: int = 32, descriptions: list[str] | None = None,
                       units: list[str] | None = None,
                       tags: dict | None = None) -> rasterio.io.DatasetWriter:
    """Create a temporary float32 GeoTIFF for streamed writes ahead of a COG copy.

    Band-interleaved, so that bands written in separate passes never rewrite a block;
    wide, short tiles (``block`` x ``block_rows``) so that a writer holding back a
    partial row of blocks holds little; ZSTD level 1 without predictor: the file is
    written once, read once by :func:`translate_to_cog` and deleted, so speed matters
    more than size. Write whole rows of blocks (row offsets multiple of ``block_rows``).
    """
    profile = {**gtiff_profile(grid, count, block=block), "compress": "zstd", "zstd_level": 1,
               "interleave": "band"}
    if profile.get("tiled"):
        profile["blockysize"] = block_rows
    profile.pop("predictor", None)
    try:
        dst = rasterio.open(path, "w", **profile)
    except RasterioError as e:
        raise ProcessingError(f"{path}: cannot create ({e})") from e
    for b in range(1, count + 1):
        if descriptions and descriptions[b - 1]:
            dst.set_band_description(b, descriptions[b - 1])
        if units and units[b - 1]:
            dst.set_band_unit(b, units[b - 1])
    if tags:
        dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return dst


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
        elif isinstance(bands, int):
            bands = [bands]
        src = self._src
        c0, r0 = int(window.col_off) + self._dc, int(window.row_off) + self._dr
        w, h = int(window.width), int(window.height)
        out = np.full((len(bands), h, w), np.nan, dtype=np.float32)
        cc0, rr0 = max(c0, 0), max(r0, 0)
        cc1, rr1 = min(c0 + w, src.width), min(r0 + h, src.height)
        if cc1 <= cc0 or rr1 <= rr0:
            return out
        try:
            arr = src.read(bands, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0), masked=True)
        except RasterioError as e:
            raise RasterReadError(f"{self.path}: read failed ({_reason(e)}); the "
                                  "file may be truncated or corrupt") from e
        part = arr.astype(np.float32).filled(np.nan)
        part[~np.isfinite(part)] = np.nan
        out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = part
        return out


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
    part = arr.astype(np.float32).filled(np.nan)
    part[~np.isfinite(part)] = np.nan
    out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = part
    return out
