import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.errors import InputError
from geosr.inference.tiling import RowStitcher, core_edges, plan_tiles, ramp

plans = st.tuples(
    st.integers(1, 40),  # coarse rows
    st.integers(1, 40),  # coarse cols
    st.integers(1, 7),  # factor
    st.integers(1, 12),  # tile, coarse cells
    st.integers(0, 5),  # overlap, coarse cells
).filter(lambda t: t[3] >= t[4])


def _plan(t):
    hc, wc, f, tc, oc = t
    return plan_tiles(hc * f, wc * f, factor=f, tile_px=tc * f, overlap_px=oc * f)


def test_ramp_is_symmetric_step():
    t = np.linspace(-1.5, 1.5, 301)
    np.testing.assert_allclose(ramp(t) + ramp(-t), 1.0, atol=1e-15)
    assert ramp(np.array(-1.0)) == 0.0 and ramp(np.array(1.0)) == 1.0
    assert np.all(np.diff(ramp(t)) >= 0)


@settings(max_examples=200, deadline=None)
@given(plans)
def test_weights_sum_to_one_everywhere(t):
    plan = _plan(t)
    total = np.zeros((plan.height, plan.width))
    for tile in plan.tiles():
        w = plan.weights(tile)
        assert w.min() > 0
        b = tile.blend
        total[b.row_off:b.row_off + b.height, b.col_off:b.col_off + b.width] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(plans)
def test_cores_partition_the_grid_on_coarse_cells(t):
    plan = _plan(t)
    f = plan.factor
    count = np.zeros((plan.height, plan.width), int)
    for tile in plan.tiles():
        c, r, b = tile.core, tile.read, tile.blend
        for win in (c, r):
            assert win.col_off % f == 0 and win.row_off % f == 0
            assert win.width % f == 0 and win.height % f == 0
        # blend zone lies inside the read window, read inside the grid
        assert r.row_off <= b.row_off and b.row_off + b.height <= r.row_off + r.height
        assert r.col_off <= b.col_off and b.col_off + b.width <= r.col_off + r.width
        assert 0 <= r.row_off and r.row_off + r.height <= plan.height
        count[c.row_off:c.row_off + c.height, c.col_off:c.col_off + c.width] += 1
    assert (count == 1).all()
    # every core holds both of its ramps
    for axis in (plan.rows, plan.cols):
        if axis.count > 1:
            assert min(axis.core(i).size for i in range(axis.count)) >= axis.overlap_px


def test_core_edges_merge_short_remainder():
    assert core_edges(10, 4, 1) == (0, 4, 8, 10)
    assert core_edges(9, 4, 2) == (0, 4, 9)
    assert core_edges(3, 4, 2) == (0, 3)


def test_rounding_to_coarse_cells():
    plan = plan_tiles(400, 400, factor=20, tile_px=512, overlap_px=50)
    assert plan.tile_px == 520 and plan.overlap_px == 60


def test_tile_smaller_than_overlap_is_input_error():
    with pytest.raises(InputError, match="--tile 64 is smaller than --overlap 128"):
        plan_tiles(400, 400, factor=4, tile_px=64, overlap_px=128)


@settings(max_examples=60, deadline=None)
@given(plans, st.integers(0, 2**31 - 1))
def test_stitching_identical_predictions_reproduces_the_field(t, seed):
    plan = _plan(t)
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(2, plan.height, plan.width)).astype(np.float32)
    field[:, rng.random((plan.height, plan.width)) < 0.05] = np.nan
    st_ = RowStitcher(plan, bands=2)
    out = np.full_like(field, -999.0)
    last = 0
    for i in range(plan.rows.count):
        for tile in plan.row_tiles(i):
            r = tile.read
            st_.add(tile, field[:, r.row_off:r.row_off + r.height, r.col_off:r.col_off + r.width])
        done = st_.finish_row()
        if done is not None:
            top, arr = done
            assert top == last and top % plan.factor == 0 and arr.shape[1] % plan.factor == 0
            out[:, top:top + arr.shape[1]] = arr
            last = top + arr.shape[1]
    assert last == plan.height
    np.testing.assert_allclose(out, field, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.isnan(out), np.isnan(field))


# --- any factor from 2 to 64, tile and overlap given in fine pixels as a user would ---------

@st.composite
def user_plans(draw, max_cells: int = 40):
    """A plan from raw ``--tile``/``--overlap`` pixel values (not multiples of the factor)."""
    f = draw(st.integers(2, 64))
    hc = draw(st.integers(1, max_cells))
    wc = draw(st.integers(1, max_cells))
    overlap_px = draw(st.integers(0, 6 * f))
    tile_px = draw(st.integers(max(1, overlap_px), overlap_px + 16 * f))
    return plan_tiles(hc * f, wc * f, factor=f, tile_px=tile_px, overlap_px=overlap_px)


def _axis_checks(axis):
    f, n = axis.factor, axis.n
    edges = axis.edges
    # cores partition [0, n) on coarse-cell borders: a coarse cell is never split
    assert edges[0] == 0 and edges[-1] == n
    assert all(e % f == 0 for e in edges)
    assert all(b > a for a, b in zip(edges, edges[1:], strict=False))
    assert axis.overlap_px % f == 0
    total = np.zeros(n)
    for i in range(axis.count):
        core, read, blend = axis.core(i), axis.read(i), axis.blend(i)
        assert read.start % f == 0 and read.stop % f == 0  # reads are whole coarse cells
        assert 0 <= read.start <= blend.start <= core.start < core.stop
        assert core.stop <= blend.stop <= read.stop <= n
        w = axis.weights(i)
        assert w.shape == (blend.size,) and w.min() > 0 and w.max() <= 1
        total[blend.start:blend.stop] += w
    # every fine pixel is covered, and the blend weights sum to 1 at every pixel
    np.testing.assert_allclose(total, 1.0, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(user_plans(max_cells=60))
def test_any_factor_axis_invariants(plan):
    assert plan.tile_px % plan.factor == 0 and plan.overlap_px % plan.factor == 0
    for axis in (plan.rows, plan.cols):
        _axis_checks(axis)


@settings(max_examples=50, deadline=None)
@given(user_plans(max_cells=8))
def test_any_factor_2d_weights_sum_to_one_and_cores_tile_the_grid(plan):
    f = plan.factor
    weight = np.zeros((plan.height, plan.width))
    owner = np.zeros((plan.height, plan.width), np.int32)
    for tile in plan.tiles():
        c, b = tile.core, tile.blend
        assert all(v % f == 0 for v in (c.row_off, c.col_off, c.height, c.width))
        owner[c.row_off:c.row_off + c.height, c.col_off:c.col_off + c.width] += 1
        weight[b.row_off:b.row_off + b.height, b.col_off:b.col_off + b.width] += \
            plan.weights(tile)
    assert (owner == 1).all()
    np.testing.assert_allclose(weight, 1.0, atol=1e-6)
    # the coarse window of every read lines up with its fine window
    for tile in plan.tiles():
        cw = plan.coarse(tile.read)
        assert (cw.col_off * f, cw.row_off * f, cw.width * f, cw.height * f) == \
            (tile.read.col_off, tile.read.row_off, tile.read.width, tile.read.height)
