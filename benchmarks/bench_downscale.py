"""Speed, memory and tiling overhead of ``geosr downscale``, against a plain COG copy.

Writes synthetic inputs to a temporary folder: a terrain DEM on the 1 km grid (a
2048^2 fractal (spectral synthesis) stretched over the area plus three octaves of value
noise for fine relief, written window by window) and a 10 km coarse temperature field
(lapse rate x block-mean elevation + a smooth regional gradient), factor 16. For each
output size (2k^2, 8k^2 and 16k^2 px) and method, ``geosr downscale ... --json`` runs in a
fresh process, so the peak RSS it reports (``getrusage``) belongs to that size alone.

The floor: a plain COG copy of the DEM (read, overviews, deflate: GDAL's COG driver with
the options and cache ``downscale`` uses), in a fresh process, run alternately with
each method so that both see the same machine; every figure is printed as a ratio to
it, with the run's stage breakdown (``--json``'s ``stages``: read, align, fit, predict,
blend, conserve, stage, overviews+compress; tile stages in thread-seconds).

Methods: ``sharpen`` (the default without a model), ``bicubic`` and ``net`` (the shipped, trained
``alps-t2m`` model: its measured halo sets the overlap, so the cost is the real one).
The tiling overhead is the time with the default tiles over the time with one tile
covering the whole area (``--tile`` >= the area), on an area small enough for one shot.

    python benchmarks/bench_downscale.py [--sizes 2000 8000 16000] [--repeat 3]
        [--methods sharpen bicubic net] [--res 500 --factor 20] [--data DIR]
        [--workers N] [--overhead]

Targets: sharpening <= 1.5x and bicubic <= 1.2x the COG copy (8000^2, 500 m, factor
20); peak RSS <= 1.5 GB and growing <= 1.2x from 2k^2 to 16k^2; >= 2.5 Mpx/s with the
shipped network on a 2-core CPU (at its own grid, 1000 m, factor 16); tiling overhead
<= 1.25x (``--overhead``). Inputs are kept in ``--data`` (default /tmp/geosr-bench).
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
from affine import Affine
from scipy import ndimage

RES = 1000.0
FACTOR = 16  # the shipped alps-t2m model's grid (16 km -> 1 km)
LEFT, TOP = 300_000.0, 5_400_000.0
CRS = "EPSG:32632"
BLOCK = 2000  # generator window, a multiple of FACTOR


def _value_noise(rows: np.ndarray, cols: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth lattice noise in [-1, 1] at fine pixel coordinates (window-independent)."""
    y = rows[:, None] / cell
    x = cols[None, :] / cell
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - iy, x - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)

    def h(a, b):
        v = (a * 73856093) ^ (b * 19349663) ^ (seed * 83492791)
        v = (v ^ (v >> 13)) * 1274126177
        return ((v ^ (v >> 16)) & 0xFFFF) / 32767.5 - 1.0

    v00, v01 = h(iy, ix), h(iy, ix + 1)
    v10, v11 = h(iy + 1, ix), h(iy + 1, ix + 1)
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def make_inputs(folder: Path, n: int, res: float = RES, factor: int = FACTOR
                ) -> tuple[Path, Path]:
    """DEM (n x n at ``res``) and coarse field ((n/factor)^2); reused when present."""
    from geosr.sample_data import fractal_dem

    RES, FACTOR = res, factor  # noqa: N806 (the generator below is written for these)
    folder.mkdir(parents=True, exist_ok=True)
    tag = "" if (res, factor) == (1000.0, 16) else f"_{res:g}m_f{factor}"
    dem_path, coarse_path = folder / f"dem_{n}{tag}.tif", folder / f"t2m_{n}{tag}.tif"
    if dem_path.exists() and coarse_path.exists():
        return dem_path, coarse_path
    base = fractal_dem((2048, 2048), res_m=RES * max(n, 2048) / 2048, seed=7)
    block = BLOCK // FACTOR * FACTOR
    nc = n // FACTOR
    coarse = np.empty((nc, nc), np.float32)
    prof = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "float32",
            "crs": CRS, "transform": Affine(RES, 0, LEFT, 0, -RES, TOP), "tiled": True,
            "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 3,
            "nodata": float("nan"), "BIGTIFF": "IF_SAFER"}
    with rasterio.open(dem_path, "w", **prof) as dst:
        for r0 in range(0, n, block):
            rows = np.arange(r0, min(r0 + block, n), dtype=np.float64)
            for c0 in range(0, n, block):
                cols = np.arange(c0, min(c0 + block, n), dtype=np.float64)
                yy = (rows + 0.5) * 2048 / n - 0.5
                xx = (cols + 0.5) * 2048 / n - 0.5
                gy, gx = np.meshgrid(yy, xx, indexing="ij")
                dem = ndimage.map_coordinates(base, [gy, gx], order=1, mode="nearest")
                for k, cell in enumerate((40.0, 12.0, 4.0)):
                    dem += (120.0 / (k + 1)) * _value_noise(rows, cols, cell, seed=k)
                dem = np.clip(dem, 0, None).astype(np.float32)
                dst.write(dem[None], window=rasterio.windows.Window(c0, r0, len(cols), len(rows)))
                blocks = dem.reshape(len(rows) // FACTOR, FACTOR, len(cols) // FACTOR, FACTOR)
                coarse[r0 // FACTOR:(r0 + len(rows)) // FACTOR,
                       c0 // FACTOR:(c0 + len(cols)) // FACTOR] = blocks.mean(axis=(1, 3))
    yc, xc = np.mgrid[0:nc, 0:nc] / max(nc, 1)
    t2m = 24.0 - 0.0065 * coarse + 2.0 * xc - 1.5 * yc
    cprof = {**prof, "width": nc, "height": nc, "blockxsize": 256, "blockysize": 256,
             "transform": Affine(RES * FACTOR, 0, LEFT, 0, -RES * FACTOR, TOP),
             "tiled": nc >= 256}
    if nc < 256:
        cprof.pop("blockxsize")
        cprof.pop("blockysize")
    with rasterio.open(coarse_path, "w", **cprof) as dst:
        dst.write(t2m.astype(np.float32)[None])
        dst.set_band_unit(1, "degC")
    return dem_path, coarse_path


def make_bundle(folder: Path) -> Path | None:
    """The shipped, trained ``alps-t2m`` model: its measured halo sets the tile overlap."""
    from geosr.model.registry import resolve_model

    return resolve_model("alps-t2m")


FLOOR = """
import json, sys, time
import rasterio, rasterio.shutil
from geosr.io.read import gdal_env
from geosr.io.sinks import COG_DEFLATE_LEVEL
from geosr.io.write import COG_OPTIONS
t = time.perf_counter()
with gdal_env():
    rasterio.shutil.copy(sys.argv[1], sys.argv[2], driver="COG",
                         **{**COG_OPTIONS, "LEVEL": str(COG_DEFLATE_LEVEL)})
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def copy_floor(src: Path, out: Path) -> float:
    """Seconds of a plain COG copy of ``src`` (read, overviews, deflate; the same COG
    options and GDAL cache as ``downscale``'s output), in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", FLOOR, str(src), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"COG copy failed: {proc.stderr}")
    return json.loads(proc.stdout)["seconds"]


def run_once(coarse: Path, dem: Path, out: Path, *, method: str, model: Path | None,
             tile: int | None = None, workers: int | None = None, res: float = RES,
             factor: int = FACTOR) -> dict:
    cmd = [sys.executable, "-m", "geosr", "downscale", str(coarse), "--aux", f"dem={dem}",
           "-o", str(out), "--overwrite", "--json", "--res", f"{res:g}", "--factor", str(factor)]
    if model is not None:
        cmd += ["--model", str(model)]
    else:
        cmd += ["--method", method]
    if tile:
        cmd += ["--tile", str(tile)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return json.loads(proc.stdout)


def stages_line(runs: list[dict]) -> str:
    """Median seconds per stage (tile stages in thread-seconds)."""
    names = list(dict.fromkeys(k for r in runs for k in r.get("stages", {})))
    return "  ".join(f"{k} {statistics.median(r.get('stages', {}).get(k, 0.0) for r in runs):.2f}"
                     for k in names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per size (median); sizes "
                    "above 8000 px run once unless --repeat-large")
    ap.add_argument("--repeat-large", action="store_true")
    ap.add_argument("--methods", nargs="+", default=["sharpen", "bicubic", "net"])
    ap.add_argument("--res", type=float, default=RES, help="output cell (m); the network "
                    "runs at its own grid (1000 m, factor 16)")
    ap.add_argument("--factor", type=int, default=FACTOR)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "geosr-bench",
                    help="generated inputs, kept between runs")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--overhead", action="store_true", help="also the tiled / one-shot ratio")
    ap.add_argument("--overhead-size", type=int, default=2000,
                    help="area (px) for the tiled / one-shot ratio (sharpen)")
    ap.add_argument("--overhead-size-net", type=int, default=1024,
                    help="area (px) for the tiled / one-shot ratio (net; one tile must fit)")
    args = ap.parse_args(argv)

    data = args.data
    model = make_bundle(data) if "net" in args.methods else None
    methods = [m for m in args.methods if m != "net" or model is not None]

    def grid(method: str) -> tuple[float, int]:
        return (RES, FACTOR) if method == "net" else (args.res, args.factor)

    rows = []
    for n in args.sizes:
        reps = args.repeat if (n <= 8000 or args.repeat_large) else 1
        for method in methods:
            res, factor = grid(method)
            dem, coarse = make_inputs(data, n, res, factor)
            runs, copies = [], []
            for _ in range(reps):  # floor and method interleaved: the same conditions
                copies.append(copy_floor(dem, data / "floor.tif"))
                runs.append(run_once(coarse, dem, data / f"out_{method}_{n}.tif", method=method,
                                     model=model if method == "net" else None,
                                     workers=args.workers, res=res, factor=factor))
            floor = statistics.median(copies)
            secs = statistics.median(r["seconds"] for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            rows.append((method, n, reps, secs, n * n / 1e6 / secs, rss))
            print(f"{method:8s} {n:>6d}^2 ({res:g} m, factor {factor})  runs {reps}  "
                  f"{secs:8.2f} s  {n * n / 1e6 / secs:7.2f} Mpx/s  peak RSS {rss:6.0f} MB  "
                  f"COG copy {floor:6.2f} s  ratio {secs / floor:5.2f}x", flush=True)
            print(f"{'':8s} stages (s): {stages_line(runs)}", flush=True)
    for method in methods:
        rss = {n: r[5] for r in rows if r[0] == method for n in [r[1]]}
        if len(rss) >= 2:
            lo, hi = min(rss), max(rss)
            print(f"{method:8s} RSS growth {lo}^2 -> {hi}^2: {rss[hi] / rss[lo]:.2f}x")

    if not args.overhead:
        return
    for method in methods:
        res, factor = grid(method)
        n = args.overhead_size_net if method == "net" else args.overhead_size
        dem, coarse = make_inputs(data, n, res, factor)
        mdl = model if method == "net" else None
        tiled = [run_once(coarse, dem, data / "ov_t.tif", method=method, model=mdl,
                          workers=args.workers, res=res, factor=factor)["seconds"]
                 for _ in range(args.repeat)]
        whole = [run_once(coarse, dem, data / "ov_w.tif", method=method, model=mdl,
                          tile=n + 1000, workers=args.workers, res=res, factor=factor)["seconds"]
                 for _ in range(args.repeat)]
        t, w = statistics.median(tiled), statistics.median(whole)
        print(f"{method:8s} tiling overhead on {n}^2: tiled {t:.2f} s / one-shot {w:.2f} s "
              f"= {t / w:.2f}x")


if __name__ == "__main__":
    main()
