"""Calibration and cost of probabilistic outputs on real data.

MeteoSwiss monthly temperature at 1 km with the Swiss DEM and land types, coarsened to
16 km: a deterministic and a ``--probabilistic`` network are trained on TmaxM + TminY
(eastern quarter held out for validation and the spread calibration), then applied to
TabsM 2023-05, a field neither saw. Prints, on the TabsM pixels:

- the best estimates' RMSE (deterministic vs probabilistic, and sharpening);
- the 5-95 % interval's coverage of the truth, its mean width against 3.29 x RMSE (the
  width of a calibrated Gaussian interval), and whether it brackets the best estimate;
- the same for the sharpening interval (no model);
- the fair CRPS and spread/skill of 10 members, and their worst conservation error;
- time and peak traced memory of ``--quantiles 0.05,0.95`` and ``--members 10`` against
  the plain run (median of ``--repeat`` runs).

    python benchmarks/uncertainty.py --work /tmp/geosr-unc --minutes 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from _data import CH
from accuracy import CH_AUX, build
from rasterio.enums import Resampling

from geosr.arrays import block_mean
from geosr.dataset.manifest import read_manifest
from geosr.evaluate.probabilistic import ensemble_scores, interval_scores
from geosr.evaluate.validate import _grid_of
from geosr.inference.config import DownscaleConfig
from geosr.inference.run import downscale
from geosr.io.read import AlignedReader, raster_info
from geosr.training.config import TrainConfig
from geosr.training.loop import train


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(masked=True).filled(np.nan).astype(np.float64)


def _run(coarse: str, out: Path, model: Path | None, **kw) -> tuple[float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    downscale(DownscaleConfig(coarse=(coarse,), aux=CH_AUX, out=out, model=str(model) if model
                              else None, overwrite=True, workers=1, **kw))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/geosr-uncertainty"))
    ap.add_argument("--minutes", type=float, default=3.0, help="training time per model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not CH.is_dir():
        raise SystemExit(f"{CH} not found: the real sample data are needed")
    args.work.mkdir(parents=True, exist_ok=True)
    exp = build("ch16", args.work)
    models = {}
    for name, prob in (("det", False), ("prob", True)):
        models[name] = args.work / f"ch16-{name}.geosr"
        if not models[name].exists():
            train(TrainConfig(dataset=exp.train_ds, out=models[name], epochs=200,
                              max_minutes=args.minutes, patch=6, val_block=0.25, device="cpu",
                              threads=args.threads, overwrite=True, probabilistic=prob))
    m = read_manifest(exp.test_ds)
    coarse_path = str(m.path_of(m.coarse))
    f = m.factor
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    _run(coarse_path, out / "det.tif", models["det"])
    _run(coarse_path, out / "prob.tif", models["prob"], quantiles=(0.05, 0.95), members=10)
    _run(coarse_path, out / "sharp.tif", None, quantiles=(0.05, 0.95), members=10, res_m=1000.0)
    print(f"MeteoSwiss TabsM 2023-05, 16 km -> 1 km, unseen field; training {args.minutes:g} "
          f"min per model, {args.threads} thread(s)")
    # the outputs cover where the coarse input and the aux both have data: read the truth
    # and the coarse field on the output's grid
    grid = _grid_of(raster_info(str(out / "det.tif")))
    with AlignedReader(str(m.path_of(m.target)), grid, Resampling.nearest) as rd:
        truth = rd.read().astype(np.float64)
    with AlignedReader(coarse_path, grid.coarsen(f), Resampling.nearest) as rd:
        coarse = rd.read().astype(np.float64)
    det = _read(out / "det.tif")
    rmse_det = float(np.sqrt(np.nanmean((det - truth) ** 2)))
    print(f"deterministic network: RMSE {rmse_det:.3f} degC")
    for name in ("prob", "sharp"):
        best = _read(out / f"{name}.tif")
        lo, hi = _read(out / f"{name}_q05.tif"), _read(out / f"{name}_q95.tif")
        mem = _read(out / f"{name}_members.tif")
        ok = np.isfinite(best) & np.isfinite(truth)
        rmse = float(np.sqrt(np.mean((best[ok] - truth[ok]) ** 2)))
        iv = interval_scores(lo, hi, truth)
        brackets = bool(((lo <= best) & (best <= hi))[np.isfinite(best)].all())
        ens = ensemble_scores(mem.reshape(10, -1, *mem.shape[1:]), truth)
        cons = max(float(np.nanmax(np.abs(block_mean(mem[k:k + 1], f) - coarse[:1])
                                   / np.nanmax(np.abs(coarse)))) for k in range(mem.shape[0]))
        label = "probabilistic network" if name == "prob" else "sharpening (no model)"
        print(f"{label}: RMSE {rmse:.3f} degC ({rmse / rmse_det - 1:+.1%} vs deterministic); "
              f"5-95% coverage {iv['interval_coverage']:.1%}, mean width "
              f"{iv['interval_width']:.3f} = {iv['interval_width'] / (3.29 * rmse):.2f} x 3.29 "
              f"RMSE; brackets the estimate: {brackets}; 10 members: CRPS "
              f"{ens['crps']:.3f}, spread/skill {ens['spread_skill']:.2f}, worst conservation "
              f"error {cons:.1e} (relative)")
    runs = {"plain": {}, "quantiles": {"quantiles": (0.05, 0.95)}, "members": {"members": 10}}
    for name in ("prob",):
        base = None
        for label, kw in runs.items():
            ts, ps = [], []
            for _ in range(args.repeat):
                t, p = _run(coarse_path, out / f"cost-{label}.tif", models[name], **kw)
                ts.append(t)
                ps.append(p)
            t, p = statistics.median(ts), statistics.median(ps)
            base = base or (t, p)
            print(f"cost {label:10s}: {t:.2f} s ({t / base[0]:.2f}x), peak traced memory "
                  f"{p:.0f} MiB ({p / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
