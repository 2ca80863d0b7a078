"""Scene-adaptive models: scene statistics, affine equivariance, whole-band scenes in
`downscale` (tile-size invariance, tags)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_raster  # noqa: E402
from test_downscale import ORIGIN, F, _run, _scene  # noqa: E402

from geosr.arrays import block_mean  # noqa: E402
from geosr.cli.options import parse_layers  # noqa: E402
from geosr.model.bundle import AuxChannelSpec, load_bundle, save_bundle  # noqa: E402
from geosr.model.predictor import HALO_TOLERANCE, Predictor  # noqa: E402
from geosr.model.scene import AUX_STD_FLOOR, STD_FLOOR, scene_of, window_scene  # noqa: E402
from geosr.nn import Generator, NetConfig  # noqa: E402

DEM = AuxChannelSpec("dem", mean=800.0, std=300.0, units="m")
LC = AuxChannelSpec("lc", categorical=True, classes=(1.0, 2.0, 3.0))
NORM = {"coarse": {"mean": 10.0, "std": 5.0}, "target": {"mean": 10.0, "std": 5.0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scene_of_recovers_the_sharpening_slope_in_network_units():
    rng = np.random.default_rng(0)
    dem = rng.uniform(200, 2000, (20, 30)).astype(np.float32)
    coarse = (25.0 - 0.0065 * dem).astype(np.float32)
    coarse[0, :4] = np.nan
    s = scene_of(coarse, [dem], (DEM,), train_std=5.0)
    ok = np.isfinite(coarse)
    assert s.cells == ok.sum()
    assert s.mean == pytest.approx(float(coarse[ok].mean()), rel=1e-5)
    assert s.std == pytest.approx(float(coarse[ok].astype(np.float64).std()), rel=1e-4)
    assert s.gain == pytest.approx((-0.0065 * 300.0 / s.std,), rel=1e-3)
    assert s.r2 == pytest.approx(1.0, abs=1e-6)
    assert set(s.tags()) == {"GEOSR_SCENE_MEAN", "GEOSR_SCENE_STD", "GEOSR_SCENE_GAIN",
                             "GEOSR_SCENE_R2"}


def test_scene_class_channels_get_no_gain_and_flat_fields_are_floored():
    dem = np.linspace(0, 1000, 64, dtype=np.float32).reshape(8, 8)
    flat = np.full((8, 8), 3.0, np.float32)
    s = scene_of(flat, [dem, None], (DEM, LC), train_std=4.0)
    assert len(s.gain) == 1 + 3 and s.gain[1:] == (0.0, 0.0, 0.0)
    assert s.std == pytest.approx(STD_FLOOR * 4.0)
    empty = scene_of(np.full((4, 4), np.nan, np.float32), [dem[:4, :4], None], (DEM, LC),
                     train_std=4.0)
    assert empty.cells == 0 and empty.gain == (0.0,) * 4


def test_window_scene_uses_the_aux_cell_means():
    rng = np.random.default_rng(1)
    aux = rng.uniform(0, 2000, (1, 6 * F, 7 * F)).astype(np.float32)
    coarse = 20.0 - 0.005 * block_mean(aux[0], F)
    s = window_scene(coarse, aux, (DEM,), F, train_std=5.0)
    assert s.gain[0] == pytest.approx(-0.005 * 300.0 / s.std, rel=1e-3)


def test_scene_aux_statistics_and_gain_per_scene_aux_spread():
    rng = np.random.default_rng(0)
    dem = rng.uniform(0, 400, (20, 30)).astype(np.float32)  # lowland relief
    coarse = (15.0 + 0.004 * dem).astype(np.float32)
    coarse[0, :4] = np.nan
    dem[5, 5] = np.nan
    s = scene_of(coarse, [dem, None], (DEM, LC), train_std=5.0, aux_scene=True)
    ok = np.isfinite(coarse) & np.isfinite(dem)
    assert s.aux_loc[0] == pytest.approx(float(dem[ok].mean()), rel=1e-5)
    assert s.aux_scale[0] == pytest.approx(float(dem[ok].astype(np.float64).std()), rel=1e-4)
    assert s.aux_loc[1:] == (0.0,) * 3 and s.aux_scale[1:] == (1.0,) * 3
    # the slope per scene aux std, not per the training std (300 m)
    assert s.gain[0] == pytest.approx(0.004 * s.aux_scale[0] / s.std, rel=1e-3)
    assert "GEOSR_SCENE_AUX_STD" in s.tags()
    # without the option the scene has no aux statistics (models trained before it)
    plain = scene_of(coarse, [dem, None], (DEM, LC), train_std=5.0)
    assert plain.aux_loc == () and "GEOSR_SCENE_AUX_STD" not in plain.tags()
    flat = scene_of(coarse, [np.full_like(dem, 5.0), None], (DEM, LC), train_std=5.0,
                    aux_scene=True)
    assert flat.aux_scale[0] == pytest.approx(AUX_STD_FLOOR * DEM.std)


def test_scene_aux_model_sees_relief_of_any_scale_alike(tmp_path):
    """Alpine relief and the same relief 10x flatter give the same output: the network
    gets each scene's aux at the scale it was trained on (the coarse field stays)."""
    pred = Predictor(load_bundle(_scene_bundle(tmp_path / "m.geosr", scene_aux=True)))
    plain = Predictor(load_bundle(_scene_bundle(tmp_path / "p.geosr")))
    rng = np.random.default_rng(3)
    aux = rng.uniform(200, 2000, (1, 1, 10 * F, 12 * F)).astype(np.float32)
    coarse = (15.0 - 0.006 * block_mean(aux[0, 0], F)
              + rng.normal(0, 0.5, (10, 12))).astype(np.float32)[None]
    low = 0.1 * aux + 20.0
    for p, same in ((pred, True), (plain, False)):
        y0, y1 = p.predict(coarse, aux), p.predict(coarse, low)
        diff = np.max(np.abs(y1 - y0)) / float(np.std(y0))
        assert (diff < 1e-4) if same else (diff > 1e-3), (same, diff)


