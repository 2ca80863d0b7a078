"""Options and results of ``downscale``: the methods, their defaults, the config and
the summary of what was written."""


from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from geosr.constraints import ValidRange
from geosr.grid import Bounds
from geosr.sources import LayerSpec
from geosr.timerange import TimeRange

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


class Method(str, Enum):
    """Values of ``--method``."""

    net = "net"
    sharpen = "sharpen"
    bicubic = "bicubic"


class CellMean(str, Enum):
    """Values of ``--cell-mean``: what a coarse value is the mean of, in a cell where an
    aux layer is partly nodata (the sea beyond a DEM's coast). A network's pixels there
    are conserved apart from the rest with ``aux`` (each part averages to the coarse
    value), together with ``cell``."""

    auto = "auto"  # aux when the input has nodata cells, else cell
    aux = "aux"    # the pixels where the aux has data: a land-only product
    cell = "cell"  # the whole cell: reanalysis, climate models


METHOD_LABELS = {
    Method.net: "network",
    Method.sharpen: "regression sharpening",
    Method.bicubic: "bicubic interpolation",
}


# Whether the per-coarse-cell correction is applied when --conserve is not given.
# Plain bicubic stays plain interpolation unless asked.
CONSERVE_DEFAULT = {Method.net: True, Method.sharpen: True, Method.bicubic: False}


# Tile cores: the stitch buffer holds a full-width row of tiles, so peak memory grows
# with width x tile; these keep it within ~1.2x from 2k to 16k px wide (see
# benchmarks/bench_downscale.py) while the overlap stays a small share of the work.
DEFAULT_TILE_PX = {Method.net: 512, Method.sharpen: 768, Method.bicubic: 768}


# Context per side, in coarse cells. The outer half of it gets zero blend weight, so it
# must cover the method's support: 1 cell for the bilinear residual of ``sharpen``,
# 2 cells for bicubic. A network needs none (its tiles read their context apart).
DEFAULT_OVERLAP_CELLS = {Method.sharpen: 2, Method.bicubic: 4}


DEFAULT_RES_M = 500.0


MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class DownscaleConfig:
    """Options of ``geosr downscale``.

    Attributes:
        coarse: coarse input rasters (bands = time steps), any CRS/format GDAL reads.
        aux: auxiliary layers on (or warped to) the fine grid.
        out: output file; only with a single input.
        out_dir: output folder; default: beside each input, named ``<stem>_<res>m.tif``.
        model: model bundle path or shipped model name; implies ``method=net``.
        method: ``net``, ``sharpen`` or ``bicubic``; default ``net`` with a model, else
            ``sharpen``.
        res_m: fine resolution in metres (default: the model's, else 500).
        factor: coarse/fine factor (default: the model's, else from the input cell size).
        crs: projected CRS of the grids (default: the input's if projected, else a
            projected aux's, else a local UTM zone).
        bounds: (left, bottom, right, top) in the grid CRS; default: where the input and
            every aux have data.
        time: keep only the bands whose date lies in this range (``--time``).
        tile_px: core tile size in fine pixels (rounded to whole coarse cells).
        overlap_px: context per tile side in fine pixels (default from the method).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: local tile threads (default ``min(4, CPUs)``).
        scheduler: dask scheduler address (``tcp://host:port``) or scheduler-file path.
        conserve: force the conservation correction on/off (None: method default).
        cell_mean: what a coarse value is the mean of where an aux layer is partly
            nodata inside the cell (:class:`CellMean`; a network's conservation).
        valid_range: bounds every output pixel is kept in, conserving
            (:mod:`geosr.constraints`); None: the model's, else the input's CF
            ``valid_range``, else ``0:`` for precipitation units, else none.
        overwrite: replace existing outputs.
        command: the command line, recorded in the output tags.
        memory_mb: budget for stitch buffers and tiles in flight; bands are processed
            in groups that fit, of ``MAX_GROUP_BANDS`` at most (the peak also holds the
            model and libraries).
        tile_batch: tiles per network call (default 1 on CPU, 8 on a GPU).
        quantiles: also write one map per quantile beside each output (``OUT_q05.tif``);
            needs a probabilistic model, or ``sharpen`` (its scene fit's residual spread).
        members: also write this many spatially coherent, conserving ensemble members
            (``OUT_members.tif``, members x bands); same needs as ``quantiles``.
        seed: seed of the members (the same seed gives the same members, whatever the
            tiles).
    """

    coarse: tuple[str, ...]
    aux: tuple[LayerSpec, ...] = ()
    out: Path | None = None
    out_dir: Path | None = None
    model: str | None = None
    method: Method | None = None
    res_m: float | None = None
    factor: int | None = None
    crs: str | None = None
    bounds: Bounds | None = None
    time: TimeRange | None = None
    tile_px: int | None = None
    overlap_px: int | None = None
    device: str = "auto"
    workers: int | None = None
    scheduler: str | None = None
    conserve: bool | None = None
    cell_mean: CellMean = CellMean.auto
    valid_range: ValidRange | None = None
    overwrite: bool = False
    command: str = ""
    memory_mb: int = 384
    tile_batch: int | None = None
    quantiles: tuple[float, ...] = ()
    members: int = 0
    seed: int = 0


@dataclass(frozen=True)
class OutputSummary:
    """One written output."""

    path: Path
    source: str
    bands: int
    height: int
    width: int
    seconds: float

    @property
    def megapixels(self) -> float:
        return self.bands * self.height * self.width / 1e6


@dataclass
class DownscaleResult:
    """What ``downscale`` made."""

    outputs: list[OutputSummary]
    method: Method
    conserve: bool
    factor: int
    res_m: float
    tile_px: int
    overlap_px: int
    seconds: float
    model: str | None = None
    model_sha256: str | None = None
    aux: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def megapixels(self) -> float:
        return sum(o.megapixels for o in self.outputs)

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {
            "outputs": [
                {"path": str(o.path), "source": o.source, "bands": o.bands,
                 "shape": [o.bands, o.height, o.width], "seconds": round(o.seconds, 3)}
                for o in self.outputs
            ],
            "method": self.method.value, "conserve": self.conserve, "factor": self.factor,
            "res_m": self.res_m, "tile_px": self.tile_px, "overlap_px": self.overlap_px,
            "model": self.model, "model_sha256": self.model_sha256, "aux": list(self.aux),
            "seconds": round(self.seconds, 3), "megapixels": round(self.megapixels, 3),
            "mpx_per_s": round(self.mpx_per_s, 3),
            "stages": dict(self.stages),
        }
