"""`geosr downscale`: tiling invariance, seams, conservation, COG output, atomicity, errors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import terrain, write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import geosr.inference.engine as engine
import geosr.inference.run as ds
import geosr.io.sinks
from geosr.arrays import block_mean
from geosr.baselines import sharpen, upsample
from geosr.cli import app
from geosr.cli.options import parse_layers
from geosr.errors import BundleError, InputError, ProcessingError
from geosr.inference.config import DownscaleConfig, Method
from geosr.inference.run import downscale, match_aux
from geosr.inference.tiling import plan_tiles
from geosr.sources import LayerSpec

runner = CliRunner()
F = 8  # factor: 4 km coarse cells over a 500 m grid
ORIGIN = (600_000.0, 5_100_000.0)


def _scene(root: Path, *, hc: int = 80, wc: int = 100, bands: int = 2, coarse_nan: bool = False,
           aux_nan: bool = False, cell_noise: float = 0.0) -> dict:
    """A DEM on the 500 m grid, a DEM-driven temperature and its exact 4 km block means.

    ``cell_noise``: std (degC) of independent noise added to every coarse cell, so that
    neighbouring cells differ (how nodata is filled next to a lake then matters).
    """
    dem = terrain((hc * F, wc * F), seed=3)
    rng = np.random.default_rng(5)
    days = []
    for b in range(bands):
        t = 18 + b - (0.0055 + 0.001 * b) * dem + rng.normal(0, 0.2, dem.shape)
        days.append(block_mean(t.astype(np.float32), F))
    coarse = np.stack(days)
    if cell_noise:
        coarse += np.random.default_rng(7).normal(0, cell_noise, coarse.shape).astype(np.float32)
    if coarse_nan:
        coarse[:, 20:26, 30:37] = np.nan  # a lake of nodata across a tile border
        coarse[:, 5, 60] = np.nan
    if aux_nan:
        dem = dem.copy()
        dem[300:340, 500:560] = np.nan
    aux = write_raster(root / "dem.tif", dem, res=500.0, origin=ORIGIN)
    src = write_raster(root / "t2m.tif", coarse, res=500.0 * F, origin=ORIGIN,
                       band_tags=[{"DATE_TIME": f"2020-07-0{b + 1}"} for b in range(bands)])
    return {"coarse": src, "aux": aux, "coarse_arr": coarse, "dem": dem}


@pytest.fixture
def scene(tmp_path):
    return _scene(tmp_path)


def _run(scene, out, **kw):
    kw.setdefault("aux", parse_layers([str(scene["aux"])]))
    cfg = DownscaleConfig(coarse=(str(scene["coarse"]),), out=out, **kw)
    result = downscale(cfg)
    with rasterio.open(result.outputs[0].path) as src:
        return src.read(), result


def _border_stat(arr: np.ndarray, plan) -> tuple[float, float]:
    """Mean |gradient| across tile borders vs across the other coarse-cell borders.

    Tile borders are coarse-cell borders by construction, and a conserving method has
    structure at every cell border, so the fair "elsewhere" is the other cell borders.
    Both axes are pooled.
    """
    on, off = [], []
    for axis, edges in ((-1, plan.cols.edges), (-2, plan.rows.edges)):
        g = np.moveaxis(np.abs(np.diff(arr, axis=axis)), axis, -1)  # k: between k and k+1
        tile = np.zeros(g.shape[-1], bool)
        tile[[e - 1 for e in edges[1:-1]]] = True
        cell = np.zeros(g.shape[-1], bool)
        cell[F - 1::F] = True
        on.append(g[..., tile].ravel())
        off.append(g[..., cell & ~tile].ravel())
    return float(np.nanmean(np.concatenate(on))), float(np.nanmean(np.concatenate(off)))


def _assert_cog(path: Path) -> None:
    """GDAL's COG layout check when GDAL's Python bindings are installed; else its main
    points through rasterio and the file's own bytes."""
    try:
        from osgeo_utils.samples.validate_cloud_optimized_geotiff import validate
    except ImportError:
        validate = None
    if validate is not None:
        _, errors, _ = validate(str(path), full_check=True)
        assert not errors, errors
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # GDAL >= 3.1
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"  # floating point
        ovr = src.overviews(1)
        assert ovr and all(src.overviews(b) == ovr for b in src.indexes)
        # COG layout: data of the smallest overview first, full resolution last
        offsets = [int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=i))
                   for i in reversed(range(len(ovr)))]
        offsets.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
        assert offsets == sorted(offsets), offsets
    with open(path, "rb") as fh:
        head = fh.read(512)  # GDAL's ghost area right after the TIFF header
    assert b"GDAL_STRUCTURAL_METADATA_SIZE=" in head and b"LAYOUT=IFDS_BEFORE_DATA" in head
    assert b"KNOWN_INCOMPATIBLE_EDITION=NO" in head
    assert not Path(f"{path}.ovr").exists()  # overviews are internal


# --------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("method", ["sharpen", "bicubic"])
def test_result_does_not_depend_on_tile_size(scene, tmp_path, method):
    a, ra = _run(scene, tmp_path / "a.tif", method=Method(method), tile_px=128)
    b, rb = _run(scene, tmp_path / "b.tif", method=Method(method), tile_px=512)
    assert ra.tile_px == 128 and rb.tile_px == 512
    std = float(np.nanstd(b))
    assert np.nanmax(np.abs(a - b)) < 1e-3 * std
    assert np.array_equal(np.isnan(a), np.isnan(b))


