"""xarray in and out: DataArrays given to the Python API, and outputs returned as
DataArrays.

Why a spool file: the tiled engine reads every source through GDAL's warper, window by
window, whatever its CRS, grid or size; a DataArray (numpy- or dask-backed, georeferenced
through rioxarray) is written once, block by block, to a temporary GeoTIFF that the
engine then reads exactly like a user's file. Memory stays bounded by one block, so a
dask array larger than memory streams through, and the API gives the same result as the
command line on the same values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geosr.errors import InputError

log = logging.getLogger(__name__)

SPOOL_BLOCK_ROWS = 512  # rows per block written to a spool file (bounded memory)


def is_dataarray(obj: Any) -> bool:
    """Whether ``obj`` is an :class:`xarray.DataArray` (without importing xarray first)."""
    return type(obj).__name__ == "DataArray" and hasattr(obj, "dims") and hasattr(obj, "rio")


def _iso(value: Any) -> str:
    """ISO 8601 text of a numpy datetime64 or cftime date."""
    if isinstance(value, np.datetime64):
        return str(value.astype("datetime64[s]"))
    if hasattr(value, "isoformat"):
        return value.isoformat().split(".")[0]
    return str(value)


def _band_layout(da, what: str):
    """``(da transposed to (band, y, x), band dim name or None, per-band dates)``."""
    try:
        y, x = da.rio.y_dim, da.rio.x_dim
    except Exception as e:  # rioxarray raises its own MissingSpatialDimensionError
        raise InputError(f"{what}: no spatial dimensions found ({e}); expected dims y/x or "
                         "latitude/longitude") from e
    extra = [d for d in da.dims if d not in (x, y)]
    if len(extra) > 1:
        raise InputError(f"{what}: dims {tuple(da.dims)}; expected (y, x) or one more "
                         "dimension of bands or time steps, e.g. (time, y, x)")
    if not extra:
        return da.transpose(y, x).expand_dims("band"), None, ("",)
    band = extra[0]
    da = da.transpose(band, y, x)
    dates = ("",) * da.sizes[band]
    values = da[band].values if band in da.coords else None
    if values is not None and (np.issubdtype(values.dtype, np.datetime64)
                               or (values.dtype == object and len(values)
                                   and hasattr(values[0], "calendar"))):
        dates = tuple(_iso(v) for v in values)
    return da, band, dates


def spool(da, path: str | os.PathLike, *, what: str = "DataArray") -> Path:
    """Write a georeferenced DataArray to a float32 GeoTIFF, block by block.

    Args:
        da: 2-D ``(y, x)`` or 3-D ``(band|time, y, x)`` with a CRS and transform
            (rioxarray's ``da.rio.crs``); numpy- or dask-backed. Its nodata
            (``rio.nodata``/``_FillValue``) becomes NaN; undecoded ``scale_factor`` and
            ``add_offset`` attributes are applied.
        path: GeoTIFF to write.
        what: how messages name the array (e.g. ``coarse``).

    Band dates (a datetime or cftime coordinate) become ``DATE_TIME`` band tags,
    ``units`` and ``long_name`` attributes band units and tags, the array's name the
    variable name; so the API records what the command line would for a file.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    crs = da.rio.crs
    if crs is None:
        raise InputError(f"{what}: the DataArray has no CRS; expected a georeferenced array "
                         "(set one with da.rio.write_crs('EPSG:xxxx'))")
    da3, _, dates = _band_layout(da, what)
    transform = da.rio.transform(recalc=True)
    n, h, w = da3.shape
    nodata = da.rio.nodata if da.rio.nodata is not None else da.rio.encoded_nodata
    scale = float(da.attrs.get("scale_factor", 1.0))
    offset = float(da.attrs.get("add_offset", 0.0))
    units = _per_band(da.attrs.get("units"), n)
    long_names = _per_band(da.attrs.get("long_name"), n)
    name = str(da.name) if da.name is not None else ""
    profile = {"driver": "GTiff", "width": w, "height": h, "count": n, "dtype": "float32",
               "crs": crs, "transform": transform, "nodata": float("nan"),
               "compress": "zstd", "zstd_level": 1, "BIGTIFF": "IF_SAFER"}
    if w >= 16 and h >= 16:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for b in range(n):
            tags = {}
            if dates[b]:
                tags["DATE_TIME"] = dates[b]
            if long_names[b]:
                tags["long_name"] = long_names[b]
            if name:
                tags["NETCDF_VARNAME"] = name  # read back as the variable's name
            if tags:
                dst.update_tags(b + 1, **tags)
            if units[b]:
                dst.set_band_unit(b + 1, units[b])
            for r0 in range(0, h, SPOOL_BLOCK_ROWS):
                block = np.asarray(da3[b, r0:r0 + SPOOL_BLOCK_ROWS].values, dtype=np.float64)
                if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
                    block[block == nodata] = np.nan
                if scale != 1.0 or offset != 0.0:
                    block = block * scale + offset
                dst.write(block.astype(np.float32), b + 1,
                          window=rasterio.windows.Window(0, r0, w, block.shape[0]))
    return Path(path)


def _per_band(value: Any, n: int) -> list[str]:
    """An attribute as one string per band: rioxarray gives per-band tuples for
    multi-band files (``units``, ``long_name`` from band descriptions), CF one string."""
    if value is None:
        return [""] * n
    if isinstance(value, (tuple, list)):
        vals = [str(v or "") for v in value]
        return vals if len(vals) == n else [vals[0] if vals else ""] * n
    return [str(value)] * n


class Spool:
    """Temporary GeoTIFFs for the DataArrays of one API call; removed on close."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory | None = None
        self._n = 0

    def path(self, obj: Any, *, what: str, name: str | None = None) -> str:
        """``obj`` itself when it is a path, else the path of its spooled copy."""
        if not is_dataarray(obj):
            return os.fspath(obj)
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="geosr-spool-")
        self._n += 1
        stem = name or (str(obj.name) if obj.name is not None else what)
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or what
        target = Path(self._dir.name) / str(self._n) / f"{safe}.tif"
        target.parent.mkdir()
        log.debug("%s: spooling the DataArray to %s", what, target)
        return str(spool(obj, target, what=what))

    @property
    def folder(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="geosr-spool-")
        return Path(self._dir.name)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@contextlib.contextmanager
def spooled() -> Iterator[Spool]:
    s = Spool()
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def quiet_cf_crs() -> Iterator[None]:
    """Silence pyproj's "... lost in conversion to CF" while rioxarray writes a CRS.

    CF's grid-mapping attributes cannot hold every projection parameter (Swiss LV95's
    oblique Mercator loses the skew angle), so pyproj warns; rioxarray also writes the
    full WKT (``crs_wkt``/``spatial_ref``) beside them, which is what GDAL, rioxarray and
    geosr read back, so nothing is lost for them and the warning is noise to a user.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lost in conversion to CF",
                                category=UserWarning)
        yield


