"""Raster writers: aligned float32 GeoTIFFs, the stream-written stage file and its
copy to a Cloud-Optimized GeoTIFF, and the check that a written file is complete."""


from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from geosr.errors import (
    ProcessingError,
)
from geosr.grid import Grid
from geosr.io.read import _reason

log = logging.getLogger(__name__)

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
    return _create(path, gtiff_profile(grid, count), descriptions, units, tags)


def _create(path, profile: dict, descriptions: list[str] | None, units: list[str] | None,
            tags: dict | None) -> rasterio.io.DatasetWriter:
    """Open ``path`` for writing with ``profile``; set band descriptions, units and tags."""
    try:
        dst = rasterio.open(path, "w", **profile)
    except RasterioError as e:
        raise ProcessingError(f"{path}: cannot create ({e})") from e
    for b in range(1, profile["count"] + 1):
        if descriptions and descriptions[b - 1]:
            dst.set_band_description(b, descriptions[b - 1])
        if units and units[b - 1]:
            dst.set_band_unit(b, units[b - 1])
    if tags:
        dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return dst


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


COG_MIN_BLOCK = 128
"""Smallest BLOCKSIZE GDAL's COG driver accepts."""


def fitted_block(block: int, width: int, height: int) -> int:
    """``block``, or less for a raster smaller than one block: the next multiple of 16
    (TIFF tiles) above its larger side (a block as wide as the raster reads as untiled
    to rasterio). Why: a 92 x 92 px band in a 512 px tile is 31 times its size to fill,
    compress and write; 744 such bands took 4.3 s to copy."""
    return max(16, min(block, (max(width, height) // 16 + 1) * 16))


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
            # The layout follows the nominal block (the band count decides it); a raster
            # smaller than one block gets a smaller block.
            tile = src.count * int(opts["BLOCKSIZE"]) ** 2 * np.dtype(src.dtypes[0]).itemsize
            if "BLOCKSIZE" not in {k.upper() for k in options}:
                # GDAL's COG driver refuses (with a warning) blocks below 128 px.
                opts["BLOCKSIZE"] = str(max(COG_MIN_BLOCK, fitted_block(
                    int(opts["BLOCKSIZE"]), src.width, src.height)))
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


@contextlib.contextmanager
def stage_errors(path: str | os.PathLike) -> Iterator[None]:
    """A failed write to the stage file as a one-line :class:`ProcessingError` with the
    usual hint (an uncompressed stage fails in the write itself, not at the check)."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as e:
        raise ProcessingError(f"{path}: writing failed ({_reason(e)}); check free disk space "
                              "and file-size limits") from e


STAGE_RAW_MAX_BYTES = 1 << 30
"""Largest stage file written uncompressed (temporary disk space beside the output)."""


def open_stream_writer(path: str | os.PathLike, grid: Grid, count: int, *, block: int = 512,
                       block_rows: int = 32, descriptions: list[str] | None = None,
                       units: list[str] | None = None,
                       tags: dict | None = None) -> rasterio.io.DatasetWriter:
    """Create a temporary float32 GeoTIFF for streamed writes ahead of a COG copy.

    Band-interleaved, so that bands written in separate passes never rewrite a block;
    wide, short tiles (``block`` x ``block_rows``) so that a writer holding back a
    partial row of blocks holds little; ZSTD level 1 without predictor: the file is
    written once, read once by :func:`translate_to_cog` and deleted, so speed matters
    more than size. Up to :data:`STAGE_RAW_MAX_BYTES` of pixels, not compressed at all:
    the file then stays in the page cache and its compression and two decodings (the
    COG driver reads it for the overviews and again for the copy) are saved. Write whole
    rows of blocks (row offsets multiple of ``block_rows``).
    """
    profile = {**gtiff_profile(grid, count, block=block), "compress": "zstd", "zstd_level": 1,
               "interleave": "band"}
    if 4 * count * grid.width * grid.height <= STAGE_RAW_MAX_BYTES:
        profile["compress"] = "none"
        profile.pop("zstd_level")
    if profile.get("tiled"):
        profile["blockxsize"] = fitted_block(block, grid.width, 0)
        profile["blockysize"] = block_rows
    profile.pop("predictor", None)
    return _create(path, profile, descriptions, units, tags)
