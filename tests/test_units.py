"""`geosr.units`: parsing, conversions, the model check and the range warning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.errors import InputError
from geosr.units import (
    ValueRange,
    conversion,
    convert,
    far_outside,
    model_conversion,
    normalise,
    parse_unit,
    plan_units,
)

SPELLINGS = {
    "K": ["K", "k", "kelvin", "Kelvin", "degK", "deg_K", "°K", "degrees_kelvin"],
    "degC": ["degC", "°C", "deg_C", "deg C", "Celsius", "C", "degree_Celsius", "degrees C",
             " degC "],
    "degF": ["degF", "°F", "deg_F", "Fahrenheit", "F", "degrees_fahrenheit"],
    "kg m-2 s-1": ["kg m-2 s-1", "kg m**-2 s**-1", "kg/m2/s", "kg m^-2 s^-1", "kg.m-2.s-1",
                   "kg m⁻² s⁻¹", "mm/s", "mm s-1"],
    "mm day-1": ["mm/day", "mm d-1", "mm day-1", "mm/d", "mm per day", "kg m-2 day-1",
                 "mm day^-1"],
    "mm h-1": ["mm/h", "mm hr-1", "mm h-1", "mm/hour", "kg m-2 h-1"],
    "mm": ["mm", "kg m-2", "kg/m2"],
    "m": ["m"],
    "%": ["%", "percent"],
    "1": ["1", "fraction"],
    "m s-1": ["m s-1", "m/s", "m s**-1"],
    "hPa": ["hPa", "mbar"],
}


@pytest.mark.parametrize("symbol,text",
                         [(s, t) for s, texts in SPELLINGS.items() for t in texts])
def test_parse_spellings(symbol, text):
    unit = parse_unit(text)
    assert unit is not None and unit.symbol == symbol
    assert normalise(text) == symbol


@pytest.mark.parametrize("text", ["", "   ", None, "W m-2", "degrees", "m a.s.l.", "kg", "m2"])
def test_unknown_units(text):
    assert parse_unit(text) is None


@pytest.mark.parametrize("src,dst,x,y", [
    ("K", "degC", 273.15, 0.0),
    ("degC", "K", -10.0, 263.15),
    ("degF", "degC", 212.0, 100.0),
    ("degC", "degF", -40.0, -40.0),
    ("K", "degF", 0.0, -459.67),
    ("kg m-2 s-1", "mm/day", 1.0 / 86400, 1.0),
    ("mm/h", "mm/day", 1.0, 24.0),
    ("mm day-1", "kg m-2 s-1", 86.4, 1e-3),
    ("m", "mm", 0.0123, 12.3),
    ("%", "1", 45.0, 0.45),
    ("degC", "°C", 7.0, 7.0),
])
def test_conversions(src, dst, x, y):
    scale, offset = conversion(src, dst)
    assert x * scale + offset == pytest.approx(y, abs=1e-9)


@pytest.mark.parametrize("src,dst", [("K", "mm"), ("m", "mm/day"), ("m s-1", "degC"),
                                     ("W m-2", "degC"), ("", "degC"), ("K", ""),
                                     ("kg m-2 s-1", "mm")])
def test_no_conversion(src, dst):
    assert conversion(src, dst) is None


def test_identical_unknown_strings_are_the_same_unit():
    assert conversion("W m-2", "W m-2") == (1.0, 0.0)
    assert conversion("W m-2", "w M-2 ") == (1.0, 0.0)


UNITS = [u for group in (["K", "degC", "degF"], ["kg m-2 s-1", "mm h-1", "mm day-1"],
                         ["m", "cm", "mm"]) for u in group]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(UNITS), st.sampled_from(UNITS),
       st.floats(-1e4, 1e4, allow_nan=False))
def test_round_trip(a, b, x):
    there = conversion(a, b)
    if there is None:
        assert parse_unit(a).quantity != parse_unit(b).quantity
        return
    back = conversion(b, a)
    y = x * there[0] + there[1]
    assert y * back[0] + back[1] == pytest.approx(x, rel=1e-9, abs=1e-9)


def test_convert_keeps_float32():
    arr = np.array([273.15, np.nan], np.float32)
    out = convert(arr, "K", "degC")
    assert out.dtype == np.float32 and abs(out[0]) < 1e-4 and np.isnan(out[1])


def test_incompatible_units_are_one_line_input_error():
    with pytest.raises(InputError) as e:
        model_conversion("m s-1", "degC", where="COARSE era5.nc")
    msg = str(e.value)
    assert msg == ("COARSE era5.nc: units 'm s-1' cannot be converted to the model's 'degC'; "
                   "expected temperature in K, degC or degF")
    assert e.value.exit_code == 2
    with pytest.raises(InputError, match=r"'W m-2' cannot be converted.*expected temperature"):
        model_conversion("W m-2", "degC", where="COARSE x.tif")
    with pytest.raises(InputError, match=r"expected 'W m-2'$"):
        model_conversion("K", "W m-2", where="COARSE x.tif")
    assert model_conversion("", "degC", where="x") is None
    assert model_conversion("K", "", where="x") is None


def test_plan_converts_and_back():
    up = plan_units(where="COARSE a.tif", units=("K", "K"), model_units="degC")
    assert up.converts and up.note() == ("COARSE a.tif: K converted to the model's degC "
                                         "(and back for the output)")
    arr = np.array([[[280.0]], [[290.0]]], np.float32)
    up.to_model(arr, [0, 1])
    np.testing.assert_allclose(arr.ravel(), [6.85, 16.85], atol=1e-4)
    up.from_model(arr, [0, 1])
    np.testing.assert_allclose(arr.ravel(), [280.0, 290.0], atol=1e-4)
    same = plan_units(where="COARSE a.tif", units=("°C",), model_units="degC")
    assert not same.converts and same.note() is None


# --------------------------------------------------------------------------- ranges

ALPS = ValueRange(-2.1, 19.8, 8.46, 6.75)


def test_far_outside():
    k = ValueRange.of(np.array([271.3, 280.0, 295.1]))
    assert far_outside(k, ALPS)
    assert not far_outside(ValueRange(10.0, 18.0, 14.0, 2.0), ALPS)  # a warm scene
    assert not far_outside(ValueRange(25.0, 34.0, 29.0, 2.0), ALPS)  # hot, but close
    # precipitation flux into a mm/day model: inside the range but 86 400 times too small
    mmday = ValueRange(0.0, 80.0, 3.0, 6.0)
    assert far_outside(ValueRange(0.0, 9e-4, 3e-5, 5e-5), mmday)
    assert not far_outside(ValueRange(0.0, 0.0, 0.0, 0.0), mmday)  # a dry day
    assert not far_outside(ValueRange(), ALPS) and not far_outside(k, ValueRange())
    # an old bundle: only the normalisation mean and std
    assert far_outside(k, ValueRange(mean=8.46, std=6.75))


def test_range_warning_figures_and_guess():
    up = plan_units(where="COARSE era5.tif", units=("",), model_units="degC",
                    model="alps-t2m", training=ALPS)
    msg = up.range_warning(ValueRange(271.3, 295.1, 282.0, 5.0))
    assert msg == ("COARSE era5.tif: values 271.3..295.1 (no units) lie far outside the model "
                   "alps-t2m's training range -2.1..19.8 degC; is it in K? set the band unit "
                   "or convert it")
    assert "\n" not in msg
    assert up.range_warning(ValueRange(0.0, 15.0, 8.0, 3.0)) is None
    # model units unknown, input in K
    old = plan_units(where="COARSE era5.nc", units=("K",), model_units="", model="alps-t2m",
                     training=ValueRange(mean=8.46, std=6.75))
    msg = old.range_warning(ValueRange(271.3, 295.1, 282.0, 5.0))
    assert "values 271.3..295.1 K" in msg and "mean 8.46 +- 6.75 (units not recorded)" in msg
    assert msg.endswith("the model may expect degC: convert the input to it")
    # known units, converted, still far: reported in the input's units
    conv = plan_units(where="COARSE hot.tif", units=("K",), model_units="degC", training=ALPS)
    msg = conv.range_warning(ValueRange(60.0, 80.0, 70.0, 5.0))
    assert "values 333.1..353.1 K" in msg and msg.endswith("expect extrapolation")
    assert math.isnan(ValueRange.of(np.array([np.nan])).mean)


@pytest.mark.parametrize("long_name, want", [("monthly mean temperature", "degC"),
                                             ("wind direction", "degree")])
def test_bare_degree_on_a_temperature_field_reads_as_celsius(tmp_path, long_name, want):
    """MeteoSwiss labels its temperature grids 'degree' (an angle to UDUNITS)."""
    from conftest import write_raster

    from geosr.io.read import raster_info

    path = write_raster(tmp_path / "t.tif", np.full((4, 4), 12.0, np.float32),
                        band_tags=[{"units": "degree", "long_name": long_name}])
    assert raster_info(str(path)).units == (want,)