def open_output(path: str | os.PathLike, *, chunks: Any = True, load: bool = False):
    """A written output as a georeferenced DataArray.

    GeoTIFFs open with rioxarray (NaN nodata masked, band dates as a ``time``
    coordinate when every band has one); NetCDF and Zarr outputs with xarray. Lazy
    (dask) unless ``load``.
    """
    import rioxarray
    import xarray as xr

    path = Path(path)
    if path.suffix.lower() in (".nc", ".nc4", ".zarr"):
        opener = xr.open_zarr if path.suffix.lower() == ".zarr" else xr.open_dataset
        kw = {} if path.suffix.lower() == ".zarr" else {"chunks": {} if chunks else None}
        ds = opener(path, decode_coords="all", **kw)
        names = [v for v in ds.data_vars if ds[v].ndim >= 2]
        da = ds[names[0]]
    else:
        with rasterio.open(path) as src:
            bh, bw = src.block_shapes[0]
        if chunks is True:  # the file's blocks, one band at a time
            chunks = {"band": 1, "y": bh, "x": bw}
        with quiet_cf_crs():
            da = rioxarray.open_rasterio(path, masked=True, chunks=chunks or None)
        with rasterio.open(path) as src:
            dates = [src.tags(b).get("DATE_TIME", "") for b in src.indexes]
            units = src.units[0] or ""
            name = (src.descriptions[0] or "").split(" ")[0]
            tags = src.tags()
        if all(dates):
            try:
                times = np.array([np.datetime64(d) for d in dates])
            except ValueError:
                times = None
            if times is not None:
                da = da.rename(band="time").assign_coords(time=times)
        if units:
            da.attrs["units"] = units
        da.attrs.update({k: v for k, v in tags.items() if k.startswith("GEOSR_")})
        if name:
            da.name = name
    return da.load() if load else da
