"""geosr validate: alignment, baselines, breakdowns, report shapes, figures, exit codes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import rasterio
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr.align import block_mean
from geosr.cli import app
from geosr.cli.options import parse_baselines, parse_threshold
from geosr.constraints import ValidRange
from geosr.errors import InputError
from geosr.evaluate.metrics import METRICS
from geosr.evaluate.validate import BASELINES, Baseline, Threshold, ValidateConfig, validate
from geosr.sources import LayerSpec

runner = CliRunner()
ORIGIN = (4_200_000.0, 2_800_000.0)  # EPSG:3035 metres
RES, FACTOR = 500.0, 8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scene(tmp_path):
    """96x96 px at 500 m (EPSG:3035): truth = lapse rate on a DEM, 2 dated bands; a noisy
    prediction; the truth's 8x block mean as the coarse input (4 km); the DEM as aux."""
    dem = terrain((96, 96), seed=2)
    rng = np.random.default_rng(0)
    truth = np.stack([15 + d - 0.0065 * dem for d in range(2)]).astype(np.float32)
    truth[:, :6, :6] = np.nan
    pred = truth + rng.normal(scale=0.3, size=truth.shape).astype(np.float32)
    coarse = block_mean(np.nan_to_num(truth, nan=np.nanmean(truth)), FACTOR)
    kw = dict(crs="EPSG:3035", res=RES, origin=ORIGIN)
    dates = [{"DATE_TIME": f"2021-06-0{d + 1}"} for d in range(2)]
    return {
        "truth": write_raster(tmp_path / "truth.tif", truth, band_tags=dates, **kw),
        "pred": write_raster(tmp_path / "pred.tif", pred, **kw),
        "coarse": write_raster(tmp_path / "coarse.tif", coarse, crs="EPSG:3035",
                               res=RES * FACTOR, origin=ORIGIN),
        "dem": write_raster(tmp_path / "dem.tif", dem, **kw),
        "t": truth, "p": pred, "dem_arr": dem,
    }


@pytest.fixture
def geosr_logs(caplog):
    """caplog that also sees geosr's records after the CLI set propagate=False."""
    logger = logging.getLogger("geosr")
    old = logger.propagate
    logger.propagate = True
    with caplog.at_level(logging.INFO, logger="geosr"):
        yield caplog
    logger.propagate = old


def cfg(scene, **kw) -> ValidateConfig:
    return ValidateConfig(pred=str(scene["pred"]), truth=str(scene["truth"]), **kw)


# --- core ---------------------------------------------------------------------------------

def test_identical_rasters_are_perfect(scene):
    r = validate(ValidateConfig(pred=str(scene["truth"]), truth=str(scene["truth"])))
    m = r.metrics
    assert r.n_valid == int(np.isfinite(scene["t"]).sum())
    assert m["rmse"] == 0 and m["bias"] == 0 and m["js_divergence"] == 0
    assert m["pearson_r"] == pytest.approx(1) and m["ssim"] == pytest.approx(1)
    assert m["kge"] == pytest.approx(1) and m["r2"] == 1
    assert r.baselines == {} and r.passed
    assert [b.band for b in r.bands] == [1, 2]
    assert [b.date for b in r.bands] == ["2021-06-01", "2021-06-02"]


def test_constant_offset_on_disk(scene, tmp_path):
    off = write_raster(tmp_path / "off.tif", scene["t"] + 1.5, crs="EPSG:3035", res=RES,
                       origin=ORIGIN)
    r = validate(ValidateConfig(pred=str(off), truth=str(scene["truth"])))
    assert r.metrics["bias"] == pytest.approx(1.5, rel=1e-5)
    assert r.metrics["rmse"] == pytest.approx(1.5, rel=1e-5)


