"""Output sinks: the format of an output chosen by its extension, and the copies of the
engine's stage GeoTIFF to a Cloud-Optimized GeoTIFF, a CF NetCDF file or a Zarr store.

Every sink starts from the same stage file, which the engine writes by rows of blocks
and which carries everything an output needs: the grid (CRS, transform), one band per
time step with its date (band tag ``DATE_TIME``), units, ``long_name`` and the run's
provenance tags (``GEOSR_*``). The NetCDF and Zarr copies are streamed from it a chunk
row at a time, so memory does not follow the raster size or the band count.

CF layout of the NetCDF and Zarr outputs (the same for both)::

    <variable>(time, y, x)  float32, _FillValue NaN, units, long_name,
                            grid_mapping = "spatial_ref", chunks (1, 512, 512)
    time(time)              CF time, proleptic_gregorian calendar
    y(y), x(x)              pixel centres, projection_y/x_coordinate, metres
    spatial_ref             grid mapping: crs_wkt, spatial_ref (WKT) and GeoTransform,
                            as rioxarray writes them

``time`` needs every band dated with a date numpy can represent; otherwise the
dimension is ``band`` (1-based), with the dates, where there are any, as a ``date``
string coordinate along it (e.g. ``2000-02-30`` of a 360-day calendar). Dates of a
non-standard calendar that are also valid Gregorian dates (noleap, 360_day most days)
are written as proleptic Gregorian dates with the same label. The run's provenance tags
become global attributes; per-band tags (the sharpening fit of each band) stay in the
COG only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geosr.errors import InputError, ProcessingError
from geosr.io.atomic import atomic_dir, atomic_path, check_output_dir, check_output_file
from geosr.io.dataarray import quiet_cf_crs
from geosr.io.write import translate_to_cog

log = logging.getLogger(__name__)


class OutputFormat(str, Enum):
    """Formats an output can be written in."""

    cog = "cog"
    netcdf = "netcdf"
    zarr = "zarr"

    @property
    def label(self) -> str:
        return {"cog": "COG", "netcdf": "NetCDF", "zarr": "Zarr"}[self.value]


OUTPUT_SUFFIXES: dict[str, OutputFormat] = {
    ".tif": OutputFormat.cog, ".tiff": OutputFormat.cog,
    ".nc": OutputFormat.netcdf, ".nc4": OutputFormat.netcdf,
    ".zarr": OutputFormat.zarr,
}
"""Output extensions (lower case) and the format each selects."""


def output_format(path: str | os.PathLike, *, option: str = "-o") -> OutputFormat:
    """The format selected by the extension of ``path`` (any case).

    Raises:
        InputError: an extension that names no output format; the message names
            ``option``, the extension found and the accepted ones.
    """
    suffix = Path(path).suffix
    fmt = OUTPUT_SUFFIXES.get(suffix.lower())
    if fmt is None:
        found = f"extension {suffix!r}" if suffix else "no extension"
        raise InputError(f"{option} {path}: {found}; expected .tif or .tiff (Cloud-Optimized "
                         "GeoTIFF), .nc or .nc4 (CF NetCDF) or .zarr (Zarr store)")
    return fmt


def check_output(path: str | os.PathLike, *, overwrite: bool,
                 option: str = "-o") -> OutputFormat:
    """Fail early (before any work) when ``path`` names no format or cannot or must not
    be written; returns its format. A Zarr store is a folder, the others files.

    An existing file or folder is reported first (``--overwrite`` needed, or a folder
    where a file was meant), whatever its extension."""
    p = Path(path)
    if OUTPUT_SUFFIXES.get(p.suffix.lower()) is not OutputFormat.zarr and p.exists() \
            and (p.is_dir() or not overwrite):
        check_output_file(p, overwrite=overwrite)  # raises, naming what is there
    fmt = output_format(path, option=option)
    if fmt is OutputFormat.zarr:
        check_output_dir(path, overwrite=overwrite)
    else:
        check_output_file(path, overwrite=overwrite)
    return fmt


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """A temporary path (file, or folder for a Zarr store) beside ``final``, moved into
    place only when the block completes (:mod:`geosr.io.atomic`)."""
    if output_format(final) is OutputFormat.zarr:
        with atomic_dir(final, overwrite=overwrite) as tmp:
            yield tmp
    else:
        with atomic_path(final, overwrite=overwrite) as tmp:
            yield tmp


def stage_path(tmp: Path) -> Path:
    """The stage GeoTIFF's name beside the temporary output ``tmp``: its name with the
    output extension replaced, so it keeps the temporary marker."""
    name = tmp.name
    if tmp.suffix.lower() in OUTPUT_SUFFIXES:
        name = name[: -len(tmp.suffix)]
    return tmp.with_name(f"{name}-stage.tif")


Progress = Callable[[int, int], None]


COG_DEFLATE_LEVEL = 1
"""libdeflate level 1 takes half the time of the default 6 for ~1-2 % larger float32
COGs."""

NETCDF_DEFLATE_LEVEL = 1
"""zlib level for NetCDF (with byte shuffling): HDF5 compresses on one thread, and
level 1 takes about half the time of level 4 for a few percent larger float32 files."""

CHUNK_PX = 512
"""Chunk side of the NetCDF and Zarr outputs, in pixels: (1, 512, 512) float32 chunks of
1 MiB, one time step each, suit both map reads and dask."""

STRIP_MAX_BYTES = 16 << 20
"""Largest piece copied from the stage at a time: one chunk row, split across columns
beyond this size, so that memory does not follow the raster width either."""


def write_output(stage: str | os.PathLike, dst: str | os.PathLike, *, fmt: OutputFormat,
                 variable: str, progress: Progress | None = None) -> None:
    """Copy the stage GeoTIFF to ``dst`` in ``fmt``.

    Args:
        stage: the engine's float32 stage GeoTIFF (band tags ``DATE_TIME``,
            ``long_name``; band units; dataset tags ``GEOSR_*``).
        dst: the (temporary) output path; for Zarr, an empty folder.
        variable: name of the data variable (NetCDF/Zarr), cleaned up to CF rules.
        progress: called with (pieces done, pieces) while a NetCDF or Zarr is written.
    """
    if fmt is OutputFormat.cog:
        translate_to_cog(stage, dst, LEVEL=COG_DEFLATE_LEVEL)
    elif fmt is OutputFormat.netcdf:
        write_netcdf(stage, dst, variable=variable, progress=progress)
    else:
        write_zarr(stage, dst, variable=variable, progress=progress)


# ------------------------------------------------------------------------- CF layout


COORD_NAMES = ("time", "band", "date", "y", "x", "spatial_ref")


def cf_name(variable: str) -> str:
    """``variable`` as a CF variable name: letters, digits and underscores, starting with
    a letter, and none of the coordinate names."""
    name = re.sub(r"\W", "_", variable.strip(), flags=re.ASCII) or "data"
    if not name[0].isalpha():
        name = f"v{name}"
    return f"{name}_data" if name in COORD_NAMES else name


def cf_times(dates: list[str]) -> np.ndarray | None:
    """The dates as datetime64 (nanoseconds where they fit), or None unless every date
    is given and numpy can parse it (ISO 8601 in the proleptic Gregorian calendar)."""
    if not dates or not all(dates):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's deprecation of time zone suffixes
            times = np.array([np.datetime64(d, "s") for d in dates])
    except ValueError:
        return None
    ns = np.datetime64("1678-01-01", "s"), np.datetime64("2262-04-11", "s")
    if ((times >= ns[0]) & (times < ns[1])).all():
        return times.astype("datetime64[ns]")
    return times


@dataclass(frozen=True)
class _Layout:
    """An output's CF structure: ``dataset`` holds every coordinate and attribute, and
    the data variable as a lazy placeholder (never computed)."""

    dataset: object  # xarray.Dataset
    name: str
    dims: tuple[str, str, str]
    chunks: tuple[int, int, int]
    shape: tuple[int, int, int]


def _layout(src: rasterio.io.DatasetReader, variable: str) -> _Layout:
    import dask.array as da
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr

    count, height, width = src.count, src.height, src.width
    band_tags = [src.tags(b) for b in range(1, count + 1)]
    dates = [t.get("DATE_TIME", "") for t in band_tags]
    times = cf_times(dates)
    name = cf_name(variable)
    t = src.transform
    x = t.c + t.a * (np.arange(width) + 0.5)
    y = t.f + t.e * (np.arange(height) + 0.5)
    unit = _linear_unit(src.crs)
    coords: dict = {}  # in order: time or band first, as the dimensions
    if times is not None:
        dim = "time"
        coords["time"] = ("time", times, {"standard_name": "time", "long_name": "time",
                                          "axis": "T"})
    else:
        dim = "band"
        coords["band"] = ("band", np.arange(1, count + 1, dtype=np.int32),
                          {"long_name": "band number"})
        if any(dates):
            coords["date"] = ("band", np.array(dates, dtype=object),
                              {"long_name": "date and time of the band (ISO 8601)"})
            log.warning("%s: dates %s... are not all ISO 8601 dates of the standard calendar; "
                        "the output's dimension is 'band', with the dates as coordinate "
                        "'date'", variable, ", ".join(dates[:2]))
    coords["y"] = ("y", y, {"standard_name": "projection_y_coordinate",
                            "long_name": "y coordinate of projection", "units": unit,
                            "axis": "Y"})
    coords["x"] = ("x", x, {"standard_name": "projection_x_coordinate",
                            "long_name": "x coordinate of projection", "units": unit,
                            "axis": "X"})
    attrs = {"long_name": (band_tags[0].get("long_name") if band_tags else "") or variable}
    units = next((u for u in src.units if u), "")
    if units:
        attrs["units"] = units
    shape = (count, height, width)
    chunks = (1, min(CHUNK_PX, height), min(CHUNK_PX, width))
    data = xr.DataArray(da.empty(shape, dtype=np.float32, chunks=shape), dims=(dim, "y", "x"),
                        coords=coords, attrs=attrs)
    ds = data.to_dataset(name=name)
    with quiet_cf_crs():
        ds = ds.rio.write_crs(src.crs.to_wkt()).rio.write_transform(t)
    ds.attrs = _global_attrs(src.tags(), variable, src.res[0], unit)
    return _Layout(ds, name, (dim, "y", "x"), chunks, shape)


def _linear_unit(crs) -> str:
    factor = crs.linear_units_factor[1] if crs and crs.is_projected else 1.0
    return "m" if factor == 1.0 else crs.linear_units


def _global_attrs(tags: dict, variable: str, res: float, unit: str) -> dict:
    """CF global attributes and the run's provenance tags (``GEOSR_*``)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = tags.get("GEOSR_COMMAND") or "geosr downscale"
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"{variable} downscaled to {res:g} {unit} cells",
        "source": tags.get("TIFFTAG_SOFTWARE") or "geosr",
        "history": f"{now} {command}",
    }
    attrs.update({k: str(v) for k, v in tags.items() if k.startswith("GEOSR_")})
    return attrs


