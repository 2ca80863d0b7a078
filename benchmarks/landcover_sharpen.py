"""Does a land-cover layer help regression sharpening? Real MeteoSwiss temperature.

The 1 km MeteoSwiss TabsM (May 2023) is block-averaged by 16 on its own grid (16 km
cells, the user's own coarse raster); ``geosr downscale`` then sharpens it back to
1 km with three aux sets, and each output is scored (RMSE, degC) against the 1 km
truth on the truth's pixels:

- ``dem``: the DEM (swissAltitude) alone;
- ``dem+landtype``: the DEM and the MODIS land type (IGBP classes, uint8), given
  without a suffix: detected as a class raster, used as class indicators;
- ``dem+landtype:continuous``: the land type forced numeric (one slope per class
  number, the old behaviour).

    python benchmarks/landcover_sharpen.py [--lattice] [--json FILE]

``--lattice`` takes the 16 km blocks on multiples of 16 km instead of the truth's own
origin, so that the coarse input needs no resampling onto geosr's coarse grid.

Needs ``../shared/data/real``; writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from geosr.cli.options import parse_layers
from geosr.inference.config import DownscaleConfig
from geosr.inference.run import downscale

CH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "meteoswiss-ch-1km"
TABS = CH / "geotiff" / "TabsM_ch01r.swiss.lv95_202305010000_202305010000.tif"
DEM = CH / "aux" / "swissAltitude_geostatsp.tif"
LAND = CH / "aux" / "swissLandType_geostatsp.tif"
FACTOR = 16
RUNS = {
    "dem": [f"dem={DEM}"],
    "dem+landtype": [f"dem={DEM}", f"landtype={LAND}"],
    "dem+landtype:continuous": [f"dem={DEM}", f"landtype={LAND}:continuous"],
}


def block_mean(src: Path, dst: Path, f: int, *, lattice: bool = False) -> None:
    """Mean of each ``f x f`` block of valid cells, on the source's own grid origin, or
    (``lattice``) on blocks whose corners are multiples of the block size in metres."""
    with rasterio.open(src) as s:
        y, t, crs = s.read(1, masked=True).filled(np.nan).astype("f8"), s.transform, s.crs
    if lattice:
        size = f * t.a
        c0 = round((-t.c % size) / t.a)
        r0 = round((t.f % size) / t.a)
        y, t = y[r0:, c0:], t * Affine.translation(c0, r0)
    h, w = y.shape[0] // f, y.shape[1] // f
    with np.errstate(all="ignore"):
        c = np.nanmean(y[:h * f, :w * f].reshape(h, f, w, f), axis=(1, 3)).astype("f4")
    with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                       crs=crs, nodata=np.nan,
                       transform=Affine(t.a * f, 0, t.c, 0, t.e * f, t.f)) as d:
        d.write(c, 1)


def rmse_vs_truth(pred: Path) -> float:
    with rasterio.open(pred) as P, rasterio.open(TABS) as T:
        win = rasterio.windows.from_bounds(*T.bounds, P.transform)
        p = P.read(1, window=win, boundless=True, masked=True).filled(np.nan)
        t = T.read(1, masked=True).filled(np.nan)
    ok = np.isfinite(p) & np.isfinite(t)
    return float(np.sqrt(np.mean((p[ok] - t[ok]) ** 2)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--lattice", action="store_true",
                    help="coarse cells on multiples of 16 km (the coarse grid geosr snaps to) "
                         "instead of the truth's own origin")
    args = ap.parse_args(argv)
    if not TABS.is_file():
        print(f"{TABS}: not found; this benchmark needs ../shared/data/real", file=sys.stderr)
        return 2
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        coarse = Path(tmp) / "tabs_16km.tif"
        block_mean(TABS, coarse, FACTOR, lattice=args.lattice)
        for name, aux in RUNS.items():
            dst = Path(tmp) / f"{name.replace(':', '_')}.tif"
            downscale(DownscaleConfig(coarse=(str(coarse),), aux=parse_layers(aux), out=dst,
                                      res_m=1000.0))
            with rasterio.open(dst) as src:
                tags = src.tags(1)
            out[name] = {"rmse": round(rmse_vs_truth(dst), 4),
                         "terms": tags.get("GEOSR_SHARPEN_TERMS", ""),
                         "coef": tags.get("GEOSR_SHARPEN_COEF", ""),
                         "class_p": tags.get("GEOSR_SHARPEN_CLASS_P")}
            print(f"{name:26s} RMSE {out[name]['rmse']:.3f} degC  class test p "
                  f"{out[name]['class_p'] or '-'}  terms: {out[name]['terms']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
