"""Named input layers: how a user's ``--aux`` token becomes a layer spec.

Syntax: ``path`` (name = file stem), ``name=path``, and a ``:categorical`` suffix for
class rasters such as land cover (resampled with mode/nearest, never averaged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from geosr.errors import InputError

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
CATEGORICAL_SUFFIX = ":categorical"


@dataclass(frozen=True)
class LayerSpec:
    """An auxiliary layer: its name, source path and whether it holds classes."""

    name: str
    path: str
    categorical: bool = False


_VARIABLE_RE = re.compile(r'^(?:(?:NETCDF|HDF5):"?.+?"?|.+\.(?:nc|nc4|cdf|netcdf|h5|hdf5|he5)):'
                          r'([A-Za-z_][\w.\-]*)$', re.IGNORECASE)


def layer_name_from_path(path: str) -> str:
    """File stem, made safe as a layer name (``dem.tif`` -> ``dem``); for a NetCDF
    variable (``era5.nc:t2m``, ``NETCDF:"era5.nc":t2m``) the variable's name."""
    m = _VARIABLE_RE.match(path)
    stem = m.group(1) if m else Path(path).stem
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", stem)
    if not name or not name[0].isalpha():
        name = f"aux_{name}"
    return name[:64]


def parse_layer(token: str, *, option: str = "--aux") -> LayerSpec:
    """Parse ``[name=]path[:categorical]``."""
    text = token.strip()
    if not text:
        raise InputError(
            f"{option}: empty value; expected PATH, NAME=PATH or NAME=PATH:categorical"
        )
    categorical = text.endswith(CATEGORICAL_SUFFIX)
    if categorical:
        text = text[: -len(CATEGORICAL_SUFFIX)]
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
