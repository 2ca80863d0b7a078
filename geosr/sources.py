"""Named input layers: how a user's ``--aux`` token becomes a layer spec.

Syntax: ``path`` (name = file stem), ``name=path``, and a ``:categorical`` suffix for
class rasters such as land cover (resampled with mode/nearest, never averaged) or a
``:continuous`` suffix for numbers. Without a suffix, :func:`resolve_categorical` decides
from the file (:func:`geosr.io.class_raster_reason`).
"""


from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


CATEGORICAL_SUFFIX = ":categorical"


CONTINUOUS_SUFFIX = ":continuous"


@dataclass(frozen=True)
class LayerSpec:
    """An auxiliary layer: its name, source path and whether it holds classes.

    ``categorical`` is True (``:categorical``), False (``:continuous``) or None (not
    said: :func:`resolve_categorical` looks at the file).
    """

    name: str
    path: str
    categorical: bool | None = None


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


_UNSAFE_IN_FILE_NAMES = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
"""Characters that Windows, macOS or Linux file systems refuse (or shells mangle)."""


def file_stem_from_path(path: str) -> str:
    """Stem for a default output name: the file stem (or NetCDF variable) with letters of
    any script kept (``Zürich.tif`` -> ``Zürich``); only characters that common file
    systems refuse (control characters, ``< > : " / \\ | ? *``) become ``_``, and
    leading or trailing dots and spaces are dropped."""
    m = _VARIABLE_RE.match(path)
    stem = m.group(1) if m else Path(path).stem
    name = _UNSAFE_IN_FILE_NAMES.sub("_", unicodedata.normalize("NFC", stem)).strip(" .")
    return name[:200] or "output"


def resolve_categorical(specs: tuple[LayerSpec, ...] | list[LayerSpec], *,
                        option: str = "--aux") -> tuple[LayerSpec, ...]:
    """Decide, for layers not marked either way, whether they hold classes.

    A layer whose file looks like a class raster (:func:`geosr.io.class_raster_reason`:
    an integer raster with a colour table, category names, a class-like description or
    few distinct values) becomes categorical, with one warning naming the file and the
    reason; other unmarked layers are continuous. Marked layers are kept as marked.
    """
    from geosr.io.read import class_raster_reason

    out = []
    for s in specs:
        if s.categorical is None:
            reason = class_raster_reason(s.path)
            if reason:
                log.warning("%s %s looks like a class raster (%s); treating it as categorical "
                            "(mark it %s=%s%s to silence this, or %s=%s%s to keep it numeric)",
                            option, s.path, reason, s.name, s.path, CATEGORICAL_SUFFIX, s.name,
                            s.path, CONTINUOUS_SUFFIX)
            s = replace(s, categorical=bool(reason))
        out.append(s)
    return tuple(out)
