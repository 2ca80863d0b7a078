import math

import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.errors import GridError
from geosr.grid import Grid, check_factor, check_res, choose_crs, derive_factor, snap_grid

coords = st.floats(min_value=-2e6, max_value=2e6, allow_nan=False)
sizes = st.floats(min_value=1e3, max_value=3e5, allow_nan=False)
resolutions = st.sampled_from([100.0, 250.0, 500.0, 1000.0, 1500.0])
factors = st.integers(min_value=2, max_value=64)


@settings(max_examples=200, deadline=None)
@given(left=coords, bottom=coords, w=sizes, h=sizes, res=resolutions, factor=factors)
def test_snapped_grid_covers_bounds_and_nests(left, bottom, w, h, res, factor):
    bounds = (left, bottom, left + w, bottom + h)
    g = snap_grid(bounds, crs="EPSG:3035", res_m=res, factor=factor)
    gl, gb, gr, gt = g.bounds
    cell = res * factor
    tol = 1e-5 * cell  # snapping forgives float noise of a millionth of a cell
    assert gl <= left + tol and gb <= bottom + tol
    assert gr >= bounds[2] - tol and gt >= bounds[3] - tol
    # origin on a multiple of the coarse cell: runs over neighbouring areas line up
    assert math.isclose(gl / cell, round(gl / cell), abs_tol=1e-6)
    assert math.isclose(gt / cell, round(gt / cell), abs_tol=1e-6)
    # whole coarse cells, and the coarse twin nests exactly
    assert g.width % factor == 0 and g.height % factor == 0
    c = g.coarsen(factor)
    assert c.bounds == pytest.approx(g.bounds)
    assert c.res == pytest.approx(cell)
    assert c.refine(factor).same_as(g)
    # no more than one extra coarse cell on each side
    assert gr - gl <= w + 2 * cell + 1e-6


@settings(max_examples=100, deadline=None)
@given(left=coords, bottom=coords, res=resolutions, factor=factors)
def test_neighbouring_areas_line_up(left, bottom, res, factor):
    a = snap_grid((left, bottom, left + 50_000, bottom + 50_000), crs="EPSG:3035", res_m=res,
                  factor=factor)
    b = snap_grid((left + 37_123, bottom - 11_111, left + 90_000, bottom + 40_000),
                  crs="EPSG:3035", res_m=res, factor=factor)
    dx = (b.transform.c - a.transform.c) / res
    dy = (b.transform.f - a.transform.f) / res
    assert math.isclose(dx, round(dx), abs_tol=1e-6) and math.isclose(dy, round(dy), abs_tol=1e-6)


@settings(max_examples=100, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), res=resolutions, x=coords, y=coords)
def test_grid_json_round_trip(w, h, res, x, y):
    g = Grid("EPSG:2056", Affine(res, 0, x, 0, -res, y), w, h)
    assert Grid.from_json(g.to_json()) == g


def test_grid_from_bad_dict():
    with pytest.raises(GridError, match="invalid"):
        Grid.from_dict({"crs": "EPSG:2056"})


@pytest.mark.parametrize("res", [0, -5, float("nan"), 1e9, 0.001])
def test_bad_res(res):
    with pytest.raises(GridError, match="--res"):
        check_res(res)


@pytest.mark.parametrize("factor", [0, 1, 65, 2.5, -3])
def test_bad_factor(factor):
    with pytest.raises(GridError, match="--factor"):
        check_factor(factor)


def test_derive_factor_rounds_and_checks():
    assert derive_factor(10_000, 500) == 20
    assert derive_factor(25_400, 500) == 51
    with pytest.raises(GridError, match="factor"):
        derive_factor(100_000, 500)


def test_choose_crs():
    assert choose_crs("EPSG:2056", (2.5e6, 1.1e6, 2.8e6, 1.3e6)) == "EPSG:2056"
    # geographic input over Cornwall -> UTM 30N
    assert choose_crs("EPSG:4326", (-6.0, 49.75, -4.5, 50.75)) == "EPSG:32630"
    assert choose_crs("EPSG:4326", (0, 0, 1, 1), "EPSG:3035") == "EPSG:3035"
    with pytest.raises(GridError, match="geographic"):
        choose_crs("EPSG:2056", (0, 0, 1, 1), "EPSG:4326")
    with pytest.raises(GridError, match="--crs"):
        choose_crs("EPSG:2056", (0, 0, 1, 1), "not-a-crs")
    # polar: local equal-area CRS
    assert "Lambert" in choose_crs("EPSG:4326", (10, 85, 20, 88)) or "laea" in choose_crs(
        "EPSG:4326", (10, 85, 20, 88)).lower()
