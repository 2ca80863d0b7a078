"""Valid ranges of a field, and conservation that honours them.

Pure numpy, no I/O. A field's valid range (CF ``valid_range``; ``--valid-range MIN:MAX``)
is a :class:`ValidRange`; :func:`bounded_conserve` makes a fine field both stay inside
it and keep every coarse cell's mean equal to the coarse value.

Why not the additive correction alone: adding ``coarse - mean`` to every fine pixel of
a cell keeps the mean but knows nothing of bounds. Where a method (a regression on
elevation, bicubic overshoot, a network) puts a dry pixel below the cell mean, the
shift pushes it below zero: on 12 km daily precipitation, sharpening gave negative rain
on 5 % of the pixels. Clipping alone breaks the mean. So, per coarse cell:

1. clip the fine values to ``[lo, hi]``;
2. redistribute the deficit ``d = coarse - mean(clipped)`` over the cell's pixels in
   proportion to the room each has in the direction of ``d``: for ``d > 0`` the
   headroom ``hi - x``, for ``d < 0`` the distance ``x - lo``.

With ``lo <= coarse <= hi`` one step is exact: the mean room is at least ``|d|``
(``hi - mean >= coarse - mean``), so no pixel moves past its bound, and the weights
average to 1, so the mean moves by exactly ``d``. For a one-sided range the missing
side falls back to the distance from the bound there is: a non-negative field
(``lo = 0``, no ``hi``) is scaled, ``x * coarse / mean(x)``, in both directions. That
multiplicative form keeps dry pixels dry and the ratios between pixels (a cell twice
as wet on the hill stays twice as wet), the same normalisation as the softmax-style
constraint layers of Harder et al. (JMLR 2023, "Hard-constrained deep learning for
climate downscaling"). A cell whose pixels all sit on the bound has no room; it is
shifted uniformly (only possible for a coarse value on the bound itself, within
float error) and clipped.

Cells whose coarse value is NaN, or that have no valid fine pixel, are left as they
are; NaN fine pixels stay NaN.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CF_LIST = re.compile(_NUMBER)


CHUNK_PX = 1 << 20
"""Fine pixels :func:`bounded_conserve` works on at a time (float64 temporaries)."""


@dataclass(frozen=True)
class ValidRange:
    """Bounds a field's values must lie in: ``lo <= x <= hi``.

    Attributes:
        lo: lower bound, ``-inf`` when none.
        hi: upper bound, ``+inf`` when none.

    Raises:
        ValueError: a NaN bound, ``lo > hi``, or no bound at all.
    """

    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self) -> None:
        lo, hi = float(self.lo), float(self.hi)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError("a bound is NaN; expected numbers")
        if lo > hi:
            raise ValueError(f"minimum {lo:g} is above maximum {hi:g}; expected MIN <= MAX")
        if lo == -math.inf and hi == math.inf:
            raise ValueError("no bound given; expected MIN:, :MAX or MIN:MAX")
        if lo == math.inf or hi == -math.inf:
            raise ValueError("infinite bound on the wrong side; expected MIN <= MAX")

    @classmethod
    def parse(cls, text: str) -> ValidRange:
        """``"0:"``, ``":1"``, ``"-1:1"`` (either side optional) -> a range.

        Raises:
            ValueError: not ``MIN:MAX`` with numbers, or ``MIN > MAX``.
        """
        raw = str(text).strip()
        parts = raw.split(":")
        if len(parts) != 2:
            raise ValueError("expected MIN:MAX with either side optional, e.g. 0: or 0:100")
        bounds = []
        for part, default in zip(parts, (-math.inf, math.inf), strict=True):
            part = part.strip()
            if not part:
                bounds.append(default)
                continue
            if not re.fullmatch(_NUMBER, part):
                raise ValueError(f"{part!r} is not a number; expected MIN:MAX, e.g. 0: or 0:100")
            bounds.append(float(part))
        return cls(*bounds)

    @classmethod
    def of(cls, value: ValidRange | str | tuple | list | None) -> ValidRange | None:
        """A range from a range, ``"MIN:MAX"`` text or a ``(lo, hi)`` pair (None = open)."""
        if value is None or isinstance(value, ValidRange):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        lo, hi = value
        return cls(-math.inf if lo is None else lo, math.inf if hi is None else hi)

    @property
    def lower_only(self) -> bool:
        return self.hi == math.inf

    @property
    def non_negative(self) -> bool:
        """``0:`` exactly: a precipitation-like field."""
        return self.lo == 0.0 and self.hi == math.inf

    def __str__(self) -> str:
        lo = "" if self.lo == -math.inf else f"{self.lo:g}"
        hi = "" if self.hi == math.inf else f"{self.hi:g}"
        return f"{lo}:{hi}"

    def as_tuple(self) -> tuple[float | None, float | None]:
        """``(lo, hi)`` with None for an open side (JSON-friendly)."""
        return (None if self.lo == -math.inf else self.lo,
                None if self.hi == math.inf else self.hi)

    def affine(self, scale: float, offset: float) -> ValidRange:
        """The range after ``x * scale + offset`` (sides swap for a negative scale)."""
        a, b = self.lo * scale + offset, self.hi * scale + offset
        lo, hi = (a, b) if scale >= 0 else (b, a)
        return ValidRange(-math.inf if math.isnan(lo) else lo, math.inf if math.isnan(hi) else hi)

    def outside(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the finite values outside the range."""
        v = np.asarray(values)
        with np.errstate(invalid="ignore"):
            return np.isfinite(v) & ((v < self.lo) | (v > self.hi))


