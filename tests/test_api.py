"""The public Python API: paths or xarray DataArrays in, the same result as the CLI."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from conftest import terrain, write_raster
from typer.testing import CliRunner

import geosr
from geosr.cli import app
from geosr.errors import InputError

F = 8


@pytest.fixture
def scene(tmp_path):
    dem = terrain((7 * F, 9 * F), seed=5)
    dem_path = write_raster(tmp_path / "dem.tif", dem, res=1000, origin=(603_000, 5_187_000))
    t = np.stack([20 - 0.0065 * dem + k for k in range(3)])
    coarse = t.reshape(3, 7, F, 9, F).mean(axis=(2, 4)).astype(np.float32)
    coarse_path = write_raster(
        tmp_path / "t.tif", coarse, res=F * 1000, origin=(603_000, 5_187_000),
        band_tags=[{"DATE_TIME": f"2020-07-0{k + 1}T00:00:00"} for k in range(3)])
    with rasterio.open(coarse_path, "r+") as dst:
        for b in (1, 2, 3):
            dst.set_band_unit(b, "degC")
    return coarse_path, dem_path, t


def test_import_is_light_and_lists_the_api():
    code = ("import sys, geosr; assert 'torch' not in sys.modules and 'rasterio' not in "
            "sys.modules; print(sorted(geosr.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for name in ("prepare", "train", "downscale", "validate", "Grid", "load_bundle",
                 "Predictor"):
        assert name in out


def test_downscale_dataarrays_equal_the_cli(scene, tmp_path):
    coarse_path, dem_path, _ = scene
    cli_out = tmp_path / "cli.tif"
    r = CliRunner().invoke(app, ["downscale", str(coarse_path), "--aux", f"dem={dem_path}",
                                 "--res", "1000", "-o", str(cli_out)])
    assert r.exit_code == 0, r.stderr
    coarse = rioxarray.open_rasterio(coarse_path)
    dem = rioxarray.open_rasterio(dem_path)
    fine = geosr.downscale(coarse, aux={"dem": dem}, res=1000)
    with rasterio.open(cli_out) as src:
        want, crs, transform = src.read(), src.crs, src.transform
    assert fine.rio.crs == crs and fine.rio.transform() == transform
    np.testing.assert_allclose(fine.values, want, atol=1e-4, equal_nan=True)
    # units and provenance attributes travel (rioxarray keeps band 1's tags only, so the
    # dates of this input are not known to the API; see the time-series test)
    assert fine.attrs["units"] == "degC" and fine.attrs["GEOSR_METHOD"] == "sharpen"
    # paths work too, and an output file gives a lazy (dask) array read from it
    lazy = geosr.downscale(str(coarse_path), aux=[str(dem_path)], res=1000,
                           out=tmp_path / "api.tif")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, want, atol=1e-4, equal_nan=True)


def test_downscale_a_time_series_dataarray_with_a_shipped_model(scene):
    coarse_path, dem_path, _ = scene
    da = rioxarray.open_rasterio(coarse_path, masked=True).rename(band="time")
    da = da.assign_coords(time=np.array(["2020-07-01", "2020-07-02", "2020-07-03"],
                                        dtype="datetime64[ns]"))
    da.name, da.attrs["units"] = "tas", "degC"
    dem = rioxarray.open_rasterio(dem_path, masked=True).squeeze("band", drop=True)
    fine = geosr.downscale(da, aux={"dem": dem}, model="alps-t2m",
                           time=("2020-07-02", None))
    assert fine.sizes["time"] == 2 and fine.rio.resolution() == (1000.0, -1000.0)
    # conservation against the input's own 16 km? no: 8 km cells -> resampled with a
    # warning; the output still covers the scene with finite values
    assert np.isfinite(fine.values).mean() > 0.5


def test_api_errors_are_input_errors(scene):
    coarse_path, dem_path, _ = scene
    no_crs = xr.DataArray(np.zeros((4, 4), np.float32), dims=("y", "x"))
    with pytest.raises(InputError, match="no CRS"):
        geosr.downscale(no_crs, method="bicubic", factor=2)
    with pytest.raises(InputError, match="unknown option"):
        geosr.train("ds", out="m.geosr", epoch=3)
    dem = rioxarray.open_rasterio(dem_path)
    dem.name = None
    with pytest.raises(InputError, match="without a name"):
        geosr.downscale(str(coarse_path), aux=[dem])


def test_prepare_and_validate_take_dataarrays(scene, tmp_path):
    coarse_path, dem_path, t = scene
    truth = write_raster(tmp_path / "truth.tif", t, res=1000, origin=(603_000, 5_187_000))
    truth_da = rioxarray.open_rasterio(truth)
    res = geosr.prepare(out=tmp_path / "ds", target=truth_da,
                        aux={"dem": rioxarray.open_rasterio(dem_path)}, res=1000, factor=F)
    assert res.manifest.factor == F and len(res.manifest.samples) == 3
    fine = geosr.downscale(str(coarse_path), aux={"dem": str(dem_path)}, res=1000)
    report = geosr.validate(fine, truth_da, coarse=str(coarse_path),
                            aux={"dem": str(dem_path)})
    assert report.n_valid > 0 and report.metrics["rmse"] < 1.0
    assert "sharpen" in report.baselines


@pytest.mark.parametrize("suffix", [".tif", ".nc"])
def test_swiss_lv95_output_gives_no_cf_crs_warning(tmp_path, suffix):
    # LV95 (oblique Mercator) loses its skew angle in CF grid-mapping attributes; pyproj
    # warns while rioxarray writes them, but the full WKT travels, so a user sees nothing.
    dem = terrain((4 * F, 5 * F), seed=3)
    origin = (2_600_000, 1_200_000)
    dem_path = write_raster(tmp_path / "dem.tif", dem, crs="EPSG:2056", res=1000,
                            origin=origin)
    coarse = (10 - 0.0065 * dem).reshape(4, F, 5, F).mean(axis=(1, 3)).astype(np.float32)
    coarse_path = write_raster(tmp_path / "t.tif", coarse, crs="EPSG:2056", res=F * 1000,
                               origin=origin)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fine = geosr.downscale(str(coarse_path), aux=[str(dem_path)], res=1000,
                               out=tmp_path / f"out{suffix}")
    assert fine.rio.crs.to_epsg() == 2056