def test_warped_aux_does_not_depend_on_tile_size(tmp_path):
    """Aux off the grid's lattice (finer DEM: average; coarser NDVI: bilinear)."""
    sc = _scene(tmp_path, hc=40, wc=50)
    dem = terrain((40 * F * 2, 50 * F * 2), seed=4)
    fine_dem = write_raster(tmp_path / "dem250.tif", dem, res=250.0, origin=ORIGIN)
    ndvi = np.random.default_rng(1).uniform(0, 1, (40 * F // 2 + 2, 50 * F // 2 + 2))
    ndvi_path = write_raster(tmp_path / "ndvi.tif", ndvi, res=1000.0,
                             origin=(ORIGIN[0] - 700.0, ORIGIN[1] + 300.0))
    outs = []
    for tile in (64, 256):
        res = downscale(DownscaleConfig(
            coarse=(str(sc["coarse"]),), aux=parse_layers([str(fine_dem), str(ndvi_path)]),
            out=tmp_path / f"o{tile}.tif", tile_px=tile))
        with rasterio.open(res.outputs[0].path) as src:
            outs.append(src.read())
    assert np.nanmax(np.abs(outs[0] - outs[1])) < 1e-3 * np.nanstd(outs[1])


@pytest.mark.parametrize("method", ["sharpen", "bicubic", "net"])
def test_result_next_to_nodata_does_not_depend_on_tile_size(tmp_path, request, method):
    """Nodata lakes across tile borders, in a field that changes from cell to cell.

    A tile must fill the nodata next to it as the whole raster would: filled from the
    cells that tile happens to see, the values beside a lake depend on the tile size.
    ``net`` is the untrained network: the trained-like one also fails for lack of context
    (see test_trained_like_network_does_not_depend_on_tile_size).
    """
    sc = _scene(tmp_path, coarse_nan=True, aux_nan=True, cell_noise=0.5)
    kw = _method(request, method)
    a, _ = _run(sc, tmp_path / "a.tif", tile_px=128, **kw)
    b, _ = _run(sc, tmp_path / "b.tif", tile_px=512, **kw)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(b).any()
    assert np.nanmax(np.abs(a - b)) < 1e-3 * np.nanstd(b)


def test_sharpen_tiled_equals_whole_array(scene, tmp_path):
    out, _ = _run(scene, tmp_path / "o.tif", tile_px=128)
    c = scene["coarse_arr"]
    whole = np.stack([sharpen(c[b], scene["dem"][None], F) for b in range(c.shape[0])])
    np.testing.assert_allclose(out, whole, atol=1e-4)


def _method(request, method: str) -> dict:
    """DownscaleConfig keywords that run ``method``: ``net`` the ``tiny_bundle`` network,
    ``net-gain`` the ``gain_bundle`` one."""
    if method.startswith("net"):
        fixture = "gain_bundle" if method == "net-gain" else "tiny_bundle"
        return {"model": str(request.getfixturevalue(fixture))}
    return {"method": Method(method)}


@pytest.mark.parametrize("method", ["sharpen", "net-gain"])
def test_no_visible_seams(scene, tmp_path, request, method):
    # Tile 64: many borders, so that the statistic measures seams, not where they fall
    # (with a few borders, the field's own structure along them moves it by ~5 %).
    out, res = _run(scene, tmp_path / "o.tif", tile_px=64, **_method(request, method))
    assert res.method is Method(method.split("-")[0])
    plan = plan_tiles(out.shape[1], out.shape[2], factor=F, tile_px=64,
                         overlap_px=res.overlap_px)
    at_border, elsewhere = _border_stat(out, plan)
    assert abs(at_border / elsewhere - 1) < 0.05


class _TileDependentPredictor:
    """A fake network whose output depends on the whole tile (like global attention)."""

    factor = F
    aux_names = ("dem",)
    halo_coarse = 0  # no encoder context: tiles are predicted exactly as read
    decode_halo = 3  # the blended overlap, in coarse cells

    def predict(self, coarse, aux, *, margin=(0, 0, 0, 0)):
        assert not any(margin)
        base = upsample(coarse, F, "bicubic")
        # a tile-dependent offset: would show as a step at every tile border unblended
        offset = np.nanmean(coarse, axis=(-2, -1), keepdims=True) * 0.05
        return base + offset + 0.0 * aux[:, 0]


def _fake_bundle_module(monkeypatch, predictor_cls=_TileDependentPredictor, aux_names=("dem",)):
    bundle = types.SimpleNamespace(aux_names=aux_names, factor=F, res_m=500.0, variable="t2m",
                                   units="degC", sha256="ab" * 32,
                                   aux=[types.SimpleNamespace(name=n, categorical=False)
                                        for n in aux_names])
    calls = {"loads": 0, "predictors": 0}
    def load(path):
        calls["loads"] += 1
        return bundle

    def make(b, device=None, conserve=None):
        calls["conserve"] = conserve
        calls["predictors"] += 1
        p = predictor_cls()
        p.aux_names = aux_names
        return p

    monkeypatch.setattr("geosr.model.registry.resolve_model", lambda spec: Path(spec))
    monkeypatch.setattr("geosr.model.bundle.load_bundle", load)
    monkeypatch.setattr("geosr.model.predictor.Predictor", make)
    return calls


def test_blending_hides_seams_of_a_tile_dependent_model(scene, tmp_path, monkeypatch):
    """A network's tiles meet without overlap by default (a real network's tiles read
    their whole context and are exact); ``--overlap`` still blends a model whose tiles
    are not."""
    _fake_bundle_module(monkeypatch)
    blended, res = _run(scene, tmp_path / "b.tif", model="fake.geosr", tile_px=64,
                        overlap_px=3 * F, conserve=False)
    assert res.method is Method.net and res.overlap_px == 3 * F
    plan = plan_tiles(blended.shape[1], blended.shape[2], factor=F, tile_px=64,
                         overlap_px=res.overlap_px)
    at_border, elsewhere = _border_stat(blended, plan)
    assert abs(at_border / elsewhere - 1) < 0.05
    # the statistic does see seams: without overlap (the default) the borders stand out
    hard, res = _run(scene, tmp_path / "h.tif", model="fake.geosr", tile_px=64,
                     conserve=False)
    assert res.overlap_px == 0
    at_border, elsewhere = _border_stat(hard, plan)
    assert at_border / elsewhere > 1.05


# --------------------------------------------------------------------------- conservation


@pytest.mark.parametrize("method", ["sharpen", "bicubic", "net-gain"])
def test_conservation_across_tiles_and_next_to_nodata(tmp_path, request, method):
    sc = _scene(tmp_path, coarse_nan=True, aux_nan=True)
    out, res = _run(sc, tmp_path / "o.tif", tile_px=96, conserve=True,
                    **_method(request, method))
    assert res.conserve and res.method is Method(method.split("-")[0])
    c = sc["coarse_arr"]
    means = block_mean(out, F)
    valid = np.isfinite(c)
    assert np.array_equal(np.isfinite(means), valid)
    scale = np.nanmax(np.abs(c))
    assert np.nanmax(np.abs(means - c)) <= 4 * np.finfo(np.float32).eps * scale
    # nodata cells of the input are nodata in the output, nothing else is
    up = np.repeat(np.repeat(valid, F, -2), F, -1)
    assert np.array_equal(np.isfinite(out), up)


def test_bicubic_is_plain_interpolation_by_default(scene, tmp_path):
    out, res = _run(scene, tmp_path / "o.tif", method=Method.bicubic, tile_px=128)
    assert not res.conserve
    np.testing.assert_allclose(out, upsample(scene["coarse_arr"], F, "bicubic"), atol=1e-4)


# --------------------------------------------------------------------------- output


def test_output_is_a_valid_cog_with_provenance(scene, tmp_path, monkeypatch):
    from geosr import __version__

    with rasterio.open(scene["coarse"], "r+") as dst:  # units of the input are carried over
        dst.units = ("degC", "degC")
    out = tmp_path / "out.tif"
    argv = ["downscale", str(scene["coarse"]), "--aux", f"elev={scene['aux']}", "-o", str(out),
            "--tile", "256"]
    monkeypatch.setattr(sys, "argv", ["geosr", *argv])
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.stderr
    # without --model it says which method ran
    assert "sharpen (regression sharpening, conserved)" in r.stdout and "Mpx/s" in r.stdout
    _assert_cog(out)
    with rasterio.open(out) as src:
        assert src.count == 2 and src.dtypes == ("float32", "float32")
        assert np.isnan(src.nodata)
        assert src.descriptions == ("t2m 2020-07-01", "t2m 2020-07-02")
        assert src.units == ("degC", "degC")
        tags = src.tags()
        assert tags["GEOSR_METHOD"] == "sharpen" and tags["GEOSR_AUX"] == "elev"
        assert tags["GEOSR_VERSION"] == __version__ and tags["GEOSR_FACTOR"] == str(F)
        assert tags["GEOSR_RES_M"] == "500" and tags["GEOSR_CONSERVE"] == "true"
        assert tags["GEOSR_COMMAND"] == shlex.join(["geosr", *argv])
        assert tags["GEOSR_AUX_FILES"] == f"elev={os.path.abspath(scene['aux'])}"
        assert src.tags(2)["DATE_TIME"] == "2020-07-02"
        assert "GEOSR_SHARPEN_R2" in src.tags(1)
        assert src.res == (500.0, 500.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dem.tif", "out.tif", "t2m.tif"]


def test_default_output_name_and_out_dir(scene, tmp_path):
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "t2m_500m.tif").is_file()
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("downscaled") and r.stderr == ""
    (tmp_path / "out").mkdir()
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "--out-dir", str(tmp_path / "out"), "--method", "bicubic"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "t2m_500m.tif").is_file()


def test_several_inputs_one_output_each(scene, tmp_path):
    second = tmp_path / "t2m_b.tif"
    write_raster(second, scene["coarse_arr"][:1] + 1, res=500.0 * F, origin=ORIGIN)
    (tmp_path / "o").mkdir()
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), str(second), "--aux",
                            str(scene["aux"]), "--out-dir", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [Path(o["path"]).name for o in summary["outputs"]] == ["t2m_500m.tif", "t2m_b_500m.tif"]
    assert summary["outputs"][0]["shape"] == [2, 80 * F, 100 * F]
    assert summary["outputs"][1]["shape"] == [1, 80 * F, 100 * F]
    for key in ("method", "seconds", "mpx_per_s", "peak_rss_mb"):
        assert key in summary
    assert summary["method"] == "sharpen"