def from_cf(attrs: dict, *, scale: float = 1.0, offset: float = 0.0) -> ValidRange | None:
    """The range CF attributes declare (``valid_range``, else ``valid_min``/``valid_max``).

    CF gives them in the stored (packed) values: ``scale``/``offset`` unpack them. Values
    GDAL shows as ``{0,100}`` or ``0,100`` are read too. None when absent or unreadable.
    """
    def numbers(key: str) -> list[float]:
        text = str(attrs.get(key, "") or "")
        return [float(x) for x in _CF_LIST.findall(text)]

    lo, hi = -math.inf, math.inf
    pair = numbers("valid_range")
    if len(pair) == 2:
        lo, hi = pair
    else:
        vmin, vmax = numbers("valid_min"), numbers("valid_max")
        if len(vmin) == 1:
            lo = vmin[0]
        if len(vmax) == 1:
            hi = vmax[0]
    if lo == -math.inf and hi == math.inf:
        return None
    try:
        return ValidRange(lo, hi).affine(scale, offset)
    except ValueError:
        return None


def from_units(units: str | None) -> ValidRange | None:
    """``0:`` for precipitation-like units (mm, mm/day, kg m-2 s-1, m of water...); else None."""
    from geosr.units import AMOUNT, RATE, parse_unit

    unit = parse_unit(units)
    if unit is not None and unit.quantity in (RATE, AMOUNT):
        return ValidRange(0.0, math.inf)
    return None


PRECIP_NAMES = frozenset({
    "pr", "prec", "precip", "precipitation", "prcp", "tp", "rain", "rainfall", "rr",
    "rhiresd", "rhiresm", "rhiresy", "snowfall", "sf", "cp", "lsp", "mtpr", "pre", "ppt",
    "precipitation_flux", "precipitation_amount", "lwe_precipitation_rate",
    "thickness_of_rainfall_amount", "rainfall_flux", "rainfall_amount"})
"""Variable names (and CF standard names) of precipitation as archives ship it: CMIP/CORDEX
``pr``, ERA5 ``tp``/``cp``/``lsp``/``mtpr``, UKCP ``prec``, HadUK ``rainfall``, Daymet
``prcp``, CRU ``pre``, PRISM/TerraClimate ``ppt``, E-OBS ``rr``, MeteoSwiss ``RhiresD``."""

_NOT_AMOUNTS = frozenset({"anom", "anomaly", "anomalies", "change", "delta", "diff", "bias",
                          "trend", "error", "err", "std", "sd", "var", "zscore", "spi"})


def from_names(names) -> tuple[ValidRange | None, str]:
    """``0:`` when a name (variable, long name, band description, file stem) is a
    precipitation variable's and none marks a difference (``pr_anomaly``); the matching
    name, or ``(None, "")``. A name is split into words at every non-alphanumeric
    character (``ukcp18rcm_12km_prec_201805`` -> ``prec``)."""
    import re

    match = ""
    for name in names:
        words = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", name or "") if w}
        if words & _NOT_AMOUNTS:
            return None, ""
        if not match:
            hit = sorted(words & PRECIP_NAMES)
            full = (name or "").strip().lower()
            if full in PRECIP_NAMES:
                hit = [full]
            if hit:
                match = hit[0]
    return (ValidRange(0.0, math.inf), match) if match else (None, "")


