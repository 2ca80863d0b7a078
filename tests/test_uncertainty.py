"""Probabilistic outputs: coherent noise, quantile maps, conserving members, the
probabilistic training path and the validate scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from _helpers_train import TINY_ARCH, make_dataset
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr.arrays import block_mean
from geosr.cli import app
from geosr.evaluate.probabilistic import ensemble_scores, interval_scores, rank_histogram
from geosr.inference.config import DownscaleConfig
from geosr.inference.run import downscale
from geosr.sources import LayerSpec
from geosr.uncertainty import coherent_noise, member_inflation, quantile_label

F = 4


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _bundle(path: Path, *, spread: bool) -> Path:
    """An untrained tiny generator (with or without a spread head) saved as a bundle."""
    from geosr.model.bundle import AuxChannelSpec, save_bundle
    from geosr.nn import Generator, NetConfig

    torch.manual_seed(0)
    cfg = NetConfig(factor=F, n_aux=1, coarse_width=8, branch_width=4, up_width=8,
                    fine_width=8, n_blocks=1, fine_blocks=1, spread=spread)
    save_bundle(path, config=cfg, aux=(AuxChannelSpec("dem", mean=800.0, std=400.0),),
                factor=F, res_m=1000.0, variable="t2m", units="degC",
                norm={"coarse": {"mean": 5.0, "std": 3.0}, "target": {"mean": 5.0, "std": 3.0}},
                state_dict=Generator(cfg).state_dict())
    return path


@pytest.fixture
def scene(tmp_path):
    """Two dated bands of 20 x 20 coarse cells (4 km) with nodata, and a 1 km DEM."""
    n = 20
    dem = terrain((n * F, n * F))
    base = 10 - 0.0065 * block_mean(dem[None], F)[0]
    noise = np.random.default_rng(0).normal(size=(n, n)) * 0.4
    coarse = np.stack([base + noise, base + 2 - noise]).astype(np.float32)
    coarse[:, :2, :3] = np.nan
    cp = write_raster(tmp_path / "c.tif", coarse, res=4000.0, band_tags=[
        {"DATE_TIME": "2020-01-01"}, {"DATE_TIME": "2020-01-02"}])
    dp = write_raster(tmp_path / "dem.tif", dem, res=1000.0)
    return cp, dp, coarse


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(masked=True).filled(np.nan)


def _run(scene, out, **kw):
    cp, dp, _ = scene
    downscale(DownscaleConfig(coarse=(str(cp),), aux=(LayerSpec("dem", str(dp)),), out=out,
                              res_m=1000.0, workers=1, **kw))


def _check_members(path: Path, coarse: np.ndarray, best: np.ndarray, n: int) -> np.ndarray:
    mem = _read(path)
    assert mem.shape == (n * coarse.shape[0], *best.shape[1:])
    scale = np.nanmax(np.abs(coarse))
    for k in range(mem.shape[0]):
        cell = block_mean(mem[k:k + 1], F)[0]
        ref = coarse[k % coarse.shape[0]]
        assert np.array_equal(np.isnan(cell), np.isnan(ref))
        assert np.nanmax(np.abs(cell - ref)) / scale < 1e-4
    # a member is not the best estimate, and members differ from one another
    assert np.nanstd(mem[0] - best[0]) > 1e-3
    assert np.nanstd(mem[0] - mem[coarse.shape[0]]) > 1e-3
    return mem


# ------------------------------------------------------------------------- pure parts


def test_noise_is_a_function_of_global_position_and_has_unit_variance():
    kw = dict(seed=3, member=1, band=0, length_px=4.0)
    big = coherent_noise(row0=-20, col0=50, height=120, width=130, **kw)
    part = coherent_noise(row0=7, col0=81, height=33, width=40, **kw)
    np.testing.assert_array_equal(big[27:60, 31:71], part)
    other = coherent_noise(row0=-20, col0=50, height=120, width=130, **{**kw, "member": 2})
    assert abs(np.corrcoef(big.ravel(), other.ravel())[0, 1]) < 0.2
    assert 0.7 < big.std() < 1.3
    # smooth: neighbours correlate strongly, pixels 4 lengths apart hardly
    assert np.corrcoef(big[:, :-1].ravel(), big[:, 1:].ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(big[:, :-16].ravel(), big[:, 16:].ravel())[0, 1]) < 0.3


def test_member_inflation_restores_the_variance_removed_with_the_block_means():
    g = coherent_noise(seed=0, member=0, band=0, row0=0, col0=0, height=800, width=800,
                       length_px=F / 2)
    resid = g - np.repeat(np.repeat(block_mean(g[None], F)[0], F, 0), F, 1)
    assert resid.std() * member_inflation(F, F / 2) == pytest.approx(1.0, abs=0.08)


def test_quantile_labels():
    assert [quantile_label(q) for q in (0.05, 0.95, 0.5, 0.025, 0.1)] == \
        ["q05", "q95", "q50", "q025", "q10"]


def test_scores_on_known_cases():
    truth = np.arange(10, dtype=np.float64)
    iv = interval_scores(truth - 1, truth + 1, truth + np.r_[np.zeros(8), 5, 5])
    assert iv["interval_coverage"] == pytest.approx(0.8)
    assert iv["interval_width"] == pytest.approx(2.0)
    # a one-member-like ensemble at the truth scores 0; a wide one scores worse
    rng = np.random.default_rng(0)
    y = rng.normal(size=5000)
    good = y[None] + 0 * rng.normal(size=(8, 5000))
    assert ensemble_scores(good, y)["crps"] == pytest.approx(0.0, abs=1e-12)
    calibrated = rng.normal(size=(8, 5000))
    s = ensemble_scores(calibrated, y)
    assert s["spread_skill"] == pytest.approx(1.0, abs=0.1)
    assert s["crps"] == pytest.approx(1 / np.sqrt(np.pi), rel=0.1)  # CRPS of N(0,1) vs N(0,1)
    hist = rank_histogram(calibrated, y)
    assert hist.sum() == 5000 and hist.size == 9 and hist.min() > 400


# ------------------------------------------------------------------------- downscale


def test_sharpening_interval_and_members_without_a_model(scene, tmp_path):
    out = tmp_path / "sharp.tif"
    _run(scene, out, quantiles=(0.95, 0.05), members=3, seed=7, tile_px=24)
    best = _read(out)
    lo, hi = _read(tmp_path / "sharp_q05.tif"), _read(tmp_path / "sharp_q95.tif")
    ok = np.isfinite(best)
    assert np.array_equal(ok, np.isfinite(lo)) and (lo[ok] < best[ok]).all()
    assert (hi[ok] > best[ok]).all()
    with rasterio.open(tmp_path / "sharp_q05.tif") as src:
        assert "sharpening" in src.tags()["GEOSR_UNCERTAINTY"]
        assert src.tags()["GEOSR_QUANTILE"] == "0.05" and src.tags(2)["DATE_TIME"] == "2020-01-02"
    with rasterio.open(tmp_path / "sharp_members.tif") as src:
        assert src.descriptions[4] == "c 2020-01-01 member 3"
    mem = _check_members(tmp_path / "sharp_members.tif", scene[2], best, 3)
    # the same seed gives the same members whatever the tiles; another seed others
    _run(scene, tmp_path / "again.tif", members=3, seed=7, tile_px=36)
    np.testing.assert_allclose(_read(tmp_path / "again_members.tif"), mem, atol=1e-4)
    _run(scene, tmp_path / "other.tif", members=1, seed=8)
    assert np.nanmax(np.abs(_read(tmp_path / "other_members.tif")[0] - mem[0])) > 1e-2


def test_members_keep_a_valid_range_and_conserve(scene, tmp_path):
    out = tmp_path / "ranged.tif"
    _run(scene, out, members=2, quantiles=(0.05, 0.95), valid_range=_range("4:"))
    mem = _read(tmp_path / "ranged_members.tif")
    assert np.nanmin(mem) >= 4.0 - 1e-5 and np.nanmin(_read(tmp_path / "ranged_q05.tif")) >= 4.0
    coarse = np.clip(scene[2], 4.0, None)
    _check_members(tmp_path / "ranged_members.tif", coarse, _read(out), 2)


def _range(text):
    from geosr.constraints import ValidRange

    return ValidRange.parse(text)


def test_probabilistic_model_quantiles_and_members_are_tile_independent(scene, tmp_path):
    model = _bundle(tmp_path / "p.geosr", spread=True)
    outs = {}
    for tile in (24, 40):
        out = tmp_path / f"p{tile}.tif"
        _run(scene, out, model=str(model), quantiles=(0.05, 0.95), members=2, tile_px=tile)
        outs[tile] = [_read(out), _read(tmp_path / f"p{tile}_q95.tif"),
                      _read(tmp_path / f"p{tile}_members.tif")]
    for a, b in zip(outs[24], outs[40], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    best, hi, _ = outs[24]
    ok = np.isfinite(best)
    assert (hi[ok] > best[ok]).all()
    _check_members(tmp_path / "p24_members.tif", scene[2], best, 2)


def test_deterministic_model_refuses_quantiles_with_a_hint(scene, tmp_path):
    model = _bundle(tmp_path / "d.geosr", spread=False)
    cp, dp, _ = scene
    res = CliRunner().invoke(app, ["downscale", str(cp), "--aux", f"dem={dp}", "--model",
                                   str(model), "-o", str(tmp_path / "o.tif"),
                                   "--quantiles", "0.05,0.95"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--probabilistic" in lines[0] and "sharpening" in lines[0]
    assert not (tmp_path / "o.tif").exists()
    bad = CliRunner().invoke(app, ["downscale", str(cp), "--aux", str(dp), "-o",
                                   str(tmp_path / "o.tif"), "--quantiles", "0.05,1.5"])
    assert bad.exit_code == 2 and "--quantiles" in bad.output


def test_validate_interval_reports_the_coverage_the_files_give(scene, tmp_path):
    _run(scene, tmp_path / "s.tif", quantiles=(0.05, 0.95), members=4)
    best = _read(tmp_path / "s.tif")
    rng = np.random.default_rng(1)
    truth = best + rng.normal(scale=0.3, size=best.shape).astype(np.float32)
    tp = write_raster(tmp_path / "truth.tif", truth, res=1000.0)
    lo, hi = _read(tmp_path / "s_q05.tif"), _read(tmp_path / "s_q95.tif")
    ok = np.isfinite(truth) & np.isfinite(lo)
    want = float(((truth >= lo) & (truth <= hi))[ok].mean())
    res = CliRunner().invoke(app, [
        "validate", str(tmp_path / "s.tif"), str(tp), "--interval", str(tmp_path / "s_q05.tif"),
        str(tmp_path / "s_q95.tif"), "--members", str(tmp_path / "s_members.tif"),
        "--plots", str(tmp_path / "figs"), "--json", "-"])
    assert res.exit_code == 0, res.output
    u = json.loads(res.output)["uncertainty"]
    assert u["interval_coverage"] == pytest.approx(want, abs=1e-9)
    assert u["interval_width"] == pytest.approx(float((hi - lo)[ok].mean()), rel=1e-5)
    assert u["crps"] > 0 and u["spread_skill"] > 0 and u["members"] == 4
    assert (tmp_path / "figs" / "rank_histogram.png").stat().st_size > 1000


def test_probabilistic_training_records_kind_and_calibration(tmp_path):
    from geosr.model.bundle import load_bundle
    from geosr.training.config import TrainConfig
    from geosr.training.loop import train

    ds = make_dataset(tmp_path)
    train(TrainConfig(dataset=ds, out=tmp_path / "m.geosr", epochs=1, patch=4, batch_size=4,
                      steps_per_epoch=4, arch=TINY_ARCH, device="cpu", threads=1,
                      probabilistic=True))
    b = load_bundle(tmp_path / "m.geosr")
    assert b.kind == "probabilistic" and b.config.spread
    cal = b.training["spread_calibration"]
    assert cal["n"] > 0 and cal["coverage"] == pytest.approx(0.9, abs=0.02)
    assert float(b.state_dict["spread_head.scale"]) == pytest.approx(cal["scale"])
