"""Parsers of option strings: the text a user types becomes the typed values the library
takes. The library itself takes typed values only (specs, ranges, enums).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from geosr.constraints import ValidRange
from geosr.errors import InputError
from geosr.evaluate import metrics as M
from geosr.evaluate.validate import Baseline, Threshold
from geosr.sources import (
    _NAME_RE,
    CATEGORICAL_SUFFIX,
    CONTINUOUS_SUFFIX,
    LayerSpec,
    layer_name_from_path,
)
from geosr.timerange import _BOUND_RE, TimeRange

log = logging.getLogger(__name__)

def parse_arch(tokens: list[str] | tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """Parse ``--arch key=value`` tokens (ints, floats, true/false, strings)."""
    out = []
    for tok in tokens:
        if "=" not in tok:
            raise InputError(f"--arch {tok!r}: expected KEY=VALUE, e.g. --arch fine_width=32")
        key, text = (s.strip() for s in tok.split("=", 1))
        value: Any
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out.append((key, value))
    return tuple(out)


log = logging.getLogger(__name__)

def parse_baselines(text: str, *, option: str = "--baselines") -> tuple[Baseline, ...]:
    """``"bicubic,sharpen"`` -> baselines; ``""`` or ``"none"`` -> no baseline."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return ()
    out: list[Baseline] = []
    for name in names:
        try:
            b = Baseline(name)
        except ValueError:
            raise InputError(f"{option} {text!r}: unknown baseline {name!r}; expected a "
                             f"comma-separated list of: {', '.join(b.value for b in Baseline)} "
                             "(or none)") from None
        if b not in out:
            out.append(b)
    return tuple(out)


def parse_threshold(text: str, *, bound: str = "above") -> Threshold:
    """Parse ``METRIC=VALUE`` for ``--fail-above``/``--fail-below``."""
    option = f"--fail-{bound}"
    if bound not in ("above", "below"):
        raise ValueError(f"bound must be 'above' or 'below', not {bound!r}")
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or not name:
        raise InputError(f"{option} {text!r}: expected METRIC=VALUE, e.g. {option} rmse=1.2")
    if name not in M.METRICS:
        raise InputError(f"{option} {text!r}: unknown metric {name!r}; expected one of: "
                         f"{', '.join(M.METRICS)}")
    try:
        limit = float(value)
    except ValueError:
        raise InputError(f"{option} {text!r}: value {value.strip()!r} for {name} is not a "
                         f"number; expected METRIC=VALUE, e.g. {option} {name}=0.9") from None
    if not math.isfinite(limit):
        raise InputError(f"{option} {text!r}: value for {name} must be a finite number")
    return Threshold(name, limit, bound)


log = logging.getLogger(__name__)

def parse_layer(token: str, *, option: str = "--aux") -> LayerSpec:
    """Parse ``[name=]path[:categorical|:continuous]``."""
    text = token.strip()
    if not text:
        raise InputError(f"{option}: empty value; expected PATH, NAME=PATH, "
                         "NAME=PATH:categorical or NAME=PATH:continuous")
    categorical = None
    for suffix, value in ((CATEGORICAL_SUFFIX, True), (CONTINUOUS_SUFFIX, False)):
        if text.endswith(suffix):
            text, categorical = text[: -len(suffix)], value
            break
    name = None
    if "=" in text:
        name, text = text.split("=", 1)
        if not _NAME_RE.match(name):
            raise InputError(f"{option} {token!r}: layer name {name!r} is invalid; expected "
                             "letters, digits, '_' or '-', starting with a letter")
    if not text:
        raise InputError(f"{option} {token!r}: no path after the name; expected NAME=PATH")
    return LayerSpec(name=name or layer_name_from_path(text), path=text, categorical=categorical)


def parse_layers(
    tokens: list[str] | tuple[str, ...], *, option: str = "--aux"
) -> tuple[LayerSpec, ...]:
    """Parse several tokens and check that names are unique."""
    specs = tuple(parse_layer(t, option=option) for t in tokens)
    seen: dict[str, str] = {}
    for s in specs:
        if s.name in seen:
            raise InputError(f"{option}: layer name {s.name!r} is used by both {seen[s.name]} and "
                             f"{s.path}; name them apart with NAME=PATH")
        seen[s.name] = s.path
    return specs


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


def parse_valid_range(text: str, *, option: str = "--valid-range") -> ValidRange:
    """Parse ``MIN:MAX`` with either side optional (``0:``, ``0:100``, ``-1:1``)."""
    try:
        return ValidRange.parse(text)
    except ValueError as e:
        raise InputError(f"{option} {text!r}: {e}") from None


def parse_quantiles(text: str, *, option: str = "--quantiles") -> tuple[float, ...]:
    """``"0.05,0.95"`` -> sorted distinct probabilities in (0, 1)."""
    from geosr.uncertainty import check_quantiles

    values = []
    for tok in (t.strip() for t in text.split(",")):
        try:
            values.append(float(tok))
        except ValueError:
            raise InputError(f"{option} {text!r}: {tok!r} is not a number; expected "
                             "probabilities such as 0.05,0.95") from None
    if not values:
        raise InputError(f"{option} {text!r}: no value; expected e.g. 0.05,0.95")
    try:
        return check_quantiles(values, option=option)
    except ValueError as e:
        raise InputError(str(e)) from None
