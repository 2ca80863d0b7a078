"""Peak memory and speed of ``geosr downscale`` against the number of bands (time steps).

Input: ERA5 hourly 2 m temperature over Cornwall, May 2018 (0.25 deg lon/lat, 744 hourly
bands, K) from ``../shared/data/real``; its first N bands are written as float32
GeoTIFFs (EPSG:4326, same georeferencing, dates and units) to a temporary folder, and
the NetCDF itself is run as a whole. Aux: the 1 km Tellus SW DEM (EPSG:27700). Each run
is ``geosr downscale ... --json`` in a fresh process, so its peak RSS (``VmHWM``) is its
own; regression sharpening (the default without a model), output on EPSG:27700.

    python benchmarks/bench_bands.py [--bands 24 168 744] [--res 1000 500] [--repeat 3]

Target: memory flat in the band count, i.e. peak RSS for 744 bands <= 1.25 x that for 24
bands + 100 MB, at each resolution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import UK  # noqa: E402

NC = UK / "coarse_real" / "era5_cornwall_201805_hourly_instant.nc"
DEM = UK / "aux" / "dtmm.tif"
NC_NAME = f'NETCDF:"{NC}":t2m'


def first_bands(out: Path, n: int) -> Path:
    """The first ``n`` hourly bands of the ERA5 file as a float32 GeoTIFF."""
    path = out / f"era5_t2m_{n}.tif"
    with rasterio.open(NC_NAME) as src:
        n = min(n, src.count)
        data = src.read(list(range(1, n + 1)), masked=True).filled(np.nan).astype(np.float32)
        tags = [src.tags(b) for b in range(1, n + 1)]
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": n,
                   "dtype": "float32", "crs": "EPSG:4326", "transform": src.transform,
                   "nodata": float("nan")}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for b, t in enumerate(tags, start=1):  # hourly from 2018-05-01 00:00 UTC
            dst.update_tags(b, DATE_TIME=f"2018-05-{(b - 1) // 24 + 1:02d}T{(b - 1) % 24:02d}:00")
            dst.set_band_unit(b, t.get("units", "K"))
    return path


def run_once(coarse: str, out: Path, res: float) -> dict:
    cmd = [sys.executable, "-m", "geosr", "downscale", coarse, "--aux", f"dem={DEM}",
           "--crs", "EPSG:27700", "--res", f"{res:g}", "-o", str(out), "--overwrite", "--json",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bands", type=int, nargs="+", default=[24, 168, 744])
    ap.add_argument("--res", type=float, nargs="+", default=[1000.0, 500.0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    ap.add_argument("--no-netcdf", action="store_true", help="skip the NetCDF run as a whole")
    args = ap.parse_args(argv)
    if not NC.exists() or not DEM.exists():
        print(f"skipped: the ERA5/HadUK sample data is not available ({UK})")
        return 0

    with tempfile.TemporaryDirectory(prefix="geosr-bench-bands-") as tmp:
        folder = Path(tmp)
        inputs = [(str(n), str(first_bands(folder, n))) for n in args.bands]
        if not args.no_netcdf:
            inputs.append(("744 (NetCDF)", NC_NAME))
        print(f"{'res':>6s} {'bands':>13s} {'runs':>4s} {'seconds':>8s} {'Mpx/s':>7s} "
              f"{'peak RSS':>9s}")
        peaks: dict[tuple[float, str], float] = {}
        for res in args.res:
            for label, coarse in inputs:
                runs = [run_once(coarse, folder / "out.tif", res) for _ in range(args.repeat)]
                secs = statistics.median(r["seconds"] for r in runs)
                mpx = runs[0]["megapixels"]
                rss = statistics.median(r["peak_rss_mb"] for r in runs)
                peaks[res, label] = rss
                print(f"{res:6g} {label:>13s} {args.repeat:4d} {secs:8.2f} {mpx / secs:7.2f} "
                      f"{rss:6.0f} MB", flush=True)
        lo, hi = str(min(args.bands)), str(max(args.bands))
        ok = True
        for res in args.res:
            for big in (hi, "744 (NetCDF)"):
                if (res, big) not in peaks or big == lo:
                    continue
                small, large = peaks[res, lo], peaks[res, big]
                limit = 1.25 * small + 100
                passed = large <= limit
                ok &= passed
                print(f"res {res:g} m: {big} bands {large:.0f} MB vs {lo} bands {small:.0f} MB "
                      f"({large / small:.2f}x); rule <= 1.25 x {small:.0f} + 100 = {limit:.0f} "
                      f"MB: {'pass' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
