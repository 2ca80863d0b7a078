import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geosr.constraints import ValidRange, bounded_conserve, clip_to_range, from_cf, from_units

RANGES = [(0.0, math.inf), (0.0, 1.0), (-1.0, 1.0), (0.0, 100.0), (-math.inf, 5.0)]


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    b, r, c = a.shape
    blocks = a.reshape(b, r // f, f, c // f, f).astype(np.float64)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0).sum(axis=(2, 4))
    count = valid.sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


@st.composite
def cases(draw):
    lo, hi = draw(st.sampled_from(RANGES))
    f = draw(st.integers(1, 6))
    rows, cols, bands = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    span_lo = lo if math.isfinite(lo) else hi - 10.0
    span_hi = hi if math.isfinite(hi) else lo + 30.0
    coarse = rng.uniform(span_lo, span_hi, (bands, rows, cols))
    if draw(st.booleans()):  # values on the bounds: dry cells, saturated cells
        coarse[rng.random(coarse.shape) < 0.2] = span_lo
        coarse[rng.random(coarse.shape) < 0.1] = span_hi
    if draw(st.booleans()):
        coarse[rng.random(coarse.shape) < 0.2] = np.nan
    # A fine field that overshoots the range on both sides, like a sharpened field.
    width = (span_hi - span_lo) * draw(st.floats(0.1, 3.0))
    fine = np.repeat(np.repeat(coarse, f, axis=1), f, axis=2)
    fine = np.nan_to_num(fine, nan=span_lo) + rng.normal(0, width, fine.shape)
    if draw(st.booleans()):
        fine[rng.random(fine.shape) < 0.15] = np.nan
    return fine.astype(np.float32), coarse.astype(np.float32), f, lo, hi


@settings(max_examples=300, deadline=None)
@given(cases(), st.integers(1, 4))
def test_bounded_conserve_stays_in_range_and_conserves(case, chunk_rows):
    fine, coarse, f, lo, hi = case
    nan_before = np.isnan(fine).copy()
    before = fine.copy()
    out = bounded_conserve(fine, coarse, f, lo, hi, chunk_rows=chunk_rows)
    assert out is fine
    assert np.array_equal(np.isnan(out), nan_before)
    has_coarse = np.repeat(np.repeat(np.isfinite(coarse), f, axis=1), f, axis=2)
    valid = out[np.isfinite(out) & has_coarse]
    assert (valid >= lo).all() and (valid <= hi).all()
    means = _block_mean(out, f)
    ok = np.isfinite(coarse) & np.isfinite(means)
    scale = max(1.0, float(np.nanmax(np.abs(coarse))) if np.isfinite(coarse).any() else 1.0)
    np.testing.assert_allclose(means[ok], coarse[ok], rtol=1e-5, atol=1e-5 * scale)
    # cells with a NaN coarse value are untouched
    bad = np.repeat(np.repeat(~np.isfinite(coarse), f, axis=1), f, axis=2)
    np.testing.assert_array_equal(out[bad], before[bad])


@settings(max_examples=200, deadline=None)
@given(cases())
def test_bounded_conserve_is_identity_on_valid_conserved_fields(case):
    fine, coarse, f, lo, hi = case
    np.clip(fine, lo, hi, out=fine)
    means = _block_mean(fine, f).astype(np.float32)
    assume(np.isfinite(means).any())
    before = fine.copy()
    bounded_conserve(fine, means, f, lo, hi)
    np.testing.assert_allclose(fine, before, rtol=1e-5, atol=1e-5 * max(1.0, np.nanmax(
        np.abs(before))), equal_nan=True)


def test_non_negative_is_multiplicative():
    fine = np.array([[[0.0, 1.0], [2.0, 5.0]]], np.float32)  # mean 2
    bounded_conserve(fine, np.array([[[3.0]]], np.float32), 2, 0.0, math.inf)
    np.testing.assert_allclose(fine[0], [[0.0, 1.5], [3.0, 7.5]], rtol=1e-6)
    fine = np.array([[[0.0, 1.0], [2.0, 5.0]]], np.float32)
    bounded_conserve(fine, np.array([[[1.0]]], np.float32), 2, 0.0, math.inf)
    np.testing.assert_allclose(fine[0], [[0.0, 0.5], [1.0, 2.5]], rtol=1e-6)


def test_negative_rain_clipped_and_zeros_kept():
    fine = np.array([[[-3.0, 0.0], [2.0, 5.0]]], np.float32)  # additive conservation's output
    bounded_conserve(fine, np.array([[[1.0]]], np.float32), 2, 0.0, math.inf)
    assert fine.min() >= 0 and fine[0, 0, 0] == 0 and fine[0, 0, 1] == 0
    assert math.isclose(float(fine.mean()), 1.0, rel_tol=1e-6)


def test_dry_cell_wet_coarse_spreads_uniformly():
    fine = np.zeros((1, 2, 2), np.float32)
    bounded_conserve(fine, np.array([[[0.4]]], np.float32), 2, 0.0, math.inf)
    np.testing.assert_allclose(fine, 0.4)


def test_two_sided_uses_headroom():
    fine = np.array([[[0.5, 1.0], [0.0, 0.5]]], np.float32)  # mean .5 in [0, 1]
    bounded_conserve(fine, np.array([[[0.75]]], np.float32), 2, 0.0, 1.0)
    # d = .25 spread by headroom (.5, 0, 1, .5), mean .5 -> x + .5 * room
    np.testing.assert_allclose(fine[0], [[0.75, 1.0], [0.5, 0.75]], rtol=1e-6)


def test_bounded_conserve_rejects_open_range_and_bad_shapes():
    with pytest.raises(ValueError):
        bounded_conserve(np.zeros((1, 4, 4), np.float32), np.zeros((1, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match="nest"):
        bounded_conserve(np.zeros((1, 4, 4), np.float32), np.zeros((1, 3, 2), np.float32), 2,
                         0.0)


@pytest.mark.parametrize("text,lo,hi", [("0:", 0, math.inf), (":1", -math.inf, 1),
                                         ("-1:1", -1, 1), (" 0 : 100 ", 0, 100),
                                         ("1e-3:2.5", 1e-3, 2.5), ("5:5", 5, 5)])
def test_parse(text, lo, hi):
    r = ValidRange.parse(text)
    assert (r.lo, r.hi) == (lo, hi)
    assert ValidRange.parse(str(r)) == r


@pytest.mark.parametrize("text", ["5:1", "abc", ":", "", "1", "1:2:3", "a:1", "nan:1",
                                  "inf:"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        ValidRange.parse(text)


def test_of_and_tuple():
    assert ValidRange.of((0, None)) == ValidRange(0.0)
    assert ValidRange.of("0:1").as_tuple() == (0.0, 1.0)
    assert ValidRange.of(None) is None
    assert ValidRange(0.0).non_negative and str(ValidRange(0.0)) == "0:"


def test_from_cf_and_units():
    assert from_cf({"valid_range": "{0,100}"}) == ValidRange(0, 100)
    assert from_cf({"valid_min": "0"}) == ValidRange(0.0)
    assert from_cf({"valid_min": "0", "valid_max": "1"}) == ValidRange(0, 1)
    assert from_cf({"valid_range": "{0,10000}"}, scale=0.01) == ValidRange(0, 100)
    assert from_cf({}) is None and from_cf({"valid_range": "{5,1}"}) is None
    for u in ("mm", "mm/day", "kg m-2 s-1", "m", "mm h-1"):
        assert from_units(u) == ValidRange(0.0), u
    for u in ("K", "degC", "", None, "m s-1", "furlongs"):
        assert from_units(u) is None, u


def test_clip_to_range_counts():
    a = np.array([-1.0, 0.5, np.nan, 3.0], np.float32)
    assert clip_to_range(a, ValidRange(0, 1)) == 2
    np.testing.assert_array_equal(a, np.array([0.0, 0.5, np.nan, 1.0], np.float32))


def test_tiny_cell_under_large_pixels_stays_exact():
    """A cell of 1e-6 mm/day under pixels of several mm/day: float32 arithmetic would
    cancel them to rounding noise; the result keeps its relative precision."""
    rng = np.random.default_rng(0)
    fine = rng.uniform(0, 8, (1, 12, 12)).astype(np.float32)
    coarse = np.array([[[1.7e-6]]], np.float32)
    bounded_conserve(fine, coarse, 12, 0.0)
    assert fine.min() >= 0
    assert abs(fine.astype(np.float64).mean() - 1.7e-6) < 1e-6 * 1.7e-6 * 100