def _scene_bundle(path: Path, seed: int = 0, *, scene_aux: bool = False) -> Path:
    torch.manual_seed(seed)
    cfg = NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8, fine_width=8,
                    n_blocks=1, fine_blocks=1, scene=True, scene_aux=scene_aux)
    model = Generator(cfg)
    with torch.no_grad():  # make the learned part matter
        model.head[-1].weight.mul_(10)
        model.gain.weight.normal_(0, 0.1)
    save_bundle(path, overwrite=True, config=cfg, aux=(DEM,), factor=F, res_m=500.0,
                variable="t2m", units="degC", norm=NORM,
                training={"epochs": 1, "val": {"rmse": 0.5}}, state_dict=model.state_dict())
    return path


def test_scene_model_is_equivariant_to_level_and_spread(tmp_path):
    """A colder, more variable regime: the output moves with the input, exactly."""
    pred = Predictor(load_bundle(_scene_bundle(tmp_path / "m.geosr")))
    assert pred.scene
    rng = np.random.default_rng(2)
    aux = rng.uniform(200, 2000, (1, 1, 10 * F, 12 * F)).astype(np.float32)
    coarse = (15.0 - 0.006 * block_mean(aux[0, 0], F)
              + rng.normal(0, 0.5, (10, 12))).astype(np.float32)[None]
    a, b = 2.5, -30.0
    y0 = pred.predict(coarse, aux)
    y1 = pred.predict(a * coarse + b, aux)
    scale = float(np.std(y0))
    assert np.max(np.abs(y1 - (a * y0 + b))) / (a * scale) < 1e-4


