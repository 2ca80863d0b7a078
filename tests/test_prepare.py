import json

import numpy as np
import pytest
import rasterio
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr.arrays import block_mean
from geosr.cli import app
from geosr.cli.options import parse_layer
from geosr.dataset.manifest import read_manifest
from geosr.dataset.prepare import PrepareConfig, prepare
from geosr.errors import GridError, InputError, OutputExistsError
from geosr.sources import LayerSpec

runner = CliRunner()


def _field(dem, days=3, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for d in range(days):
        base = 15 + d - 0.0065 * dem
        out.append(base + rng.normal(scale=0.1, size=dem.shape))
    return np.stack(out).astype(np.float32)


@pytest.fixture
def scene(tmp_path):
    """Target at 1 km (EPSG:32632) with a NaN corner, a 250 m DEM in EPSG:3035, a land cover."""
    dem = terrain((96, 96))
    t = _field(dem)
    t[:, :10, :10] = np.nan
    target = write_raster(tmp_path / "tmax.tif", t, res=1000, origin=(600_000, 5_150_000),
                          band_tags=[{"DATE_TIME": f"2020-07-0{d + 1}"} for d in range(3)])
    dem_fine = np.kron(dem, np.ones((4, 4), np.float32))  # 250 m copy of the same terrain
    dem_path = write_raster(tmp_path / "dem.tif", dem_fine, res=250, origin=(600_000, 5_150_000))
    lc = (dem > 900).astype("uint8") + 1
    lc_path = write_raster(tmp_path / "lc.tif", lc, res=1000, origin=(600_000, 5_150_000),
                           dtype="uint8", nodata=0)
    return {"dem": dem, "target": target, "dem_path": dem_path, "lc_path": lc_path, "t": t}


def test_prepare_target_only_perfect_model(scene, tmp_path):
    out = tmp_path / "ds"
    cfg = PrepareConfig(out_dir=out, target=(str(scene["target"]),),
                        aux=(LayerSpec("dem", str(scene["dem_path"])),
                             LayerSpec("lc", str(scene["lc_path"]), categorical=True)),
                        res_m=1000, factor=8, block_px=32)
    res = prepare(cfg)
    m = read_manifest(out)
    assert m.factor == 8 and m.fine_grid.width == m.coarse_grid.width * 8
    assert len(m.samples) == 3 and m.samples[1].date == "2020-07-02"
    assert res.to_dict()["n_samples"] == 3
    with rasterio.open(out / "target.tif") as t, rasterio.open(out / "coarse.tif") as c, \
            rasterio.open(out / "aux/dem.tif") as d, rasterio.open(out / "aux/lc.tif") as lc:
        # every layer on the identical fine grid
        assert t.transform == d.transform == lc.transform and t.shape == d.shape == lc.shape
        assert c.transform.a == 8 * t.transform.a and (c.transform.c, c.transform.f) == \
            (t.transform.c, t.transform.f)
        tt = t.read(masked=True).filled(np.nan)
        cc = c.read(masked=True).filled(np.nan)
        dd = d.read(1, masked=True).filled(np.nan)
        classes = set(np.unique(lc.read(1, masked=True).compressed()).tolist())
    # coarse = mean of the valid fine cells under it, to float32 precision
    np.testing.assert_allclose(cc, block_mean(tt, 8), rtol=1e-6, equal_nan=True)
    assert np.isnan(tt[0, 0, 0])  # nodata carried as NaN, not a number
    # the 250 m DEM averaged onto 1 km reproduces the terrain; T anti-correlates with it
    ok = np.isfinite(tt[0]) & np.isfinite(dd)
    assert np.corrcoef(tt[0][ok], dd[ok])[0, 1] < -0.99
    assert classes <= {1.0, 2.0}
    layer = m.aux_layer("lc")
    assert layer.categorical and set(layer.classes) <= {1.0, 2.0}
    assert m.aux_layer("dem").stats.count > 0


def test_prepare_with_coarse_input_pairs_by_position(scene, tmp_path):
    coarse = block_mean(np.nan_to_num(scene["t"], nan=10.0), 12)  # 12 km cells
    cpath = write_raster(tmp_path / "coarse.tif", coarse, res=12_000, origin=(600_000, 5_150_000))
    out = tmp_path / "ds"
    prepare(PrepareConfig(out_dir=out, coarse=(str(cpath),), target=(str(scene["target"]),),
                          aux=(LayerSpec("dem", str(scene["dem_path"])),), res_m=1000))
    m = read_manifest(out)
    assert m.factor == 12  # derived from the coarse cell size
    assert m.coarse.bands == 3 and m.target.bands == 3


def test_prepare_pair_count_mismatch(scene, tmp_path):
    cpath = write_raster(tmp_path / "c.tif", np.ones((2, 8, 8)), res=12_000,
                         origin=(600_000, 5_150_000))
    with pytest.raises(InputError, match="COARSE has 2 bands"):
        prepare(PrepareConfig(out_dir=tmp_path / "ds", coarse=(str(cpath),),
                              target=(str(scene["target"]),), res_m=1000))
    assert not (tmp_path / "ds").exists()


def test_prepare_inference_only_geographic_input(tmp_path):
    # a 0.25 degree field in EPSG:4326 -> fine grid in the local UTM zone
    from affine import Affine
    data = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    cpath = write_raster(tmp_path / "era.tif", data, crs="EPSG:4326",
                         transform=Affine(0.25, 0, -6.0, 0, -0.25, 50.75))
    out = tmp_path / "ds"
    prepare(PrepareConfig(out_dir=out, coarse=(str(cpath),), res_m=500, factor=40))
    m = read_manifest(out)
    assert m.fine_grid.crs == "EPSG:32630" and m.target is None


def test_prepare_errors_leave_nothing(scene, tmp_path):
    out = tmp_path / "ds"
    far = write_raster(tmp_path / "far.tif", np.ones((10, 10)), res=1000,
                       origin=(100_000, 4_000_000))
    with pytest.raises(GridError, match="overlap 0%"):
        prepare(PrepareConfig(out_dir=out, target=(str(scene["target"]),),
                              aux=(LayerSpec("far", str(far)),), res_m=1000, factor=8))
    nocrs = write_raster(tmp_path / "nocrs.tif", np.ones((10, 10)), crs=None)
    with pytest.raises(GridError, match="no CRS"):
        prepare(PrepareConfig(out_dir=out, target=(str(nocrs),), res_m=1000, factor=8))
    allnan = write_raster(tmp_path / "nan.tif", np.full((16, 16), np.nan), res=1000,
                          origin=(600_000, 5_150_000))
    with pytest.raises(GridError, match="no valid pixels"):
        prepare(PrepareConfig(out_dir=out, target=(str(allnan),), res_m=1000, factor=8))
    with pytest.raises(GridError, match="--factor is required"):
        prepare(PrepareConfig(out_dir=out, target=(str(scene["target"]),), res_m=1000))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".geosr-tmp" in p.name] == []
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(PrepareConfig(out_dir=out, target=(str(scene["target"]),), res_m=1000, factor=8))
    assert (out / "x").read_text() == "keep"


