"""Valid ranges in `geosr downscale`: every method stays inside the range and conserves,
across tiles and next to nodata; where the range comes from; bad values."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr import api
from geosr.align import block_mean
from geosr.cli import app
from geosr.cli.options import parse_layers, parse_valid_range
from geosr.constraints import ValidRange
from geosr.errors import BundleError, InputError
from geosr.inference.config import DownscaleConfig, Method
from geosr.inference.run import downscale

runner = CliRunner()
F = 8
ORIGIN = (600_000.0, 5_100_000.0)
REL = 1e-5


def _rain_scene(root: Path, *, hc: int = 20, wc: int = 24, bands: int = 2,
                units: str = "mm/day", coarse_nan: bool = True, band_tags=None) -> dict:
    """Daily rain driven by elevation: dry valleys, wet hills, dry coarse cells.

    Sharpening on the DEM then puts the valleys of cells with little rain below zero.
    """
    dem = terrain((hc * F, wc * F), seed=3)
    rng = np.random.default_rng(11)
    days = []
    for b in range(bands):
        wet = np.maximum(0.0, 0.02 * (dem - 900 + 150 * b) + rng.gamma(0.6, 2.0, dem.shape))
        days.append(block_mean(wet.astype(np.float32), F))
    coarse = np.stack(days)
    coarse[:, 2:5, 3:6] = 0.0  # dry cells: the output must stay 0 there
    if coarse_nan:
        coarse[:, 8:11, 9:13] = np.nan  # a nodata lake across tile borders
    aux = write_raster(root / "dem.tif", dem, res=500.0, origin=ORIGIN)
    src = write_raster(root / "pr.tif", coarse, res=500.0 * F, origin=ORIGIN,
                       band_tags=band_tags or [{"DATE_TIME": f"2020-07-0{b + 1}"}
                                               for b in range(bands)])
    if units:
        with rasterio.open(src, "r+") as dst:
            for b in range(1, bands + 1):
                dst.set_band_unit(b, units)
    return {"coarse": src, "aux": aux, "coarse_arr": coarse, "dem": dem}


@pytest.fixture
def rain(tmp_path):
    return _rain_scene(tmp_path)


def _run(sc, out, **kw):
    kw.setdefault("aux", parse_layers([str(sc["aux"])]))
    res = downscale(DownscaleConfig(coarse=(str(sc["coarse"]),), out=out, **kw))
    with rasterio.open(res.outputs[0].path) as src:
        return src.read(), src.tags(), src.tags(1)


def _assert_conserved(out: np.ndarray, coarse: np.ndarray, rel: float = REL) -> None:
    means = block_mean(out, F)
    valid = np.isfinite(coarse)
    assert np.array_equal(np.isfinite(means), valid)
    scale = max(float(np.nanmax(np.abs(coarse))), 1e-12)
    assert np.nanmax(np.abs(means - coarse)) <= rel * scale
    up = np.repeat(np.repeat(valid, F, -2), F, -1)
    assert np.array_equal(np.isfinite(out), up)  # nodata stays nodata, nothing else


def _tiny_rain_bundle(path: Path, *, factor: int = F, res_m: float = 500.0,
                      units: str = "mm day-1", positive: bool = False) -> Path:
    """An untrained tiny Generator for rain, its aux gain set so that it puts a DEM-driven
    pattern of a few mm/day on every cell (negative in dry valleys); ``positive``: the
    softmax-constrained network (scaled, not shifted), a strong multiplicative pattern."""
    nn = pytest.importorskip("geosr.nn")
    gb = pytest.importorskip("geosr.model.bundle")
    import torch

    torch.manual_seed(0)
    cfg = nn.NetConfig(factor=factor, n_aux=1, coarse_width=8, branch_width=4, up_width=8,
                       fine_width=8, n_blocks=1, fine_blocks=1, aux_gain=True,
                       positive=positive)
    gen = nn.Generator(cfg).eval()
    with torch.no_grad():
        gen.gain.weight.normal_(0.0, 0.5)
        gen.gain.bias.fill_(1.0)
    gb.save_bundle(path, config=cfg, aux=(gb.AuxChannelSpec("dem", mean=800.0, std=400.0),),
                   factor=factor, res_m=res_m, variable="pr", units=units,
                   norm={"coarse": {"mean": 0.0 if positive else 3.0, "std": 3.0},
                         "target": {"mean": 0.0 if positive else 3.0, "std": 3.0}},
                   state_dict=gen.state_dict())
    return path


METHODS = [("sharpen", {}), ("bicubic", {"method": Method.bicubic, "conserve": True}),
           ("net", {}), ("net-positive", {})]


def _kw(tmp_path, name):
    kw = dict(dict(METHODS)[name])
    if name.startswith("net"):
        kw["model"] = str(_tiny_rain_bundle(tmp_path / "rain.geosr",
                                            positive=name == "net-positive"))
    return kw


@pytest.mark.parametrize("name", [m for m, _ in METHODS])
def test_non_negative_and_conserved_across_tiles_and_nodata(rain, tmp_path, name):
    kw = _kw(tmp_path, name)
    out, tags, btags = _run(rain, tmp_path / "o.tif", tile_px=96, **kw)
    assert np.nanmin(out) >= 0
    _assert_conserved(out, rain["coarse_arr"])
    up = np.repeat(np.repeat(rain["coarse_arr"] == 0, F, -2), F, -1)
    assert (out[up] == 0).all()  # dry cells stay dry
    assert tags["GEOSR_VALID_RANGE"] == "0:" and btags["valid_min"] == "0"
    assert "valid_max" not in btags
    # the same on one tile: the range does not depend on the tiling
    whole, _, _ = _run(rain, tmp_path / "w.tif", tile_px=512, **kw)
    assert np.array_equal(np.isnan(out), np.isnan(whole))
    tol = 1e-3 * np.nanstd(whole) if name.startswith("net") else 1e-5 * np.nanmax(whole)
    assert np.nanmax(np.abs(out - whole)) < tol


def test_additive_conservation_alone_makes_negative_rain(tmp_path):
    sc = _rain_scene(tmp_path, units="")  # no units and no rain name: no range inferred
    sc["coarse"] = Path(sc["coarse"]).rename(tmp_path / "field.tif")
    out, tags, _ = _run(sc, tmp_path / "o.tif")
    assert np.nanmin(out) < 0 and "GEOSR_VALID_RANGE" not in tags
    fixed, tags, _ = _run(sc, tmp_path / "f.tif", valid_range=ValidRange(0.0))
    assert np.nanmin(fixed) >= 0 and tags["GEOSR_VALID_RANGE"] == "0:"
    _assert_conserved(fixed, sc["coarse_arr"])


def test_two_sided_range_and_clip_only_without_conservation(tmp_path):
    sc = _rain_scene(tmp_path, units="")
    hi = float(np.nanmax(sc["coarse_arr"]))
    valid = ValidRange(0.0, hi)
    out, _, btags = _run(sc, tmp_path / "o.tif", valid_range=valid, tile_px=64)
    assert np.nanmin(out) >= 0 and np.nanmax(out) <= hi
    _assert_conserved(out, sc["coarse_arr"])
    assert btags["valid_max"] == f"{hi:.9g}"
    plain, _, _ = _run(sc, tmp_path / "p.tif", method=Method.bicubic, valid_range=valid)
    assert np.nanmin(plain) >= 0 and np.nanmax(plain) <= hi  # clipped, not conserved


def test_inferred_range_said_once_and_flag_wins(rain, tmp_path):
    r = runner.invoke(app, ["downscale", str(rain["coarse"]), "--aux", str(rain["aux"]),
                            "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "valid range" in ln]
    assert lines == [f"geosr: warning: COARSE {rain['coarse']}: valid range 0: (from units "
                     "mm/day); pass --valid-range to change it"]
    r = runner.invoke(app, ["downscale", str(rain["coarse"]), "--aux", str(rain["aux"]),
                            "-o", str(tmp_path / "p.tif"), "--valid-range", "-100:"])
    assert r.exit_code == 0 and "valid range" not in r.stderr
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.tags()["GEOSR_VALID_RANGE"] == "-100:"


def test_unitless_precipitation_named_input_is_non_negative(tmp_path):
    """A GeoTIFF without units named like a precipitation variable (UKCP18's ``prec``)."""
    sc = _rain_scene(tmp_path, units="", coarse_nan=False,
                     band_tags=[{"DATE_TIME": "2020-07-01"}, {"DATE_TIME": "2020-07-02"}])
    prec = tmp_path / "ukcp18rcm_12km_prec_201805.tif"
    Path(sc["coarse"]).rename(prec)
    r = runner.invoke(app, ["downscale", str(prec), "--aux", str(sc["aux"]),
                            "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "valid range" in ln]
    assert lines == [f"geosr: warning: COARSE {prec}: valid range 0: (from the precipitation "
                     "variable name 'prec'); pass --valid-range to change it"]
    with rasterio.open(tmp_path / "o.tif") as src:
        out = src.read()
    assert np.nanmin(out) >= 0
    _assert_conserved(out, sc["coarse_arr"])
    # a temperature-like or an anomaly name gets no range
    for name in ("tasmax.tif", "pr_anomaly.tif"):
        other = tmp_path / name
        prec.rename(other)
        r = runner.invoke(app, ["downscale", str(other), "--aux", str(sc["aux"]),
                                "-o", str(tmp_path / f"o_{name}")])
        assert r.exit_code == 0 and "valid range" not in r.stderr
        prec = other.rename(prec)


def test_cf_valid_range_of_the_input(tmp_path):
    sc = _rain_scene(tmp_path, units="", bands=1,
                     band_tags=[{"valid_min": "0", "valid_max": "1e3"}])
    out, tags, _ = _run(sc, tmp_path / "o.tif")
    assert tags["GEOSR_VALID_RANGE"] == "0:1000" and np.nanmin(out) >= 0


def test_coarse_values_outside_the_range_warned_once_and_clipped(tmp_path, caplog):
    sc = _rain_scene(tmp_path, units="")
    c = sc["coarse_arr"].copy()
    c[0, 0, :3] = -0.5  # e.g. a regridding artefact
    c[1, 1, 1] = -2.0
    write_raster(sc["coarse"], c, res=500.0 * F, origin=ORIGIN)
    with caplog.at_level(logging.WARNING, logger="geosr"):
        out, _, _ = _run(sc, tmp_path / "o.tif", valid_range=ValidRange(0.0),
                         memory_mb=1)  # one band per group: still one warning
    lines = [r.getMessage() for r in caplog.records if "outside the valid range" in r.message]
    assert lines == [f"COARSE {sc['coarse']}: 4 coarse value(s) outside the valid range 0:, "
                     "clipped to it"]
    assert np.nanmin(out) >= 0
    _assert_conserved(out, np.clip(c, 0, None))


def test_api_keyword(rain, tmp_path):
    da = api.downscale(rain["coarse"], aux={"dem": rain["aux"]}, valid_range=(0, None))
    assert float(da.min()) >= 0 and da.attrs.get("GEOSR_VALID_RANGE") == "0:"
    with pytest.raises(InputError, match="valid_range"):
        api.downscale(rain["coarse"], aux={"dem": rain["aux"]}, valid_range=(5, 1))


@pytest.mark.parametrize("text", ["5:1", "abc"])
def test_bad_valid_range_exit_2_one_line(rain, tmp_path, text):
    r = runner.invoke(app, ["downscale", str(rain["coarse"]), "--aux", str(rain["aux"]),
                            "-o", str(tmp_path / "o.tif"), "--valid-range", text])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--valid-range {text!r}" in lines[0], r.stderr
    assert not (tmp_path / "o.tif").exists()


def test_parse_valid_range():
    assert parse_valid_range("0:") == ValidRange(0.0, math.inf)
    with pytest.raises(InputError, match="MIN <= MAX"):
        parse_valid_range("5:1")


# ---------------------------------------------------------------- prepare -> train -> downscale


@pytest.mark.slow
def test_range_travels_from_prepare_through_the_model_to_downscale(tmp_path):
    from _helpers_train import TINY_ARCH, make_scene

    from geosr.dataset.manifest import read_manifest
    from geosr.dataset.prepare import PrepareConfig, prepare
    from geosr.model.bundle import load_bundle
    from geosr.sources import LayerSpec
    from geosr.training.config import TrainConfig
    from geosr.training.loop import train

    src = make_scene(tmp_path / "src")
    ds = tmp_path / "ds"
    prepare(PrepareConfig(out_dir=ds, target=(str(src["target"]),),
                          aux=(LayerSpec("dem", str(src["dem"])),), res_m=1000.0, factor=4,
                          valid_range=ValidRange(-90, 60)))
    assert read_manifest(ds).valid_range == ValidRange(-90, 60)
    res = train(TrainConfig(dataset=ds, out=tmp_path / "m.geosr", epochs=1, patch=4,
                            batch_size=4, steps_per_epoch=2, arch=TINY_ARCH, device="cpu",
                            threads=1))
    assert load_bundle(res.out).valid_range == ValidRange(-90, 60)
    coarse = tmp_path / "ds" / "coarse.tif"
    out = downscale(DownscaleConfig(coarse=(str(coarse),), aux=(LayerSpec("dem",
                    str(src["dem"])),), model=str(res.out), out=tmp_path / "o.tif"))
    with rasterio.open(out.outputs[0].path) as dst:
        assert dst.tags()["GEOSR_VALID_RANGE"] == "-90:60"


def test_manifest_without_a_range_reads_as_none(tmp_path):
    from _helpers_train import make_dataset

    from geosr.dataset.manifest import Manifest

    ds = make_dataset(tmp_path)
    m = Manifest.from_dict({**__import__("json").loads((ds / "manifest.json").read_text()),
                            "valid_range": None}, root=ds)
    assert m.valid_range is None  # a temperature: no range inferred, none recorded


def test_bundle_range_is_hashed_and_optional(tmp_path):
    import dataclasses
    import json

    import torch

    from geosr.model.bundle import load_bundle, save_bundle

    path = _tiny_rain_bundle(tmp_path / "a.geosr")
    a = load_bundle(path)
    assert a.valid_range is None  # written without one, like bundles before ranges
    b = save_bundle(tmp_path / "b.geosr", dataclasses.replace(a, valid_range=ValidRange(0.0)))
    # the range changes outputs: inside the content hash
    assert b.sha256 != a.sha256 and load_bundle(tmp_path / "b.geosr").valid_range == \
        ValidRange(0.0)
    payload = torch.load(tmp_path / "b.geosr", weights_only=True)
    meta = json.loads(payload["meta"])
    assert meta["valid_range"] == "0:"
    meta["valid_range"] = "1:"
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "c.geosr")
    with pytest.raises(BundleError, match="content hash"):
        load_bundle(tmp_path / "c.geosr")


def test_model_range_is_converted_into_the_input_units():
    from types import SimpleNamespace

    from geosr.inference.run import _resolve_range
    from geosr.io.read import RasterInfo

    info = RasterInfo(path="t.tif", crs="EPSG:32632", bounds=(0, 0, 1, 1), width=1, height=1,
                      count=1, res=(1.0, 1.0), dtype="float32", nodata=None, units=("K",))
    bundle = SimpleNamespace(valid_range=ValidRange(-90, 60), units="degC")
    cfg = DownscaleConfig(coarse=("t.tif",), model="m")
    got = _resolve_range(info, cfg, bundle)
    assert got.lo == pytest.approx(183.15) and got.hi == pytest.approx(333.15)
    assert _resolve_range(info, DownscaleConfig(coarse=("t.tif",), valid_range=ValidRange(0)),
                          bundle) == ValidRange(0)


# --------------------------------------------------------------------------- real daily rain

HADUK = "haduk-cornwall-1km-may2018"


def _full_cells_conserved(out_path: Path, coarse_path: Path, f: int) -> tuple[int, float]:
    """(number of full coarse cells, largest relative error of their means) of an output
    against the coarse input it was made from, on the input's own cells."""
    from rasterio.windows import from_bounds

    with rasterio.open(out_path) as o:
        out = o.read().astype(np.float64)
        bounds = o.bounds
    with rasterio.open(coarse_path) as c:
        win = from_bounds(*bounds, transform=c.transform).round_offsets().round_lengths()
        coarse = c.read(window=win).astype(np.float64)
    b, h, w = out.shape
    blocks = out.reshape(b, h // f, f, w // f, f)
    n = np.isfinite(blocks).sum(axis=(2, 4))
    full = (n == f * f) & np.isfinite(coarse)
    mean = np.nan_to_num(blocks).sum(axis=(2, 4)) / (f * f)
    err = np.abs(mean - coarse)[full] / (np.abs(coarse[full]) + 1e-6)  # 1e-6 mm: a floor
    return int(full.sum()), float(err.max())


def _haduk_8km(real: Path, tmp_path: Path) -> Path:
    """HadUK-Grid 1 km daily rain averaged over 8 km cells (land pixels; sea is nodata)."""
    with rasterio.open(real / HADUK / "target" / "rainfall1km.tif") as src:
        a, t, profile = src.read(), src.transform, src.profile
    f = 8
    h, w = a.shape[1] // f * f, a.shape[2] // f * f
    blocks = a[:, :h, :w].reshape(a.shape[0], h // f, f, w // f, f)
    valid = np.isfinite(blocks)
    n = valid.sum(axis=(2, 4))
    total = np.where(valid, blocks, 0).sum(axis=(2, 4), dtype=np.float64)
    mean = np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)
    profile.update(width=w // f, height=h // f,
                   transform=rasterio.Affine(t.a * f, 0, t.c, 0, t.e * f, t.f))
    path = tmp_path / "haduk_rain_8km.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mean)
        for b in range(1, mean.shape[0] + 1):
            dst.set_band_unit(b, "mm")
    return path


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("case", ["ukcp18-12km", "haduk-8km"])
def test_real_daily_rain_non_negative_and_conserved(real_data, tmp_path, case):
    """Real daily precipitation: every method keeps every pixel >= 0 and every full coarse
    cell's mean equal to the input (relative error <= 1e-3), over several tiles; the
    8 km field has nodata (sea) cells next to land."""
    dem = real_data / HADUK / "aux" / "dtmm.tif"
    if case == "ukcp18-12km":
        coarse, f = real_data / HADUK / "coarse_real" / "ukcp18rcm_12km_prec_201805.tif", 12
        valid = ValidRange(0.0)  # the file carries no units: say it
    else:
        coarse, f = _haduk_8km(real_data, tmp_path), 8
        valid = None  # inferred from its units (mm)
    model = _tiny_rain_bundle(tmp_path / "rain.geosr", factor=f, res_m=1000.0,
                              units="mm day-1" if f == 12 else "mm")
    aux = (parse_layers([f"dem={dem}"]))
    runs = {"sharpen": {}, "bicubic": {"method": Method.bicubic, "conserve": True},
            "net": {"model": str(model)}}
    for name, kw in runs.items():
        out = tmp_path / f"{name}.tif"
        downscale(DownscaleConfig(coarse=(str(coarse),), aux=aux, out=out, res_m=1000.0,
                                  tile_px=4 * f, valid_range=valid, **kw))
        with rasterio.open(out) as src:
            arr = src.read()
            assert src.tags()["GEOSR_VALID_RANGE"] == "0:"
            assert src.width > 4 * f and src.height > 4 * f  # several tiles
        assert np.nanmin(arr) >= 0, name
        cells, err = _full_cells_conserved(out, coarse, f)
        assert cells > 20 and err <= 1e-3, (name, cells, err)
