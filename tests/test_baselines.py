import numpy as np
import pytest

from geosr.arrays import block_mean
from geosr.baselines import fit_sharpen, sharpen, sharpen_tile, upsample


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_upsample_shapes_and_constant(method):
    c = np.full((2, 3, 4), 7.0, np.float32)
    out = upsample(c, 5, method)
    assert out.shape == (2, 15, 20)
    np.testing.assert_allclose(out, 7.0, atol=1e-5)


def test_upsample_linear_ramp_is_exact_inside():
    # a linear field sampled at cell centres is reproduced exactly by bilinear
    x = np.arange(8, dtype=np.float32)
    coarse = np.tile(x, (6, 1))
    fine = upsample(coarse, 4, "bilinear")
    centres = (np.arange(32) + 0.5) / 4 - 0.5
    np.testing.assert_allclose(fine[3, 4:-4], centres[4:-4], atol=1e-5)


def test_upsample_nan_stays_local():
    c = np.ones((4, 4), np.float32)
    c[1, 2] = np.nan
    out = upsample(c, 3, "bicubic")
    assert np.isnan(out[3:6, 6:9]).all()
    assert np.isfinite(out[:3]).all()
    np.testing.assert_allclose(out[np.isfinite(out)], 1.0, atol=1e-5)


def test_window_with_halo_matches_whole():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(12, 12)).astype(np.float32)
    whole = upsample(c, 4, "bicubic")
    part = upsample(c[2:10, 3:11], 4, "bicubic")
    np.testing.assert_allclose(part[8:-8, 8:-8], whole[16:32, 20:36], atol=1e-5)


def test_sharpen_recovers_linear_lapse_and_conserves():
    rng = np.random.default_rng(1)
    dem = rng.uniform(0, 3000, size=(64, 64)).astype(np.float32)
    truth = (20 - 0.0065 * dem).astype(np.float32)
    coarse = block_mean(truth, 8)
    fit = fit_sharpen(coarse, block_mean(dem[None], 8))
    assert fit.coef[0] == pytest.approx(-0.0065, rel=1e-3) and fit.r2 > 0.999
    out = sharpen(coarse, dem[None], 8, conserve=True)
    np.testing.assert_allclose(out, truth, atol=1e-3)
    np.testing.assert_allclose(block_mean(out, 8), coarse, atol=1e-4)


def test_sharpen_tile_handles_nodata_and_no_aux():
    c = np.full((4, 4), 5.0, np.float32)
    c[0, 0] = np.nan
    aux = np.ones((1, 16, 16), np.float32)
    aux[0, 8:, 8:] = np.nan
    fit = fit_sharpen(c, block_mean(aux, 4))
    out = sharpen_tile(fit, c, aux, 4, conserve=True)
    assert np.isnan(out[:4, :4]).all()
    assert np.isfinite(out[8:, 8:]).all()  # aux missing -> interpolation fallback
    out0 = sharpen(c, np.zeros((0, 16, 16), np.float32), 4)
    np.testing.assert_allclose(out0[4:, 4:], 5.0, atol=1e-5)


def test_sharpen_real_meteoswiss_beats_bicubic(real_data, tmp_path):
    from geosr.align import plan_grids, resampling_for
    from geosr.io.read import AlignedReader, raster_info

    d = real_data / "meteoswiss-ch-1km"
    tabs = next((d / "geotiff").glob("TabsM_*.tif"))
    info = raster_info(tabs)
    fine, _ = plan_grids(info, res_m=1000, factor=16, ref_is_coarse=False)
    with AlignedReader(tabs, fine, resampling_for(info, fine)) as rd:
        truth = rd.read()[0]
    dem_path = d / "aux/swissAltitude_geostatsp.tif"
    dinfo = raster_info(dem_path)
    with AlignedReader(dem_path, fine, resampling_for(dinfo, fine)) as rd:
        dem = rd.read()
    coarse = block_mean(truth, 16)
    ok = np.isfinite(truth)
    rmse = lambda p: float(np.sqrt(np.nanmean((p[ok] - truth[ok]) ** 2)))  # noqa: E731
    assert rmse(sharpen(coarse, dem, 16)) < 0.5 * rmse(upsample(coarse, 16, "bicubic"))