def test_parse_layer():
    assert parse_layer("dem.tif") == LayerSpec("dem", "dem.tif")
    assert parse_layer("lc=/a/b.tif:categorical") == LayerSpec("lc", "/a/b.tif", True)
    with pytest.raises(InputError, match="layer name"):
        parse_layer("1x=a.tif")


def _cli(*args):
    return runner.invoke(app, list(args))


def test_cli_prepare_end_to_end_and_json(scene, tmp_path):
    out = tmp_path / "ds"
    r = _cli("prepare", "--target", str(scene["target"]), "--aux", str(scene["dem_path"]),
             f"lc={scene['lc_path']}:categorical", "--factor", "8", "--res", "1000",
             "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["layers"] == ["coarse", "target", "dem", "lc"]
    assert summary["fine_shape"][0] % 8 == 0


@pytest.mark.parametrize("args, needle", [
    (["--res", "-5"], "--res"),
    (["--res", "1e9"], "--res"),
    (["--factor", "99"], "--factor"),
    (["--crs", "EPSG:4326"], "geographic"),
])
def test_cli_prepare_bad_options(scene, tmp_path, args, needle):
    out = tmp_path / "ds"
    r = _cli("prepare", "--target", str(scene["target"]), "--factor", "8", "-o", str(out), *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.output
    assert not out.exists()


def test_cli_prepare_corrupt_file(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    r = _cli("prepare", "--target", str(bad), "--factor", "8", "-o", str(tmp_path / "ds"))
    assert r.exit_code == 2
    assert "broken.tif" in r.stderr and "not a readable raster" in r.stderr


def test_prepare_meteoswiss_real(real_data, tmp_path):
    d = real_data / "meteoswiss-ch-1km"
    tabs = next((d / "geotiff").glob("TabsM_*.tif"))
    out = tmp_path / "ch"
    prepare(PrepareConfig(out_dir=out, target=(str(tabs),),
                          aux=(LayerSpec("dem", str(d / "aux/swissAltitude_geostatsp.tif")),
                               LayerSpec("lc", str(d / "aux/swissLandType_geostatsp.tif"), True)),
                          res_m=1000, factor=16))
    m = read_manifest(out)
    assert m.fine_grid.crs == "EPSG:2056" and m.factor == 16
    with rasterio.open(out / "target.tif") as t, rasterio.open(out / "aux/dem.tif") as dm, \
            rasterio.open(out / "coarse.tif") as c:
        assert t.transform == dm.transform and t.shape == dm.shape
        tt = t.read(1, masked=True).filled(np.nan)
        dd = dm.read(1, masked=True).filled(np.nan)
        cc = c.read(1, masked=True).filled(np.nan)
    ok = np.isfinite(tt) & np.isfinite(dd)
    # the DEM, reprojected from its own oblique Mercator, correlates with temperature
    assert np.corrcoef(tt[ok], dd[ok])[0, 1] < -0.9
    np.testing.assert_allclose(cc, block_mean(tt, 16), rtol=1e-6, equal_nan=True)


def test_prepare_haduk_netcdf_era5(real_data, tmp_path):
    """A real NetCDF coarse input (ERA5 t2m, 0.25 deg) paired with HadUK daily tasmax."""
    d = real_data / "haduk-cornwall-1km-may2018"
    nc = d / "coarse_real/era5_cornwall_201805_hourly_instant.nc"
    from geosr.io.read import raster_info
    with pytest.raises(InputError, match="variables"):
        raster_info(str(nc))
    info = raster_info(f'NETCDF:"{nc}":t2m')
    assert info.count == 744
    out = tmp_path / "era"
    prepare(PrepareConfig(out_dir=out, coarse=(f'NETCDF:"{nc}":t2m',),
                          aux=(LayerSpec("dem", str(d / "aux/dtmm.tif")),), res_m=1000,
                          bounds=(130_000, 10_000, 200_000, 70_000)))
    m = read_manifest(out)
    assert m.fine_grid.crs == "EPSG:27700"  # lon/lat input -> the projected aux's CRS
    assert 15 <= m.factor <= 30 and m.coarse.bands == 744
    assert m.aux_layer("dem").stats.count > 1000


def test_inf_inside_data_is_masked_with_a_warning(tmp_path, caplog):
    dem = terrain((32, 32))
    t = (15 - 0.0065 * dem).astype(np.float32)
    t[5, 5] = np.inf
    t[6, 6] = -np.inf
    target = write_raster(tmp_path / "t.tif", t, res=1000, origin=(600_000, 5_150_000))
    with caplog.at_level("WARNING", logger="geosr"):
        prepare(PrepareConfig(out_dir=tmp_path / "ds", target=(str(target),), res_m=1000, factor=8))
    assert any("infinite" in r.message for r in caplog.records)
    m = read_manifest(tmp_path / "ds")
    assert np.isfinite(m.target.stats.mean) and m.target.stats.max < 100


def test_integer_input_with_nodata_value_is_masked(tmp_path):
    data = np.full((32, 32), 250, dtype="int16")
    data[:8] = -9999
    target = write_raster(tmp_path / "t.tif", data, res=1000, origin=(600_000, 5_150_000),
                          dtype="int16", nodata=-9999)
    prepare(PrepareConfig(out_dir=tmp_path / "ds", target=(str(target),), res_m=1000, factor=8))
    m = read_manifest(tmp_path / "ds")
    assert m.target.stats.min == 250 and m.target.stats.max == 250  # -9999 never used
    with rasterio.open(tmp_path / "ds/coarse.tif") as c:
        cc = c.read(1, masked=True).filled(np.nan)
    assert np.isnan(cc[0]).all() and np.allclose(cc[1:], 250)


def test_readonly_output_folder(tmp_path, monkeypatch, scene):
    import os
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro")
                        else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    with pytest.raises(InputError, match="not writable"):
        prepare(PrepareConfig(out_dir=tmp_path / "ro" / "ds", target=(str(scene["target"]),),
                              res_m=1000, factor=8))
