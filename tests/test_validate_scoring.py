"""validate scores through geosr.evaluate.metrics.compute_all: one path for every number."""

from __future__ import annotations

import math

import numpy as np
from conftest import terrain, write_raster

from geosr.arrays import block_mean
from geosr.baselines import upsample
from geosr.evaluate.metrics import METRICS, compute_all
from geosr.evaluate.validate import Baseline, ValidateConfig, validate

F, RES, BINS = 8, 500.0, 32
ORIGIN = (4_200_000.0, 2_800_000.0)


def same(got: dict, want: dict) -> bool:
    return list(got) == list(want) == list(METRICS) and all(
        a == b or (math.isnan(a) and math.isnan(b)) for a, b in
        ((got[k], want[k]) for k in METRICS))


def test_report_metrics_are_compute_all_on_the_same_pixels(tmp_path):
    rng = np.random.default_rng(3)
    truth = np.stack([10 + d - 0.006 * terrain((64, 64), seed=d) for d in range(2)])
    truth = truth.astype(np.float32)
    truth[:, :5, :7] = np.nan
    pred = (truth + rng.normal(scale=0.4, size=truth.shape)).astype(np.float32)
    pred[1, 40:50, 20:30] = np.nan
    pred[0, 60:, :] = np.nan
    coarse = block_mean(np.nan_to_num(truth, nan=9.0), F)
    coarse[0, 3, 3] = np.nan
    kw = dict(crs="EPSG:3035", res=RES, origin=ORIGIN)
    paths = {name: write_raster(tmp_path / f"{name}.tif", a, **kw)
             for name, a in (("pred", pred), ("truth", truth))}
    paths["coarse"] = write_raster(tmp_path / "coarse.tif", coarse, crs="EPSG:3035",
                                   res=RES * F, origin=ORIGIN)

    report = validate(ValidateConfig(pred=str(paths["pred"]), truth=str(paths["truth"]),
                                     coarse=str(paths["coarse"]), baselines=(Baseline.bicubic,),
                                     blocks=2, js_bins=BINS))

    bicubic = upsample(coarse, F, "bicubic")
    ok = np.isfinite(pred) & np.isfinite(truth) & np.isfinite(bicubic)
    p, t, b = (np.where(ok, a, np.nan).astype(np.float32) for a in (pred, truth, bicubic))

    def scores(sl=np.s_[:], csl=np.s_[:], field=p, raw=pred):
        return compute_all(field[sl], t[sl], coarse=coarse[csl], factor=F,
                           fine_for_conservation=raw[sl], js_bins=BINS)

    assert report.n_valid == int(ok.sum())
    assert same(report.metrics, scores())
    assert same(report.baselines["bicubic"], scores(field=b, raw=bicubic))
    for band in (0, 1):
        assert same(report.bands[band].metrics, scores(np.s_[band], np.s_[band]))
    first = report.blocks[0]
    assert (first.row, first.col, first.window) == (0, 0, (0, 0, 32, 32))
    assert same(first.metrics, scores(np.s_[:, :32, :32], np.s_[:, :4, :4]))
    assert math.isfinite(report.metrics["conservation_rmse"])
    assert report.metrics["js_divergence"] != compute_all(p, t)["js_divergence"]  # bins used
