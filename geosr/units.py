"""Units of a field: parse them, convert between them, and check an input against a model.

Pure functions, no I/O. A unit string (CF ``units`` attribute, GeoTIFF band unit) is
parsed into a :class:`Unit`: a quantity and an affine map to that quantity's base unit.
Two units of one quantity convert with ``y = x * scale + offset``; units of different
quantities, or strings that are not recognised, do not convert.

Known units (aliases are case-insensitive; ``°`` = ``deg``; exponents may be written
``m-2``, ``m^-2``, ``m**-2`` or as ``/m2``; ``.``, ``*`` and spaces separate factors):

==============  ========  ==============================================  ===============
quantity        base      unit (aliases)                                  to base
==============  ========  ==============================================  ===============
temperature     K         K (kelvin, degK, deg_K)                         x
                          degC (°C, deg_C, Celsius, C)                    x + 273.15
                          degF (°F, deg_F, Fahrenheit, F)                 (x-32)*5/9+273.15
precip. rate    mm day-1  kg m-2 s-1 (kg/m2/s, kg m**-2 s**-1, mm s-1)    x * 86400
                          mm h-1 (mm/h, mm hr-1, kg m-2 h-1)              x * 24
                          mm day-1 (mm/day, mm d-1, mm/d, kg m-2 day-1)   x
                          m day-1 (m/d)                                   x * 1000
precip. amount  mm        mm (kg m-2), cm, m (of water)                   x, x*10, x*1000
fraction        1         1 (fraction, dimensionless), % (percent)        x, x / 100
speed           m s-1     m s-1 (m/s), km h-1 (km/h), kn (knots)          x, x/3.6, x*0.5144
pressure        Pa        Pa, hPa (mbar, mb), kPa                         x, x*100, x*1000
==============  ========  ==============================================  ===============

Rates and amounts do not convert into each other: that needs the accumulation period,
which the unit does not carry. ``m`` is a length: metres of water when the model
predicts an amount in ``mm``, which is the only place a length is compared; ``m s-1``
is a speed, not a rate of precipitation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from geosr.errors import InputError


@dataclass(frozen=True)
class Unit:
    """A recognised unit.

    Attributes:
        symbol: canonical spelling (``K``, ``degC``, ``kg m-2 s-1``, ``mm day-1``...).
        quantity: what it measures (``temperature``, ``precipitation rate``...).
        scale, offset: value in the quantity's base unit = ``x * scale + offset``.
    """

    symbol: str
    quantity: str
    scale: float = 1.0
    offset: float = 0.0


TEMPERATURE = "temperature"
RATE = "precipitation rate"
AMOUNT = "precipitation amount"
FRACTION = "fraction"
SPEED = "speed"
PRESSURE = "pressure"

_UNITS = {u.symbol: u for u in (
    Unit("K", TEMPERATURE),
    Unit("degC", TEMPERATURE, 1.0, 273.15),
    Unit("degF", TEMPERATURE, 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    Unit("kg m-2 s-1", RATE, 86400.0),
    Unit("mm h-1", RATE, 24.0),
    Unit("mm day-1", RATE),
    Unit("m day-1", RATE, 1000.0),
    Unit("mm", AMOUNT),
    Unit("cm", AMOUNT, 10.0),
    Unit("m", AMOUNT, 1000.0),
    Unit("1", FRACTION),
    Unit("%", FRACTION, 0.01),
    Unit("m s-1", SPEED),
    Unit("km h-1", SPEED, 1.0 / 3.6),
    Unit("kn", SPEED, 1852.0 / 3600.0),
    Unit("Pa", PRESSURE),
    Unit("hPa", PRESSURE, 100.0),
    Unit("kPa", PRESSURE, 1000.0),
)}

# Whole-string spellings (after lower-casing, "°" -> "deg", "_"/"-"/spaces collapsed).
_NAMES = {
    "K": ("k", "kelvin", "kelvins", "degk", "degree k", "degrees k", "degree kelvin",
          "degrees kelvin"),
    "degC": ("degc", "c", "celsius", "degree c", "degrees c", "degree celsius",
             "degrees celsius", "deg celsius"),
    "degF": ("degf", "f", "fahrenheit", "degree f", "degrees f", "degree fahrenheit",
             "degrees fahrenheit", "deg fahrenheit"),
    "1": ("1", "fraction", "dimensionless", "unitless"),
    "%": ("%", "percent", "pct"),
    "kn": ("kn", "kt", "knot", "knots"),
    "hPa": ("hpa", "mbar", "mb", "millibar", "millibars"),
    "Pa": ("pa",),
    "kPa": ("kpa",),
}
_BY_NAME = {alias: sym for sym, aliases in _NAMES.items() for alias in aliases}

# Products of powers: {factor: exponent} -> canonical symbol.
_FACTOR_NAMES = {
    "kg": "kg", "g": "g", "mm": "mm", "cm": "cm", "m": "m", "km": "km",
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "day", "day": "day", "days": "day",
}
_PRODUCTS = {
    frozenset({("kg", 1), ("m", -2), ("s", -1)}): "kg m-2 s-1",
    frozenset({("mm", 1), ("s", -1)}): "kg m-2 s-1",
    frozenset({("kg", 1), ("m", -2), ("h", -1)}): "mm h-1",
    frozenset({("mm", 1), ("h", -1)}): "mm h-1",
    frozenset({("kg", 1), ("m", -2), ("day", -1)}): "mm day-1",
    frozenset({("mm", 1), ("day", -1)}): "mm day-1",
    frozenset({("m", 1), ("day", -1)}): "m day-1",
    frozenset({("mm", 1)}): "mm",
    frozenset({("kg", 1), ("m", -2)}): "mm",
    frozenset({("cm", 1)}): "cm",
    frozenset({("m", 1)}): "m",
    frozenset({("m", 1), ("s", -1)}): "m s-1",
    frozenset({("km", 1), ("h", -1)}): "km h-1",
}
_TOKEN = re.compile(r"^([a-z]+)(-?\d+)?$")
_SUPERSCRIPTS = str.maketrans("⁻¹²³", "-123")


def _clean(text: str) -> str:
    t = text.strip().translate(_SUPERSCRIPTS).replace("°", "deg").replace("º", "deg")
    return re.sub(r"\s+", " ", t)


def _product(text: str) -> str | None:
    """Canonical symbol of a product of powers such as ``kg m-2 s-1`` or ``mm/day``."""
    t = text.lower().replace("**", "").replace("^", "")
    t = re.sub(r"\bper\b", "/", t)
    t = re.sub(r"[.*·]", " ", t)
    powers: dict[str, int] = {}
    for i, part in enumerate(t.split("/")):
        tokens = part.split()
        if not tokens:
            return None
        for tok in tokens:
            m = _TOKEN.match(tok)
            if not m or m.group(1) not in _FACTOR_NAMES:
                return None
            exp = int(m.group(2)) if m.group(2) else 1
            name = _FACTOR_NAMES[m.group(1)]
            powers[name] = powers.get(name, 0) + (-exp if i > 0 else exp)
    return _PRODUCTS.get(frozenset((k, v) for k, v in powers.items() if v))


def parse_unit(text: str | None) -> Unit | None:
    """The :class:`Unit` a string names; None when empty or not recognised."""
    if not text or not text.strip():
        return None
    t = _clean(text)
    if t in _UNITS:  # canonical spellings are case-sensitive (Pa vs pa is the same anyway)
        return _UNITS[t]
    low = re.sub(r"[\s_\-]+", " ", t.lower()).strip()
    if low.replace(" ", "") in _BY_NAME:
        return _UNITS[_BY_NAME[low.replace(" ", "")]]
    if low in _BY_NAME:
        return _UNITS[_BY_NAME[low]]
    sym = _product(t)
    return _UNITS[sym] if sym else None


def is_temperature(text: str | None) -> bool:
    """Whether a unit string names a temperature unit (K, degC, degF and their aliases)."""
    unit = parse_unit(text)
    return unit is not None and unit.quantity == TEMPERATURE


def normalise(text: str | None) -> str:
    """Canonical spelling of a unit string; the cleaned string itself when unknown."""
    unit = parse_unit(text)
    return unit.symbol if unit else _clean(text or "")


def conversion(src: str | None, dst: str | None) -> tuple[float, float] | None:
    """``(scale, offset)`` with ``value_in_dst = value_in_src * scale + offset``.

    ``(1.0, 0.0)`` for the same unit (also for two identical unrecognised strings);
    None when either is empty or they do not convert (different quantities, or an
    unrecognised string).
    """
    if not (src and src.strip() and dst and dst.strip()):
        return None
    a, b = parse_unit(src), parse_unit(dst)
    if a is None or b is None:
        same = a is None and b is None and \
            _clean(src).lower() == _clean(dst).lower()
        return (1.0, 0.0) if same else None
    if a.quantity != b.quantity:
        return None
    if a.symbol == b.symbol:
        return (1.0, 0.0)
    return (a.scale / b.scale, (a.offset - b.offset) / b.scale)


def convert(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """``values`` in ``src`` units expressed in ``dst`` (float32 kept float32).

    Raises:
        InputError: the units do not convert.
    """
    conv = conversion(src, dst)
    if conv is None:
        raise InputError(f"units {src!r} cannot be converted to {dst!r}")
    arr = np.asarray(values)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return (arr * dtype.type(conv[0]) + dtype.type(conv[1])).astype(dtype, copy=False)


def same_quantity_units(quantity: str) -> list[str]:
    """Canonical symbols of one quantity, in table order."""
    return [u.symbol for u in _UNITS.values() if u.quantity == quantity]


def expected_for(units: str) -> str:
    """What an input must be in to feed a model in ``units``: used in error messages."""
    unit = parse_unit(units)
    if unit is None:
        return f"{units!r}"
    symbols = same_quantity_units(unit.quantity)
    listed = ", ".join(symbols[:-1]) + f" or {symbols[-1]}" if len(symbols) > 1 else symbols[0]
    return f"{unit.quantity} in {listed}"


def model_conversion(units: str, model_units: str, *, where: str) -> tuple[float, float] | None:
    """The affine map from an input's units to a model's, checking they are compatible.

    Args:
        units: the input band's units ('' when unknown).
        model_units: the units the model was trained in ('' when unknown).
        where: what to name in an error, e.g. ``COARSE era5.nc``.

    Returns:
        ``(scale, offset)`` into the model's units (``(1.0, 0.0)`` when the same); None
        when either side is unknown (then compare value ranges, :func:`far_outside`).

    Raises:
        InputError: both are known and do not convert (one line: what was found, what
            the model expects).
    """
    if not (units and units.strip() and model_units and model_units.strip()):
        return None
    conv = conversion(units, model_units)
    if conv is None:
        raise InputError(f"{where}: units {units!r} cannot be converted to the model's "
                         f"{model_units!r}; expected {expected_for(model_units)}")
    return conv


# --------------------------------------------------------------------------- value ranges

FAR_Z = 5.0
"""Input mean further than this many training standard deviations from the training
mean is far outside the training distribution."""
FAR_MAGNITUDE = 1e3
"""Inputs whose largest magnitude is this many times larger or smaller than the
training data's are far outside (catches kg m-2 s-1 fed to a mm day-1 model, whose
values sit inside the training range but 86 400 times too small)."""


@dataclass(frozen=True)
class ValueRange:
    """Summary of a field's valid values (NaN where unknown).

    Attributes:
        min, max, mean, std: over the valid (finite) values.
    """

    min: float = math.nan
    max: float = math.nan
    mean: float = math.nan
    std: float = math.nan

    @classmethod
    def of(cls, values: np.ndarray) -> ValueRange:
        """The range of the finite values of an array (all NaN when there are none)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls()
        return cls(float(v.min()), float(v.max()), float(v.mean()), float(v.std()))

    @classmethod
    def from_dict(cls, d: dict | None) -> ValueRange:
        d = d or {}
        return cls(*(float(d.get(k, math.nan)) for k in ("min", "max", "mean", "std")))

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std}

    def affine(self, scale: float, offset: float) -> ValueRange:
        """The range after ``x * scale + offset``."""
        lo, hi = self.min * scale + offset, self.max * scale + offset
        return ValueRange(min(lo, hi), max(lo, hi), self.mean * scale + offset,
                          self.std * abs(scale))

    @property
    def known(self) -> bool:
        return math.isfinite(self.mean)

    def describe(self, units: str = "") -> str:
        """``271.3..295.1 K`` (or ``mean 8.46 +- 6.75`` when min/max are unknown)."""
        if math.isfinite(self.min) and math.isfinite(self.max):
            text = f"{self.min:.4g}..{self.max:.4g}"
        else:
            text = f"mean {self.mean:.4g} +- {self.std:.3g}"
        return f"{text} {units}" if units else text


