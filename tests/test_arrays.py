"""geosr.arrays against straightforward cell-by-cell references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from geosr.arrays import (
    block_count,
    block_mean,
    conserve_blocks,
    fill_nearest,
    mask_nodata_blocks,
)

# --------------------------------------------------------------------------- references


def _cells(shape, f):
    """(lead index, i, j, block slices) of every coarse cell of a (..., rows, cols) shape."""
    *lead, r, c = shape
    for idx in np.ndindex(*lead):
        for i in range(r // f):
            for j in range(c // f):
                yield idx, i, j, (*idx, slice(i * f, (i + 1) * f), slice(j * f, (j + 1) * f))


def ref_block_mean(a, f):
    *lead, r, c = a.shape
    out = np.full((*lead, r // f, c // f), np.nan, np.float32)
    for idx, i, j, sl in _cells(a.shape, f):
        v = a[sl][np.isfinite(a[sl])].astype(np.float64)
        if v.size:
            out[(*idx, i, j)] = v.sum() / v.size
    return out


def ref_block_count(m, f):
    *lead, r, c = m.shape
    out = np.zeros((*lead, r // f, c // f), np.int32)
    for idx, i, j, sl in _cells(m.shape, f):
        out[(*idx, i, j)] = int(m[sl].sum())
    return out


def ref_conserve(fine, coarse, f):
    out = fine.copy()
    for idx, i, j, sl in _cells(fine.shape, f):
        v = fine[sl][np.isfinite(fine[sl])].astype(np.float64)
        target = float(coarse[(*idx, i, j)])
        if v.size and np.isfinite(target):
            out[sl] += np.float32(target - v.sum() / v.size)
    return out


def ref_mask(fine, coarse, f):
    out = fine.copy()
    for idx, i, j, sl in _cells(fine.shape, f):
        if not np.isfinite(coarse[(*idx, i, j)]):
            out[sl] = np.nan
    return out


def check_nearest(field, filled):
    """Valid cells unchanged; each filled cell holds a value of a valid cell at the
    smallest distance (ties may go either way); no valid cell: all NaN."""
    ok = np.isfinite(field)
    if not ok.any():
        assert np.isnan(filled).all()
        return
    np.testing.assert_array_equal(filled[ok], field[ok])
    vr, vc = np.nonzero(ok)
    for r, c in zip(*np.nonzero(~ok), strict=True):
        d = (vr - r) ** 2 + (vc - c) ** 2
        nearest = field[vr[d == d.min()], vc[d == d.min()]]
        assert filled[r, c] in nearest


# --------------------------------------------------------------------------- data

# Multiples of 1/8 below 2**12: float64 block sums are exact, so any summation order
# gives the same bits and the comparison with the references can be exact.
exact = st.integers(-(2 ** 15), 2 ** 15).map(lambda k: np.float32(k / 8))


@st.composite
def fields(draw, *, max_lead=2, elements=None, nan=True):
    f = draw(st.integers(1, 5))
    lead = draw(st.lists(st.integers(1, 3), max_size=max_lead))
    rows, cols = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    values = elements if elements is not None else exact
    if nan:
        values = st.one_of(values, st.just(np.float32(np.nan)))
    a = draw(hnp.arrays(np.float32, (*lead, rows * f, cols * f), elements=values))
    return a, f


# --------------------------------------------------------------------------- block means


@settings(max_examples=150, deadline=None)
@given(fields())
def test_block_mean_matches_the_reference_exactly(af):
    a, f = af
    got = block_mean(a, f)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref_block_mean(a, f))
    for chunk in (1, 2):
        np.testing.assert_array_equal(block_mean(a, f, chunk_rows=chunk), got)


@settings(max_examples=60, deadline=None)
@given(fields(elements=st.floats(-1e6, 1e6, width=32)))
def test_block_mean_of_any_floats_is_within_rounding(af):
    a, f = af
    np.testing.assert_allclose(block_mean(a, f), ref_block_mean(a, f), rtol=1e-6, atol=1e-6)


def test_block_mean_of_other_dtypes_and_bad_shapes():
    np.testing.assert_array_equal(block_mean(np.arange(16).reshape(4, 4), 2),
                                  [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(block_mean(np.ones((2, 4), bool), 2), [[1.0, 1.0]])
    big = np.random.default_rng(0).normal(size=(3, 40, 60)).astype(np.float64)
    np.testing.assert_allclose(block_mean(big, 20), ref_block_mean(big, 20), rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of factor 3"):
        block_mean(np.zeros((4, 6)), 3)
    with pytest.raises(ValueError, match="rows, cols"):
        block_mean(np.zeros(4), 2)


@settings(max_examples=80, deadline=None)
@given(fields(nan=False), st.data())
def test_block_count_matches_the_reference(af, data):
    a, f = af
    m = data.draw(hnp.arrays(bool, a.shape))
    got = block_count(m, f)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref_block_count(m, f))


# --------------------------------------------------------------------------- conservation


@settings(max_examples=150, deadline=None)
@given(fields(), st.data())
def test_conserve_blocks_matches_the_reference_in_place(af, data):
    fine, f = af
    shape = (*fine.shape[:-2], fine.shape[-2] // f, fine.shape[-1] // f)
    coarse = data.draw(hnp.arrays(np.float32, shape,
                                  elements=st.one_of(exact, st.just(np.float32(np.nan)))))
    want = ref_conserve(fine, coarse, f)
    for chunk in (1, 3, 4):
        got = fine.copy()
        assert conserve_blocks(got, coarse, f, chunk_rows=chunk) is got
        np.testing.assert_array_equal(got, want)


def test_conserve_blocks_makes_block_means_equal_the_coarse_field():
    rng = np.random.default_rng(2)
    f = 5
    fine = rng.normal(10, 2, size=(2, 7 * f, 9 * f)).astype(np.float32)
    fine[0, 3:20, 5:30] = np.nan
    coarse = rng.normal(10, 2, size=(2, 7, 9)).astype(np.float32)
    coarse[1, 2, 3] = np.nan
    out = conserve_blocks(fine.copy(), coarse, f, chunk_rows=3)
    np.testing.assert_allclose(out, ref_conserve(fine, coarse, f), rtol=0, atol=2e-6)
    means = block_mean(out, f)
    has = np.isfinite(coarse) & np.isfinite(means)
    np.testing.assert_allclose(means[has], coarse[has], atol=1e-5)
    assert np.array_equal(np.isnan(out), np.isnan(fine))
    # no valid fine cell or a NaN coarse value: the block is left as it was
    assert np.array_equal(out[1, 10:15, 15:20], fine[1, 10:15, 15:20])


def test_in_place_operations_refuse_what_they_cannot_modify():
    fine = np.zeros((2, 3, 4, 4), np.float32)[:, :2]  # bands that no view can merge
    with pytest.raises(ValueError, match="in place"):
        conserve_blocks(fine, np.zeros((2, 2, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match="in place"):
        mask_nodata_blocks(fine, np.full((2, 2, 2, 2), np.nan, np.float32), 2)
    with pytest.raises(TypeError, match="floating"):
        conserve_blocks(np.zeros((4, 4), np.int32), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="coarse shape"):
        conserve_blocks(np.zeros((4, 4), np.float32), np.zeros((3, 2)), 2)


# --------------------------------------------------------------------------- nodata


@settings(max_examples=100, deadline=None)
@given(fields(nan=False), st.data())
def test_mask_nodata_blocks_matches_the_reference(af, data):
    fine, f = af
    shape = (*fine.shape[:-2], fine.shape[-2] // f, fine.shape[-1] // f)
    coarse = data.draw(hnp.arrays(np.float32, shape,
                                  elements=st.sampled_from([np.float32(1), np.float32(np.nan)])))
    got = fine.copy()
    assert mask_nodata_blocks(got, coarse, f) is got
    np.testing.assert_array_equal(got, ref_mask(fine, coarse, f))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, max_side=6),
                  elements=st.one_of(exact, st.just(np.float32(np.nan)))))
def test_fill_nearest_takes_a_nearest_valid_cell_per_field(a):
    got = fill_nearest(a)
    assert got.shape == a.shape and got.dtype == a.dtype and got is not a
    fields_in = a.reshape(-1, *a.shape[-2:])
    fields_out = got.reshape(-1, *a.shape[-2:])
    for field, filled in zip(fields_in, fields_out, strict=True):
        check_nearest(field, filled)
        np.testing.assert_array_equal(fill_nearest(field), filled)  # stacked = one by one


def test_fill_nearest_leaves_its_input_alone():
    a = np.array([[1.0, np.nan], [np.nan, np.nan]], np.float32)
    out = fill_nearest(a)
    np.testing.assert_array_equal(out, np.ones((2, 2)))
    assert np.isnan(a).sum() == 3
    assert fill_nearest(np.empty((0, 3, 3), np.float32)).shape == (0, 3, 3)
