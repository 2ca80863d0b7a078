"""The only code that opens paths: rasters read as the file means them, writers, and
atomic outputs.

- :mod:`geosr.io.read`: inspection (:func:`raster_info`) and windowed, aligned reads.
- :mod:`geosr.io.write`: GeoTIFF writers, the stage file and its Cloud-Optimized copy.
- :mod:`geosr.io.sinks`: the output format by extension, and the stage file's copy to a
  COG, a CF NetCDF file or a Zarr store.
- :mod:`geosr.io.atomic`: outputs built under a temporary name, moved into place when
  complete.
"""

from geosr.io.atomic import (
    TMP_TAG,
    atomic_dir,
    atomic_path,
    check_output_dir,
    check_output_file,
)
from geosr.io.read import (
    AlignedReader,
    OnGridReader,
    RasterInfo,
    band_dates,
    class_raster_reason,
    container_file,
    gdal_env,
    gdal_name,
    open_raster,
    raster_info,
    read_full,
    read_window,
    source_crs,
)
from geosr.io.sinks import (
    OUTPUT_SUFFIXES,
    OutputFormat,
    atomic_output,
    check_output,
    output_format,
    write_output,
)
from geosr.io.write import (
    check_written,
    gtiff_profile,
    open_stream_writer,
    open_writer,
    translate_to_cog,
)

__all__ = [
    "OUTPUT_SUFFIXES", "TMP_TAG", "AlignedReader", "OnGridReader", "OutputFormat",
    "RasterInfo", "atomic_dir", "atomic_output", "atomic_path", "band_dates", "check_output",
    "check_output_dir", "check_output_file", "check_written", "class_raster_reason",
    "container_file", "gdal_env", "gdal_name", "gtiff_profile", "open_raster",
    "open_stream_writer", "open_writer", "output_format", "raster_info", "read_full",
    "read_window", "source_crs", "translate_to_cog", "write_output",
]