def far_outside(values: ValueRange, training: ValueRange) -> bool:
    """Whether an input lies far outside a model's training range.

    Far: its mean is more than :data:`FAR_Z` training standard deviations from the
    training mean; or its range does not overlap the training range at all and is
    further from it than the training range is wide; or its magnitude differs from the
    training data's by :data:`FAR_MAGNITUDE` or more. Deliberately loose: a summer scene
    of a model trained on all seasons is not far; the same scene in K for a degC model is.
    """
    if not (values.known and training.known):
        return False
    std = training.std if math.isfinite(training.std) and training.std > 0 else \
        max(abs(training.mean) * 0.1, 1e-12)
    if abs(values.mean - training.mean) > FAR_Z * std:
        return True
    if all(math.isfinite(x) for x in (values.min, values.max, training.min, training.max)):
        width = training.max - training.min
        gap = max(values.min - training.max, training.min - values.max)
        if gap > max(width, 0.0) and gap > 0:
            return True
        mag_in = max(abs(values.min), abs(values.max))
        mag_tr = max(abs(training.min), abs(training.max))
        if mag_in > 0 and mag_tr > 0 and not (
                1.0 / FAR_MAGNITUDE < mag_in / mag_tr < FAR_MAGNITUDE):
            return True
    return False


def guess_units(values: ValueRange, training: ValueRange, known: str) -> str | None:
    """A unit of ``known``'s quantity that would put ``values`` inside the training range.

    Used to phrase a hint. With ``known`` the model's units, the answer is what the
    input may be in (values read as that unit, converted to the model's, fit); None when
    no unit of that quantity makes the values fit, or ``known`` is not recognised.
    """
    unit = parse_unit(known)
    if unit is None:
        return None
    for sym in same_quantity_units(unit.quantity):
        if sym == unit.symbol:
            continue
        scale, offset = conversion(sym, unit.symbol)  # type: ignore[misc]
        if not far_outside(values.affine(scale, offset), training):
            return sym
    return None