def test_several_inputs_load_the_model_once(scene, tmp_path, monkeypatch):
    calls = _fake_bundle_module(monkeypatch)
    second = write_raster(tmp_path / "t2m_b.tif", scene["coarse_arr"] + 1, res=500.0 * F,
                          origin=ORIGIN)
    (tmp_path / "o").mkdir()
    res = downscale(DownscaleConfig(coarse=(str(scene["coarse"]), str(second)),
                                    aux=parse_layers([str(scene["aux"])]), model="fake.geosr",
                                    out_dir=tmp_path / "o", tile_px=256))
    assert [o.path.name for o in res.outputs] == ["t2m_500m.tif", "t2m_b_500m.tif"]
    assert calls["loads"] == 1 and calls["predictors"] == 1


def test_band_groups_give_the_same_result(scene, tmp_path):
    a, _ = _run(scene, tmp_path / "a.tif", tile_px=128)
    b, _ = _run(scene, tmp_path / "b.tif", tile_px=128, memory_mb=1)  # one band at a time
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("per_band_mb", [0.01, 3.6, 80])
def test_bands_in_flight_do_not_depend_on_the_band_count(per_band_mb):
    """A group holds at most MAX_GROUP_BANDS bands and what the budget allows, however
    many bands the input has (hourly series: hundreds or thousands)."""
    per_band, budget = int(per_band_mb * 2**20), 384 << 20
    sizes = {}
    for n in (24, 744, 8784):
        groups = ds._band_groups(n, per_band, budget)
        assert [b for g in groups for b in g] == list(range(n))
        sizes[n] = max(len(g) for g in groups)
    assert sizes[744] == sizes[8784] <= min(ds.MAX_GROUP_BANDS, max(1, budget // per_band))
    assert sizes[24] <= sizes[744]


def test_many_bands_give_the_values_of_one_group_and_a_pixel_cog(tmp_path, monkeypatch):
    """Bands beyond MAX_GROUP_BANDS go in several groups and into a band-interleaved COG;
    the values are those of a single group written pixel-interleaved by the COG driver."""
    n = ds.MAX_GROUP_BANDS + 8
    sc = _scene(tmp_path, hc=6, wc=8, bands=n)
    groups = []
    real = ds._stream_group

    def spy(crd, group, *a, **k):
        groups.append(len(group))
        return real(crd, group, *a, **k)

    monkeypatch.setattr(ds, "_stream_group", spy)
    a, _ = _run(sc, tmp_path / "a.tif", tile_px=32)
    assert groups == [ds.MAX_GROUP_BANDS, 8]
    with rasterio.open(tmp_path / "a.tif") as src:
        assert src.interleaving.name == "band"
        tags = [src.tags(b) for b in src.indexes]
    _assert_band_cog(tmp_path / "a.tif")

    import geosr.io.write

    monkeypatch.setattr(ds, "MAX_GROUP_BANDS", 10_000)
    monkeypatch.setattr(geosr.io.write, "COG_PIXEL_TILE_MAX_BYTES", 1 << 40)
    groups.clear()
    b, _ = _run(sc, tmp_path / "b.tif", tile_px=32)
    assert groups == [n]
    with rasterio.open(tmp_path / "b.tif") as src:
        assert src.interleaving.name == "pixel"
        assert [src.tags(b) for b in src.indexes] == tags  # dates, sharpening fits
    np.testing.assert_array_equal(a, b)


def _stage(path: Path, bands: int, height: int, width: int) -> Path:
    from affine import Affine

    from geosr.grid import Grid
    from geosr.io.write import open_stream_writer

    grid = Grid("EPSG:32632", Affine(500, 0, 600_000, 0, -500, 5_152_000), width, height)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dst = open_stream_writer(path, grid, bands, descriptions=[f"b{b}" for b in range(bands)])
    for b in range(bands):
        band = np.sin(rows / 37 + b) + np.cos(cols / 23 - b)
        band[:40, :50] = np.nan
        dst.write(band[None], [b + 1])
    dst.close()
    return path


def _assert_band_cog(path: Path) -> None:
    """GDAL's COG validator when its Python bindings are installed; else its checks
    through rasterio: tiled, internal overviews, IFDs first (main, then overviews by
    decreasing size), the data of the smallest overview first (every band)."""
    try:
        from osgeo_utils.samples.validate_cloud_optimized_geotiff import validate
    except ImportError:
        validate = None
    if validate is not None:
        _, errors, _ = validate(str(path), full_check=True)
        assert not errors, errors
    with rasterio.open(path) as src:
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        ovr = src.overviews(1)
        assert all(src.overviews(b) == ovr for b in src.indexes)
        ifds = [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))]
        ifds += [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i))
                 for i in range(len(ovr))]
        assert ifds[0] in (8, 16) and ifds == sorted(ifds), ifds
        levels = [*reversed(range(len(ovr))), None]  # smallest overview first
        for b in (1, src.count):
            offsets = [int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=b,
                                            **({} if i is None else {"ovr": i})))
                       for i in levels]
            assert ifds[-1] < offsets[0] and offsets == sorted(offsets), offsets
    assert not Path(f"{path}.ovr").exists()


