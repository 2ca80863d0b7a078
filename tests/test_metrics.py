"""Metric functions against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from geosr.evaluate import metrics as M


def field(shape=(64, 80), seed=0) -> np.ndarray:
    """A smooth, non-periodic random field."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32) * 10 + 5


def test_registry_and_compute_all_agree():
    out = M.compute_all(field(), field())
    assert list(out) == list(M.METRICS)
    assert set(M.PAIR_METRICS) | set(M.CONTEXT_METRICS) == set(M.METRICS)
    assert all(math.isnan(out[k]) for k in M.CONTEXT_METRICS)


def test_identical_fields_are_perfect():
    t = field()
    m = M.compute_all(t, t)
    assert m["rmse"] == 0 and m["mae"] == 0 and m["bias"] == 0
    assert m["pearson_r"] == pytest.approx(1)
    assert m["r2"] == 1.0
    assert m["ssim"] == pytest.approx(1)
    assert m["kge"] == pytest.approx(1)
    assert m["js_divergence"] == 0.0
    assert m["wasserstein"] == 0.0
    assert m["gradient_ratio"] == pytest.approx(1)
    assert m["spectrum_error"] == pytest.approx(0, abs=1e-12)
    assert m["psnr"] == math.inf


@pytest.mark.parametrize("offset", [2.5, -0.75])
def test_constant_offset(offset):
    t = field()
    p = t + np.float32(offset)
    assert M.bias(p, t) == pytest.approx(offset, rel=1e-5)
    assert M.rmse(p, t) == pytest.approx(abs(offset), rel=1e-5)
    assert M.mae(p, t) == pytest.approx(abs(offset), rel=1e-5)
    assert M.pearson_r(p, t) == pytest.approx(1)
    assert M.wasserstein(p, t) == pytest.approx(abs(offset), rel=1e-5)
    assert M.gradient_ratio(p, t) == pytest.approx(1, rel=1e-5)
    assert M.spectrum_error(p, t) == pytest.approx(0, abs=1e-6)
    assert M.ssim(p, t) < 1


def test_shifted_ramp_has_known_rmse_and_same_gradients():
    # truth = 2 per column + a row pattern; shifting by one column adds exactly 2.
    y, x = np.mgrid[0:40, 0:51].astype(np.float64)
    big = 2 * x + 3 * np.sin(y / 4)
    truth, pred = big[:, :-1], big[:, 1:]
    assert M.rmse(pred, truth) == pytest.approx(2)
    assert M.bias(pred, truth) == pytest.approx(2)
    assert M.gradient_ratio(pred, truth) == pytest.approx(1)


def test_shifted_sinusoid_expected_rmse():
    # sin shifted by d over whole periods: rmse = sqrt(2) * |sin(d / 2)|.
    period, shift = 32, 3
    x = np.arange(4 * period)
    truth = np.tile(np.sin(2 * np.pi * x / period), (24, 1))
    pred = np.roll(truth, shift, axis=1)
    d = 2 * np.pi * shift / period
    assert M.rmse(pred, truth) == pytest.approx(math.sqrt(2) * abs(math.sin(d / 2)), rel=1e-9)
    assert M.gradient_ratio(pred, truth) == pytest.approx(1, abs=0.02)
    assert M.spectrum_error(pred, truth) == pytest.approx(0, abs=1e-9)


def test_hand_computed_small_arrays():
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    truth = np.array([1.0, 3.0, 2.0, 5.0])
    # errors 0, -1, 1, -1
    assert M.mae(pred, truth) == pytest.approx(0.75)
    assert M.rmse(pred, truth) == pytest.approx(math.sqrt(0.75))
    assert M.bias(pred, truth) == pytest.approx(-0.25)
    # truth mean 2.75, SST = 8.75, SSE = 3
    assert M.r2(pred, truth) == pytest.approx(1 - 3 / 8.75)
    r = 5.5 / math.sqrt(5 * 8.75)  # cov sum 5.5, pred SS 5, truth SS 8.75
    alpha = math.sqrt(5 / 8.75)
    beta = 2.5 / 2.75
    assert M.pearson_r(pred, truth) == pytest.approx(r)
    assert M.kge(pred, truth) == pytest.approx(
        1 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2))
    # range 4, mse 0.75
    assert M.psnr(pred, truth) == pytest.approx(10 * math.log10(16 / 0.75))


def test_nan_cells_are_left_out():
    pred = np.array([1.0, np.nan, 3.0, 100.0])
    truth = np.array([1.0, 2.0, 4.0, np.nan])
    assert M.valid_count(pred, truth) == 2
    assert M.rmse(pred, truth) == pytest.approx(math.sqrt(0.5))
    assert M.bias(pred, truth) == pytest.approx(-0.5)


