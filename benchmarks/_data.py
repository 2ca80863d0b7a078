"""Locating the real sample data and deriving benchmark inputs from it (into a temp folder).

Nothing here is copied into the repository; derived files are written where asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CH = REAL / "meteoswiss-ch-1km"
UK = REAL / "haduk-cornwall-1km-may2018"


def meteoswiss(field: str) -> Path:
    """Path of a MeteoSwiss GeoTIFF by variable prefix (TabsM, TmaxM, TminY, RhiresM, ...)."""
    return next((CH / "geotiff").glob(f"{field}_*.tif"))


def era5_daily(out: Path, *, stat: str = "max") -> Path:
    """ERA5 hourly 2 m temperature (0.25 deg) -> daily max/min in degC, one band per day.

    Days are UTC calendar days of May 2018 (band i = 2018-05-i), matching HadUK-Grid's
    daily fields (HadUK's day runs 09-09 UTC, a known, small mismatch for Tmax).
    """
    nc = UK / "coarse_real" / "era5_cornwall_201805_hourly_instant.nc"
    with rasterio.open(f'NETCDF:"{nc}":t2m') as src:
        hourly = src.read(masked=True).filled(np.nan).astype(np.float64)
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 31,
                   "dtype": "float32", "crs": "EPSG:4326", "transform": src.transform,
                   "nodata": float("nan")}
    days = hourly.reshape(31, 24, *hourly.shape[1:])
    daily = (days.max(axis=1) if stat == "max" else days.min(axis=1)) - 273.15
    path = Path(out) / f"era5_t2m_daily{stat}_201805.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(daily.astype(np.float32))
        for b in range(1, 32):
            dst.update_tags(b, DATE_TIME=f"2018-05-{b:02d}")
            dst.set_band_unit(b, "degC")
    return path
