"""Output formats by extension: COG (.tif), CF NetCDF (.nc) and Zarr (.zarr) hold the same
values, and xarray/rioxarray read the grid, CRS and dates back from each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import terrain, write_raster
from typer.testing import CliRunner

import geosr.io.sinks as sinks
from geosr.cli import app
from geosr.errors import InputError
from geosr.io.atomic import TMP_TAG
from geosr.io.sinks import OutputFormat, cf_name, cf_times, output_format, stage_path

ORIGIN = (600_000.0, 5_152_000.0)  # on whole 8 km cells
F = 8
DATES = ["2018-05-01T00:00:00", "2018-05-01T06:00:00", "2018-05-02T00:00:00"]
runner = CliRunner()


def _scene(folder: Path, *, dates=DATES, n: int = 3) -> dict[str, Path]:
    """16 x 16 cells of 8 km over a 1 km DEM, ``n`` bands tagged with ``dates``."""
    folder.mkdir(parents=True, exist_ok=True)
    dem = terrain((16 * F, 16 * F), seed=2)
    t = (15 - 0.0065 * dem).reshape(16, F, 16, F).mean(axis=(1, 3))
    coarse = np.stack([t + k for k in range(n)])
    tags = [{"long_name": "air temperature", **({"DATE_TIME": d} if d else {})}
            for d in (dates or [""] * n)]
    path = write_raster(folder / "t2m.tif", coarse, res=1000.0 * F, origin=ORIGIN,
                        band_tags=tags)
    with rasterio.open(path, "r+") as dst:
        for b in range(1, n + 1):
            dst.set_band_unit(b, "degC")
    return {"coarse": path, "dem": write_raster(folder / "dem.tif", dem, origin=ORIGIN)}


def _args(scene, out: Path, *extra: str) -> list[str]:
    return ["downscale", str(scene["coarse"]), "--aux", str(scene["dem"]), "-o", str(out),
            "--res", "1000", *extra]


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The same dated 3-band downscale written as .tif, .nc and .zarr."""
    root = tmp_path_factory.mktemp("outputs")
    scene = _scene(root / "src")
    outs = {"tif": root / "out.tif", "nc": root / "out.nc", "zarr": root / "out.zarr"}
    for out in outs.values():
        r = runner.invoke(app, _args(scene, out))
        assert r.exit_code == 0, r.stderr
    return outs


@pytest.fixture(scope="module")
def cog(outputs):
    with rasterio.open(outputs["tif"]) as src:
        return {"data": src.read(), "crs": src.crs, "transform": src.transform,
                "tags": src.tags()}


def _open(path: Path) -> xr.Dataset:
    if path.suffix == ".zarr":
        return xr.open_zarr(path)
    return xr.open_dataset(path)