def test_fixed_model_is_not_equivariant(tmp_path):
    torch.manual_seed(0)
    cfg = NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8, fine_width=8,
                    n_blocks=1, fine_blocks=1)
    model = Generator(cfg)
    with torch.no_grad():
        model.head[-1].weight.mul_(10)
    save_bundle(tmp_path / "f.geosr", overwrite=True, config=cfg, aux=(DEM,), factor=F,
                res_m=500.0, variable="t2m", units="degC", norm=NORM,
                training={"epochs": 1}, state_dict=model.state_dict())
    pred = Predictor(load_bundle(tmp_path / "f.geosr"))
    assert not pred.scene
    rng = np.random.default_rng(2)
    aux = rng.uniform(200, 2000, (1, 1, 10 * F, 12 * F)).astype(np.float32)
    coarse = rng.normal(10, 3, (1, 10, 12)).astype(np.float32)
    y0, y1 = pred.predict(coarse, aux), pred.predict(2.5 * coarse - 30, aux)
    assert np.max(np.abs(y1 - (2.5 * y0 - 30))) > 1e-2


def test_downscale_uses_whole_band_scenes(tmp_path):
    sc = _scene(tmp_path, hc=40, wc=48)
    model = _scene_bundle(tmp_path / "m.geosr")
    aux = parse_layers([f"dem={sc['aux']}"])
    a, _ = _run(sc, tmp_path / "a.tif", model=str(model), aux=aux, tile_px=96)
    b, _ = _run(sc, tmp_path / "b.tif", model=str(model), aux=aux, tile_px=400)
    assert np.isfinite(a).all()
    # the scene is the band, not the tile: only the measured halo's tolerance remains
    assert np.nanmax(np.abs(a - b)) / np.nanstd(a) < HALO_TOLERANCE
    # the tags record each band's scene, computed from the whole band
    with rasterio.open(tmp_path / "a.tif") as src:
        tags = [src.tags(k) for k in (1, 2)]
    for k, t in enumerate(tags):
        assert float(t["GEOSR_SCENE_MEAN"]) == pytest.approx(
            float(np.mean(sc["coarse_arr"][k])), rel=1e-4)
        assert float(t["GEOSR_SCENE_GAIN"]) < 0  # temperature falls with height
    # the same as the network run on the whole band with the band's scene
    pred = Predictor(load_bundle(model))
    with rasterio.open(sc["aux"]) as src:
        dem = src.read(1)
    coarse = sc["coarse_arr"]
    scenes = [pred.scene_of(coarse[k], [block_mean(dem, F)]) for k in range(2)]
    whole = pred.predict(coarse, np.repeat(dem[None, None], 2, axis=0), scenes=scenes)
    assert np.nanmax(np.abs(whole - a)) / np.nanstd(a) < HALO_TOLERANCE


# --------------------------------------------------------------------------- domain shift


RANGES = {"n": 3, "mean": [8.0, 14.0], "std": [2.0, 4.0], "gain": {"dem": [-0.6, -0.3]}}


def test_band_shifts_flag_what_lies_far_outside():
    from geosr.model.domain import band_shifts

    train, stats = {"scene_ranges": RANGES}, {"min": -5.0, "max": 25.0, "mean": 11.0, "std": 5.0}
    assert band_shifts(1, 13.0, 3.0, (-0.4,), train, stats, ("dem",)) == []
    assert band_shifts(1, 18.5, 3.0, (-0.4,), train, stats, ("dem",)) == []  # < 1 sd beyond
    far = band_shifts(2, 25.0, 9.0, (0.2,), train, stats, ("dem",))
    assert [s.what for s in far] == ["mean", "std", "slope dem"]
    assert far[0].band == 2 and far[0].score == pytest.approx((25 - 14) / 5.0)
    assert far[1].score == pytest.approx(9.0 / 4.0)
    # a fixed-statistics model: only its training values' range
    fixed = band_shifts(1, 40.0, 3.0, None, {}, stats, ("dem",))
    assert [s.what for s in fixed] == ["mean"] and (fixed[0].lo, fixed[0].hi) == (-5.0, 25.0)
    assert band_shifts(1, 28.0, 3.0, None, {}, stats, ("dem",)) == []


