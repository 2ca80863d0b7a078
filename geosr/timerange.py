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


def parse_time_range(text: str, *, option: str = "--time") -> TimeRange:
    """Parse ``START:END``, ``START:``, ``:END`` or a single ``DATE`` (that date only).

    ``START/END`` (ISO 8601 intervals) is accepted too.
    """
    raw = text.strip()
    parts = raw.split("/") if "/" in raw else _split_colon(raw)
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    start, end = (p.strip().replace(" ", "T") or None for p in parts)
    for b in (start, end):
        if b is not None and not _BOUND_RE.match(b):
            raise InputError(f"{option} {text!r}: {b!r} is not a date; expected START:END with "
                             "ISO dates such as 2018-05-01:2018-05-07 (either side optional)")
    if start is None and end is None:
        raise InputError(f"{option} {text!r}: no date given; expected START:END, e.g. "
                         "2018-05-01:2018-05-07")
    if start is not None and end is not None and start[:len(end)] > end:
        raise InputError(f"{option} {text!r}: starts after it ends; expected START <= END")
    return TimeRange(start, end)


# The colon between bounds is followed by a year or by nothing; a colon inside a time
# (T06:00) is followed by two digits.
_SEP_RE = re.compile(r":(?=\d{4}(?:\D|$)|$)")


def _split_colon(raw: str) -> list[str]:
    parts = _SEP_RE.split(raw)
    if len(parts) > 2:
        raise InputError(f"--time {raw!r}: more than one ':' between dates; expected "
                         "START:END, e.g. 2018-05-01T06:00:2018-05-02")
    return parts


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