def test_band_interleaved_cog_has_the_cog_drivers_values_and_overviews(tmp_path, monkeypatch):
    import geosr.io.write

    _stage(tmp_path / "s1.tif", 3, 600, 1100)
    shutil.copy(tmp_path / "s1.tif", tmp_path / "s2.tif")
    geosr.io.translate_to_cog(tmp_path / "s1.tif", tmp_path / "pixel.tif")
    monkeypatch.setattr(geosr.io.write, "COG_PIXEL_TILE_MAX_BYTES", 0)
    geosr.io.translate_to_cog(tmp_path / "s2.tif", tmp_path / "band.tif")
    _assert_cog(tmp_path / "pixel.tif")
    _assert_band_cog(tmp_path / "band.tif")
    with rasterio.open(tmp_path / "pixel.tif") as p, rasterio.open(tmp_path / "band.tif") as b:
        assert (p.interleaving.name, b.interleaving.name) == ("pixel", "band")
        assert b.overviews(1) == p.overviews(1) == [2, 4]
        assert b.descriptions == p.descriptions and np.isnan(b.nodata)
        assert b.block_shapes[0] == p.block_shapes[0] == (512, 512)
    for level in (None, 0, 1):
        kw = {} if level is None else {"overview_level": level}
        with rasterio.open(tmp_path / "pixel.tif", **kw) as p, \
                rasterio.open(tmp_path / "band.tif", **kw) as b:
            np.testing.assert_array_equal(b.read(), p.read())


COG_MEMORY = """
import sys
from pathlib import Path
from geosr.io import gdal_env, translate_to_cog
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = hwm()
with gdal_env():  # as downscale runs it
    translate_to_cog(Path(sys.argv[1]), Path(sys.argv[2]))
print(hwm() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_cog_copy_memory_does_not_grow_with_bands(tmp_path):
    """200 bands: one pixel-interleaved 512 px tile alone is 200 MiB (GDAL's COG driver
    held ~3 of them: +650 MB); the band-interleaved copy grows the peak by ~26 MB, the
    same for 50 or 400 bands."""
    import subprocess

    _stage(tmp_path / "s.tif", 200, 64, 64)
    r = subprocess.run([sys.executable, "-c", COG_MEMORY, str(tmp_path / "s.tif"),
                        str(tmp_path / "o.tif")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 100, f"COG copy of 200 bands grew the peak by {r.stdout} MB"
    with rasterio.open(tmp_path / "o.tif") as src:
        assert src.count == 200 and src.interleaving.name == "band"


BAND_COG_UNDER_LIMIT = """
import resource, signal
import numpy as np
from affine import Affine
import geosr.io.write
from geosr.errors import ProcessingError
from geosr.grid import Grid
grid = Grid("EPSG:32632", Affine(500, 0, 600000, 0, -500, 5152000), 512, 512)
dst = geosr.io.open_stream_writer("stage.tif", grid, 2)
dst.write(np.random.default_rng(0).random((2, 512, 512), dtype=np.float32))
dst.close()
geosr.io.write.COG_PIXEL_TILE_MAX_BYTES = 0  # band-interleaved
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
try:
    geosr.io.translate_to_cog("stage.tif", "out.tif")
