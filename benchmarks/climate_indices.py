"""Climate indices of the baselines on real daily fields: how much of the extremes survives.

HadUK-Grid 1 km daily fields of West Cornwall, May 2018 (31 days,
``../shared/data/real/haduk-cornwall-1km-may2018``): rainfall (mm), tasmax and tasmin
(degC). Each is averaged over 8 km cells (valid 1 km pixels only; sea is nodata), and
``geosr validate`` scores the baselines computed from those cells (bicubic, bilinear,
nearest, and regression sharpening on the 1 km DEM) against the 1 km field itself, on
the pixels valid at every date in all of them. PRED is the truth (its indices are 0: a
check of the wiring). Reported: Rx1day bias/RMSE and R10mm bias for rainfall, TXx
bias/RMSE for tasmax, TNn bias/RMSE for tasmin (pred - truth, per pixel over the 31
days, then averaged over pixels), and the plain RMSE over all pixel-days.

    python benchmarks/climate_indices.py [--factor 8] [--json FILE]

Needs ``../shared/data/real``; writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import UK  # noqa: E402
from valid_range import block_average  # noqa: E402

import geosr  # noqa: E402

DEM = UK / "aux" / "dtmm.tif"
BASELINES = ("bicubic", "bilinear", "nearest", "sharpen")
CASES = {  # variable -> (units, index scores shown)
    "rainfall": ("mm", ("rx1day_bias", "rx1day_rmse", "r10mm_bias")),
    "tasmax": ("degC", ("txx_bias", "txx_rmse")),
    "tasmin": ("degC", ("tnn_bias", "tnn_rmse")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=int, default=8, help="1 km pixels per coarse cell")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if not DEM.is_file():
        print(f"{DEM}: not found; this benchmark needs ../shared/data/real", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for var, (units, keys) in CASES.items():
            truth = UK / "target" / f"{var}1km.tif"
            coarse = block_average(truth, Path(tmp) / f"{var}_{args.factor}km.tif",
                                   args.factor, units=units)
            t0 = time.perf_counter()
            rep = geosr.validate(truth, truth, coarse=coarse, aux={"dem": str(DEM)},
                                 baselines=list(BASELINES))
            seconds = time.perf_counter() - t0
            assert all(abs(rep.indices["pred"][k]) < 1e-9 for k in keys), rep.indices["pred"]
            for name in BASELINES:
                rows.append({"variable": var, "units": units, "baseline": name,
                             "n_px": rep.n_valid_indices, "dates": rep.n_bands,
                             "rmse": rep.baselines[name]["rmse"],
                             **{k: rep.indices[name][k] for k in keys},
                             "seconds": round(seconds, 2)})
    cols = ["variable", "baseline", "n_px", "rmse", "rx1day_bias", "rx1day_rmse", "r10mm_bias",
            "txx_bias", "txx_rmse", "tnn_bias", "tnn_rmse"]
    print(f"HadUK-Grid West Cornwall May 2018, {args.factor} km -> 1 km (rainfall mm, "
          "temperatures degC; r10mm in days)")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                         for k in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
