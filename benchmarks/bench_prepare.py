"""Speed and memory of ``geosr prepare``, and the same reprojection with ``gdalwarp``.

For each size N, writes a synthetic 250 m DEM in EPSG:4326 covering an N x N grid of
500 m cells (UTM 32N) plus a coarse field, then times ``geosr prepare`` (coarse input +
DEM aux -> 500 m grid) in a fresh process and reads its peak RSS. Where ``gdalwarp`` is
installed (Debian's gdal-bin), the DEM reprojection alone is timed with
``gdalwarp -t_srs EPSG:32632 -tr 500 500 -tap -r average`` (same grid, same kernel,
deflate-compressed tiled output, same thread count) for comparison.

    python benchmarks/bench_prepare.py [--sizes 2000 8000] [--repeat 3]

Prints a table: size, prepare seconds (median), Mpx/s, peak RSS, gdalwarp seconds, ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from geosr.prepare import PrepareConfig, prepare
from geosr.sources import LayerSpec
coarse, dem, out = sys.argv[1:4]
t0 = time.perf_counter()
prepare(PrepareConfig(out_dir=Path(out), coarse=(coarse,), aux=(LayerSpec("dem", dem),),
                      res_m=500.0, factor=20, overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_inputs(folder: Path, n_fine: int) -> tuple[Path, Path, tuple]:
    """DEM in lon/lat at ~250 m and a 10 km coarse field in UTM, covering n_fine^2 at 500 m."""
    left, top = 400_000.0, 5_300_000.0
    size_m = n_fine * 500.0
    utm = (left, top - size_m, left + size_m, top)
    lon0, lat0, lon1, lat1 = transform_bounds("EPSG:32632", "EPSG:4326", *utm, densify_pts=21)
    step = 0.0025  # ~250 m in latitude
    w = int(np.ceil((lon1 - lon0) / (step * 1.45))) + 2
    h = int(np.ceil((lat1 - lat0) / step)) + 2
    dem_path = folder / "dem.tif"
    prof = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "float32",
            "crs": "EPSG:4326",
            "transform": Affine(step * 1.45, 0, lon0 - step, 0, -step, lat1 + step),
            "tiled": True, "compress": "deflate", "nodata": float("nan")}
    rng = np.random.default_rng(0)
    with rasterio.open(dem_path, "w", **prof) as dst:
        for _, win in dst.block_windows(1):
            y, x = np.mgrid[win.row_off:win.row_off + win.height,
                            win.col_off:win.col_off + win.width]
            block = (1000 + 800 * np.sin(x / 97.0) * np.cos(y / 61.0)
                     + rng.normal(0, 5, (win.height, win.width)))
            dst.write(block.astype("float32"), 1, window=win)
    nc = n_fine // 20
    coarse_path = folder / "coarse.tif"
    with rasterio.open(coarse_path, "w", driver="GTiff", width=nc, height=nc, count=1,
                       dtype="float32", crs="EPSG:32632",
                       transform=Affine(10_000, 0, left, 0, -10_000, top)) as dst:
        dst.write(rng.normal(10, 3, (1, nc, nc)).astype("float32"))
    return coarse_path, dem_path, utm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gdalwarp = shutil.which("gdalwarp")
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            coarse, dem, utm = make_inputs(tmp, n)
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run([sys.executable, "-c", CHILD, str(coarse), str(dem),
                                      str(tmp / "ds")],
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            sec = statistics.median(r["seconds"] for r in runs)
            rss = max(r["peak_rss_mb"] for r in runs)
            warp = None
            if gdalwarp:
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    subprocess.run([gdalwarp, "-q", "-overwrite", "-t_srs", "EPSG:32632",
                                    "-tr", "500", "500",
                                    "-te", *map(str, utm), "-r", "average", "-ot", "Float32",
                                    "-co", "TILED=YES", "-co", "COMPRESS=DEFLATE",
                                    "-co", "PREDICTOR=3",
                                    str(dem), str(tmp / "warp.tif")], check=True)
                    times.append(time.perf_counter() - t0)
                warp = statistics.median(times)
            rows.append((n, sec, n * n / sec / 1e6, rss, warp))
    print(f"{'fine grid':>12} {'prepare s':>10} {'Mpx/s':>8} {'peak RSS MB':>12} "
          f"{'gdalwarp s':>11} {'ratio':>6}")
    for n, sec, mpx, rss, warp in rows:
        w = f"{warp:11.2f}" if warp else f"{'n/a':>11}"
        r = f"{sec / warp:6.2f}" if warp else f"{'':>6}"
        print(f"{f'{n}x{n}':>12} {sec:10.2f} {mpx:8.2f} {rss:12.0f} {w} {r}")
    print("prepare = coarse (10 km) onto the coarse grid + 250 m lon/lat DEM onto the 500 m UTM"
          " grid; gdalwarp = the DEM step alone")


if __name__ == "__main__":
    main()
