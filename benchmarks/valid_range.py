"""Valid ranges on real daily precipitation: negative rain before, none after.

Two coarse fields of West Cornwall, May 2018 (31 days), downscaled to 1 km on the 1 km
DEM (``../shared/data/real/haduk-cornwall-1km-may2018``):

- ``ukcp18-12km``: the UKCP18 regional model's 12 km daily precipitation (factor 12).
  A free-running climate model: its days are not the observed ones, so no RMSE.
- ``haduk-8km``: HadUK-Grid 1 km daily rainfall averaged over 8 km cells (factor 8;
  sea cells are nodata), scored against the 1 km field itself.

Each with regression sharpening and bicubic + conservation, without a range (additive
conservation only) and with ``--valid-range 0:``; small tiles (``--tile``) so that
every output spans several. Reported: share of negative pixels, minimum, the largest
relative error of a coarse cell's mean (cells whose fine pixels all have a value), and
for ``haduk-8km`` the RMSE, wet-pixel frequency bias and p99 bias against the 1 km truth
(``geosr validate``).

    python benchmarks/valid_range.py [--tile 48] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import UK  # noqa: E402

import geosr  # noqa: E402
from geosr.constraints import ValidRange  # noqa: E402
from geosr.inference.config import DownscaleConfig, Method  # noqa: E402
from geosr.inference.run import downscale  # noqa: E402
from geosr.sources import LayerSpec  # noqa: E402

UKCP = UK / "coarse_real" / "ukcp18rcm_12km_prec_201805.tif"
TRUTH = UK / "target" / "rainfall1km.tif"
DEM = UK / "aux" / "dtmm.tif"


def block_average(src: Path, dst: Path, f: int, *, units: str) -> Path:
    """Mean of the valid 1 km pixels of each ``f x f`` block (NaN where none)."""
    with rasterio.open(src) as s:
        a, t, profile = s.read(), s.transform, s.profile
    h, w = a.shape[1] // f * f, a.shape[2] // f * f
    blocks = a[:, :h, :w].reshape(a.shape[0], h // f, f, w // f, f)
    valid = np.isfinite(blocks)
    n = valid.sum(axis=(2, 4))
    total = np.where(valid, blocks, 0).sum(axis=(2, 4), dtype=np.float64)
    mean = np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)
    profile.update(width=w // f, height=h // f,
                   transform=rasterio.Affine(t.a * f, 0, t.c, 0, t.e * f, t.f))
    with rasterio.open(dst, "w", **profile) as d:
        d.write(mean)
        for b in range(1, mean.shape[0] + 1):
            if units:
                d.set_band_unit(b, units)
    return dst


def measure(out: Path, coarse: Path, f: int) -> dict:
    with rasterio.open(out) as o:
        arr = o.read().astype(np.float64)
        bounds = o.bounds
    with rasterio.open(coarse) as c:
        win = from_bounds(*bounds, transform=c.transform).round_offsets().round_lengths()
        cells = c.read(window=win).astype(np.float64)
    b, h, w = arr.shape
    blocks = arr.reshape(b, h // f, f, w // f, f)
    full = (np.isfinite(blocks).sum(axis=(2, 4)) == f * f) & np.isfinite(cells)
    mean = np.nan_to_num(blocks).sum(axis=(2, 4)) / (f * f)
    rel = np.abs(mean - cells)[full] / np.maximum(np.abs(cells[full]), 1e-6)
    v = arr[np.isfinite(arr)]
    return {"frac_negative": float((v < 0).mean()), "min": float(v.min()),
            "max_rel_cell_error": float(rel.max()), "cells": int(full.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=48, help="tile core in fine pixels")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {"ukcp18-12km": (UKCP, UKCP, 12),
                 "haduk-8km": (block_average(TRUTH, tmp / "h8.tif", 8, units=""),
                               block_average(TRUTH, tmp / "h8mm.tif", 8, units="mm"), 8)}
        for case, (plain, with_units, f) in cases.items():
            for method in ("sharpen", "bicubic"):
                for valid in (None, ValidRange(0.0)):
                    # "before": a file without units, so no range is inferred
                    coarse = plain if valid is None else with_units
                    out = tmp / f"{case}-{method}-{valid is not None}.tif"
                    kw = {"method": Method.bicubic, "conserve": True} \
                        if method == "bicubic" else {}
                    downscale(DownscaleConfig(coarse=(str(coarse),),
                                              aux=(LayerSpec("dem", str(DEM)),), out=out,
                                              res_m=1000.0, tile_px=args.tile,
                                              valid_range=valid, **kw))
                    row = {"case": case, "method": method,
                           "valid_range": str(valid) if valid else "none",
                           **measure(out, coarse, f)}
                    if case == "haduk-8km":
                        rep = geosr.validate(out, TRUTH, coarse=coarse, baselines=[],
                                             valid_range=(0, None), wet_threshold=1.0)
                        row.update({k: rep.metrics[k] for k in
                                    ("rmse", "wet_day_freq_bias", "p99_bias")})
                    rows.append(row)
    keys = ["case", "method", "valid_range", "frac_negative", "min", "max_rel_cell_error",
            "rmse", "wet_day_freq_bias", "p99_bias"]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                         for k in keys))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