def test_truth_on_another_grid_is_reprojected(scene, tmp_path, geosr_logs):
    # The truth at 250 m in UTM 32N; PRED is the 500 m EPSG:3035 grid.
    from affine import Affine
    from rasterio.warp import Resampling, reproject, transform_bounds

    from geosr.grid import Grid

    src = Grid("EPSG:3035", Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1]), 96, 96)
    left, bottom, right, top = transform_bounds("EPSG:3035", "EPSG:32632", *src.bounds)
    w, h = int((right - left) // 250), int((top - bottom) // 250)
    dst = np.full((2, h, w), np.nan, np.float32)
    reproject(scene["t"], dst, src_transform=src.transform, src_crs="EPSG:3035",
              dst_transform=Affine(250, 0, left, 0, -250, top), dst_crs="EPSG:32632",
              src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling.bilinear)
    utm = write_raster(tmp_path / "truth_utm.tif", dst, crs="EPSG:32632",
                       transform=Affine(250, 0, left, 0, -250, top))
    r = validate(ValidateConfig(pred=str(scene["truth"]), truth=str(utm)))
    assert r.truth_resampling == "average"
    assert any("reprojected onto PRED's grid" in rec.message for rec in geosr_logs.records)
    assert r.n_valid > 0.8 * np.isfinite(scene["t"]).sum()
    assert r.metrics["pearson_r"] > 0.98


def test_baselines_on_the_same_pixels_with_skill(scene):
    dem = (LayerSpec("dem", str(scene["dem"])),)
    r = validate(cfg(scene, coarse=str(scene["coarse"]), aux=dem))
    assert r.factor == FACTOR
    assert list(r.baselines) == ["bicubic", "bilinear", "sharpen"]
    # The truth is a linear function of the DEM: sharpening nearly recovers it.
    assert r.baselines["sharpen"]["rmse"] < 0.5 * r.baselines["bicubic"]["rmse"]
    assert r.baselines["sharpen"]["conservation_rmse"] < 1e-4
    for name, b in r.baselines.items():
        assert r.skill[name] == pytest.approx(1 - r.metrics["rmse"] / b["rmse"])
    assert not math.isnan(r.metrics["conservation_rmse"])


def test_default_baselines_skip_sharpen_without_aux(scene, geosr_logs):
    r = validate(cfg(scene, coarse=str(scene["coarse"])))
    assert list(r.baselines) == ["bicubic", "bilinear"]
    assert any("sharpen skipped" in rec.message for rec in geosr_logs.records)


def test_baseline_registry_and_parsing():
    assert set(BASELINES) == set(Baseline)
    assert parse_baselines("bicubic, sharpen") == (Baseline.bicubic, Baseline.sharpen)
    assert parse_baselines("none") == ()
    with pytest.raises(InputError, match="unknown baseline 'lanczos'.*bicubic, bilinear"):
        parse_baselines("bicubic,lanczos")


@pytest.mark.parametrize("kw, needle", [
    ({"baselines": (Baseline.bicubic,)}, "--coarse"),
    ({"baselines": (Baseline.sharpen,), "coarse": "C"}, "--aux"),
])
def test_baselines_need_their_inputs(scene, kw, needle):
    if kw.get("coarse"):
        kw["coarse"] = str(scene["coarse"])
    with pytest.raises(InputError, match=needle):
        validate(cfg(scene, **kw))


def test_pred_not_a_multiple_of_the_factor_is_cropped(scene, tmp_path):
    odd = write_raster(tmp_path / "odd.tif", scene["p"][:, :93, :90], crs="EPSG:3035", res=RES,
                       origin=ORIGIN)
    r = validate(ValidateConfig(pred=str(odd), truth=str(scene["truth"]),
                                coarse=str(scene["coarse"])))
    assert r.factor == FACTOR
    assert (r.grid.height, r.grid.width) == (88, 88)


def test_blocks_and_bands(scene):
    r = validate(cfg(scene, coarse=str(scene["coarse"]), blocks=2))
    assert len(r.blocks) == 4
    assert sum(b.n_valid for b in r.blocks) == r.n_valid
    assert {(b.row, b.col) for b in r.blocks} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(b.window[2] % FACTOR == 0 for b in r.blocks)  # edges on coarse cells
    assert len(r.bands) == 2 and sum(b.n_valid for b in r.bands) == r.n_valid
    assert set(r.blocks[0].skill) == {"bicubic", "bilinear"}


def test_json_shape_and_nan_is_null(scene, tmp_path):
    out = tmp_path / "report.json"
    r = validate(cfg(scene, coarse=str(scene["coarse"]), aux=(LayerSpec("dem", str(scene["dem"])),),
                     blocks=2, json_path=out))
    d = json.loads(out.read_text())
    assert json.dumps(d, allow_nan=False)  # strict JSON
    assert isinstance(d["n_valid"], int) and d["n_valid"] == r.n_valid
    assert list(d["metrics"]) == list(METRICS)
    assert set(d["baselines"]) == {"bicubic", "bilinear", "sharpen"}
    assert all(list(v) == list(METRICS) for v in d["baselines"].values())
    assert set(d["skill"]) == set(d["baselines"])
    assert {"row", "col", "n_valid", "metrics"} <= set(d["blocks"][0])
    assert {"band", "date", "n_valid", "metrics"} <= set(d["bands"][0])
    d2 = validate(cfg(scene)).to_dict()
    assert d2["metrics"]["conservation_rmse"] is None


def test_csv_long_format(scene, tmp_path):
    import csv

    out = tmp_path / "report.csv"
    validate(cfg(scene, coarse=str(scene["coarse"]), blocks=2, csv_path=out))
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["scope", "subject", "block_row", "block_col", "band", "date",
                             "n_valid", "metric", "value"]
    rmse = [r for r in rows if r["scope"] == "overall" and r["subject"] == "pred"
            and r["metric"] == "rmse"]
    assert len(rmse) == 1 and float(rmse[0]["value"]) > 0
    assert {r["scope"] for r in rows} == {"overall", "block", "band"}
    assert any(r["metric"] == "skill" and r["subject"] == "bicubic" for r in rows)


def test_plots_are_written(scene, tmp_path):
    folder = tmp_path / "figs"
    r = validate(cfg(scene, coarse=str(scene["coarse"]), plots_dir=folder, plot_band=2))
    names = sorted(Path(p).name for p in r.plots)
    assert names == ["errors.png", "maps.png", "scatter.png", "spectra.png"]
    for p in r.plots:
        data = Path(p).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not [p for p in folder.iterdir() if "geosr-tmp" in p.name]


def test_plots_parent_must_exist(scene, tmp_path):
    with pytest.raises(InputError, match="parent folder"):
        validate(cfg(scene, plots_dir=tmp_path / "no" / "figs"))


@pytest.mark.parametrize("make, needle", [
    ("band_mismatch", "band"),
    ("no_overlap", "does not overlap"),
    ("no_common_pixel", "no pixel has a value in both"),
    ("missing", "file not found"),
])
def test_input_errors(scene, tmp_path, make, needle):
    kw = dict(crs="EPSG:3035", res=RES, origin=ORIGIN)
    truth = str(scene["truth"])
    if make == "band_mismatch":
        truth = str(write_raster(tmp_path / "t1.tif", scene["t"][0], **kw))
    elif make == "no_overlap":
        truth = str(write_raster(tmp_path / "far.tif", scene["t"], crs="EPSG:3035", res=RES,
                                 origin=(ORIGIN[0] + 1e6, ORIGIN[1])))
    elif make == "no_common_pixel":
        t = scene["t"].copy()
        t[:] = np.nan
        t[:, :, 0] = 1.0
        p = scene["p"].copy()
        p[:, :, 0] = np.nan
        truth = str(write_raster(tmp_path / "tn.tif", t, **kw))
        scene = {**scene, "pred": write_raster(tmp_path / "pn.tif", p, **kw)}
    else:
        truth = str(tmp_path / "nope.tif")
    with pytest.raises(InputError, match=needle):
        validate(ValidateConfig(pred=str(scene["pred"]), truth=truth))


# --- thresholds ---------------------------------------------------------------------------

def test_parse_threshold():
    assert parse_threshold("rmse=1.2") == Threshold("rmse", 1.2, "above")
    assert parse_threshold("SSIM=0.8", bound="below") == Threshold("ssim", 0.8, "below")
    with pytest.raises(InputError, match="unknown metric 'rsme'.*rmse, mae"):
        parse_threshold("rsme=1")
    with pytest.raises(InputError, match="'abc' for rmse is not a number"):
        parse_threshold("rmse=abc")
    with pytest.raises(InputError, match="METRIC=VALUE"):
        parse_threshold("rmse")


def test_threshold_check():
    assert Threshold("rmse", 1.0).check(0.5) is None
    assert "above 1" in Threshold("rmse", 1.0).check(1.5)
    assert "below 0.9" in Threshold("pearson_r", 0.9, "below").check(0.5)
    assert "undefined" in Threshold("kge", 0.5, "below").check(float("nan"))
    assert Threshold("psnr", 30, "below").check(math.inf) is None


# --- CLI ----------------------------------------------------------------------------------

def _cli(*args):
    return runner.invoke(app, ["validate", *map(str, args)])


def test_cli_end_to_end(scene, tmp_path):
    js, cs, figs = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "figs"
    r = _cli(scene["pred"], scene["truth"], "--coarse", scene["coarse"], "--aux", scene["dem"],
             "--blocks", "2", "--json", js, "--csv", cs, "--plots", figs,
             "--fail-above", "rmse=5", "bias=1", "--fail-below", "pearson_r=0.5", "ssim=0.1")
    assert r.exit_code == 0, r.output
    for word in ("RMSE", "PRED", "bicubic", "sharpen", "skill", "blk 1,1", "band 2"):
        assert word in r.stdout
    d = json.loads(js.read_text())
    assert d["passed"] and d["n_valid"] > 0 and "sharpen" in d["skill"]
    assert cs.stat().st_size > 0 and len(list(figs.glob("*.png"))) == 4


def test_cli_json_to_stdout(scene):
    r = _cli(scene["pred"], scene["truth"], "--json", "-")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["metrics"]["rmse"] == pytest.approx(0.3, rel=0.1)


@pytest.mark.parametrize("args, code, needle", [
    (["--fail-above", "rmse=1.0"], 0, ""),
    (["--fail-above", "rmse=0.1", "mae=0.05"], 1, "rmse = "),
    (["--fail-below", "pearson_r=0.99999"], 1, "pearson_r = "),
    (["--fail-above", "nope=1"], 2, "unknown metric 'nope'"),
    (["--fail-below", "ssim=high"], 2, "'high' for ssim is not a number"),
    (["--fail-above", "conservation_rmse=1"], 2, "needs --coarse"),
    (["--baselines", "bicubic,magic"], 2, "unknown baseline 'magic'"),
])
def test_cli_threshold_exit_codes(scene, args, code, needle):
    r = _cli(scene["pred"], scene["truth"], *args)
    assert r.exit_code == code, r.output
    if code == 1:
        broken = [ln for ln in r.stderr.splitlines() if "threshold broken" in ln]
        assert len(broken) == (2 if "mae=0.05" in args else 1)
    if needle:
        assert needle in r.stderr


def test_cli_input_error_is_one_line(scene, tmp_path):
    r = _cli(scene["pred"], tmp_path / "missing.tif")
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing.tif" in lines[0] and "Traceback" not in r.output


def test_cli_passes_typed_config():
    """Parsing only: the core gets exactly what the options say."""
    with mock.patch("geosr.cli.validate.validate") as core:
        core.return_value.broken = ()
        core.return_value.to_dict.return_value = {}
        r = _cli("p.tif", "t.tif", "--coarse", "c.tif", "--aux", "a.tif", "dem=b.tif",
                 "--baselines", "bilinear,sharpen", "--blocks", "3", "--json", "-",
                 "--fail-above", "rmse=1", "bias=0.2", "--fail-below", "kge=0.5", "r2=0.3")
    assert r.exit_code == 0, r.output
    (c,), _ = core.call_args
    assert (c.pred, c.truth, c.coarse, c.blocks) == ("p.tif", "t.tif", "c.tif", 3)
    assert [a.name for a in c.aux] == ["a", "dem"]
    assert c.baselines == (Baseline.bilinear, Baseline.sharpen)
    assert c.thresholds == (Threshold("rmse", 1.0), Threshold("bias", 0.2),
                            Threshold("kge", 0.5, "below"), Threshold("r2", 0.3, "below"))
    assert c.json_path is None


# --- real data ----------------------------------------------------------------------------

@pytest.mark.realdata
def test_meteoswiss_sharpen_beats_interpolation(real_data, tmp_path):
    """TabsM (1 km) as truth, its 16x block mean as coarse input, SRTM altitude as aux."""
    import rasterio
    from affine import Affine

    d = real_data / "meteoswiss-ch-1km"
    tabs = next((d / "geotiff").glob("TabsM_*.tif"))
    with rasterio.open(tabs) as src:
        t = src.read(1, masked=True).filled(np.nan).astype(np.float32)
        transform, crs = src.transform, src.crs
    h, w = t.shape[0] // 16 * 16, t.shape[1] // 16 * 16
    coarse = block_mean(t[:h, :w], 16)
    cpath = write_raster(tmp_path / "coarse16.tif", coarse, crs=crs,
                         transform=transform @ Affine.scale(16))
    alt = LayerSpec("alt", str(d / "aux/swissAltitude_geostatsp.tif"))
    r = validate(ValidateConfig(pred=str(tabs), truth=str(tabs), coarse=str(cpath), aux=(alt,)))
    assert r.factor == 16 and (r.grid.height, r.grid.width) == (h, w)
    b = r.baselines
    assert b["sharpen"]["rmse"] < 0.5 * b["bicubic"]["rmse"]
    assert b["sharpen"]["ssim"] > b["bicubic"]["ssim"]
    assert b["sharpen"]["pearson_r"] > b["bicubic"]["pearson_r"]
    assert b["bicubic"]["rmse"] <= b["bilinear"]["rmse"]
    assert r.metrics["rmse"] == 0  # PRED is the truth itself


# --- valid range and precipitation --------------------------------------------------------

@pytest.fixture
def rain(tmp_path):
    """Rain in mm/day (dry valleys): PRED overshoots below zero, as additive conservation
    does; PRED records its range the way ``downscale`` does."""
    dem = terrain((96, 96), seed=2)
    rng = np.random.default_rng(1)
    truth = np.maximum(0.0, 0.01 * (dem - 800) + rng.gamma(0.5, 2.0, dem.shape))[None]
    truth = truth.astype(np.float32)
    pred = truth + rng.normal(0, 1.0, truth.shape).astype(np.float32)
    coarse = block_mean(truth, FACTOR)
    kw = dict(crs="EPSG:3035", res=RES, origin=ORIGIN)
    paths = {
        "truth": write_raster(tmp_path / "truth.tif", truth, **kw),
        "pred": write_raster(tmp_path / "pred.tif", pred, tags={"GEOSR_VALID_RANGE": "0:"},
                             **kw),
        "coarse": write_raster(tmp_path / "coarse.tif", coarse, crs="EPSG:3035",
                               res=RES * FACTOR, origin=ORIGIN),
    }
    with rasterio.open(paths["pred"], "r+") as dst:
        dst.set_band_unit(1, "mm/day")
    return {**paths, "t": truth, "p": pred}


def test_range_and_precipitation_metrics(rain, tmp_path):
    r = validate(ValidateConfig(pred=str(rain["pred"]), truth=str(rain["truth"]),
                                coarse=str(rain["coarse"]), json_path=tmp_path / "r.json"))
    p, t = rain["p"], rain["t"]
    assert r.valid_range == "0:" and r.wet_threshold == 1.0
    assert r.metrics["frac_outside_range"] == pytest.approx((p < 0).mean())
    assert r.metrics["wet_day_freq_bias"] == pytest.approx((p >= 1).mean() - (t >= 1).mean())
    assert r.metrics["p99_bias"] == pytest.approx(np.percentile(p, 99) - np.percentile(t, 99),
                                                  rel=1e-5)
    for b in ("bicubic", "bilinear"):  # baselines are scored too
        assert 0 <= r.baselines[b]["frac_outside_range"] < 1
        assert math.isfinite(r.baselines[b]["p99_bias"])
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["valid_range"] == "0:" and d["metrics"]["frac_outside_range"] > 0
    # an explicit range and wet threshold win; in kg m-2 s-1 the default threshold converts
    r2 = validate(ValidateConfig(pred=str(rain["pred"]), truth=str(rain["truth"]),
                                 valid_range=ValidRange(-10, 10), wet_threshold=5.0))
    assert r2.metrics["frac_outside_range"] == pytest.approx(((p < -10) | (p > 10)).mean())
    assert r2.metrics["wet_day_freq_bias"] == pytest.approx((p >= 5).mean() - (t >= 5).mean())


def test_no_range_no_precipitation_metrics(scene):
    r = validate(ValidateConfig(pred=str(scene["pred"]), truth=str(scene["truth"])))
    assert r.valid_range is None and r.wet_threshold is None
    for k in ("frac_outside_range", "wet_day_freq_bias", "p99_bias"):
        assert math.isnan(r.metrics[k])
    out = _cli(str(scene["pred"]), str(scene["truth"]))
    assert out.exit_code == 0 and "outside valid range" not in out.stdout


def test_cli_range_rows_and_bad_range(rain):
    out = _cli(str(rain["pred"]), str(rain["truth"]))
    assert out.exit_code == 0, out.output
    assert "fraction outside valid range" in out.stdout and "p99 bias" in out.stdout
    bad = _cli(str(rain["pred"]), str(rain["truth"]), "--valid-range", "5:1")
    assert bad.exit_code == 2 and "--valid-range '5:1'" in bad.stderr
    with mock.patch("geosr.cli.validate.validate") as core:
        core.return_value.broken = ()
        core.return_value.to_dict.return_value = {}
        _cli("p.tif", "t.tif", "--valid-range", "0:100", "--wet-threshold", "0.1",
             "--json", "-")
    (c,), _ = core.call_args
    assert c.valid_range == ValidRange(0, 100) and c.wet_threshold == 0.1


def test_wet_threshold_in_the_field_units():
    from geosr.evaluate.validate import _wet_threshold

    assert _wet_threshold(None, "mm/day") == 1.0
    assert _wet_threshold(None, "kg m-2 s-1") == pytest.approx(1 / 86400)
    assert _wet_threshold(None, "m") == pytest.approx(1e-3)
    assert _wet_threshold(None, "degC") is None and _wet_threshold(0.2, "") == 0.2
