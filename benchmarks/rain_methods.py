"""Which method without a model for precipitation: bicubic + conservation or sharpening.

MeteoSwiss 1 km monthly (RhiresM 2023-05) and annual (RhiresY 2022) precipitation
averaged over 8 and 16 km cells on the 1 km grid's own origin (cells at least half
covered), downscaled back to 1 km with the Swiss DEM, and scored (RMSE, mm) against the
1 km field: plain bicubic, bicubic and regression sharpening each kept non-negative
with every cell's mean restored (what ``downscale`` does to rain by default). The
daily case is in ``benchmarks/accuracy.py`` (``uk-rainfall``: ``bicubic 0:``,
``sharpen 0:``).

    python benchmarks/rain_methods.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import CH, meteoswiss  # noqa: E402

from geosr.baselines import sharpen, upsample  # noqa: E402
from geosr.constraints import bounded_conserve  # noqa: E402


def _field(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1 km field and the DEM averaged onto its grid."""
    with rasterio.open(meteoswiss(name)) as src:
        truth = src.read(1, masked=True).filled(np.nan).astype(np.float32)
        transform, crs = src.transform, src.crs
    dem = np.full(truth.shape, np.nan, np.float32)
    with rasterio.open(CH / "aux" / "swissAltitude_geostatsp.tif") as aux:
        reproject(rasterio.band(aux, 1), dem, dst_transform=transform, dst_crs=crs,
                  resampling=Resampling.average)
    return truth, dem


def scores(truth: np.ndarray, dem: np.ndarray, f: int) -> dict[str, float]:
    h, w = (truth.shape[0] // f) * f, (truth.shape[1] // f) * f
    t, d = truth[:h, :w], dem[:h, :w]
    blocks = t.reshape(h // f, f, w // f, f)
    cover = np.isfinite(blocks).mean(axis=(1, 3))
    total = np.where(np.isfinite(blocks), blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        coarse = np.where(cover >= 0.5, total / (cover * f * f), np.nan)
    coarse = coarse.astype(np.float32)
    up = np.repeat(np.repeat(np.isfinite(coarse), f, 0), f, 1)
    ok = np.isfinite(t) & up & np.isfinite(d)
    dem_filled = np.where(np.isfinite(d), d, np.nanmean(d))[None]
    bic = upsample(coarse, f, "bicubic")
    preds = {"bicubic": bic,
             "bicubic 0:": bounded_conserve(bic[None].copy(), coarse[None], f, lo=0.0)[0],
             "sharpen 0:": bounded_conserve(sharpen(coarse, dem_filled, f)[None]
                                            .astype(np.float32), coarse[None], f, lo=0.0)[0]}
    return {k: float(np.sqrt(np.mean((p[ok] - t[ok]) ** 2))) for k, p in preds.items()}


def main() -> None:
    if not CH.is_dir():
        sys.exit(f"real data not found under {CH.parent}")
    print(f"{'field':<10}{'cells':>7}{'bicubic':>10}{'bicubic 0:':>12}{'sharpen 0:':>12}")
    for name in ("RhiresM", "RhiresY"):
        truth, dem = _field(name)
        for f in (8, 16):
            s = scores(truth, dem, f)
            print(f"{name:<10}{f:>5}km{s['bicubic']:10.3f}{s['bicubic 0:']:12.3f}"
                  f"{s['sharpen 0:']:12.3f}")


if __name__ == "__main__":
    main()