def guess_model_units(values: ValueRange, training: ValueRange, units: str) -> str | None:
    """A unit of ``units``' quantity the model's training range may be in (model units
    unknown, input units known)."""
    unit = parse_unit(units)
    if unit is None:
        return None
    for sym in same_quantity_units(unit.quantity):
        if sym == unit.symbol:
            continue
        scale, offset = conversion(unit.symbol, sym)  # type: ignore[misc]
        if not far_outside(values.affine(scale, offset), training):
            return sym
    return None


# --------------------------------------------------------------------------- an input and a model


@dataclass(frozen=True)
class UnitPlan:
    """How the bands of one input are fed to a model, and how its output comes back.

    Made by :func:`plan_units`. The engine converts the coarse field into the model's
    units right after reading it (:meth:`to_model`), runs the model and the
    conservation correction in those units, and converts the result back
    (:meth:`from_model`) so the output is in the input's units. Block means commute
    with affine maps, so conservation stays exact (up to float error).

    Attributes:
        where: the input as named in messages, e.g. ``COARSE era5.nc``.
        units: per band, the input's units ('' when unknown).
        model_units: the model's units ('' when unknown).
        to: per band, ``(scale, offset)`` into the model's units; None: used as is.
        model: the model's name in messages.
        training: range of the model's coarse training input, in ``model_units``.
    """

    where: str
    units: tuple[str, ...]
    model_units: str
    to: tuple[tuple[float, float] | None, ...]
    model: str = "model"
    training: ValueRange = ValueRange()

    @property
    def converts(self) -> bool:
        return any(c is not None for c in self.to)

    def note(self) -> str | None:
        """One line saying what is converted, or None."""
        if not self.converts:
            return None
        src = sorted({u for u, c in zip(self.units, self.to, strict=True) if c is not None})
        return (f"{self.where}: {', '.join(src)} converted to the model's {self.model_units} "
                "(and back for the output)")

    def _maps(self, bands: list[int], inverse: bool) -> list[tuple[int, float, float]]:
        out = []
        for k, b in enumerate(bands):
            c = self.to[b] if b < len(self.to) else None
            if c is None:
                continue
            scale, offset = c
            out.append((k, 1.0 / scale, -offset / scale) if inverse else (k, scale, offset))
        return out

    def to_model(self, coarse: np.ndarray, bands: list[int]) -> np.ndarray:
        """Convert ``(len(bands), rows, cols)`` float32 values into the model's units, in
        place; ``bands``: the input's band indices (0-based) of the array's bands."""
        return _apply(coarse, self._maps(bands, inverse=False))

    def from_model(self, fine: np.ndarray, bands: list[int]) -> np.ndarray:
        """Inverse of :meth:`to_model` (model output back to the input's units), in place."""
        return _apply(fine, self._maps(bands, inverse=True))

    def range_warning(self, values: ValueRange, bands: list[int] | None = None) -> str | None:
        """One line when ``values`` (in the model's units after :meth:`to_model`) lie far
        outside the training range; None otherwise."""
        if not far_outside(values, self.training):
            return None
        b = (bands or [0])[0]
        units = self.units[b] if b < len(self.units) else ""
        conv = self.to[b] if b < len(self.to) else None
        if conv is not None:  # report the input as the user knows it
            values = values.affine(1.0 / conv[0], -conv[1] / conv[0])
        train = self.training.describe(self.model_units or "(units not recorded)")
        shown = values.describe(units or "(no units)")
        head = (f"{self.where}: values {shown} lie far outside the model {self.model}'s "
                f"training range {train}")
        if not units and self.model_units:
            guess = guess_units(values, self.training, self.model_units)
            hint = f"is it in {guess}? " if guess else ""
            return f"{head}; {hint}set the band unit or convert it"
        if units and not self.model_units:
            guess = guess_model_units(values, self.training, units)
            if guess:
                return f"{head}; the model may expect {guess}: convert the input to it"
            return f"{head}; check that the input is the variable the model was trained on"
        if not units:
            return f"{head}; check the input's units"
        return f"{head}; expect extrapolation"


def _apply(arr: np.ndarray, maps: list[tuple[int, float, float]]) -> np.ndarray:
    for k, scale, offset in maps:
        band = arr[k]
        if scale != 1.0:
            band *= band.dtype.type(scale)
        if offset != 0.0:
            band += band.dtype.type(offset)
    return arr


def plan_units(*, where: str, units: tuple[str, ...] | list[str], model_units: str,
               model: str = "model", training: ValueRange | None = None) -> UnitPlan:
    """Check an input's band units against a model's and plan the conversions.

    Args:
        where: the input as named in messages, e.g. ``COARSE era5.nc``.
        units: per band, the input's units ('' when unknown).
        model_units: the model's units ('' when unknown).
        model: the model's name in messages.
        training: range of the model's coarse training input in ``model_units``.

    Raises:
        InputError: a band's units are known, the model's too, and they do not convert.
    """
    to = []
    for u in units:
        conv = model_conversion(u, model_units, where=where)
        to.append(None if conv is None or conv == (1.0, 0.0) else conv)
    return UnitPlan(where=where, units=tuple(units), model_units=model_units, to=tuple(to),
                    model=model, training=training or ValueRange())