@pytest.mark.parametrize("kind", ["nc", "zarr"])
def test_netcdf_and_zarr_equal_the_cog_with_crs_transform_and_dates(outputs, cog, kind):
    import rioxarray  # noqa: F401  (the .rio accessor)

    with _open(outputs[kind]) as ds:
        da = ds["t2m"]
        assert da.dims == ("time", "y", "x")
        np.testing.assert_array_equal(da.values, cog["data"])  # NaN where the COG has nodata
        assert np.issubdtype(ds["time"].dtype, np.datetime64)
        np.testing.assert_array_equal(ds["time"].values, np.array(DATES, "datetime64[ns]"))
        # CRS through the grid mapping, as a plain open_dataset/open_zarr gives it
        assert (da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")) == "spatial_ref"
        assert da.rio.crs == cog["crs"]
        assert da.rio.transform() == cog["transform"]
        assert da.attrs["units"] == "degC" and da.attrs["long_name"] == "air temperature"
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
        assert ds["y"].attrs["units"] == "m"
        t = cog["transform"]
        assert ds["x"].values[0] == t.c + t.a / 2 and ds["y"].values[0] == t.f + t.e / 2
        assert "crs_wkt" in ds["spatial_ref"].attrs and "GeoTransform" in ds["spatial_ref"].attrs
        assert ds.attrs["Conventions"] == "CF-1.8"
        for key in ("GEOSR_VERSION", "GEOSR_METHOD", "GEOSR_AUX", "GEOSR_SOURCE"):
            assert ds.attrs[key] == cog["tags"][key]
        assert np.isnan(da.encoding["_FillValue"])
    with xr.open_dataset(outputs[kind], decode_coords="all",
                         engine="zarr" if kind == "zarr" else None) as ds:
        assert ds["t2m"].rio.crs == cog["crs"]


def test_netcdf_is_compressed_in_map_chunks(outputs):
    import netCDF4

    with netCDF4.Dataset(outputs["nc"]) as nc:
        var = nc["t2m"]
        assert var.chunking() == [1, 128, 128]  # (1, 512, 512) on a larger grid
        assert var.filters()["zlib"] and var.filters()["shuffle"]
        assert nc["time"].calendar == "proleptic_gregorian"
        assert nc.file_format == "NETCDF4"


def test_zarr_is_chunked_for_dask(outputs):
    with xr.open_zarr(outputs["zarr"]) as ds:
        assert ds["t2m"].encoding["chunks"] == (1, 128, 128)
        assert ds["t2m"].data.chunksize == (1, 128, 128)
    assert (outputs["zarr"] / ".zmetadata").is_file()  # consolidated


def test_gdal_reads_the_netcdf_with_its_crs(outputs, cog):
    import rioxarray

    da = rioxarray.open_rasterio(outputs["nc"])
    assert da.rio.crs == cog["crs"] and da.rio.transform() == cog["transform"]
    np.testing.assert_array_equal(da.values, cog["data"])


def test_no_temporaries_are_left(outputs):
    assert not [p for p in outputs["tif"].parent.iterdir() if TMP_TAG in p.name]


def test_cf_netcdf_input_dates_become_the_time_coordinate(tmp_path):
    """A CF NetCDF time series (lon/lat, hours since...) in, NetCDF out."""
    from scipy.io import netcdf_file

    lon = -6.0 + 0.25 * (np.arange(10) + 0.5)
    lat = 49.0 + 0.25 * (np.arange(8) + 0.5)
    src = tmp_path / "tas.nc"
    with netcdf_file(src, "w") as f:
        for name, size in (("time", 2), ("lat", 8), ("lon", 10)):
            f.createDimension(name, size)
        v = f.createVariable("time", "f8", ("time",))
        v[:], v.units, v.calendar = [0.0, 6.0], b"hours since 2018-05-01 00:00:00", b"standard"
        v = f.createVariable("lat", "f4", ("lat",))
        v[:], v.units = lat, b"degrees_north"
        v = f.createVariable("lon", "f4", ("lon",))
        v[:], v.units = lon, b"degrees_east"
        v = f.createVariable("tas", "f4", ("time", "lat", "lon"))
        v[:] = 280.0 + lat[None, :, None] - lon[None, None, :] + np.arange(2)[:, None, None]
        v.units, v.long_name = b"K", b"near-surface air temperature"
    out = tmp_path / "tas_2km.nc"
    r = runner.invoke(app, ["downscale", str(src), "--method", "bicubic", "--res", "2000",
                            "--factor", "10", "--crs", "EPSG:32630", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(
            ds["time"].values, np.array(["2018-05-01T00", "2018-05-01T06"], "datetime64[ns]"))
        assert ds["tas"].attrs["units"] == "K"
        assert ds["tas"].attrs["long_name"] == "near-surface air temperature"
        assert ds["tas"].rio.crs.to_epsg() == 32630


def test_undated_input_has_a_band_dimension(tmp_path):
    scene = _scene(tmp_path / "src", dates=None, n=2)
    out = tmp_path / "out.nc"
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 0, r.stderr
    with xr.open_dataset(out) as ds:
        assert ds["t2m"].dims == ("band", "y", "x") and "time" not in ds.coords
        assert list(ds["band"].values) == [1, 2]


def test_dates_numpy_cannot_hold_fall_back_to_a_band_dimension(tmp_path):
    """A 360-day calendar has 30 February: the dates stay, as strings along 'band'."""
    dates = ["2000-02-29T00:00:00", "2000-02-30T00:00:00"]
    scene = _scene(tmp_path / "src", dates=dates, n=2)
    out = tmp_path / "out.zarr"
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 0, r.stderr
    with xr.open_zarr(out) as ds:
        assert ds["t2m"].dims == ("band", "y", "x")
        assert list(ds["date"].values) == dates


# --------------------------------------------------------------------------- errors


def test_unknown_extension_is_exit_2_before_any_work(tmp_path):
    # The input does not exist: the extension is refused before anything is read.
    r = runner.invoke(app, ["downscale", str(tmp_path / "missing.tif"), "--aux", "dem.tif",
                            "-o", str(tmp_path / "out.grd")])
    assert r.exit_code == 2
    line = _one_line(r)
    assert "-o" in line and "'.grd'" in line and ".tif" in line and ".nc" in line \
        and ".zarr" in line, line
    assert list(tmp_path.iterdir()) == []


def test_existing_netcdf_needs_overwrite(tmp_path):
    scene = _scene(tmp_path / "src")
    out = tmp_path / "out.nc"
    out.write_bytes(b"keep me")
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 2 and "--overwrite" in _one_line(r) and str(out) in r.stderr
    assert out.read_bytes() == b"keep me"
    r = runner.invoke(app, _args(scene, out, "--overwrite"))
    assert r.exit_code == 0, r.stderr
    with xr.open_dataset(out) as ds:
        assert ds["t2m"].shape == (3, 128, 128)


def test_existing_zarr_needs_overwrite(tmp_path):
    scene = _scene(tmp_path / "src")
    out = tmp_path / "out.zarr"
    (out / "old").mkdir(parents=True)
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 2 and "--overwrite" in _one_line(r)
    assert (out / "old").is_dir()
    r = runner.invoke(app, _args(scene, out, "--overwrite"))
    assert r.exit_code == 0, r.stderr
    assert not (out / "old").exists()


@pytest.mark.parametrize("where", ["missing-folder", "file-as-folder"])
@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_unwritable_output_path_is_one_line(tmp_path, where, ext):
    scene = _scene(tmp_path / "src")
    if where == "missing-folder":
        out = tmp_path / "nope" / f"out.{ext}"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / f"out.{ext}"
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 2
    assert str(out) in _one_line(r)


@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, ext):
    """The stage file is complete when the NetCDF/Zarr copy fails half-way."""
    scene = _scene(tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = sinks._copy_pieces

    def half(src, pieces, write, progress):
        real(src, pieces[: len(pieces) // 2], write, progress)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks, "_copy_pieces", half)
    out = out_dir / f"out.{ext}"
    r = runner.invoke(app, _args(scene, out))
    assert r.exit_code == 1
    line = _one_line(r)
    assert str(out) in line and "No space left" in line and "nothing was left" in line, line
    assert TMP_TAG not in line
    assert list(out_dir.iterdir()) == []


# The CLI with a delay in every piece copied to the NetCDF/Zarr output (and small chunks,
# so there are many), so a run is still writing it when the test signals it.
SLOW_SINK = textwrap.dedent("""
    import os, time
    import geosr.io.sinks as s
    delay = float(os.environ["GEOSR_TEST_DELAY"])
    s.CHUNK_PX = 16
    real = s._copy_pieces
    def slowed(src, pieces, write, progress):
        def w(*a):
            time.sleep(delay)
            write(*a)
        return real(src, pieces, w, progress)
    s._copy_pieces = slowed
    from geosr.cli import app
    app(prog_name="geosr")
""")


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_interrupted_while_writing_leaves_nothing(tmp_path, ext):
    scene = _scene(tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"out.{ext}"
    env = {**os.environ, "GEOSR_TEST_DELAY": "0.05", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SINK, *_args(scene, out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def writing() -> bool:  # the output's data variable exists: pieces are being copied
        found = [p for p in out_dir.iterdir() if TMP_TAG in p.name and "stage" not in p.name]
        return any((p / "t2m" / ".zarray").exists() if p.is_dir() else p.stat().st_size > 0
                   for p in found)

    t_end = time.monotonic() + 120
    while not writing():
        if proc.poll() is not None or time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"the run never reached the output copy: {proc.communicate()[1]}")
        time.sleep(0.02)
    time.sleep(0.2)  # a few pieces in
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "geosr downscale: interrupted; no partial output was kept"], err
    time.sleep(0.2)  # nothing lands afterwards either
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("name,fmt", [("a.tif", OutputFormat.cog), ("a.TIFF", OutputFormat.cog),
                                      ("a.nc", OutputFormat.netcdf),
                                      ("a.nc4", OutputFormat.netcdf),
                                      ("dir/a.zarr", OutputFormat.zarr)])
def test_output_format_by_extension(name, fmt):
    assert output_format(name) is fmt


@pytest.mark.parametrize("name", ["a.grd", "a", "a.tif.gz"])
def test_output_format_refuses_other_names(name):
    with pytest.raises(InputError, match=r"^-o a.*expected \.tif"):
        output_format(name)


def test_stage_names_keep_the_temporary_marker():
    assert stage_path(Path("/d/.o.geosr-tmp-ab.nc")).name == ".o.geosr-tmp-ab-stage.tif"
    assert stage_path(Path("/d/.o.zarr.geosr-tmp-x1")).name == ".o.zarr.geosr-tmp-x1-stage.tif"


def test_cf_names_and_times():
    assert cf_name("t2m") == "t2m" and cf_name("2m temp") == "v2m_temp"
    assert cf_name("x") == "x_data" and cf_name("") == "data"
    assert cf_times(["2018-05-01", "2018-05-01T06:00:00"]).dtype == np.dtype("datetime64[ns]")
    assert cf_times(["2018-05-01", ""]) is None
    assert cf_times(["2000-02-30T00:00:00"]) is None
    assert cf_times(["2300-01-01"]).dtype == np.dtype("datetime64[s]")