def _coord_encoding(layout: _Layout) -> dict:
    # Coordinates have no missing values (CF); xarray would give float ones a NaN fill.
    enc: dict = {"x": {"_FillValue": None}, "y": {"_FillValue": None}}
    if "time" in layout.dataset.coords:
        enc["time"] = {"calendar": "proleptic_gregorian"}
    return enc


def _data_attrs(layout: _Layout) -> dict:
    """Attributes of the data variable. ``coordinates`` lists the grid mapping (a scalar
    coordinate) so that a plain ``xarray.open_dataset`` keeps it with the variable and
    ``.rio.crs`` works without ``decode_coords="all"``."""
    ds = layout.dataset
    coords = ["spatial_ref"] + (["date"] if "date" in ds.coords else [])
    return {**ds[layout.name].attrs, "grid_mapping": "spatial_ref",
            "coordinates": " ".join(coords)}


# ------------------------------------------------------------------------- streaming


def _pieces(shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> list[tuple]:
    """(band, Window) pieces in storage order: a chunk row of one band, split across
    columns on chunk boundaries beyond :data:`STRIP_MAX_BYTES`."""
    count, height, width = shape
    _, rows, cols = chunks
    per_row = max(cols, STRIP_MAX_BYTES // (4 * rows) // cols * cols)
    return [(b, Window(c0, r0, min(per_row, width - c0), min(rows, height - r0)))
            for b in range(count) for r0 in range(0, height, rows)
            for c0 in range(0, width, per_row)]


def _copy_pieces(src: rasterio.io.DatasetReader, pieces: list[tuple],
                 write: Callable[[int, Window, np.ndarray], None],
                 progress: Progress | None) -> None:
    """Read each piece from ``src`` and ``write`` it, the write of one piece on a worker
    thread while the next is read.

    Why one worker thread: reads (ZSTD) and writes (deflate, Blosc) overlap, and on any
    failure or Ctrl-C the executor's exit waits for the write in flight. Zarr finishes a
    write on its own event-loop thread even when the caller is interrupted; without
    the wait, a chunk could land in a folder the caller has just removed.
    """
    total = len(pieces)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geosr-sink") as pool:
        pending = None
        for i, (b, window) in enumerate(pieces):
            arr = src.read(b + 1, window=window)
            if pending is not None:
                pending.result()
                if progress:
                    progress(i, total)
            pending = pool.submit(write, b, window, arr)
        if pending is not None:
            pending.result()
    if progress:
        progress(total, total)


def _hint(dst, what: str, e: BaseException) -> ProcessingError:
    reason = str(e).strip() or type(e).__name__
    return ProcessingError(f"{dst}: {what} writing failed ({reason}); check free disk space "
                           "and file-size limits")


def write_netcdf(stage: str | os.PathLike, dst: str | os.PathLike, *, variable: str,
                 level: int = NETCDF_DEFLATE_LEVEL, progress: Progress | None = None) -> None:
    """Copy the stage GeoTIFF to a CF NetCDF-4 file (layout: module docstring).

    xarray writes the coordinates, grid mapping and attributes (so that xarray and
    rioxarray read them back as they write them); the data variable is added with
    netCDF4 and filled a chunk row at a time, zlib-compressed in (1, 512, 512) chunks.
    """
    import netCDF4

    try:
        with rasterio.open(stage) as src:
            layout = _layout(src, variable)
            ds = layout.dataset
            extra = [c for c in ("spatial_ref", "date") if c in ds.coords]
            # Without the data variable, xarray would list these in a global
            # "coordinates" attribute; the data variable's own attribute names them.
            ds.drop_vars(layout.name).reset_coords(extra).to_netcdf(
                dst, engine="netcdf4", format="NETCDF4", encoding=_coord_encoding(layout))
            with netCDF4.Dataset(dst, "a") as nc:
                var = nc.createVariable(layout.name, "f4", layout.dims, zlib=True,
                                        complevel=level, shuffle=True,
                                        chunksizes=layout.chunks,
                                        fill_value=np.float32(np.nan))
                var.setncatts(_data_attrs(layout))

                def write(b: int, w: Window, arr: np.ndarray) -> None:
                    var[b, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = arr

                _copy_pieces(src, _pieces(layout.shape, layout.chunks), write, progress)
    except (RasterioError, CPLE_BaseError, OSError, RuntimeError) as e:
        if isinstance(e, ProcessingError):
            raise
        raise _hint(dst, "NetCDF", e) from e


ZARR_FORMAT = 2
"""Zarr format 2: read by zarr-python 2 and 3, GDAL's Zarr driver and most tools that
read Zarr; fewer read format 3 yet."""


def write_zarr(stage: str | os.PathLike, dst: str | os.PathLike, *, variable: str,
               progress: Progress | None = None) -> None:
    """Copy the stage GeoTIFF to a Zarr store (layout: module docstring), with
    consolidated metadata, Blosc/zstd-compressed (1, 512, 512) chunks (dask chunks of
    that size read one chunk each). Chunks that are all nodata are not stored.

    xarray writes the structure (coordinates, attributes, an empty data array); the data
    is filled with zarr a chunk row at a time.
    """
    import numcodecs
    import zarr

    try:
        with rasterio.open(stage) as src:
            layout = _layout(src, variable)
            ds = layout.dataset
            ds[layout.name].attrs = _data_attrs(layout)
            encoding = {**_coord_encoding(layout), layout.name: {
                "chunks": layout.chunks, "dtype": "float32", "_FillValue": np.float32(np.nan),
                "compressors": (numcodecs.Blosc("zstd", 3, numcodecs.Blosc.SHUFFLE),)}}
            with warnings.catch_warnings():
                # The data variable's "coordinates" attribute is meant (_data_attrs).
                warnings.filterwarnings("ignore", message=".*coordinates.*")
                ds.to_zarr(dst, mode="w", compute=False, consolidated=True,
                           zarr_format=ZARR_FORMAT, encoding=encoding)
            arr = zarr.open_array(store=str(dst), path=layout.name, mode="r+",
                                  zarr_format=ZARR_FORMAT)

            def write(b: int, w: Window, a: np.ndarray) -> None:
                arr[b, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = a

            _copy_pieces(src, _pieces(layout.shape, layout.chunks), write, progress)
    except (RasterioError, CPLE_BaseError, OSError, RuntimeError, ValueError) as e:
        if isinstance(e, (ProcessingError, InputError)):
            raise
        raise _hint(dst, "Zarr", e) from e
