"""geosr: deep-learning downscaling of coarse geospatial rasters onto a fine grid.

The public API (keyword arguments named like the command-line options; rasters as paths
or georeferenced :class:`xarray.DataArray` objects)::

    import geosr
    geosr.prepare(out="ds/", target="tasmax_1km.tif", aux={"dem": "dtm.tif"}, factor=16,
                  res=1000)
    geosr.train("ds/", out="tasmax.geosr", epochs=30)
    fine = geosr.downscale(coarse_da, aux={"dem": dem_da}, model="alps-t2m", res=1000)
    report = geosr.validate(fine, truth_da, coarse=coarse_da)

- :func:`prepare`, :func:`train`, :func:`downscale`, :func:`validate`: the four verbs.
- :func:`run_downscale`: ``downscale`` from a :class:`DownscaleConfig` (several inputs).
- :class:`Grid`: the frozen grid value; :func:`load_bundle` and :class:`Predictor` for
  people who bring their own loop.

Names are imported on first use, so ``import geosr`` stays light (no torch, no GDAL).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "prepare": "geosr.api", "train": "geosr.api", "downscale": "geosr.api",
    "validate": "geosr.api", "run_downscale": "geosr.api",
    "Grid": "geosr.grid", "load_bundle": "geosr.model.bundle",
    "Predictor": "geosr.model.predictor", "DownscaleConfig": "geosr.inference.config",
    "TimeRange": "geosr.timerange", "LayerSpec": "geosr.sources",
}
__all__ = ["DownscaleConfig", "Grid", "LayerSpec", "Predictor", "TimeRange", "__version__",
           "downscale", "load_bundle", "prepare", "run_downscale", "train", "validate"]

if TYPE_CHECKING:  # pragma: no cover
    from geosr.api import downscale, prepare, run_downscale, train, validate
    from geosr.grid import Grid
    from geosr.inference.config import DownscaleConfig
    from geosr.model.bundle import load_bundle
    from geosr.model.predictor import Predictor
    from geosr.sources import LayerSpec
    from geosr.timerange import TimeRange


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geosr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
