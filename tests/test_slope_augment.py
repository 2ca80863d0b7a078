"""Slope augmentation of scene-adaptive training (geosr.training.slopes): the changed
samples stay conserved, their scenes are what `downscale` would compute for the changed
field, and `train --slope-augment` trains and records it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_train import TINY_ARCH, make_dataset  # noqa: E402

from geosr.arrays import block_mean  # noqa: E402
from geosr.errors import InputError  # noqa: E402
from geosr.model.bundle import AuxChannelSpec  # noqa: E402
from geosr.model.scene import scene_of  # noqa: E402
from geosr.training.slopes import BandMoments, SlopeAugmenter  # noqa: E402

F = 4
DEM = AuxChannelSpec("dem", mean=800.0, std=300.0, units="m")
NDVI = AuxChannelSpec("ndvi", mean=0.5, std=0.2, units="")
LC = AuxChannelSpec("lc", categorical=True, classes=(1.0, 2.0))
SPECS = (DEM, LC, NDVI)


def _band(seed: int = 0):
    """A whole band: fine aux (3 layers, the middle one classes), coarse field, target."""
    rng = np.random.default_rng(seed)
    h, w = 12, 10
    dem = rng.uniform(200, 2000, (h * F, w * F)).astype(np.float32)
    ndvi = rng.uniform(0, 1, (h * F, w * F)).astype(np.float32)
    lc = rng.integers(1, 3, (h * F, w * F)).astype(np.float32)
    dem[:F, :F] = np.nan  # one cell without DEM
    target = (20 - 0.006 * np.nan_to_num(dem, nan=800) + 2 * ndvi
              + rng.normal(0, 0.5, dem.shape)).astype(np.float32)
    target[-2:, -3:] = np.nan  # nodata in the target
    aux = np.stack([dem, lc, ndvi])
    aux[0, :F, :F] = np.nan
    coarse = block_mean(target, F)
    return coarse, target, aux


def _layers(aux):
    return [block_mean(aux[0], F), None, block_mean(aux[2], F)]


@pytest.mark.parametrize("seed, aux_scene", [(0, False), (1, False), (2, False), (0, True),
                                             (1, True)])
def test_augmented_scene_is_the_scene_of_the_changed_field(seed, aux_scene):
    coarse, target, aux = _band(seed)
    layers = _layers(aux)
    scene = scene_of(coarse, layers, SPECS, train_std=5.0, aux_scene=aux_scene)
    mom = BandMoments.of(coarse, [layers[0], layers[2]])
    aug = SlopeAugmenter(3.0, {7: scene}, {7: mom}, SPECS, train_std=5.0)
    c, t = coarse[None].copy(), target[None].copy()
    # the loop fills aux nodata with its cell's valid mean first; a cell without any
    # valid pixel stays NaN and gets no change
    got = aug(c, t, aux[None].copy(), [7], np.random.default_rng(seed))[0]
    want = scene_of(c[0], layers, SPECS, train_std=5.0, aux_scene=aux_scene)
    assert got.aux_scale == pytest.approx(want.aux_scale)  # the aux did not change
    assert got.mean == pytest.approx(want.mean, abs=1e-4 * scene.std)
    assert got.std == pytest.approx(want.std, rel=1e-4)
    assert got.gain == pytest.approx(want.gain, rel=1e-3, abs=1e-4)
    assert got.gain[1:3] == (0.0, 0.0)  # class channels keep no gain
    assert got.gain != pytest.approx(scene.gain, rel=1e-2)  # the slopes did change
    # conserved: every full coarse cell is still the mean of its fine pixels
    full = block_mean(np.isfinite(target).astype(np.float32), F) == 1.0
    assert np.abs(block_mean(t[0], F) - c[0])[full].max() < 1e-4
    assert np.isnan(t[0][np.isnan(target)]).all()  # nodata stays nodata


def test_scale_bounds_the_change_and_zero_scale_changes_nothing():
    coarse, target, aux = _band()
    layers = _layers(aux)
    scene = scene_of(coarse, layers, SPECS, train_std=5.0)
    mom = BandMoments.of(coarse, [layers[0], layers[2]])
    slopes = []
    for k in range(40):
        aug = SlopeAugmenter(0.5, {1: scene}, {1: mom}, SPECS, train_std=5.0)
        c, t = coarse[None].copy(), target[None].copy()
        aug(c, t, aux[None].copy(), [1], np.random.default_rng(k))
        slopes.append(scene_of(c[0], layers, SPECS, train_std=5.0))
    # beta_dem = u * std(y) / std(dem cells), |u| <= 0.5
    base = scene.gain[0] * scene.std / DEM.std
    bound = 0.5 * np.sqrt(mom.var_y / mom.cov_aa[0, 0])
    dem_slopes = [s.gain[0] * s.std / DEM.std - base for s in slopes]
    assert max(abs(b) for b in dem_slopes) <= bound * 1.001
    assert max(abs(b) for b in dem_slopes) > 0.5 * bound
    c, t = coarse[None].copy(), target[None].copy()
    same = SlopeAugmenter(0.0, {1: scene}, {1: mom}, SPECS, train_std=5.0)(
        c, t, aux[None].copy(), [1], np.random.default_rng(0))[0]
    assert np.array_equal(c[0], coarse, equal_nan=True) and same.gain == pytest.approx(scene.gain)


def test_band_without_moments_is_left_alone():
    coarse, target, aux = _band()
    scene = scene_of(coarse, _layers(aux), SPECS, train_std=5.0)
    aug = SlopeAugmenter(2.0, {1: scene}, {1: None}, SPECS, train_std=5.0)
    c, t = coarse[None].copy(), target[None].copy()
    assert aug(c, t, aux[None].copy(), [1], np.random.default_rng(0)) == [scene]
    assert np.array_equal(t[0], target, equal_nan=True)
    assert BandMoments.of(np.full((2, 2), np.nan), [np.ones((2, 2))]) is None


@pytest.mark.usefixtures("one_torch_thread")
def test_train_with_slope_augmentation_records_it(tmp_path, caplog):
    import geosr

    ds = make_dataset(tmp_path, days=3)
    res = geosr.train(ds, out=tmp_path / "m.geosr", epochs=2, slope_augment=2.0, scene=True,
                      arch=TINY_ARCH, steps_per_epoch=2, batch_size=4, device="cpu")
    log = json.loads((tmp_path / "m.log.json").read_text())
    assert log["slope_augment"] == 2.0 and log["scene"] is True
    assert np.isfinite(res.history[-1]["val_rmse"])
    # a fixed-statistics network has no scenes to augment: said, and recorded as not used
    caplog.set_level("WARNING")
    geosr.train(ds, out=tmp_path / "f.geosr", epochs=1, slope_augment=2.0, scene=False,
                arch=TINY_ARCH, steps_per_epoch=1, batch_size=4, device="cpu")
    assert json.loads((tmp_path / "f.log.json").read_text())["slope_augment"] is None
    assert any("--slope-augment 2: ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), 1000.0])
def test_slope_augment_out_of_range_is_an_input_error(tmp_path, bad):
    import geosr

    with pytest.raises(InputError, match=r"--slope-augment .*expected a scale"):
        geosr.train(tmp_path / "nope", out=tmp_path / "m.geosr", slope_augment=bad)
