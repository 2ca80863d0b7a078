"""Time subsets of a multi-band input: ``--time START:END`` over the bands' ISO dates.

Bands carry ISO 8601 dates (decoded CF time, GRIB valid times or ``DATE_TIME`` tags,
see :func:`geosr.io.band_dates`). A bound is compared on its own precision, so
``2018-05-02:2018-05-03`` keeps every hour of May 2 and 3, and ``2018-05`` alone keeps
the whole month.
"""


from __future__ import annotations

import re
from dataclasses import dataclass, replace

from geosr.errors import InputError

_BOUND_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2})?)?)?)?)?$")


@dataclass(frozen=True)
class TimeRange:
    """Inclusive bounds as ISO 8601 prefixes; None = open."""

    start: str | None = None
    end: str | None = None

    def contains(self, date: str) -> bool:
        date = date.replace(" ", "T")
        if self.start is not None and date[:len(self.start)] < self.start:
            return False
        return self.end is None or date[:len(self.end)] <= self.end

    def __str__(self) -> str:
        return f"{self.start or ''}:{self.end or ''}"


def select_bands(dates: tuple[str, ...], rng: TimeRange, *, path: str) -> list[int]:
    """1-based bands whose date lies in ``rng``; an input error when none or no dates."""
    if not any(dates):
        raise InputError(f"--time {rng}: {path} has no dates on its bands; expected a time "
                         "series (CF time, GRIB or DATE_TIME tags)")
    bands = [b for b, d in enumerate(dates, start=1) if d and rng.contains(d)]
    if not bands:
        dated = [d for d in dates if d]
        raise InputError(f"--time {rng}: no band of {path} falls in it; its dates run from "
                         f"{min(dated)} to {max(dated)}")
    return bands


def subset_info(info, bands: list[int]):
    """``info`` (a :class:`geosr.io.RasterInfo`) described for ``bands`` (1-based) only:
    count, dates, units, descriptions and long names of those bands, in that order."""
    def pick(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(values[b - 1] if b - 1 < len(values) else "" for b in bands)

    return replace(info, count=len(bands), dates=pick(info.dates), units=pick(info.units),
                   descriptions=pick(info.descriptions), long_names=pick(info.long_names))