def clip_to_range(arr: np.ndarray, valid: ValidRange) -> int:
    """Clip the finite values of ``arr`` to the range, in place; returns how many moved."""
    n = int(valid.outside(arr).sum())
    if n:
        np.clip(arr, valid.lo, valid.hi, out=arr)  # NaN stays NaN
    return n


def bounded_conserve(fine: np.ndarray, coarse: np.ndarray, factor: int, lo: float = -math.inf,
                     hi: float = math.inf, *, chunk_rows: int = 4) -> np.ndarray:
    """Clip a fine field to ``[lo, hi]`` and restore each coarse cell's mean, in place.

    See the module docstring for the method. Exact (up to float32 rounding) for every
    cell with ``lo <= coarse <= hi``; clip the coarse field first
    (:func:`clip_to_range`) when it may lie outside.

    Args:
        fine: ``(bands, rows, cols)`` float32, rows and cols multiples of ``factor``, NaN =
            no value; modified.
        coarse: ``(bands, rows / factor, cols / factor)``, NaN = no value.
        factor: fine cells per coarse cell along each axis.
        lo, hi: the bounds (``-inf``/``inf`` for an open side).
        chunk_rows: coarse rows per step (bounded temporaries).

    Returns:
        ``fine``.
    """
    lo, hi = float(lo), float(hi)
    if lo == -math.inf and hi == math.inf:
        raise ValueError("bounded_conserve needs at least one finite bound")
    b, r, c = fine.shape
    f = int(factor)
    if coarse.shape != (b, r // f, c // f) or r % f or c % f:
        raise ValueError(f"fine {fine.shape} and coarse {coarse.shape} do not nest at "
                         f"factor {f}")
    dtype = fine.dtype.type
    blocks = fine.reshape(b, r // f, f, c // f, f)
    # float64 temporaries of at most ~CHUNK_PX pixels (8 MB each), whatever the width
    step = max(1, min(chunk_rows, CHUNK_PX // max(f * c, 1)))
    for band in range(b):
        for k in range(0, r // f, step):
            _bounded_chunk(blocks[band, k:k + step],
                           np.asarray(coarse[band, k:k + step], np.float64), lo, hi, dtype)
    return fine


def _bounded_chunk(part: np.ndarray, target: np.ndarray, lo: float, hi: float, dtype) -> None:
    """:func:`bounded_conserve` on ``(k, f, C, f)`` blocks against ``(k, C)`` targets.

    Each pixel moves by ``d`` times its share of the room, i.e. its distance from the
    bound the room is measured from (the anchor ``a``): ``x + d * (x - a) / (mean - a)``.
    In float64: a cell of 1e-6 mm/day under pixels of a few mm/day cancels almost all
    of them, which float32 would leave as rounding noise of ~1e-7 mm/day.
    """
    cells = np.isfinite(target)
    if cells.all():
        np.clip(part, lo, hi, out=part)
    else:  # cells without a coarse value are left as they are
        np.copyto(part, np.clip(part, lo, hi), where=cells[:, None, :, None])
    valid = np.isfinite(part)
    count = valid.sum(axis=(1, 3), dtype=np.int64)
    total = np.where(valid, part, dtype(0)).sum(axis=3, dtype=np.float64).sum(axis=1)
    mean = total / np.maximum(count, 1)
    d = target - mean
    active = (count > 0) & np.isfinite(d) & (d != 0)
    if not active.any():
        return
    # Room in the direction of d: headroom below hi for d > 0, distance above lo for
    # d < 0; an open side uses the distance from the other bound (x * coarse / mean
    # for a non-negative field).
    a_up = hi if hi != math.inf else lo
    a_down = lo if lo != -math.inf else hi
    anchor = np.where(d > 0, a_up, a_down)
    room = mean - anchor
    scaled = active & (room != 0)
    # No room (every pixel on the anchor, only for a coarse value on the bound itself,
    # within float error): a uniform shift, clipped below.
    shift = np.where(active & ~scaled, d, 0.0)
    x = part.astype(np.float64)
    a4 = anchor[:, None, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(scaled, d / np.where(scaled, room, 1.0), 0.0)[:, None, :, None]
    new = x + (x - a4) * ratio + shift[:, None, :, None]
    np.clip(new, lo, hi, out=new)
    np.copyto(part, new.astype(part.dtype), where=active[:, None, :, None])