def test_aux_shifts_and_summary():
    from geosr.model.domain import aux_shifts, summarise

    dem = np.linspace(0, 4000, 100, dtype=np.float32)
    got = aux_shifts([dem, None], ["dem", "lc"], {"aux_ranges": {"dem": [0.0, 2000.0]}})
    assert len(got) == 1 and got[0].value == pytest.approx(0.47, abs=0.02)
    assert aux_shifts([dem], ["dem"], {"aux_ranges": {"dem": [0.0, 4000.0]}}) == []
    assert summarise([]) == "none"
    assert "aux dem: 48% of cells outside the training values 0..2000" in summarise(got)


def test_downscale_warns_and_tags_a_shifted_input(tmp_path, caplog):
    from geosr import validate

    sc = _scene(tmp_path, hc=24, wc=24, bands=1)
    coarse = sc["coarse_arr"]
    model = tmp_path / "m.geosr"
    torch.manual_seed(0)
    cfg = NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8, fine_width=8,
                    n_blocks=1, fine_blocks=1, scene=True)
    m = float(np.mean(coarse))
    s = float(np.std(coarse))
    training = {"epochs": 1, "scene_ranges": {"n": 1, "mean": [m - 1, m + 1],
                                              "std": [s * 0.8, s * 1.2], "gain": {}},
                "aux_ranges": {"dem": [0.0, 5000.0]}}
    save_bundle(model, overwrite=True, config=cfg, aux=(DEM,), factor=F, res_m=500.0,
                variable="t2m", units="degC", norm=NORM, training=training,
                coarse_stats={"min": m - 3 * s, "max": m + 3 * s, "mean": m, "std": s},
                state_dict=Generator(cfg).state_dict())
    aux = parse_layers([f"dem={sc['aux']}"])
    _run(sc, tmp_path / "in.tif", model=str(model), aux=aux)
    with rasterio.open(tmp_path / "in.tif") as src:
        assert src.tags()["GEOSR_DOMAIN_SHIFT"] == "none"
    hot = write_raster(tmp_path / "hot.tif", coarse + 10 * s, res=500.0 * F, origin=ORIGIN)
    caplog.set_level("WARNING")
    _run({"coarse": hot, "aux": sc["aux"]}, tmp_path / "out.tif", model=str(model), aux=aux)
    warned = [r.getMessage() for r in caplog.records if "training distribution" in r.getMessage()]
    assert len(warned) == 1 and "hot.tif" in warned[0] and "band 1 mean" in warned[0]
    with rasterio.open(tmp_path / "out.tif") as src:
        tag = src.tags()["GEOSR_DOMAIN_SHIFT"]
    assert tag.startswith("band 1 mean")
    truth = write_raster(tmp_path / "truth.tif", np.zeros((1, 24 * F, 24 * F), np.float32),
                         res=500.0, origin=ORIGIN)
    report = validate(tmp_path / "out.tif", truth)
    assert report.domain_shift == tag and report.to_dict()["domain_shift"] == tag


