"""Validation figures, inspected as matplotlib objects before they are saved."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import NullFormatter

from geosr.evaluate import figures
from geosr.grid import Grid

GRID = Grid("EPSG:32632", Affine(1000.0, 0, 500_000.0, 0, -1000.0, 5_200_000.0), 40, 30)


def _fields(seed=0, shape=(30, 40)):
    rng = np.random.default_rng(seed)
    truth = 10 + rng.normal(size=shape)
    truth[:, :15] = np.nan  # nothing valid in the western 15 columns, nor the top 5 rows
    truth[:5] = np.nan
    return truth, truth + 0.3 * rng.normal(size=shape)


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize(("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)),
                                          (5, (1, 5)), (6, (2, 3)), (7, (2, 4)), (9, (3, 3))])
def test_panel_grid_has_no_empty_cell_when_avoidable(n, shape):
    assert figures.panel_grid(n) == shape


@pytest.mark.parametrize("n_fields", [2, 4])
def test_errors_figure_has_one_axes_per_panel_and_no_empty_cell(n_fields):
    truth, pred = _fields()
    fields = {f"m{i}": pred + i * 0.1 for i in range(n_fields)}
    fig = figures.build_errors(grid=GRID, truth=truth, fields=fields, units="degC",
                               variable="tasmax")
    maps = _image_axes(fig)
    assert len(maps) == n_fields
    rows, cols, *_ = maps[0].get_subplotspec().get_geometry()
    assert rows * cols == n_fields  # 4 panels: 2 x 2, not 3 + 3 with two blanks
    assert len(fig.axes) == 2 * n_fields  # each map and its colour bar, nothing else
    labels = {ax.get_ylabel() for ax in fig.axes if ax not in maps}
    assert labels == {"tasmax error (degC)"}


def test_maps_label_units_and_variable_and_show_the_data_extent():
    truth, pred = _fields()
    fig = figures.build_maps(grid=GRID, truth=truth, pred=pred, units="degC", variable="tasmax")
    maps = _image_axes(fig)
    assert len(maps) == 3
    cbar_labels = [ax.get_ylabel() for ax in fig.axes if ax not in maps]
    assert cbar_labels == ["tasmax (degC)", "tasmax (degC)", "tasmax error (degC)"]
    # valid data: columns 15..39, rows 5..29 -> easting 515..540 km, northing 5170..5195 km
    for ax in maps:
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        assert (x0, x1) == pytest.approx((515.0, 540.0))
        assert (min(y0, y1), max(y0, y1)) == pytest.approx((5170.0, 5195.0))
        assert "km" in ax.get_xlabel() and "EPSG:32632" in ax.get_xlabel()


def _overlaps(labels) -> bool:
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_spectra_tick_labels_do_not_collide():
    """A map of 16 x 16 km at 1 km spans wavelengths 2-16 km, under a decade: matplotlib's
    default log axis then labels minor ticks too."""
    g = Grid("EPSG:32632", Affine(1000.0, 0, 500_000.0, 0, -1000.0, 5_200_000.0), 16, 16)
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(16, 16))
    fig = figures.build_spectra(grid=g, truth=truth, fields={"prediction": truth * 0.9},
                                units="degC", variable="tasmax")
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    for axis in (ax.xaxis, ax.yaxis):
        assert isinstance(axis.get_minor_formatter(), NullFormatter)
        ticks = axis.get_majorticklabels() + axis.get_minorticklabels()
        assert not _overlaps(ticks)
    shown = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
    assert shown and all(t.replace(".", "").isdigit() for t in shown), shown  # plain numbers
    assert ax.get_xlabel() == "wavelength (km)" and "degC" in ax.get_ylabel()


@pytest.mark.parametrize(("desc", "dates", "expected"), [
    (("tasmax_1", "tasmax_2"), ("2018-05-01T12:00:00", "2018-05-02T12:00:00"),
     ("tasmax", "2018-05-02T12:00:00")),
    (("tmax 2018-05-01", "tmax 2018-05-02"), ("", ""), ("tmax", "band 2")),
    (("TabsM", "TabsM"), ("2020-01-01T00:00:00", "2020-02-01T00:00:00"), ("TabsM", "2020-02-01")),
    (("", ""), ("", ""), ("", "band 2")),
    (("red", "near infrared"), ("", ""), ("near infrared", "band 2")),
])
def test_field_labels_replace_raw_band_ids(desc, dates, expected):
    assert figures.field_labels(desc, dates, 2) == expected