except ProcessingError as e:
    print("REFUSED", e)
else:
    print("WROTE")
"""


def test_band_interleaved_cog_cut_short_by_a_full_disk_is_refused(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-c", BAND_COG_UNDER_LIMIT], cwd=tmp_path, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("REFUSED"), r.stdout + r.stderr
    assert "out.tif" in r.stdout and "file-size limits" in r.stdout


def test_aligns_like_prepare_from_lonlat(tmp_path):
    from geosr.dataset.prepare import PrepareConfig, prepare

    lonlat = write_raster(tmp_path / "ll.tif", np.arange(120, dtype=np.float32).reshape(10, 12),
                          crs="EPSG:4326", res=0.1, origin=(8.0, 47.0))
    res = downscale(DownscaleConfig(coarse=(str(lonlat),), method=Method.bicubic, res_m=1000,
                                    factor=10, out=tmp_path / "o.tif"))
    ds_ = prepare(PrepareConfig(out_dir=tmp_path / "p", coarse=(str(lonlat),), res_m=1000,
                                factor=10))
    with rasterio.open(res.outputs[0].path) as src:
        assert src.crs.to_epsg() == 32632
        assert src.transform.almost_equals(ds_.manifest.fine_grid.transform)
        assert (src.height, src.width) == ds_.manifest.fine_grid.shape
        out = src.read(1)
    with rasterio.open(tmp_path / "p" / "coarse.tif") as src:
        coarse = src.read(1)
    np.testing.assert_allclose(out, upsample(coarse, 10, "bicubic"), atol=1e-4, equal_nan=True)


# --------------------------------------------------------------------------- atomicity


def _boom_after(n, exc):
    real = engine.predict_tiles
    state = {"calls": 0}

    def fake(*args, **kw):
        state["calls"] += 1
        if state["calls"] > n:
            raise exc
        return real(*args, **kw)

    return fake


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_run_leaves_nothing(scene, tmp_path, monkeypatch, exc):
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(engine, "predict_tiles", _boom_after(5, exc))
    with pytest.raises(type(exc)):
        _run(scene, tmp_path / "o.tif", tile_px=128)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failure_while_writing_the_cog_leaves_nothing(scene, tmp_path, monkeypatch):
    """The tiles are done and the stage file complete when the COG copy fails."""
    before = sorted(p.name for p in tmp_path.iterdir())
    seen = []

    def broken(src_path, dst_path, **kw):
        seen.append(Path(src_path).is_file())
        Path(dst_path).write_bytes(b"half a COG")
        raise ProcessingError(f"{dst_path}: COG writing failed (No space left on device)")

    monkeypatch.setattr(geosr.io.sinks, "translate_to_cog", broken)
    out = tmp_path / "o.tif"
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "-o", str(out), "--tile", "256"])
    assert seen == [True]
    assert r.exit_code == 1 and str(out) in r.stderr and "nothing was left" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_failure_exit_1_and_nothing_left(scene, tmp_path, monkeypatch):
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(engine, "predict_tiles", _boom_after(3, RuntimeError("tile failed")))
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "--tile", "128"])
    assert r.exit_code == 1 and "tile failed" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_output_is_exit_2_before_work(scene, tmp_path, monkeypatch):
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    monkeypatch.setattr(engine, "predict_tiles", _boom_after(0, AssertionError("work started")))
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and str(out) in r.stderr
    assert out.read_bytes() == b"keep me"
    monkeypatch.undo()
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.stderr
    with rasterio.open(out) as src:
        assert src.count == 2


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("args,needle", [
    (["--tile", "64", "--overlap", "128"], "--tile 64 is smaller than --overlap 128"),
    (["--method", "net"], "--model"),
    (["--method", "sharpen", "--aux"], "--aux"),
    (["-o", "x.tif", "EXTRA"], "-o"),
    (["--scheduler", "nowhere"], "--scheduler"),
    (["--workers", "0"], "--workers"),
])
def test_input_errors_exit_2(scene, tmp_path, args, needle):
    base = ["downscale", str(scene["coarse"])]
    if args[-1] == "EXTRA":
        base.append(str(scene["coarse"]))
        args = args[:-1]
    if "--aux" not in args:
        base += ["--aux", str(scene["aux"])]
    else:
        args = [a for a in args if a != "--aux"]
    r = runner.invoke(app, [*base, *args])
    assert r.exit_code == 2, r.stderr
    assert needle in r.stderr
    assert not list(tmp_path.glob("*500m*")) and not list(tmp_path.glob(".*geosr-tmp*"))


def test_sharpen_without_aux_is_input_error(scene):
    r = runner.invoke(app, ["downscale", str(scene["coarse"])])
    assert r.exit_code == 2 and "--method bicubic" in r.stderr


def test_match_aux_by_name_order_and_errors():
    dem, ndvi = LayerSpec("dem", "d.tif"), LayerSpec("ndvi", "n.tif")
    assert match_aux([ndvi, dem], ["dem", "ndvi"], model="m") == (dem, ndvi)
    # names differ but counts agree: matching names pair by name, the rest by order
    got = match_aux([LayerSpec("elev", "e.tif"), ndvi], ["dem", "ndvi"], model="m")
    assert [(s.name, s.path) for s in got] == [("dem", "e.tif"), ("ndvi", "n.tif")]
    with pytest.raises(BundleError, match=r"expects 2 aux layer\(s\): dem, ndvi.*missing: ndvi"):
        match_aux([dem], ["dem", "ndvi"], model="m")
    with pytest.raises(InputError, match="extra: lc"):
        match_aux([dem, ndvi, LayerSpec("lc", "l.tif")], ["dem", "ndvi"], model="m")


def test_cli_aux_mismatch_names_the_expected_aux(scene, tmp_path, monkeypatch):
    _fake_bundle_module(monkeypatch, aux_names=("dem", "ndvi"))
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "--model", "fake.geosr", "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 2
    assert "dem, ndvi" in r.stderr and "missing: ndvi" in r.stderr
    assert not (tmp_path / "o.tif").exists()


def test_net_path_batches_bands_and_tiles(scene, tmp_path, monkeypatch):
    calls = _fake_bundle_module(monkeypatch)
    out, res = _run(scene, tmp_path / "o.tif", model="fake.geosr", tile_px=128, tile_batch=3)
    assert res.conserve and calls["conserve"] is None
    np.testing.assert_allclose(block_mean(out, F), scene["coarse_arr"], atol=1e-4)
    with rasterio.open(res.outputs[0].path) as src:
        assert src.tags()["GEOSR_MODEL_SHA256"] == "ab" * 32
        assert src.units == ("degC", "degC")


# --------------------------------------------------------------------------- dask


@pytest.mark.slow
def test_dask_scheduler_gives_the_same_result_as_threads(scene, tmp_path, tiny_bundle):
    from dask.distributed import LocalCluster

    local, _ = _run(scene, tmp_path / "l.tif", tile_px=256)
    local_net, _ = _run(scene, tmp_path / "ln.tif", tile_px=256, model=str(tiny_bundle),
                        aux=parse_layers([f"dem={scene['aux']}"]))
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                      dashboard_address=None) as cluster:
        remote, _ = _run(scene, tmp_path / "r.tif", tile_px=256,
                         scheduler=cluster.scheduler_address)
        remote_net, _ = _run(scene, tmp_path / "rn.tif", tile_px=256, model=str(tiny_bundle),
                             aux=parse_layers([f"dem={scene['aux']}"]),
                             scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(local, remote)
    np.testing.assert_allclose(local_net, remote_net, atol=1e-5)


# --------------------------------------------------------------------------- internals


class _FakeDst:
    def __init__(self, bands, height, width):
        self.data = np.full((bands, height, width), np.nan, np.float32)
        self.windows = []

    def write(self, arr, indexes, window):
        r, h = int(window.row_off), int(window.height)
        assert np.isnan(self.data[:, r:r + h]).all(), "rows written twice"
        self.data[[i - 1 for i in indexes], r:r + h] = arr
        self.windows.append((r, h))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.lists(st.integers(1, 90), min_size=1, max_size=30),
       st.sampled_from([16, 32, 256]))
def test_block_row_writer_writes_whole_block_rows_once(height, chunks, block):
    rng = np.random.default_rng(0)
    full = rng.normal(size=(2, height, 5)).astype(np.float32)
    dst = _FakeDst(3, height, 5)
    w = ds._BlockRowWriter(dst, [1, 3], 5, height, block)
    top = 0
    for n in chunks:
        if top >= height:
            break
        n = min(n, height - top)
        w.write(top, full[:, top:top + n])
        top += n
    if top < height:
        w.write(top, full[:, top:])
    w.close()
    np.testing.assert_array_equal(dst.data[[0, 2]], full)
    for r, h in dst.windows:
        assert r % block == 0 and (h == block or r + h == height)


def test_on_grid_reader_matches_the_warper(scene):
    from rasterio.windows import Window

    from geosr.align import plan_grids, resampling_for
    from geosr.io.read import AlignedReader, OnGridReader, raster_info

    info = raster_info(scene["coarse"])
    fine, _ = plan_grids(info, res_m=500.0, factor=F)
    ainfo = raster_info(scene["aux"])
    win = Window(-40, 600, 300, 100)  # past the left and bottom edges
    with AlignedReader(ainfo.path, fine, resampling_for(ainfo, fine)) as a, \
            OnGridReader(ainfo.path, fine) as b:
        np.testing.assert_array_equal(a.read(win, 1), b.read(win, 1))


# --------------------------------------------------------------------------- real bundle


def _save_tiny_bundle(path: Path, *, gain: bool = False, **arch) -> Path:
    nn = pytest.importorskip("geosr.nn")
    gb = pytest.importorskip("geosr.model.bundle")
    import torch

    torch.manual_seed(0)
    cfg = nn.NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8,
                       fine_width=8, n_blocks=1, fine_blocks=1, aux_gain=True, **arch)
    gen = nn.Generator(cfg).eval()
    if gain:
        with torch.no_grad():  # in standardised units: -0.5 x 5 degC / 400 m
            gen.gain.weight.normal_(0.0, 0.5)
            gen.gain.bias.fill_(-0.5)
    gb.save_bundle(path, config=cfg, aux=(gb.AuxChannelSpec("dem", mean=800.0, std=400.0),),
                   factor=F, res_m=500.0, variable="t2m", units="degC",
                   norm={"coarse": {"mean": 10.0, "std": 5.0},
                         "target": {"mean": 10.0, "std": 5.0}},
                   state_dict=gen.state_dict())
    return path


@pytest.fixture
def tiny_bundle(tmp_path):
    """An untrained tiny Generator saved as a real bundle (aux: dem).

    At initialisation it is close to bilinear interpolation plus conservation.
    """
    return _save_tiny_bundle(tmp_path / "tiny.geosr")


@pytest.fixture
def gain_bundle(tmp_path):
    """The tiny Generator with its aux gain set by hand as training would set it.

    About -6.25 K/km on the DEM, varying with the coarse features around each cell: the
    network's own detail is then a large part of the field and depends on context
    several coarse cells away, as in a trained model (``models/alps-t2m``).
    """
    return _save_tiny_bundle(tmp_path / "gain.geosr", gain=True)


@pytest.mark.slow
def test_real_bundle_end_to_end(scene, tmp_path, tiny_bundle):
    outs = {}
    for tile in (128, 512):
        out = tmp_path / f"net{tile}.tif"
        r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux",
                                f"elevation={scene['aux']}", "--model", str(tiny_bundle),
                                "-o", str(out), "--tile", str(tile), "--json"])
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["method"] == "net" and summary["factor"] == F
        _assert_cog(out)
        with rasterio.open(out) as src:
            outs[tile] = src.read()
            tags = src.tags()
            assert tags["GEOSR_METHOD"] == "net" and len(tags["GEOSR_MODEL_SHA256"]) == 64
            assert tags["GEOSR_MODEL"] == str(tiny_bundle)
            assert tags["GEOSR_AUX"] == "dem"  # matched by order, recorded by model name
            assert src.descriptions == ("t2m 2020-07-01", "t2m 2020-07-02")
            assert src.units == ("degC", "degC")
    a, b = outs[128], outs[512]
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < 1e-3 * np.nanstd(b)
    np.testing.assert_allclose(block_mean(b, F), scene["coarse_arr"], atol=1e-4)


def test_model_by_shipped_name(scene, tmp_path, tiny_bundle, monkeypatch):
    """``--model NAME`` finds NAME/NAME.geosr in the shipped-models folders."""
    import geosr.model.bundle as gb
    import geosr.model.registry as registry
    shipped = tmp_path / "shipped"
    (shipped / "tiny-t2m").mkdir(parents=True)
    shutil.copy(tiny_bundle, shipped / "tiny-t2m" / "tiny-t2m.geosr")
    monkeypatch.setattr(registry, "shipped_model_dirs", lambda: [shipped])
    out = tmp_path / "o.tif"
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", f"dem={scene['aux']}",
                            "--model", "tiny-t2m", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "net (network tiny-t2m, conserved)" in r.stdout
    with rasterio.open(out) as src:
        assert src.tags()["GEOSR_MODEL"] == "tiny-t2m"
        assert src.tags()["GEOSR_MODEL_SHA256"] == gb.load_bundle(tiny_bundle).sha256
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", f"dem={scene['aux']}",
                            "--model", "tiny-t2", "-o", str(tmp_path / "p.tif")])
    assert r.exit_code == 2
    assert "--model 'tiny-t2'" in r.stderr and "one of: tiny-t2m" in r.stderr
    assert not (tmp_path / "p.tif").exists()


def test_trained_like_network_does_not_depend_on_tile_size(scene, tmp_path, gain_bundle):
    """Tiles that read the bundle's measured halo as context meet without overlap and
    give the raster predicted in one piece, to float rounding."""
    a, ra = _run(scene, tmp_path / "a.tif", model=str(gain_bundle), tile_px=128)
    b, _ = _run(scene, tmp_path / "b.tif", model=str(gain_bundle), tile_px=512)
    whole, rw = _run(scene, tmp_path / "w.tif", model=str(gain_bundle), tile_px=4096)
    assert ra.overlap_px == 0 and rw.tile_px == 4096  # one tile: the whole raster
    base = np.stack([upsample(c, F, "bilinear") for c in scene["coarse_arr"]])
    if not np.std(whole - base) > 0.1 * np.std(whole):
        pytest.fail("the network's own detail is too small to test tiling with")
    for tiled in (a, b):
        assert np.nanmax(np.abs(tiled - whole)) < 1e-5 * np.nanstd(whole)


def test_network_with_global_statistics_is_blended(scene, tmp_path):
    """Global channel attention makes a tile depend on all of it, whatever its context:
    such a network's tiles keep a blended overlap by default."""
    model = _save_tiny_bundle(tmp_path / "global.geosr", gain=True, cam_window=0)
    out, res = _run(scene, tmp_path / "g.tif", model=str(model), tile_px=128)
    assert res.overlap_px > 0 and np.isfinite(out).any()