def test_aux_nodata_takes_its_cell_mean_not_the_training_mean(tmp_path):
    """A DEM that stops at the coast: sea pixels must not look like terrain."""
    from geosr.model.predictor import fill_aux_cells

    aux = np.full((1, 2, 2 * F, 2 * F), 100.0, np.float32)
    aux[0, 0, :F, :F] = np.linspace(0, 200, F * F).reshape(F, F)
    aux[0, 0, :F // 2, :F] = np.nan  # half a cell of sea
    aux[0, 0, F:, F:] = np.nan       # a cell without any valid pixel
    aux[0, 1, :2, :2] = np.nan       # a class layer keeps its NaN
    lc = AuxChannelSpec("lc", categorical=True, classes=(1.0,))
    got = fill_aux_cells(aux, (DEM, lc), F)
    land = aux[0, 0, F // 2:F, :F]
    assert np.allclose(got[0, 0, :F // 2, :F], land.mean())
    assert block_mean(got[0, 0], F)[0, 0] == pytest.approx(float(land.mean()), rel=1e-6)
    assert np.isnan(got[0, 0, F:, F:]).all() and np.isnan(got[0, 1, :2, :2]).all()
    assert np.isnan(aux[0, 0, 0, 0])  # the input is not changed
    pred = Predictor(load_bundle(_scene_bundle(tmp_path / "m.geosr")))
    coarse = np.full((1, 2, 2), 10.0, np.float32)
    filled = aux[:, :1].copy()
    filled[0, 0, :F // 2, :F] = land.mean()
    a, b = pred.predict(coarse, aux[:, :1]), pred.predict(coarse, filled)
    assert np.allclose(a, b, atol=1e-5, equal_nan=True)


def test_conservation_keeps_the_land_of_a_coastal_cell_apart_from_its_sea(tmp_path):
    """With ``mean_over_aux`` (a land-only coarse product), where the aux is nodata (the
    sea beyond a DEM's coast) the network's values are conserved apart: the land of the
    cell averages to the coarse value, and so does its sea, whatever the network puts
    there. Without it, the whole cell does."""
    aux = np.full((1, 1, 2 * F, 2 * F), 100.0, np.float32)
    aux[0, 0] += np.linspace(0, 900, 4 * F * F).reshape(2 * F, 2 * F)
    aux[0, 0, :F // 2, :F] = np.nan  # half a cell of sea
    aux[0, 0, F:, F:] = np.nan       # a cell of sea only
    coarse = np.array([[[10.0, 12.0], [8.0, 11.0]]], np.float32)
    pred = Predictor(load_bundle(_scene_bundle(tmp_path / "m.geosr")), conserve=True)
    y = pred.predict(coarse, aux, mean_over_aux=True)[0]
    whole = pred.predict(coarse, aux)[0]
    np.testing.assert_allclose(block_mean(whole, F), coarse[0], atol=1e-4)
    sea = np.isnan(aux[0, 0])
    assert abs(whole[:F, :F][~sea[:F, :F]].mean() - coarse[0, 0, 0]) > 1e-3  # land apart
    assert np.isfinite(y).all()
    for i in range(2):
        for j in range(2):
            cell = (slice(i * F, (i + 1) * F), slice(j * F, (j + 1) * F))
            for part in (~sea[cell], sea[cell]):
                if part.any():
                    assert y[cell][part].mean() == pytest.approx(coarse[0, i, j], abs=1e-4)
    assert y[:F // 2, :F].std() > 1e-3  # the sea keeps the network's pattern, shifted
    # training's validation (and its patches) conserve the same way
    from geosr.training.loop import predict_tile

    scene = window_scene(coarse[0], aux[0], (DEM,), F, train_std=5.0)
    with torch.no_grad():
        got = predict_tile(pred.model, coarse[0], aux[0], NORM, (DEM,), torch.device("cpu"),
                           scene, mean_over_aux=True)
    np.testing.assert_allclose(got[0], y, atol=1e-4)


@pytest.mark.parametrize("units, variable, scene, want", [
    ("degC", "t2m", None, True), ("", "tasmax", None, True), ("mm/day", "rainfall", None, False),
    ("", "pr", None, False), ("mm", "rainfall", True, True), ("degC", "t2m", False, False)])
def test_scene_default_is_off_for_precipitation(units, variable, scene, want):
    from types import SimpleNamespace

    from geosr.training.loop import _scene_default

    cfg = SimpleNamespace(scene=scene)
    assert _scene_default(cfg, SimpleNamespace(units=units, variable=variable)) is want


def test_fixed_model_with_recorded_scenes_warns_on_a_reversed_slope_not_on_spread(
        tmp_path, caplog):
    """A fixed-statistics network whose bundle records its training scenes (``train``
    does for every network): the band's sharpening slope is checked against them; its
    spread is not (the network works on values, whatever their spread)."""
    sc = _scene(tmp_path, hc=24, wc=24, bands=1)
    coarse = sc["coarse_arr"]
    with rasterio.open(sc["aux"]) as src:
        dem_cells = block_mean(src.read(1), F)
    model = tmp_path / "f.geosr"
    torch.manual_seed(0)
    cfg = NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8, fine_width=8,
                    n_blocks=1, fine_blocks=1)
    m, s = float(np.mean(coarse)), float(np.std(coarse))
    gain = scene_of(coarse[0], [dem_cells], (DEM,), train_std=s).gain[0]
    assert gain < 0  # the synthetic field cools with height
    training = {"epochs": 1, "scene_ranges": {
        "n": 2, "mean": [m - 1, m + 1], "std": [10 * s, 12 * s],  # far wider spread
        "gain": {"dem": [1.1 * gain, 0.9 * gain]}}}
    save_bundle(model, overwrite=True, config=cfg, aux=(DEM,), factor=F, res_m=500.0,
                variable="t2m", units="degC", norm=NORM, training=training,
                coarse_stats={"min": m - 3 * s, "max": m + 3 * s, "mean": m, "std": s},
                state_dict=Generator(cfg).state_dict())
    aux = parse_layers([f"dem={sc['aux']}"])
    caplog.set_level("WARNING")
    _run(sc, tmp_path / "same.tif", model=str(model), aux=aux)
    with rasterio.open(tmp_path / "same.tif") as src:
        assert src.tags()["GEOSR_DOMAIN_SHIFT"] == "none"  # spread 10x smaller: no warning
    # the same field with its dependence on height reversed (warmer uphill)
    flipped = 2 * m - coarse
    path = write_raster(tmp_path / "flipped.tif", flipped, res=500.0 * F, origin=ORIGIN)
    _run({"coarse": path, "aux": sc["aux"]}, tmp_path / "out.tif", model=str(model), aux=aux)
    warned = [r.getMessage() for r in caplog.records if "training distribution" in r.getMessage()]
    assert len(warned) == 1 and "flipped.tif" in warned[0] and "slope dem" in warned[0]
    assert "std" not in warned[0]


@pytest.mark.parametrize("scene", [False, True])
def test_train_records_the_scene_ranges_of_every_network(tmp_path, scene):
    import json

    from _helpers_train import TINY_ARCH, make_dataset

    import geosr

    ds = make_dataset(tmp_path, days=3)
    geosr.train(ds, out=tmp_path / "m.geosr", epochs=1, scene=scene, arch=TINY_ARCH,
                steps_per_epoch=1, batch_size=4, device="cpu")
    rec = load_bundle(tmp_path / "m.geosr").training["scene_ranges"]
    assert rec["n"] >= 1 and rec["gain"]["dem"][0] < 0 and rec["std"][0] > 0
    assert json.loads((tmp_path / "m.log.json").read_text())["scene_ranges"] == rec
    # the coarse data have a value in every cell: conserved over whole cells
    assert load_bundle(tmp_path / "m.geosr").training["cell_mean"] == "cell"
    # a scene-adaptive network standardises its aux per scene by default
    assert load_bundle(tmp_path / "m.geosr").config.scene_aux is scene
    if scene:
        geosr.train(ds, out=tmp_path / "n.geosr", epochs=1, arch=(*TINY_ARCH, ("scene_aux", False)),
                    steps_per_epoch=1, batch_size=4, device="cpu")
        assert load_bundle(tmp_path / "n.geosr").config.scene_aux is False


def test_bundles_without_scene_aux_load_unchanged():
    shipped = Path(__file__).resolve().parents[1] / "models" / "alps-t2m" / "alps-t2m.geosr"
    b = load_bundle(shipped)  # the content hash still verifies
    assert b.config.scene_aux is False
