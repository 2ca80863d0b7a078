"""Class rasters: detection, ``:categorical`` / ``:continuous``, indicator sharpening."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import terrain, write_raster
from scipy import ndimage

from geosr import baselines as B
from geosr.arrays import block_mean
from geosr.cli.options import parse_layer, parse_layers
from geosr.dataset.manifest import read_manifest
from geosr.dataset.prepare import PrepareConfig, prepare
from geosr.errors import InputError
from geosr.evaluate.validate import ValidateConfig, validate
from geosr.inference.config import DownscaleConfig
from geosr.inference.run import downscale, match_aux
from geosr.io.read import class_raster_reason
from geosr.sources import LayerSpec, resolve_categorical

F = 8  # 4 km coarse cells over a 500 m grid
ORIGIN = (600_000.0, 5_100_000.0)


@pytest.fixture
def geosr_logs(caplog):
    """caplog that also sees geosr's records when the CLI has set propagate=False."""
    logger = logging.getLogger("geosr")
    old = logger.propagate
    logger.propagate = True
    with caplog.at_level(logging.INFO, logger="geosr"):
        yield caplog
    logger.propagate = old


def _landcover(shape, *, seed=0, patch_px=8.0) -> np.ndarray:
    """Classes 1..5 in patches of about ``patch_px`` pixels (uint8)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), patch_px)
    return (np.digitize(noise, np.quantile(noise, [0.3, 0.5, 0.7, 0.85])) + 1).astype(np.uint8)


def _class_scene(root: Path, *, hc=40, wc=50, effect=2.0) -> dict:
    """Temperature = lapse rate on a DEM + ``effect`` degC on land-cover class 3, its
    exact 4 km block means as the coarse input, the DEM and land cover on the 500 m grid
    (land cover as uint8 without a suffix: a class raster to be detected)."""
    dem = terrain((hc * F, wc * F), seed=3)
    lc = _landcover(dem.shape)
    rng = np.random.default_rng(5)
    truth = (18 - 0.0055 * dem + effect * (lc == 3) + rng.normal(0, 0.2, dem.shape))
    truth = truth.astype(np.float32)
    coarse = block_mean(truth, F)
    return {
        "dem": write_raster(root / "dem.tif", dem, res=500.0, origin=ORIGIN),
        "lc": write_raster(root / "landcover.tif", lc, res=500.0, origin=ORIGIN,
                           dtype="uint8", nodata=0),
        "coarse": write_raster(root / "t2m.tif", coarse, res=500.0 * F, origin=ORIGIN),
        "truth": write_raster(root / "truth.tif", truth, res=500.0, origin=ORIGIN),
        "dem_arr": dem, "lc_arr": lc, "truth_arr": truth, "coarse_arr": coarse,
    }


@pytest.fixture
def cscene(tmp_path):
    return _class_scene(tmp_path)


def _downscale(sc, aux: list[str], out: Path, **kw) -> tuple[np.ndarray, dict]:
    downscale(DownscaleConfig(coarse=(str(sc["coarse"]),), aux=parse_layers(aux), out=out, **kw))
    with rasterio.open(out) as src:
        return src.read(1), src.tags(1)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.sqrt(np.mean((a[ok] - b[ok]) ** 2)))


# --------------------------------------------------------------------------- detection


def test_detects_uint8_with_few_values(make_raster):
    lc = _landcover((64, 64))
    path = make_raster("lc.tif", lc, dtype="uint8", nodata=0)
    assert class_raster_reason(path) == "uint8 with 5 distinct values"


def test_detects_a_colour_table(make_raster):
    many = (np.arange(64 * 64).reshape(64, 64) % 200).astype(np.uint8)  # too many values
    path = make_raster("lc.tif", many, dtype="uint8", nodata=None)
    assert class_raster_reason(path) is None
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 255, 255), 1: (0, 255, 0, 255)})
    assert class_raster_reason(path) == "uint8 with a colour table"


def test_detects_category_names_and_a_class_description(make_raster):
    many = (np.arange(64 * 64).reshape(64, 64) % 300).astype(np.int16)
    named = make_raster("named.tif", many, dtype="int16", nodata=None)
    Path(f"{named}.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category>water</Category>'
        "<Category>forest</Category></CategoryNames></PAMRasterBand></PAMDataset>")
    assert class_raster_reason(named) == "int16 with category names"
    described = make_raster("described.tif", many, dtype="int16", nodata=None)
    with rasterio.open(described, "r+") as dst:
        dst.set_band_description(1, "IGBP land_cover")
    assert "band description" in class_raster_reason(described)


def test_does_not_detect_an_int16_dem_or_floats(make_raster):
    dem = np.round(terrain((128, 128))).astype(np.int16)
    assert len(np.unique(dem)) > 100
    assert class_raster_reason(make_raster("dem.tif", dem, dtype="int16", nodata=-9999)) is None
    few = _landcover((64, 64)).astype(np.float32)
    assert class_raster_reason(make_raster("f.tif", few)) is None
    # a quantity with units: few values are not classes
    steps = make_raster("steps.tif", (_landcover((64, 64)) * 100).astype(np.int16),
                        dtype="int16", nodata=None)
    with rasterio.open(steps, "r+") as dst:
        dst.units = ("m",)
    assert class_raster_reason(steps) is None


def test_parse_categorical_and_continuous_suffixes():
    assert parse_layer("a/lc.tif") == LayerSpec("lc", "a/lc.tif", None)
    assert parse_layer("lc=a/lc.tif:categorical") == LayerSpec("lc", "a/lc.tif", True)
    assert parse_layer("lc=a/lc.tif:continuous") == LayerSpec("lc", "a/lc.tif", False)
    assert parse_layer("a/lc.tif:continuous").name == "lc"


def test_resolve_warns_once_naming_the_file_and_honours_suffixes(cscene, geosr_logs):
    specs = parse_layers([str(cscene["dem"]), str(cscene["lc"])])
    got = resolve_categorical(specs)
    assert [s.categorical for s in got] == [False, True]
    warned = [r.getMessage() for r in geosr_logs.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert str(cscene["lc"]) in warned[0] and "uint8 with 5 distinct values" in warned[0]
    assert ":continuous" in warned[0] and ":categorical" in warned[0]
    geosr_logs.clear()
    marked = parse_layers([f"lc={cscene['lc']}:continuous", f"c={cscene['lc']}:categorical"])
    assert [s.categorical for s in resolve_categorical(marked)] == [False, True]
    assert not [r for r in geosr_logs.records if r.levelno == logging.WARNING]


def test_model_record_of_categorical_wins(geosr_logs):
    got = match_aux([LayerSpec("lc", "l.tif", False)], ["lc"], model="m", categorical=[True])
    assert got[0].categorical is True
    assert any("follow" in r.getMessage() for r in geosr_logs.records)
    got = match_aux([LayerSpec("dem", "d.tif")], ["dem"], model="m", categorical=[False])
    assert got[0].categorical is False


# --------------------------------------------------------------------------- the fit


def test_class_shares_are_exact_means_of_the_fine_indicators():
    lc = _landcover((64, 64)).astype(np.float32)
    lc[:5, :13] = np.nan
    (layer,) = B.coarse_layers(lc[None], F, categorical=[True], names=["lc"])
    assert layer.classes == (1.0, 2.0, 3.0, 4.0, 5.0)
    for k, v in enumerate(layer.classes):
        ind = np.where(np.isfinite(lc), (lc == v).astype(np.float32), np.nan)
        np.testing.assert_array_equal(layer.values[k], block_mean(ind, F))
    np.testing.assert_allclose(layer.values.sum(axis=0), 1.0, atol=1e-6)


def test_reference_rare_classes_and_the_cap():
    rng = np.random.default_rng(0)
    lc = rng.choice([1, 2, 3], size=(160, 160), p=[0.6, 0.395, 0.005]).astype(np.float32)
    field = rng.normal(size=(20, 20)).astype(np.float32)
    fit = B.fit_sharpen(field, B.coarse_layers(lc[None], F, categorical=[True], names=["lc"]))
    assert [t.label for t in fit.terms] == ["lc=2"]  # 1: reference, 3: under 1 %
    assert fit.reference == ("lc=1",)
    many = rng.integers(0, 20, size=(160, 160)).astype(np.float32)
    fit = B.fit_sharpen(field, B.coarse_layers(many[None], F, categorical=[True]))
    assert len(fit.terms) == B.MAX_CLASSES - 1


def test_indicator_sharpening_beats_no_class_layer_and_conserves():
    dem = terrain((320, 400), seed=3)
    lc = _landcover(dem.shape).astype(np.float32)
    truth = (18 - 0.0055 * dem + 2.0 * (lc == 3)).astype(np.float32)
    coarse = block_mean(truth, F)
    aux = np.stack([dem, lc])
    plain = B.sharpen(coarse, dem[None], F)
    classes = B.sharpen(coarse, aux, F, categorical=[False, True], names=["dem", "lc"])
    assert _rmse(classes, truth) < 0.9 * _rmse(plain, truth)
    np.testing.assert_allclose(block_mean(classes, F), coarse, atol=1e-4)
    fit = B.fit_sharpen(coarse, B.coarse_layers(aux, F, categorical=[False, True],
                                                names=["dem", "lc"]))
    coef = dict(zip((t.label for t in fit.terms), fit.coef, strict=True))
    assert fit.class_p < 1e-6 and coef["lc=3"] > 0.4 > abs(coef["lc=2"])
    assert coef["dem"] == pytest.approx(-0.0055, rel=0.1)


def test_a_class_layer_that_explains_nothing_changes_nothing():
    dem = terrain((320, 400), seed=3)
    truth = (18 - 0.0055 * dem).astype(np.float32)
    truth += np.random.default_rng(2).normal(0, 0.3, dem.shape).astype(np.float32)
    coarse = block_mean(truth, F)
    lc = _landcover(dem.shape, seed=9).astype(np.float32)
    aux = np.stack([dem, lc])
    fit = B.fit_sharpen(coarse, B.coarse_layers(aux, F, categorical=[False, True]))
    assert fit.class_p >= B.CLASS_P_MAX and not fit.coef[1:].any()
    np.testing.assert_allclose(B.sharpen(coarse, aux, F, categorical=[False, True]),
                               B.sharpen(coarse, dem[None], F), atol=1e-5)


# --------------------------------------------------------------------------- the verbs


def test_downscale_detects_landcover_and_uses_both_layers(cscene, tmp_path, geosr_logs):
    out, tags = _downscale(cscene, [str(cscene["dem"]), str(cscene["lc"])], tmp_path / "o.tif")
    assert any("looks like a class raster" in r.getMessage() for r in geosr_logs.records)
    terms = tags["GEOSR_SHARPEN_TERMS"].split(",")
    coef = dict(zip(terms, map(float, tags["GEOSR_SHARPEN_COEF"].split(",")), strict=True))
    assert terms[0] == "dem" and "landcover=3" in terms and coef["landcover=3"] > 0.4
    assert tags["GEOSR_SHARPEN_REFERENCE"].startswith("landcover=")
    assert float(tags["GEOSR_SHARPEN_CLASS_P"]) < 1e-6
    np.testing.assert_allclose(block_mean(out, F), cscene["coarse_arr"], atol=1e-4)
    plain, _ = _downscale(cscene, [str(cscene["dem"])], tmp_path / "p.tif")
    truth = cscene["truth_arr"]
    assert _rmse(out, truth) < 0.9 * _rmse(plain, truth)
    # The tiled engine and the whole-array baseline are one implementation.
    whole = B.sharpen(cscene["coarse_arr"], np.stack([cscene["dem_arr"], cscene["lc_arr"]]), F,
                      categorical=[False, True])
    np.testing.assert_allclose(out, whole, atol=1e-4)


def test_downscale_continuous_suffix_keeps_numbers(cscene, tmp_path, geosr_logs):
    _, tags = _downscale(cscene, [str(cscene["dem"]), f"lc={cscene['lc']}:continuous"],
                         tmp_path / "o.tif")
    assert tags["GEOSR_SHARPEN_TERMS"] == "dem,lc" and "GEOSR_SHARPEN_REFERENCE" not in tags
    assert not any("class raster" in r.getMessage() for r in geosr_logs.records)


def test_downscale_with_only_a_class_layer(cscene, tmp_path):
    out, tags = _downscale(cscene, [str(cscene["lc"])], tmp_path / "o.tif")
    assert "landcover=3" in tags["GEOSR_SHARPEN_TERMS"].split(",")
    np.testing.assert_allclose(block_mean(out, F), cscene["coarse_arr"], atol=1e-4)


def test_one_class_layer_and_too_many_values(cscene, tmp_path):
    one = write_raster(tmp_path / "one.tif", np.full((320, 400), 7, np.uint8), res=500.0,
                       origin=ORIGIN, dtype="uint8", nodata=0)
    _, tags = _downscale(cscene, [str(cscene["dem"]), f"one={one}:categorical"],
                         tmp_path / "o.tif")
    assert tags["GEOSR_SHARPEN_TERMS"] == "dem" and tags["GEOSR_SHARPEN_REFERENCE"] == "one=7"
    noise = np.random.default_rng(0).normal(size=(320, 400)).astype(np.float32)
    many = write_raster(tmp_path / "many.tif", noise, res=500.0, origin=ORIGIN)
    with pytest.raises(InputError, match=r"--aux many=.*many.tif is categorical but has more "
                                         r"than 256 .*many.tif:continuous"):
        _downscale(cscene, [str(cscene["dem"]), f"many={many}:categorical"], tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_categorical_aux_does_not_depend_on_tile_size(tmp_path):
    """Land cover on the grid's lattice, and at 1 km off it (read with nearest)."""
    sc = _class_scene(tmp_path, hc=32, wc=40)
    lc1k = write_raster(tmp_path / "lc1k.tif", _landcover((32 * F // 2 + 2, 40 * F // 2 + 2)),
                        res=1000.0, origin=(ORIGIN[0] - 700.0, ORIGIN[1] + 300.0),
                        dtype="uint8", nodata=0)
    for lc in (sc["lc"], lc1k):
        outs = [_downscale(sc, [str(sc["dem"]), f"lc={lc}:categorical"],
                           tmp_path / f"o{tile}.tif", tile_px=tile, overwrite=True)
                for tile in (64, 256)]
        (a, ta), (b, tb) = outs
        assert ta["GEOSR_SHARPEN_COEF"] == tb["GEOSR_SHARPEN_COEF"]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) < 1e-3 * np.nanstd(b)


def test_prepare_records_a_detected_class_raster(cscene, tmp_path):
    res = prepare(PrepareConfig(out_dir=tmp_path / "ds", coarse=(str(cscene["coarse"]),),
                                aux=parse_layers([str(cscene["dem"]), str(cscene["lc"])]),
                                res_m=500.0))
    dem, lc = read_manifest(res.out_dir).aux
    assert not dem.categorical
    assert lc.categorical and lc.classes == (1.0, 2.0, 3.0, 4.0, 5.0)
    res = prepare(PrepareConfig(out_dir=tmp_path / "ds2", coarse=(str(cscene["coarse"]),),
                                aux=parse_layers([f"lc={cscene['lc']}:continuous"]),
                                res_m=500.0))
    assert not read_manifest(res.out_dir).aux[0].categorical


def test_validate_sharpen_baseline_uses_a_detected_class_layer(cscene):
    def run(aux):
        return validate(ValidateConfig(pred=str(cscene["truth"]), truth=str(cscene["truth"]),
                                       coarse=str(cscene["coarse"]), aux=parse_layers(aux)))

    with_lc = run([str(cscene["dem"]), str(cscene["lc"])]).baselines["sharpen"]["rmse"]
    without = run([str(cscene["dem"])]).baselines["sharpen"]["rmse"]
    assert with_lc < 0.9 * without


# --------------------------------------------------------------------------- real data


def test_real_meteoswiss_landtype_is_detected_and_does_no_harm(real_data, tmp_path, geosr_logs):
    """TabsM averaged to 16 km on its own grid, sharpened back to 1 km."""
    d = real_data / "meteoswiss-ch-1km"
    tabs = d / "geotiff" / "TabsM_ch01r.swiss.lv95_202305010000_202305010000.tif"
    dem, land = d / "aux" / "swissAltitude_geostatsp.tif", d / "aux" / "swissLandType_geostatsp.tif"
    with rasterio.open(tabs) as src:
        t, transform, crs = src.read(1, masked=True).filled(np.nan), src.transform, src.crs
        bounds = src.bounds
    h, w = t.shape[0] // 16, t.shape[1] // 16
    blocks = t[:h * 16, :w * 16].reshape(h, 16, w, 16)
    valid = np.isfinite(blocks).sum(axis=(1, 3))
    coarse = np.where(valid > 0, np.nansum(blocks, axis=(1, 3)) / np.maximum(valid, 1), np.nan)
    cpath = write_raster(tmp_path / "tabs16.tif", coarse, crs=crs,
                         transform=transform @ Affine.scale(16))
    rmse = {}
    for name, aux in {"dem": [f"dem={dem}"], "classes": [f"dem={dem}", f"landtype={land}"],
                      "numbers": [f"dem={dem}", f"landtype={land}:continuous"]}.items():
        out = tmp_path / f"{name}.tif"
        downscale(DownscaleConfig(coarse=(str(cpath),), aux=parse_layers(aux), out=out,
                                  res_m=1000.0))
        with rasterio.open(out) as P:
            win = rasterio.windows.from_bounds(*bounds, P.transform)
            p = P.read(1, window=win, boundless=True, masked=True).filled(np.nan)
            tags = P.tags(1)
        rmse[name] = _rmse(p, t)
        if name == "classes":
            assert "landtype=" in tags["GEOSR_SHARPEN_TERMS"]
    assert any("swissLandType_geostatsp.tif looks like a class raster" in r.getMessage()
               for r in geosr_logs.records)
    assert rmse["classes"] <= 1.02 * rmse["dem"], json.dumps(rmse)