def test_trained_like_network_with_enough_overlap_does_not_depend_on_tile_size(
        scene, tmp_path, gain_bundle):
    """Blending works once each tile has the context the network needs (--overlap)."""
    a, _ = _run(scene, tmp_path / "a.tif", model=str(gain_bundle), tile_px=128, overlap_px=64)
    b, _ = _run(scene, tmp_path / "b.tif", model=str(gain_bundle), tile_px=512, overlap_px=64)
    base = np.stack([upsample(c, F, "bilinear") for c in scene["coarse_arr"]])
    assert np.std(b - base) > 0.1 * np.std(b)  # the network's own detail is substantial
    assert np.nanmax(np.abs(a - b)) < 1e-3 * np.nanstd(b)


def test_real_bundle_aux_mismatch_exit_2(scene, tmp_path, tiny_bundle):
    extra = write_raster(tmp_path / "ndvi.tif", np.ones((80 * F, 100 * F)), res=500.0,
                         origin=ORIGIN)
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            str(extra), "--model", str(tiny_bundle), "-o",
                            str(tmp_path / "o.tif")])
    assert r.exit_code == 2
    assert "expects 1 aux layer(s): dem" in r.stderr and "extra: ndvi" in r.stderr
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--model", str(tiny_bundle),
                            "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 2 and "dem" in r.stderr
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["aux"]),
                            "--model", str(tiny_bundle), "--factor", "4",
                            "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 2 and "factor 8" in r.stderr
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_peak_memory_is_this_process_not_its_parent():
    """`--json` peak memory: ru_maxrss would report a large parent's peak after fork/exec."""
    import subprocess
    import sys

    ballast = np.ones(400_000_000 // 8)  # ~400 MB held by the parent while the child runs
    code = "from geosr.cli.downscale import _peak_rss_mb; print(_peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert float(out) < 350, out
    del ballast


# --------------------------------------------------------------------------- units


def _with_units(path: Path, units: str) -> Path:
    with rasterio.open(path, "r+") as dst:
        for b in range(1, dst.count + 1):
            dst.set_band_unit(b, units)
    return path


def _shifted(scene: dict, root: Path, name: str, offset: float, units: str) -> Path:
    """The scene's coarse field plus ``offset``, written with band unit ``units``."""
    path = write_raster(root / name, scene["coarse_arr"] + np.float32(offset), res=500.0 * F,
                        origin=ORIGIN)
    return _with_units(path, units) if units else path


@pytest.fixture
def small_scene(tmp_path):
    return _scene(tmp_path, hc=24, wc=30, bands=2)


def test_kelvin_input_into_a_celsius_model_is_converted_and_back(small_scene, tmp_path,
                                                                  gain_bundle, caplog):
    celsius = _shifted(small_scene, tmp_path, "t_c.tif", 0.0, "degC")
    kelvin = _shifted(small_scene, tmp_path, "t_k.tif", 273.15, "K")
    outs = {}
    for name, src in (("c", celsius), ("k", kelvin)):
        caplog.clear()
        with caplog.at_level("INFO", logger="geosr"):
            res = downscale(DownscaleConfig(coarse=(str(src),), aux=parse_layers(
                [str(small_scene["aux"])]), model=str(gain_bundle), out=tmp_path / f"{name}.tif"))
        with rasterio.open(res.outputs[0].path) as out:
            outs[name] = out.read()
            assert out.units == (("degC",) * 2 if name == "c" else ("K",) * 2)
            tags = out.tags()
            assert tags["GEOSR_MODEL_UNITS"] == "degC"
        notes = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert not warned
        if name == "k":
            assert notes == [f"COARSE {kelvin}: K converted to the model's degC (and back "
                             "for the output)"]
            assert tags["GEOSR_UNITS_CONVERTED"] == "K->degC"
        else:
            assert notes == [] and "GEOSR_UNITS_CONVERTED" not in tags
    assert np.nanstd(outs["c"]) > 1.0
    np.testing.assert_allclose(outs["k"] - 273.15, outs["c"], atol=1e-3)
    np.testing.assert_allclose(block_mean(outs["k"], F), small_scene["coarse_arr"] + 273.15,
                               atol=1e-3)


def test_incompatible_units_exit_2_one_line(small_scene, tmp_path, tiny_bundle):
    wind = _shifted(small_scene, tmp_path, "wind.tif", 0.0, "m s-1")
    out = tmp_path / "o.tif"
    r = runner.invoke(app, ["downscale", str(wind), "--aux", str(small_scene["aux"]),
                            "--model", str(tiny_bundle), "-o", str(out)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert (f"COARSE {wind}: units 'm s-1' cannot be converted to the model's 'degC'; "
            "expected temperature in K, degC or degF") in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*geosr-tmp*"))


def test_unknown_units_far_outside_training_warn_once(small_scene, tmp_path, tiny_bundle):
    kelvin = _shifted(small_scene, tmp_path, "era5.tif", 273.15, "")  # K, but not said
    out = tmp_path / "o.tif"
    r = runner.invoke(app, ["downscale", str(kelvin), "--aux", str(small_scene["aux"]),
                            "--model", str(tiny_bundle), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "far outside" in ln]
    assert len(lines) == 1, r.stderr
    lo, hi = np.nanmin(small_scene["coarse_arr"]) + 273.15, \
        np.nanmax(small_scene["coarse_arr"]) + 273.15
    assert lines[0].startswith(f"geosr: warning: COARSE {kelvin}: values {lo:.4g}..{hi:.4g} "
                               "(no units) lie far outside the model tiny's training range ")
    assert lines[0].endswith("degC; is it in K? set the band unit or convert it")
    # in range: no warning
    plain = runner.invoke(app, ["downscale", str(small_scene["coarse"]), "--aux",
                                str(small_scene["aux"]), "--model", str(tiny_bundle), "-o",
                                str(tmp_path / "p.tif")])
    assert plain.exit_code == 0 and "far outside" not in plain.stderr


def test_units_are_carried_without_a_model(small_scene, tmp_path):
    kelvin = _shifted(small_scene, tmp_path, "t_k.tif", 273.15, "K")
    for method in ("sharpen", "bicubic"):
        res = downscale(DownscaleConfig(coarse=(str(kelvin),), aux=parse_layers(
            [str(small_scene["aux"])]), method=method, out=tmp_path / f"{method}.tif"))
        with rasterio.open(res.outputs[0].path) as out:
            assert out.units == ("K", "K")
            assert "GEOSR_UNITS_CONVERTED" not in out.tags()


@pytest.mark.slow
def test_real_era5_kelvin_into_the_shipped_celsius_model(real_data, tmp_path):
    """ERA5 2 m temperature (K, lon/lat NetCDF) through alps-t2m (degC) over Cornwall."""
    nc = real_data / "haduk-cornwall-1km-may2018/coarse_real/era5_cornwall_201805_hourly_instant.nc"
    dem = real_data / "haduk-cornwall-1km-may2018/aux/dtmm.tif"
    name = f'NETCDF:"{nc}":t2m'
    with rasterio.open(name) as src:  # two hours, written as the user would have them
        k = src.read([13, 14]).astype(np.float32)
        assert src.units[0] == "K"
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 2,
                   "dtype": "float32", "crs": src.crs or "EPSG:4326",
                   "transform": src.transform, "nodata": float("nan")}
    paths = {}
    for label, arr, units in (("k", k, "K"), ("c", k - np.float32(273.15), "degC")):
        paths[label] = tmp_path / f"era5_{label}.tif"
        with rasterio.open(paths[label], "w", **profile) as dst:
            dst.write(arr)
            for b in (1, 2):
                dst.set_band_unit(b, units)
    outs = {}
    for label, src in paths.items():
        r = runner.invoke(app, ["downscale", str(src), "--aux", f"dem={dem}", "--model",
                                "alps-t2m", "-o", str(tmp_path / f"o_{label}.tif")])
        assert r.exit_code == 0, r.stderr
        assert "far outside" not in r.stderr
        with rasterio.open(tmp_path / f"o_{label}.tif") as out:
            outs[label] = out.read()
            assert out.units == (("K",) * 2 if label == "k" else ("degC",) * 2)
    valid = np.isfinite(outs["k"])
    assert 270 < np.nanmin(outs["k"]) and np.nanmax(outs["k"]) < 300
    np.testing.assert_allclose(outs["k"][valid] - 273.15, outs["c"][valid], atol=1e-3)
