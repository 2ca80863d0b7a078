"""Climate indices of multi-date stacks (Rx1day, R10mm, TXx, TNn) and their place in validate."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from conftest import write_raster
from typer.testing import CliRunner

from geosr.align import block_mean
from geosr.cli import app
from geosr.evaluate.indices import (
    INDICES,
    PRECIPITATION,
    TEMPERATURE,
    complete,
    index_scores,
    precipitation_indices,
    temperature_indices,
)
from geosr.evaluate.validate import ValidateConfig, validate
from geosr.units import is_temperature

runner = CliRunner()
ORIGIN = (4_200_000.0, 2_800_000.0)  # EPSG:3035 metres
RES, FACTOR = 500.0, 4


# --- pure functions ------------------------------------------------------------------------

def _stack(*bands):
    """(dates, 1, n) from per-date rows."""
    return np.array(bands, dtype=np.float32)[:, None, :]


def test_precipitation_indices_by_hand():
    # 2 pixels, 3 dates. Truth maxima 12 and 5; pred maxima 10 and 6 -> diffs -2, +1.
    truth = _stack([0, 5], [12, 1], [11, 0])
    pred = _stack([8, 6], [3, 0], [10, 2])
    r = precipitation_indices(pred, truth, heavy=10.0)
    assert r["rx1day_bias"] == pytest.approx(-0.5)            # (-2 + 1) / 2
    assert r["rx1day_rmse"] == pytest.approx(math.sqrt(2.5))  # sqrt((4 + 1) / 2)
    # Dates >= 10: truth 2 and 0, pred 1 (the 10 counts) and 0 -> (-1 + 0) / 2.
    assert r["r10mm_bias"] == pytest.approx(-0.5)
    assert math.isnan(precipitation_indices(pred, truth, heavy=None)["r10mm_bias"])


def test_temperature_indices_by_hand():
    truth = _stack([10, 20], [14, 18], [12, 25])
    pred = _stack([11, 19], [13, 21], [15, 22])
    r = temperature_indices(pred, truth)
    # TXx: truth 14, 25; pred 15, 22 -> +1, -3. TNn: truth 10, 18; pred 11, 19 -> +1, +1.
    assert r["txx_bias"] == pytest.approx(-1.0)
    assert r["txx_rmse"] == pytest.approx(math.sqrt(5))
    assert r["tnn_bias"] == pytest.approx(1.0)
    assert r["tnn_rmse"] == pytest.approx(1.0)
    assert list(r) == [k for k, s in INDICES.items() if s.kind == TEMPERATURE]


def test_a_pixel_counts_only_when_valid_at_every_date():
    truth = _stack([10, 20, 1], [14, np.nan, 2], [12, 25, 3])
    pred = _stack([11, 19, 1], [13, 21, 2], [15, 22, np.nan])
    assert complete(pred, truth).tolist() == [[True, False, False]]
    r = index_scores(pred, truth, TEMPERATURE)
    assert r["txx_bias"] == pytest.approx(1.0) and r["tnn_bias"] == pytest.approx(1.0)
    # No complete pixel: every score is NaN, no warning, no exception.
    none = index_scores(np.full_like(pred, np.nan), truth, PRECIPITATION, heavy=10.0)
    assert set(none) == {"rx1day_bias", "rx1day_rmse", "r10mm_bias"}
    assert all(math.isnan(v) for v in none.values())


def test_bad_shapes_and_kind():
    with pytest.raises(ValueError, match="bands, rows, cols"):
        complete(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown index kind"):
        index_scores(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), "wind")


def test_is_temperature():
    assert all(is_temperature(u) for u in ("degC", "°C", "K", "kelvin", "degF"))
    assert not any(is_temperature(u) for u in ("mm", "mm day-1", "m s-1", "", None, "foo"))


# --- through validate ----------------------------------------------------------------------

def _pair(tmp_path, truth, pred, units, *, coarse=True):
    """Write truth/pred (and the truth's FACTOR block mean as the coarse input) with
    ``units`` on every band; return the ValidateConfig kwargs."""
    kw = dict(crs="EPSG:3035", res=RES, origin=ORIGIN)
    bt = [{"DATE_TIME": f"2018-05-{d + 1:02d}"} for d in range(truth.shape[0])]
    out = {"truth": str(write_raster(tmp_path / "truth.tif", truth, band_tags=bt, **kw)),
           "pred": str(write_raster(tmp_path / "pred.tif", pred, **kw))}
    if coarse:
        c = block_mean(np.nan_to_num(truth), FACTOR)
        out["coarse"] = str(write_raster(tmp_path / "coarse.tif", c, crs="EPSG:3035",
                                         res=RES * FACTOR, origin=ORIGIN))
    import rasterio

    for key in ("truth", "pred", *(("coarse",) if coarse else ())):
        with rasterio.open(out[key], "r+") as ds:
            for b in range(1, ds.count + 1):
                ds.set_band_unit(b, units)
    return out


def _rain(shape=(3, 16, 16), seed=0):
    """Showery rain: a smooth field plus one sharp 30 mm cell per date."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(0.8, 3.0, size=shape).astype(np.float32)
    for d in range(shape[0]):
        r[d, 2 + 4 * d, 3 + 3 * d] = 30.0
    return r


def test_validate_scores_pred_and_baselines_on_the_same_pixels(tmp_path):
    truth = _rain()
    truth[:, 0, 0] = np.nan           # never valid
    truth[1, 5, 9] = np.nan           # missing on one date only: no index there
    pred = truth + 1.0                 # a wetter prediction, same NaNs
    r = validate(ValidateConfig(**_pair(tmp_path, truth, pred, "mm")))
    assert list(r.indices) == ["pred", "bicubic", "bilinear"]
    assert r.n_valid_indices == 16 * 16 - 2
    p = r.indices["pred"]
    assert p["rx1day_bias"] == pytest.approx(1.0) and p["rx1day_rmse"] == pytest.approx(1.0)
    # Expected R10mm bias by hand, on the complete pixels.
    ok = np.isfinite(truth).all(axis=0)
    want = ((pred[:, ok] >= 10).sum(0) - (truth[:, ok] >= 10).sum(0)).mean()
    assert p["r10mm_bias"] == pytest.approx(want)
    # Interpolation smooths the 30 mm cells away: Rx1day well below the truth's.
    for b in ("bicubic", "bilinear"):
        assert r.indices[b]["rx1day_bias"] < -1.0
        assert r.indices[b]["r10mm_bias"] < 0
    d = r.to_dict()
    assert json.dumps(d, allow_nan=False)
    assert set(d["indices"]) == {"pred", "bicubic", "bilinear"}
    assert d["n_valid_indices"] == r.n_valid_indices


def test_validate_temperature_indices_and_csv(tmp_path):
    rng = np.random.default_rng(1)
    truth = (15 + rng.normal(scale=2, size=(4, 16, 16))).astype(np.float32)
    pred = truth.copy()
    pred[2] += 3.0                     # one hot day everywhere
    out = tmp_path / "r.csv"
    r = validate(ValidateConfig(**_pair(tmp_path, truth, pred, "degC", coarse=False),
                                csv_path=out))
    assert list(r.indices) == ["pred"]
    want = (pred.max(0) - truth.max(0)).mean()
    assert r.indices["pred"]["txx_bias"] == pytest.approx(want, rel=1e-5)
    assert r.indices["pred"]["txx_bias"] > 0
    assert r.indices["pred"]["tnn_bias"] >= 0
    rows = [x for x in csv.DictReader(out.open()) if x["metric"] == "txx_bias"]
    assert len(rows) == 1 and rows[0]["subject"] == "pred"
    assert float(rows[0]["value"]) == pytest.approx(want, rel=1e-5)
    assert int(rows[0]["n_valid"]) == 256


@pytest.mark.parametrize("bands, units", [(1, "mm"), (3, "m s-1"), (3, "")])
def test_no_indices_for_one_band_or_other_fields(tmp_path, bands, units):
    truth = _rain(shape=(bands, 16, 16))
    r = validate(ValidateConfig(**_pair(tmp_path, truth, truth * 1.1, units, coarse=False)))
    assert r.indices == {} and r.n_valid_indices == 0
    assert r.to_dict()["indices"] == {}


def test_wet_threshold_without_units_gives_rx1day_only(tmp_path):
    truth = _rain()
    r = validate(ValidateConfig(**_pair(tmp_path, truth, truth + 2, "", coarse=False),
                                wet_threshold=0.5))
    assert r.indices["pred"]["rx1day_bias"] == pytest.approx(2.0)
    assert math.isnan(r.indices["pred"]["r10mm_bias"])  # 10 mm/day cannot be placed


def test_rate_units_place_the_10mm_threshold(tmp_path):
    # kg m-2 s-1: 10 mm/day = 10 / 86400. Pred crosses it on one date at every pixel.
    truth = np.full((2, 8, 8), 5 / 86400, np.float32)
    pred = truth.copy()
    pred[0] = 12 / 86400
    r = validate(ValidateConfig(**_pair(tmp_path, truth, pred, "kg m-2 s-1", coarse=False)))
    assert r.indices["pred"]["r10mm_bias"] == pytest.approx(1.0)


def test_cli_prints_one_row_per_index_with_baselines(tmp_path):
    paths = _pair(tmp_path, _rain(), _rain() + 1.0, "mm")
    r = runner.invoke(app, ["validate", paths["pred"], paths["truth"], "--coarse",
                            paths["coarse"]])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "climate indices over 3 dates" in out
    for label in ("Rx1day bias", "Rx1day RMSE", "R10mm bias"):
        line = next(x for x in out.splitlines() if label in x)
        assert len(line.split()) >= 3 + len(label.split())  # PRED, bicubic, bilinear
    assert "TXx" not in out


def test_real_rain_interpolation_lowers_rx1day(real_data, tmp_path):
    # HadUK-Grid daily rain (mm), West Cornwall, first 5 days of May 2018, 8 km block means.
    import rasterio

    src = real_data / "haduk-cornwall-1km-may2018" / "target" / "rainfall1km.tif"
    with rasterio.open(src) as s:
        truth = s.read(indexes=list(range(1, 6))).astype(np.float32)
        profile = s.profile
    profile.update(count=5)
    t_path = tmp_path / "rain.tif"
    with rasterio.open(t_path, "w", **profile) as d:
        d.write(truth)
        for b in range(1, 6):
            d.set_band_unit(b, "mm")
    h, w = truth.shape[1] // 8 * 8, truth.shape[2] // 8 * 8
    c = block_mean(truth[:, :h, :w], 8)
    t = profile["transform"]
    c_path = write_raster(tmp_path / "rain8.tif", c, crs=profile["crs"],
                          transform=rasterio.Affine(t.a * 8, 0, t.c, 0, t.e * 8, t.f))
    r = validate(ValidateConfig(pred=str(t_path), truth=str(t_path), coarse=str(c_path)))
    assert r.n_valid_indices > 1000
    assert r.indices["pred"]["rx1day_bias"] == 0
    assert r.indices["bilinear"]["rx1day_bias"] < 0 < r.indices["bilinear"]["rx1day_rmse"]