def test_undefined_is_nan_not_error():
    empty = np.full((5, 5), np.nan)
    for fn in M.PAIR_METRICS.values():
        assert math.isnan(fn(empty, empty))
    const = np.ones((8, 8))
    assert math.isnan(M.pearson_r(const + 1, const))
    assert math.isnan(M.kge(np.ones(4), np.array([-1.0, 1.0, -1.0, 1.0])))  # truth mean 0


def test_js_divergence_bounds():
    a = np.zeros(100)
    b = np.ones(100)
    assert M.js_divergence(a, b) == pytest.approx(1.0)  # disjoint histograms
    t = field()
    assert M.js_divergence(t, t) == 0.0


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 50, elements=st.floats(-1e3, 1e3)),
       arrays(np.float64, 50, elements=st.floats(-1e3, 1e3)))
def test_js_divergence_in_unit_interval_and_symmetric(a, b):
    js = M.js_divergence(a, b)
    assert 0.0 <= js <= 1.0
    assert js == pytest.approx(M.js_divergence(b, a), abs=1e-12)


def test_ssim_and_gradient_see_smoothing():
    t = field(seed=3) + np.random.default_rng(1).normal(size=(64, 80)).astype(np.float32)
    smooth = ndimage.gaussian_filter(t, 2)
    assert M.ssim(smooth, t) < 0.95
    assert M.gradient_ratio(smooth, t) < 0.7
    assert M.spectrum_error(smooth, t) > 0.3


def test_ssim_ignores_values_under_the_mask():
    t = field()
    p = t + 0.1
    p2 = p.copy()
    t2 = t.copy()
    t2[:10] = np.nan
    p2[:10] = 1e6  # garbage where the truth has no value
    a = M.ssim(np.where(np.isfinite(t2), p, np.nan), t2)
    b = M.ssim(p2, t2)
    assert a == pytest.approx(b)


def test_spatial_metrics_weight_bands_by_valid_count():
    t = np.stack([field(seed=1), field(seed=2)])
    p = t.copy()
    p[1] = ndimage.gaussian_filter(p[1], 2)
    t[0, :32] = np.nan  # band 1 has half the cells
    s0 = M.ssim(p[0], t[0])
    s1 = M.ssim(p[1], t[1])
    n0, n1 = M.valid_count(p[0], t[0]), M.valid_count(p[1], t[1])
    assert M.ssim(p, t) == pytest.approx((s0 * n0 + s1 * n1) / (n0 + n1))


def test_radial_spectrum_peaks_at_the_sinusoid():
    x = np.arange(128)
    f = np.tile(np.sin(2 * np.pi * x / 16), (128, 1))
    freq, power = M.radial_spectrum(f)
    assert freq[np.argmax(power)] == pytest.approx(1 / 16)
    assert freq.max() == pytest.approx(0.5)


def test_conservation_rmse():
    coarse = np.arange(12, dtype=np.float32).reshape(3, 4)
    fine = np.repeat(np.repeat(coarse, 5, 0), 5, 1)
    assert M.conservation_rmse(fine, coarse, 5) == 0
    noisy = fine + np.random.default_rng(0).normal(size=fine.shape).astype(np.float32)
    noisy -= np.repeat(np.repeat(M.block_mean(noisy - fine, 5), 5, 0), 5, 1)  # zero block mean
    assert M.conservation_rmse(noisy, coarse, 5) == pytest.approx(0, abs=1e-5)
    assert M.conservation_rmse(fine + 1.5, coarse, 5) == pytest.approx(1.5)


def test_physical_metrics():
    truth = np.array([0.0, 0.0, 2.0, 5.0, np.nan])
    pred = np.array([-0.5, 0.4, 1.5, 5.0, 3.0])
    assert M.frac_outside_range(pred, 0.0) == pytest.approx(0.2)
    assert M.frac_outside_range(pred, 0.0, 2.0) == pytest.approx(0.6)
    assert M.wet_day_freq_bias(pred, truth) == pytest.approx(0.0)  # 2 of 4 wet in both
    assert M.wet_day_freq_bias(pred + 1, truth) == pytest.approx(0.25)
    assert M.p99_bias(truth, truth) == 0.0
    expected = np.percentile(pred[:4], 99) - np.percentile(truth[:4], 99)
    assert M.p99_bias(pred, truth) == pytest.approx(expected)
    m = M.physical_metrics(pred, truth, valid_range=(0.0, math.inf), wet_threshold=1.0)
    assert m["frac_outside_range"] == pytest.approx(0.2) and m["wet_day_freq_bias"] == 0.0
    empty = np.full(3, np.nan)
    assert math.isnan(M.frac_outside_range(empty)) and math.isnan(M.p99_bias(empty, empty))
