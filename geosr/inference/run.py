"""``geosr downscale``: streaming tiled inference onto the fine grid, written as a COG,
a CF NetCDF file or a Zarr store (by the output's extension, :mod:`geosr.io.sinks`).

Data path, per coarse input: plan the grids exactly as ``prepare`` does
(:func:`geosr.align.plan_grids`); read the coarse field onto the coarse grid with
area-weighted averaging (held in memory for a group of bands: the coarse grid has
``factor**2`` times fewer cells than the output, 800 x 800 cells for a 16 000 px
square output at factor 20) and fill its nodata from the nearest valid cell over the
whole grid, so that no tile fills it differently; then, tile by tile
(:mod:`geosr.inference.tiling`), read only the aux windows the tile needs on the fine grid,
predict, blend the overlapping tiles with weights that sum to 1, apply the
per-coarse-cell conservation correction and the nodata mask to the completed rows, and
write them to a temporary GeoTIFF. The GeoTIFF is then copied to
the output format (a Cloud-Optimized GeoTIFF, or a NetCDF/Zarr copy streamed a chunk row
at a time) beside the final name and renamed into place. Memory
therefore follows the tile size and the grid width, not the raster size; bands (time
steps) go through in groups of a bounded size and the COG of many bands is
band-interleaved (:func:`geosr.io.translate_to_cog`), so it does not follow the band
count either.

With a model, the coarse field is converted into the model's units right after it is
read and the completed rows back into the input's (:mod:`geosr.units`), so the network
and the conservation correction see the model's units and the output keeps the user's.

Methods (:class:`Method`): ``net`` (a trained model bundle), ``sharpen`` (scene-fitted
regression sharpening, :mod:`geosr.baselines`; needs no training data) and ``bicubic``.

Tiles run on local threads, or on a dask distributed cluster (``scheduler``): each task
then reads its own windows from the paths and returns the tile array, so the paths must
be visible from the workers. The writer stays on the calling thread.
"""


from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr import __version__
from geosr.align import check_coverage, grid_crs, is_aligned, plan_grids, resampling_for
from geosr.arrays import (
    block_count,
    block_mean,
    conserve_blocks,
    fill_nearest,
    mask_nodata_blocks,
)
from geosr.constraints import (
    ValidRange,
    bounded_conserve,
    clip_to_range,
    from_names,
    from_units,
)
from geosr.errors import BundleError, GridError, InputError, ProcessingError
from geosr.grid import Grid, footprint, native_cell_m
from geosr.inference.config import (
    CONSERVE_DEFAULT,
    DEFAULT_OVERLAP_CELLS,
    DEFAULT_RES_M,
    DEFAULT_TILE_PX,
    MAX_DEFAULT_WORKERS,
    METHOD_LABELS,
    CellMean,
    DownscaleConfig,
    DownscaleResult,
    Method,
    OutputSummary,
    Progress,
)
from geosr.inference.engine import TileJob, _DaskEngine, _LocalEngine, _ordered, _tile_items
from geosr.inference.heap import retained_heap
from geosr.inference.tiling import RowStitcher, TilePlan, plan_tiles
from geosr.inference.timing import TIMES
from geosr.inference.uncertain import (
    MAX_MEMBERS,
    ExtraSinks,
    UncertaintyRequest,
    extra_paths,
)
from geosr.io.atomic import TMP_TAG, check_not_input
from geosr.io.read import (
    AlignedReader,
    RasterInfo,
    ReaderCache,
    band1_overview,
    band1_sample,
    container_file,
    gdal_env,
    raster_info,
)
from geosr.io.sinks import atomic_output, check_output, output_format, stage_path, write_output
from geosr.io.write import check_written, open_stream_writer, stage_errors
from geosr.model.domain import aux_shifts, band_shifts, summarise
from geosr.sources import (
    LayerSpec,
    file_stem_from_path,
    layer_name_from_path,
    resolve_categorical,
)
from geosr.timerange import select_bands, subset_info
from geosr.units import UnitPlan, ValueRange, conversion, plan_units

log = logging.getLogger(__name__)


STAGE_BLOCK_ROWS = 32  # rows of the stage file's blocks (the writer holds back fewer)


# Coarse cells the sharpening regression is fitted on, at most: beyond, a systematic
# sample of row strips (a few coefficients need far fewer cells; reading all of a
# 16k x 16k aux twice would cost as much as the tiles themselves; at 8000^2 px and factor
# 20, 3 of 8 strips: the fit took 0.7 s of a 5 s run).
FIT_MAX_CELLS = 65_536


# Bands processed together, at most. Beyond a few dozen the per-group costs (aux windows
# read per tile, tile scheduling) are amortised and a larger group only holds more
# memory: on a small grid the memory budget alone let 111 of 744 hourly bands into one
# group (+170 MB); with 32, 5 % more CPU time than with 111 (16: 15 %).
MAX_GROUP_BANDS = 32


def _default_output(path: str, res_m: float, out_dir: Path | None) -> Path:
    name = f"{file_stem_from_path(path)}_{res_m:g}m.tif"
    if out_dir is not None:
        return Path(out_dir) / name
    return Path(container_file(path)).parent / name  # NETCDF:"file.nc":var -> beside file.nc


def match_aux(specs: Sequence[LayerSpec], expected: Sequence[str], *, model: str,
              categorical: Sequence[bool] | None = None) -> tuple[LayerSpec, ...]:
    """Order the user's aux layers as a model expects them.

    By name (file stem or ``name=path``) when every expected name is given; when the
    counts agree but some names differ, the names that match pair by name and the
    rest by order (logged). A missing or extra layer is an input error naming what the
    model expects.
    """
    expected = list(expected)
    want = ", ".join(expected) or "none"
    got = ", ".join(s.name for s in specs) or "none"
    if len(specs) != len(expected):
        missing = [n for n in expected if n not in {s.name for s in specs}]
        extra = [s.name for s in specs if s.name not in expected]
        detail = "; ".join(p for p in (f"missing: {', '.join(missing)}" if missing else "",
                                       f"extra: {', '.join(extra)}" if extra else "") if p)
        hint = " ".join(f"{n}=PATH" for n in expected)
        raise BundleError(
            f"--aux: model {model} expects {len(expected)} aux layer(s): {want}; got "
            f"{len(specs)}: {got}" + (f" ({detail})" if detail else "")
            + (f"; pass --aux {hint}" if expected else "; drop --aux"))
    by_name = {s.name: s for s in specs}
    rest = [s for s in specs if s.name not in expected]
    ordered = []
    for name in expected:
        if name in by_name:
            ordered.append(by_name[name])
        else:
            s = rest.pop(0)
            log.warning("--aux %s=%s used as the model's %r (matched by order; name it %s=PATH "
                        "to match by name)", s.name, s.path, name, name)
            ordered.append(LayerSpec(name=name, path=s.path, categorical=s.categorical))
    if categorical is not None:
        # The model's record wins: its channels were built that way in training.
        for s, c in zip(ordered, categorical, strict=True):
            if s.categorical is not None and s.categorical != bool(c):
                log.warning("--aux %s is marked %s but model %s uses it as %s; following the "
                            "model", s.name, "categorical" if s.categorical else "continuous",
                            model, "classes" if c else "a continuous layer")
        ordered = [LayerSpec(s.name, s.path, bool(c))
                   for s, c in zip(ordered, categorical, strict=True)]
    return tuple(ordered)


def _band_groups(n_bands: int, per_band_bytes: int, budget_bytes: int) -> list[list[int]]:
    """Consecutive 0-based bands in groups that fit ``budget_bytes``, of
    :data:`MAX_GROUP_BANDS` at most, so that the bands in flight do not depend on the
    band count."""
    size = max(1, min(n_bands, MAX_GROUP_BANDS, budget_bytes // max(per_band_bytes, 1)))
    return [list(range(b, min(b + size, n_bands))) for b in range(0, n_bands, size)]


class _BlockRowWriter:
    """Writes completed rows one row of file blocks at a time (each block written once).

    Rows arrive in order, in chunks of any height; a partial block row is copied aside
    until the next chunk completes it. Memory: two block rows of the band group.
    """

    def __init__(self, dst, bands: list[int], width: int, height: int, block: int):
        self.dst, self.bands, self.width, self.height = dst, bands, width, height
        self.block = block
        self._pending: np.ndarray | None = None
        self._top = 0  # grid row of the first row not yet written

    def _put(self, top: int, arr: np.ndarray) -> None:
        with TIMES("stage"), stage_errors(getattr(self.dst, "name", "stage file")):
            self.dst.write(np.ascontiguousarray(arr), self.bands,
                           window=Window(0, top, self.width, arr.shape[1]))

    def write(self, top: int, arr: np.ndarray) -> None:
        if top != self._top + (0 if self._pending is None else self._pending.shape[1]):
            raise ValueError(f"rows {top}.. written out of order")
        end = top + arr.shape[1]
        pos = 0  # rows of arr consumed
        if self._pending is not None:
            need = self.block - self._pending.shape[1]
            if end < self.height and arr.shape[1] < need:
                self._pending = np.concatenate([self._pending, arr], axis=1)
                return
            head = arr[:, :need]
            self._put(self._top, np.concatenate([self._pending, head], axis=1))
            self._top += self._pending.shape[1] + head.shape[1]
            self._pending = None
            pos = head.shape[1]
        while pos < arr.shape[1]:
            n = min(self.block, arr.shape[1] - pos)
            if n < self.block and self._top + n < self.height:
                self._pending = arr[:, pos:].copy()
                return
            self._put(self._top, arr[:, pos:pos + n])
            self._top += n
            pos += n

    def close(self) -> None:
        if self._pending is not None:
            arr, self._pending = self._pending, None
            self._put(self._top, arr)
            self._top += arr.shape[1]


@dataclass
class _Plan:
    """One input's resolved plan."""

    info: RasterInfo
    out: Path
    fine: Grid
    coarse: Grid
    tiles: TilePlan
    units: UnitPlan | None = None  # with a model: the input's units against the model's
    range_checked: bool = False
    bands: tuple[int, ...] = ()  # the input's 1-based bands, in output order (--time)
    valid_range: ValidRange | None = None  # in the input's units
    clipped: int = 0  # coarse values outside valid_range, clipped
    shifts: list = field(default_factory=list)  # with a model: geosr.model.domain.Shift s
    cell_mean: str | None = None  # a network's CellMean, resolved on the first group

    def source_bands(self, group: Sequence[int]) -> list[int]:
        """1-based input bands of 0-based output positions."""
        return [self.bands[b] for b in group] if self.bands else [b + 1 for b in group]


def downscale(cfg: DownscaleConfig, *, progress: Progress | None = None) -> DownscaleResult:
    """Downscale each coarse input onto the fine grid and write one output per input
    (COG, NetCDF or Zarr by the extension of ``cfg.out``; COG for default names).

    See :class:`DownscaleConfig` for the options and the module docstring for the data
    path. Outputs are checked up front (an existing output without ``overwrite`` fails
    before any work) and written atomically.
    """
    with gdal_env():
        return _downscale(cfg, progress)


def _downscale(cfg: DownscaleConfig, progress: Progress | None) -> DownscaleResult:
    t0 = time.perf_counter()
    TIMES.reset()
    if not cfg.coarse:
        raise InputError("no input: give one or more COARSE rasters")
    if cfg.out is not None and len(cfg.coarse) > 1:
        raise InputError(f"-o {cfg.out} names one file but {len(cfg.coarse)} inputs were given; "
                         "use --out-dir DIR for several inputs")
    if cfg.out is not None and cfg.out_dir is not None:
        raise InputError("-o and --out-dir both given; expected one of them")
    if cfg.out is not None:
        check_output(cfg.out, overwrite=cfg.overwrite)  # e.g. an unknown extension, before any work
    method = _resolve_method(cfg)
    conserve = CONSERVE_DEFAULT[method] if cfg.conserve is None else bool(cfg.conserve)

    bundle = model_path = None
    if method is Method.net:
        from geosr.model.bundle import load_bundle
        from geosr.model.registry import resolve_model

        model_path = resolve_model(cfg.model)
        bundle = load_bundle(model_path)

    factor, res_m = _resolve_scale(cfg, bundle)
    infos = [raster_info(p) for p in cfg.coarse]
    band_lists: list[tuple[int, ...]] = [()] * len(infos)
    if cfg.time is not None:
        band_lists = [tuple(select_bands(i.dates, cfg.time, path=i.path)) for i in infos]
        infos = [subset_info(i, list(b)) for i, b in zip(infos, band_lists, strict=True)]
    # Units are checked before any work: a mismatch is an input error, not a late failure.
    unit_plans = [_unit_plan(info, bundle, cfg.model) for info in infos]
    ranges = [_resolve_range(info, cfg, bundle) for info in infos]
    aux = _resolve_aux(cfg, method, bundle)
    aux_infos = [raster_info(s.path) for s in aux]
    for spec, ainfo in zip(aux, aux_infos, strict=True):
        _check_aux_content(spec, ainfo)

    req = _uncertainty_request(cfg, method, bundle)
    outs = [Path(cfg.out) if cfg.out is not None else _default_output(i.path, res_m, cfg.out_dir)
            for i in infos]
    inputs = [*(("COARSE", info.path) for info in infos),
              *((f"--aux {s.name}", s.path) for s in aux)]
    if bundle is not None:
        inputs.append(("--model", str(model_path)))
    seen: dict[Path, str] = {}
    for info, out in zip(infos, outs, strict=True):
        check_not_input(out, inputs, option="-o" if cfg.out is not None else "output")
        key = out.resolve()
        if key in seen:
            raise InputError(f"{seen[key]} and {info.path} would both be written to {out}; "
                             "rename one input or run them separately")
        seen[key] = info.path
        check_output(out, overwrite=cfg.overwrite)
        for extra in extra_paths(out, req):
            check_not_input(extra, inputs, option="-o (its uncertainty output)")
            check_output(extra, overwrite=cfg.overwrite)

    grids = []
    for info in infos:
        if bundle is not None:
            _check_model_cell(info, aux_infos, cfg, factor, res_m)
        fine, coarse = plan_grids(
            info, res_m=res_m, factor=factor, crs=cfg.crs, bounds=cfg.bounds, aux=aux_infos,
            clip_to_aux=cfg.bounds is None,
            factor_from=f"model {cfg.model}'s" if bundle is not None else "--factor")
        # Coverage relative to the input's footprint, not to the grid snapped around it.
        area = footprint(info.crs, info.bounds, fine.crs)
        check_coverage(info, coarse, option="COARSE", area=area)
        for spec, ainfo in zip(aux, aux_infos, strict=True):
            check_coverage(ainfo, fine, option=f"--aux {spec.name}", area=area)
        grids.append((fine, coarse))

    # With a cluster, the device is resolved on each worker (a login node may have no
    # GPU); the local model copy then only serves its metadata.
    device = _device(cfg, method)
    workers = cfg.workers if cfg.workers is not None else min(MAX_DEFAULT_WORKERS, _cpu_count())
    if workers < 1:
        raise InputError(f"--workers {workers}: expected 1 or more")
    predictor = None
    if bundle is not None:
        from geosr.model.predictor import Predictor

        predictor = Predictor(bundle, device=device, conserve=cfg.conserve)
    tile_px = DEFAULT_TILE_PX[method] if cfg.tile_px is None else cfg.tile_px
    plans = []
    for info, out, (fine, coarse), up, bands, valid in zip(infos, outs, grids, unit_plans,
                                                           band_lists, ranges, strict=True):
        f = fine.width // coarse.width
        if predictor is not None:
            # Each tile reads the network's whole measured halo as context (TileJob.context:
            # coarse cells, of which the decoder sees predictor.decode_halo), which makes a
            # tile's prediction exact to float rounding: tiles need no blended overlap
            # (tests/test_downscale.py checks tile-size invariance). A network with global
            # statistics (GroupNorm, global channel attention) depends on the whole tile
            # whatever its context: its tiles are blended over the decoder's halo.
            local = getattr(getattr(predictor, "model", None), "local", True)
            needed_px = 0 if local else max(1, predictor.decode_halo) * f
        else:
            needed_px = DEFAULT_OVERLAP_CELLS[method] * f
        overlap_px = needed_px if cfg.overlap_px is None else cfg.overlap_px
        if 0 <= overlap_px < needed_px and not plans:
            log.warning("--overlap %d px is less than the %d px that %s needs: the result "
                        "then depends on --tile and seams may show", overlap_px, needed_px,
                        METHOD_LABELS[method])
        tiles = plan_tiles(fine.height, fine.width, factor=f, tile_px=tile_px,
                           overlap_px=overlap_px)
        plans.append(_Plan(info, out, fine, coarse, tiles, units=up, bands=bands,
                           valid_range=valid))
    gpu = device.type == "cuda" or str(cfg.device).startswith("cuda")
    tile_batch = cfg.tile_batch or (8 if gpu else 1)

    tags = {
        "GEOSR_VERSION": __version__, "GEOSR_METHOD": method.value,
        "GEOSR_CONSERVE": str(conserve).lower(), "GEOSR_RES_M": f"{res_m:g}",
        "GEOSR_AUX": ",".join(s.name for s in aux),
        "GEOSR_AUX_FILES": ";".join(f"{s.name}={os.path.abspath(s.path)}" for s in aux),
        "TIFFTAG_SOFTWARE": f"geosr {__version__}",
    }
    if bundle is not None:
        tags.update(GEOSR_MODEL=str(cfg.model), GEOSR_MODEL_SHA256=bundle.sha256)
        if getattr(bundle, "units", ""):
            tags["GEOSR_MODEL_UNITS"] = bundle.units
    if cfg.command:
        tags["GEOSR_COMMAND"] = cfg.command

    engine = _DaskEngine(cfg.scheduler) if cfg.scheduler else _LocalEngine(workers)
    summaries = []
    try:
        local_net = not cfg.scheduler and method is Method.net
        with _torch_threads(max(1, _cpu_count() // max(engine.workers, 1))
                            if local_net else None), \
                _blas_threads(1 if not cfg.scheduler else None), \
                retained_heap(local_net and device.type == "cpu"):
            for p in plans:
                t1 = time.perf_counter()
                job = TileJob(
                    method=method, fine=p.fine, factor=p.tiles.factor,
                    aux=tuple((s.path, None if is_aligned(i, p.fine)
                               else resampling_for(i, p.fine, categorical=s.categorical))
                              for s, i in zip(aux, aux_infos, strict=True)),
                    model_path=str(model_path) if model_path else None,
                    device=str(cfg.device) if cfg.scheduler else str(device),
                    model_conserve=cfg.conserve, batch=max(1, tile_batch),
                    context=predictor.halo_coarse if predictor is not None else 0,
                    spread=req.wanted, cell_mean=CellMean(cfg.cell_mean).value,
                )
                ptags = {**tags, "GEOSR_FACTOR": p.tiles.factor,
                         "GEOSR_TILE_PX": p.tiles.tile_px, "GEOSR_OVERLAP_PX": p.tiles.overlap_px,
                         "GEOSR_SOURCE": os.path.abspath(p.info.path)}
                if p.valid_range is not None:
                    ptags["GEOSR_VALID_RANGE"] = str(p.valid_range)
                if p.units is not None and p.units.converts:
                    ptags["GEOSR_UNITS_CONVERTED"] = ",".join(sorted(
                        {f"{u}->{p.units.model_units}"
                         for u, c in zip(p.units.units, p.units.to, strict=True) if c}))
                _run_one(p, job, engine, predictor, aux, conserve=conserve, bundle=bundle,
                         tags=ptags, tile_batch=tile_batch, memory_mb=cfg.memory_mb,
                         overwrite=cfg.overwrite, progress=progress, req=req)
                summaries.append(OutputSummary(p.out, p.info.path, p.info.count, p.fine.height,
                                               p.fine.width, time.perf_counter() - t1))
    finally:
        engine.close()
    first = plans[0].tiles
    return DownscaleResult(
        outputs=summaries, method=method, conserve=conserve, factor=first.factor, res_m=res_m,
        tile_px=first.tile_px, overlap_px=first.overlap_px, seconds=time.perf_counter() - t0,
        model=str(cfg.model) if cfg.model else None,
        model_sha256=bundle.sha256 if bundle is not None else None,
        aux=tuple(s.name for s in aux), stages=TIMES.as_dict(),
    )


class _NoTorchDevice:
    """The device of a method that runs no network: the CPU, without importing torch."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


def _device(cfg: DownscaleConfig, method: Method):
    """The torch device of a network run; sharpening and bicubic run on the CPU without
    importing torch (~2 s), unless a device other than ``auto``/``cpu`` is asked for (it
    is checked as before)."""
    from geosr.device import resolve_device

    choice = "cpu" if cfg.scheduler else str(getattr(cfg.device, "value", cfg.device))
    if method is not Method.net and choice in ("auto", "cpu"):
        return _NoTorchDevice()
    return resolve_device(choice)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Give each of the tile threads its share of the cores (restored afterwards)."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _blas_threads(n: int | None) -> Iterator[None]:
    """At most ``n`` BLAS threads per call (restored afterwards): the tile threads are the
    parallelism. Why: OpenBLAS's own threads, nested in the tile threads, spin while they
    wait; on a busy 2-core machine bicubic's small matrix products took 12x longer."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _resolve_method(cfg: DownscaleConfig) -> Method:
    method = Method(cfg.method) if cfg.method is not None else None
    if cfg.model:
        if method not in (None, Method.net):
            raise InputError(f"--method {method.value} does not use a model but --model "
                             f"{cfg.model} was given; drop one of them")
        return Method.net
    if method is Method.net:
        raise InputError("--method net needs --model PATH or the name of a shipped model; "
                         "without one use --method sharpen (default) or bicubic")
    return method or Method.sharpen


def _resolve_scale(cfg: DownscaleConfig, bundle) -> tuple[int | None, float]:
    if bundle is None:
        return cfg.factor, float(DEFAULT_RES_M if cfg.res_m is None else cfg.res_m)
    if cfg.factor is not None and int(cfg.factor) != int(bundle.factor):
        raise BundleError(f"--factor {cfg.factor} does not match model {cfg.model}, trained for "
                          f"factor {bundle.factor}; omit --factor or use a model for that factor")
    res_m = float(bundle.res_m if cfg.res_m is None else cfg.res_m)
    if not math.isclose(res_m, float(bundle.res_m), rel_tol=1e-6):
        log.warning("--res %g m differs from the %g m model %s was trained at", res_m,
                    bundle.res_m, cfg.model)
    return int(bundle.factor), res_m


MODEL_CELL_RATIO_MAX = 2.0
"""Input cells more than this many times larger (or smaller) than a model's coarse cell
are refused: the network would see a field whose detail it was never trained on."""


def _check_model_cell(info: RasterInfo, aux_infos: Sequence[RasterInfo], cfg: DownscaleConfig,
                      factor: int, res_m: float) -> None:
    """Refuse an input whose cells are far from the model's coarse cell (a smaller
    difference is resampled with a warning by :func:`plan_grids`)."""
    crs = grid_crs(info, aux_infos, cfg.crs)
    cell = native_cell_m(info.crs, info.bounds, info.width, info.height, crs)
    want = factor * res_m
    ratio = cell / want
    if not 1 / MODEL_CELL_RATIO_MAX <= ratio <= MODEL_CELL_RATIO_MAX:
        raise BundleError(f"COARSE {info.path}: cells of about {cell:.0f} m, but model "
                          f"{cfg.model} works on {factor} x {res_m:g} m = {want:g} m cells "
                          f"({ratio:.2f}x); expected input at about {want / 1000:g} km, or a "
                          "model trained for this cell size")


def _unit_plan(info: RasterInfo, bundle, model: str | None) -> UnitPlan | None:
    """The input's band units against the model's (None without a model); logs the
    conversions it plans. Raises InputError for known units that do not convert."""
    if bundle is None:
        return None
    units = tuple(info.units[b] if b < len(info.units) else "" for b in range(info.count))
    training = bundle.training_range() if hasattr(bundle, "training_range") else None
    up = plan_units(where=f"COARSE {info.path}", units=units,
                    model_units=getattr(bundle, "units", "") or "",
                    model=Path(str(model)).stem if model else "model", training=training)
    note = up.note()
    if note:
        log.info("%s", note)
    return up


def _check_aux_content(spec: LayerSpec, info: RasterInfo) -> None:
    """Refuse an aux that holds no data; warn about one that carries no information
    (constant) or whose extra bands are ignored."""
    if info.count > 1:
        log.warning("--aux %s %s has %d bands; only band 1 is used", spec.name, info.path,
                    info.count)
    valid = band1_sample(info.path)
    valid = valid[np.isfinite(valid)]
    if valid.size and float(valid.max() - valid.min()) > 0.0:
        return  # data with detail in a few blocks: no need to look at the whole layer
    sample = band1_overview(info.path)
    valid = sample[np.isfinite(sample)]
    if valid.size == 0:
        raise InputError(f"--aux {spec.name} {info.path}: band 1 is all nodata; expected a "
                         "layer with values over the area")
    if not spec.categorical and float(valid.max() - valid.min()) == 0.0:
        log.warning("--aux %s %s is constant (%g everywhere): it carries no detail", spec.name,
                    info.path, float(valid[0]))


def _resolve_range(info: RasterInfo, cfg: DownscaleConfig, bundle) -> ValidRange | None:
    """The valid range of an input's output: ``--valid-range``, else the model's, else the
    input's CF ``valid_range``, else ``0:`` for precipitation units or, for an input without
    units, a precipitation variable's name (``pr``, ``tp``, ``prec``...); an inferred
    range is said in one line."""
    if cfg.valid_range is not None:
        return cfg.valid_range
    where = f"COARSE {info.path}"
    units = next((u for u in info.units if u), "")
    model_range = getattr(bundle, "valid_range", None)
    if model_range is not None:
        # The model's range is in its units; the output is in the input's.
        conv = conversion(bundle.units, units) if units else None
        found = model_range.affine(*conv) if conv else model_range
        log.info("%s: valid range %s (from model %s); pass --valid-range to change it", where,
                 found, cfg.model)
        return found
    found, source = info.valid_range, "its CF valid_range"
    if found is None:
        units = units or getattr(bundle, "units", "") or ""
        found, source = from_units(units), f"units {units}"
    if found is None and not units:  # no units at all: a precipitation variable's name
        found, name = from_names([info.variable, *info.long_names, *info.descriptions[:1],
                                  Path(info.path).name.split(":")[-1]])
        source = f"the precipitation variable name {name!r}"
    if found is not None:
        log.warning("%s: valid range %s (from %s); pass --valid-range to change it", where,
                    found, source)
    return found


def _range_tags(valid: ValidRange | None) -> dict[str, str]:
    """CF ``valid_min``/``valid_max`` band tags of a range (an open side is left out)."""
    if valid is None:
        return {}
    lo, hi = valid.as_tuple()
    return {k: f"{v:.9g}" for k, v in (("valid_min", lo), ("valid_max", hi)) if v is not None}


def _resolve_aux(cfg: DownscaleConfig, method: Method, bundle) -> tuple[LayerSpec, ...]:
    if bundle is not None:
        specs = getattr(bundle, "aux", None)
        cats = [bool(getattr(s, "categorical", False)) for s in specs] if specs else None
        return match_aux(cfg.aux, list(bundle.aux_names), model=str(cfg.model), categorical=cats)
    if method is Method.bicubic:
        if cfg.aux:
            log.info("--method bicubic ignores --aux")
        return ()
    if not cfg.aux:
        raise InputError("--method sharpen needs at least one --aux layer (e.g. --aux dem.tif); "
                         "without aux use --method bicubic")
    # Categorical layers (marked or detected) enter the regression as class indicators.
    return resolve_categorical(cfg.aux)


NO_UNCERTAINTY = UncertaintyRequest()


def _uncertainty_request(cfg: DownscaleConfig, method: Method, bundle) -> UncertaintyRequest:
    """``--quantiles``/``--members`` checked against the method: a probabilistic model's
    spread, or the sharpening fit's residual spread."""
    from geosr.uncertainty import check_quantiles

    try:
        qs = check_quantiles(cfg.quantiles)
    except ValueError as e:
        raise InputError(str(e)) from None
    n = int(cfg.members)
    if not 0 <= n <= MAX_MEMBERS:
        raise InputError(f"--members {n}: expected 1 to {MAX_MEMBERS} members (or 0: none)")
    if not (qs or n):
        return UncertaintyRequest()
    option = "--quantiles" if qs else "--members"
    if method is Method.bicubic:
        raise InputError(f"{option} needs a spread: use --method sharpen (the interval of its "
                         "scene regression) or a model trained with --probabilistic")
    if bundle is not None and not bundle.probabilistic:
        raise InputError(f"{option}: model {cfg.model} is deterministic (no spread); train one "
                         "with `geosr train --probabilistic`, or drop --model for the "
                         "sharpening interval")
    source = ("network: Gaussian per-pixel spread, CRPS-trained and calibrated on held-out "
              "data" if bundle is not None else
              "regression sharpening: Gaussian with the standard deviation of the scene "
              "regression's coarse-cell residuals, the same at every pixel (no trained model)")
    return UncertaintyRequest(quantiles=qs, members=n, seed=int(cfg.seed), source=source)


def _band_tags(info: RasterInfo, b: int, long_name: str, valid: ValidRange | None) -> dict:
    tags = {"long_name": long_name} if long_name else {}
    tags.update(_range_tags(valid))
    if b < len(info.dates) and info.dates[b]:
        tags["DATE_TIME"] = info.dates[b]
    return tags


def _run_one(p: _Plan, job: TileJob, engine, predictor, aux: Sequence[LayerSpec], *,
             conserve: bool, bundle, tags: dict, tile_batch: int, memory_mb: int,
             overwrite: bool, progress: Progress | None,
             req: UncertaintyRequest = NO_UNCERTAINTY) -> None:
    """Downscale one input into ``p.out``."""
    info, fine, coarse_grid, plan = p.info, p.fine, p.coarse, p.tiles
    f = plan.factor
    n_bands = info.count
    name = Path(p.out).name
    log.info("%s: %dx%d px at %g m (factor %d), %d band(s), %d tile(s) of %d px + %d px "
             "overlap, method %s", info.path, fine.width, fine.height, fine.res, f, n_bands,
             len(plan), plan.tile_px, plan.overlap_px, job.method.value)

    read_px = max(int(t.read.height * t.read.width) for t in plan.row_tiles(0))
    stitch_rows = max(plan.rows.blend(i).size for i in range(plan.rows.count)) + 3 * f \
        + plan.overlap_px
    per_band = 4 * (stitch_rows * fine.width + (engine.slots * tile_batch + 2) * read_px
                    + 2 * coarse_grid.width * coarse_grid.height)  # coarse field + filled copy
    if req.wanted:  # the spread is stitched beside the estimate; extras use a few row copies
        per_band = 2 * per_band + 4 * 4 * stitch_rows * fine.width
    groups = _band_groups(n_bands, per_band, memory_mb << 20)

    t0 = time.perf_counter()
    aux_coarse = None
    if job.method is Method.sharpen:
        t_fit = time.perf_counter()
        aux_coarse = [_read_coarse_aux(s.path, fine, coarse_grid, engine.workers, resampling=r,
                                       categorical=bool(s.categorical), name=s.name,
                                       max_cells=FIT_MAX_CELLS)
                      for s, (_, r) in zip(aux, job.aux, strict=True)]
        TIMES.add("fit", time.perf_counter() - t_fit)
    elif getattr(predictor, "scene", False) or _records_scenes(bundle):
        # continuous layers' cell means: a scene-adaptive model's input, and what the
        # domain-shift check compares with the training scenes' slopes
        t_fit = time.perf_counter()
        aux_coarse = [None if spec.categorical else _read_coarse_aux(
            s.path, fine, coarse_grid, engine.workers, resampling=r, name=s.name,
            max_cells=FIT_MAX_CELLS).values[0]
            for s, spec, (_, r) in zip(aux, predictor.bundle.aux, job.aux, strict=True)]
        p.shifts.extend(aux_shifts(aux_coarse, [s.name for s in predictor.bundle.aux],
                                   predictor.bundle.training or {}))
        TIMES.add("fit", time.perf_counter() - t_fit)

    variable = bundle.variable if bundle is not None and getattr(bundle, "variable", "") \
        else info.variable or layer_name_from_path(info.path)
    units_default = getattr(bundle, "units", "") if bundle is not None else ""
    descriptions = [_band_description(info, b, variable) for b in range(n_bands)]
    units = [info.units[b] if b < len(info.units) and info.units[b] else units_default
             for b in range(n_bands)]

    t1 = time.perf_counter()
    total = fine.width * fine.height * n_bands  # progress counts output pixels
    done = 0
    if progress:
        progress(name, 0, total)
    fmt = output_format(p.out)
    with atomic_output(p.out, overwrite=overwrite) as tmp_out:
        tmp_tif = stage_path(tmp_out)
        if TMP_TAG not in tmp_tif.name:  # pragma: no cover - temporary names carry the tag
            raise ProcessingError(f"{tmp_tif}: temporary name lacks {TMP_TAG}")
        try:
            dst = open_stream_writer(tmp_tif, fine, n_bands, block_rows=STAGE_BLOCK_ROWS,
                                     descriptions=descriptions, units=units, tags=tags)
            try:
                long_name = (info.long_names[0] if info.long_names else "") or (
                    (getattr(bundle, "training", None) or {}).get("long_name", "")
                    if bundle is not None else "")
                all_tags = [_band_tags(info, b, long_name, p.valid_range) for b in range(n_bands)]
                for b, band_tags in enumerate(all_tags):
                    if band_tags:
                        dst.update_tags(b + 1, **band_tags)
                with contextlib.ExitStack() as stack:
                    extras = ExtraSinks(
                        stack, out=p.out, req=req, fine=fine, n_bands=n_bands,
                        descriptions=descriptions, units=units, tags=tags, band_tags=all_tags,
                        overwrite=overwrite, factor=f, conserve=conserve,
                        valid=p.valid_range) if req.wanted else None
                    crd = stack.enter_context(AlignedReader(
                        info.path, coarse_grid,
                        resampling_for(info, coarse_grid, coarse_input=True)))
                    for group in groups:
                        done = _stream_group(crd, group, p, job, engine, predictor, dst,
                                             aux_coarse, conserve=conserve,
                                             tile_batch=tile_batch, done=done, total=total,
                                             progress=progress, extras=extras)
                    if extras is not None:  # inside the stack: renamed only when complete
                        extras.finish(fmt=fmt, variable=variable)
                if bundle is not None and hasattr(bundle, "training"):
                    _report_shift(p, dst, bundle, units_default)
            finally:
                with TIMES("stage"), stage_errors(tmp_tif):
                    dst.close()
            check_written(tmp_tif)  # GDAL may close a file it failed to write
            t2 = time.perf_counter()
            step = f"{name} ({fmt.label})"
            if progress:
                progress(step, 0, total)
            with TIMES(f"overviews+compress ({fmt.label})"):
                write_output(tmp_tif, tmp_out, fmt=fmt, variable=variable,
                             progress=(lambda i, n: progress(step, total * i // max(n, 1),
                                                             total)) if progress else None)
            log.debug("%s: fit %.1f s, tiles %.1f s, %s %.1f s", name, t1 - t0, t2 - t1,
                      fmt.label, time.perf_counter() - t2)
            if progress:
                progress(step, total, total)
        finally:
            for path in (tmp_tif, Path(f"{tmp_tif}.aux.xml")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _band_description(info: RasterInfo, band: int, variable: str) -> str:
    """The input band's description, else the variable and the band's date."""
    if band < len(info.descriptions) and info.descriptions[band]:
        return info.descriptions[band]
    date = info.dates[band] if band < len(info.dates) else ""
    return f"{variable} {date}" if date else variable


def _stream_group(crd, group: list[int], p: _Plan, job: TileJob, engine, predictor, dst,
                  aux_coarse: list | None, *, conserve: bool, tile_batch: int,
                  done: int, total: int, progress: Progress | None,
                  extras: ExtraSinks | None = None) -> int:
    """Predict, stitch, conserve and write one group of bands; returns output pixels done.

    Its own function so that the stitch buffer is freed before the COG copy.
    """
    info, fine, plan = p.info, p.fine, p.tiles
    name = Path(p.out).name
    t_align = time.perf_counter()
    coarse = crd.read(None, p.source_bands(group))
    if p.valid_range is not None:  # in the input's units, before any conversion
        p.clipped += clip_to_range(coarse, p.valid_range)
        if group[-1] == info.count - 1 and p.clipped:
            log.warning("COARSE %s: %d coarse value(s) outside the valid range %s, clipped to "
                        "it", info.path, p.clipped, p.valid_range)
    if p.units is not None:  # the model sees its own units; _flush converts back
        p.units.to_model(coarse, group)
        if not p.range_checked:  # once per input: the first group holds most bands
            p.range_checked = True
            warning = p.units.range_warning(ValueRange.of(coarse), group)
            if warning:
                log.warning("%s", warning)
    if not np.isfinite(coarse).any():
        if len(group) == info.count:  # the whole input: nothing to downscale
            raise GridError(f"COARSE {info.path}: no valid pixels inside the grid (all nodata); "
                            "expected data over the area")
        log.warning("%s bands %d-%d: no valid coarse cells in the grid; the output is nodata "
                    "there", info.path, group[0] + 1, group[-1] + 1)
    TIMES.add("align", time.perf_counter() - t_align)
    if job.method is Method.sharpen:
        with TIMES("fit"):
            job = _with_fits(job, coarse, aux_coarse, info, group, dst)
    elif getattr(predictor, "scene", False):
        with TIMES("fit"):
            job = _with_scenes(job, coarse, aux_coarse, predictor, info, group, dst)
    if job.method is Method.net and hasattr(getattr(predictor, "bundle", None), "training"):
        _band_shifts(p, job, coarse, group, predictor, aux_coarse)
    if job.method is Method.net and conserve:
        job = _with_cell_mean(job, p, coarse, dst)
    # Tiles get nodata filled over the whole grid: each method fills it anyway, but from
    # the cells its window happens to see, so values next to nodata would depend on the
    # tile size. The nodata mask is put back on the stitched rows (_flush).
    with TIMES("align"):
        filled = coarse if np.isfinite(coarse).all() else fill_nearest(coarse)
    stitch = RowStitcher(plan, bands=len(group) * (2 if job.spread else 1))
    writer = _BlockRowWriter(dst, [b + 1 for b in group], fine.width, fine.height,
                             STAGE_BLOCK_ROWS)
    if extras is not None:
        extras.start_group(group, lambda d, bands: _BlockRowWriter(
            d, bands, fine.width, fine.height, STAGE_BLOCK_ROWS))
    extra = None if extras is None else (extras, group, p.units)
    items = _tile_items(plan, filled, tile_batch, job)
    for tiles, preds in _ordered(engine, items, job, predictor):
        with TIMES("blend"):
            for tile, pred in zip(tiles, preds, strict=True):
                stitch.add(tile, pred)
        done += sum(t.core.width * t.core.height for t in tiles) * len(group)  # cores tile the grid
        if progress:
            progress(name, done, total)
        if tiles[-1].col == plan.cols.count - 1:
            _flush(stitch.finish_row(), writer, coarse, plan.factor, conserve,
                   back=(lambda arr: p.units.from_model(arr, group))
                   if p.units is not None and p.units.converts else None,
                   valid=p.valid_range, extra=extra)
    writer.close()
    if extras is not None:
        extras.end_group()
    return done


def _flush(done: tuple[int, np.ndarray] | None, writer: _BlockRowWriter, coarse: np.ndarray,
           f: int, conserve: bool, back: Callable[[np.ndarray], Any] | None = None,
           valid: ValidRange | None = None, extra: tuple | None = None) -> None:
    """Conserve, convert back to the input's units (``back``, in place), keep the valid
    range and mask the completed rows, then write them. Conservation runs in the units of
    ``coarse`` (the model's); an affine map of a conserved field is conserved against the
    mapped field. The range is kept in the input's units: clipped and conserved again
    (:func:`geosr.constraints.bounded_conserve`), or only clipped without ``conserve``.

    With ``extra`` (``(sinks, group, units)``), ``arr`` holds the estimates then the
    spreads; quantiles and members are made from the final estimate
    (:class:`~geosr.inference.uncertain.ExtraSinks`)."""
    if done is None:
        return
    t_conserve = time.perf_counter()
    top, arr = done
    sigma = None
    if extra is not None:
        arr, sigma = arr[:arr.shape[0] // 2], arr[arr.shape[0] // 2:]
    c0 = top // f
    rows = coarse[:, c0:c0 + arr.shape[1] // f]
    if conserve:
        conserve_blocks(arr, rows, f)
    if back is not None:
        back(arr)
    if back is not None and (valid is not None and conserve or extra is not None):
        rows = rows.copy()
        back(rows)
    if valid is not None:
        if conserve:
            bounded_conserve(arr, rows, f, valid.lo, valid.hi)
        else:
            clip_to_range(arr, valid)
    arr = mask_nodata_blocks(arr, rows, f)
    TIMES.add("conserve", time.perf_counter() - t_conserve)
    writer.write(top, arr)
    if extra is not None:
        sinks, group, units = extra
        scale = np.ones(len(group), np.float32)
        if back is not None:  # output units per model unit, per band
            unit = np.zeros((len(group), 1, 2), np.float32)
            unit[:, 0, 1] = 1.0
            back(unit)
            scale = np.abs(unit[:, 0, 1] - unit[:, 0, 0])
        sinks.write(top, arr, sigma, rows, group, scale)


def _with_fits(job: TileJob, coarse: np.ndarray, aux_coarse: list, info: RasterInfo,
               group: list[int], dst) -> TileJob:
    """Fit the sharpening regression per band on the whole scene (coarse scale).

    The band tags record the fit: ``GEOSR_SHARPEN_TERMS`` names what each value of
    ``GEOSR_SHARPEN_COEF`` multiplies (an aux layer, or ``name=class`` for a class of a
    categorical layer, relative to its ``GEOSR_SHARPEN_REFERENCE`` class);
    ``GEOSR_SHARPEN_CLASS_P`` is the p-value of the test the class terms must pass to be
    used (:func:`geosr.baselines.fit_sharpen`).
    """
    from dataclasses import replace

    from geosr.baselines import fit_sharpen

    fits = []
    for k, b in enumerate(group):
        fit = fit_sharpen(coarse[k], aux_coarse)
        log.info("%s band %d: sharpening fit R2 %.3f over %d cells (coef %s%s%s)", info.path,
                 b + 1, fit.r2, fit.n, fit.describe() or "none",
                 f"; reference {', '.join(fit.reference)}" if fit.reference else "",
                 f"; class test p {fit.class_p:.2g}" if fit.class_p is not None else "")
        tags = {"GEOSR_SHARPEN_R2": f"{fit.r2:.4f}",
                "GEOSR_SHARPEN_COEF": ",".join(f"{c:.6g}" for c in fit.coef),
                "GEOSR_SHARPEN_TERMS": ",".join(t.label for t in fit.terms),
                "GEOSR_SHARPEN_INTERCEPT": f"{fit.intercept:.6g}"}
        if fit.reference:
            tags["GEOSR_SHARPEN_REFERENCE"] = ",".join(fit.reference)
        if fit.class_p is not None:
            tags["GEOSR_SHARPEN_CLASS_P"] = f"{fit.class_p:.3g}"
        dst.update_tags(b + 1, **tags)
        fits.append(fit)
    # Indexing in predict_tiles is by position within the group.
    return replace(job, fits=tuple(fits))


def _records_scenes(bundle) -> bool:
    """Whether a model's bundle records its training scenes (``train`` does since
    scene ranges exist, for fixed-statistics networks too)."""
    training = getattr(bundle, "training", None)
    return isinstance(training, dict) and bool(training.get("scene_ranges"))


def _band_shifts(p: _Plan, job: TileJob, coarse: np.ndarray, group: list[int], predictor,
                 aux_coarse: list | None) -> None:
    """Collect the bands' :class:`~geosr.model.domain.Shift` s (model units): from the
    bands' scenes when the model takes them or its bundle records the training scenes,
    else from the bands' values."""
    bundle = predictor.bundle
    names = [n for s in bundle.aux for n in s.channel_names]
    for k, b in enumerate(group):
        if job.scenes:
            sc = job.scenes[k]
            mean, std, gain = sc.mean, sc.std, sc.gain
        elif aux_coarse is not None:  # read for a bundle that records its scenes
            if not np.isfinite(coarse[k]).any():
                continue
            sc = predictor.scene_of(coarse[k], aux_coarse)
            mean, std, gain = sc.mean, sc.std, sc.gain
        else:
            v = coarse[k][np.isfinite(coarse[k])]
            if v.size == 0:
                continue
            mean, std, gain = float(v.mean()), float(v.std()), None
        p.shifts.extend(band_shifts((p.bands[b] if p.bands else b + 1), mean, std, gain,
                                    bundle.training or {}, bundle.coarse_stats or {}, names,
                                    check_std=bool(predictor.scene)))


def _report_shift(p: _Plan, dst, bundle, units: str) -> None:
    """One warning line per input outside the model's training distribution, and the
    ``GEOSR_DOMAIN_SHIFT`` tag (``none`` when inside)."""
    text = summarise(p.shifts, units)
    dst.update_tags(GEOSR_DOMAIN_SHIFT=text)
    if p.shifts:
        log.warning("%s: outside the training distribution of the model (%s): %s; the output "
                    "is an extrapolation, check it against truth where you can", p.info.path,
                    (bundle.sha256 or "")[:8], text)


def _with_cell_mean(job: TileJob, p: _Plan, coarse: np.ndarray, dst) -> TileJob:
    """``job`` with ``--cell-mean auto`` resolved once per input, and the output tag.

    ``auto``: a coarse input with nodata cells is taken for a land-only product (a
    station grid, ERA5-Land, land surface temperature), whose values are means over the
    land, i.e. where a DEM that stops at the coast has data; one with data everywhere
    (reanalysis, a climate model) for means over whole cells. Why it matters: on 31
    Cornish days aggregated from the land-only HadUK-Grid, conserving the land apart cut
    a Swiss-trained network's RMSE from 0.807 to 0.677 degC; on ERA5 cells, which cover
    land and sea, a Cornish network trained and run that way scored 1.755 degC against
    1.317 with whole cells (``benchmarks/accuracy.py``).
    """
    from dataclasses import replace

    if p.cell_mean is None:
        p.cell_mean = job.cell_mean
        if p.cell_mean == CellMean.auto.value:
            land = bool(np.isnan(coarse).any())
            p.cell_mean = (CellMean.aux if land else CellMean.cell).value
            log.info("COARSE %s %s: its values are taken as means over %s "
                     "(--cell-mean %s)", p.info.path,
                     "has nodata cells" if land else "has data in every cell",
                     "the pixels where the aux has data" if land else "whole cells",
                     p.cell_mean)
        dst.update_tags(GEOSR_CELL_MEAN=p.cell_mean)
    return replace(job, cell_mean=p.cell_mean)


def _with_scenes(job: TileJob, coarse: np.ndarray, aux_coarse: list, predictor,
                 info: RasterInfo, group: list[int], dst) -> TileJob:
    """Each band's :class:`~geosr.model.scene.Scene` (whole band, model units) for a
    scene-adaptive model; the band tags record it (``GEOSR_SCENE_*``)."""
    from dataclasses import replace

    scenes = []
    for k, b in enumerate(group):
        scene = predictor.scene_of(coarse[k], aux_coarse or [None] * len(predictor.bundle.aux))
        log.info("%s band %d: scene mean %.4g, std %.4g over %d cells, sharpening R2 %.3f",
                 info.path, b + 1, scene.mean, scene.std, scene.cells, scene.r2)
        dst.update_tags(b + 1, **scene.tags())
        scenes.append(scene)
    return replace(job, scenes=tuple(scenes))


def _read_coarse_aux(path: str, fine: Grid, coarse: Grid, workers: int, *,
                     resampling: Resampling | None, categorical: bool = False, name: str = "",
                     max_cells: int | None = None):
    """Band 1 of an aux layer summarised over each coarse cell, in row strips on threads.

    Used to fit the sharpening regression; returns a :class:`geosr.baselines.CoarseLayer`.
    A continuous source on the fine grid's lattice (``resampling`` None) is read directly
    and block-averaged over its valid cells (exact); any other continuous source goes
    through GDAL's area-weighted average onto the coarse grid. A categorical source is
    read on the fine grid as the tiles read it (``resampling``: mode/nearest) and each
    class's share of the valid fine pixels of each cell is counted, so the shares are
    the exact means of the fine indicators. With ``max_cells``, only every k-th strip
    (about 1024 fine rows each) is read, enough for ``max_cells`` coarse cells spread
    over the scene; other rows are NaN (the fit ignores them).
    """
    from concurrent.futures import ThreadPoolExecutor

    from geosr.baselines import CoarseLayer, check_class_count, preselect_classes

    f = fine.width // coarse.width
    on_grid = resampling is None
    step = max(1, 1024 // f)  # coarse rows per strip
    starts = list(range(0, coarse.height, step))
    cells = coarse.width * coarse.height
    if max_cells and cells > max_cells:
        k = math.ceil(cells / max_cells)
        starts = starts[k // 2::k] or starts[:1]
    # On the fine grid as the tiles read it, or averaged onto the coarse grid by GDAL.
    grid, rs = (fine, resampling) if on_grid or categorical else (coarse, Resampling.average)
    readers = ReaderCache()

    def reader():
        return readers.get(path, grid, rs)

    col_step = max(1, 1024 // f)  # coarse columns per read: bounded temporaries

    def strip(r0: int) -> list[tuple]:
        """Per read: (r0, c0, mean) or, categorical, (r0, c0, valid count, {class: count})."""
        r1 = min(r0 + step, coarse.height)
        parts = []
        for c0 in range(0, coarse.width, col_step):
            c1 = min(c0 + col_step, coarse.width)
            if not (on_grid or categorical):
                parts.append((r0, c0, reader().read(Window(c0, r0, c1 - c0, r1 - r0), [1])))
                continue
            arr = reader().read(Window(c0 * f, r0 * f, (c1 - c0) * f, (r1 - r0) * f), [1])
            if not categorical:
                parts.append((r0, c0, block_mean(arr, f)))
                continue
            a = arr[0]
            valid = np.isfinite(a)
            values = np.unique(a[valid])
            check_class_count(values.size, f"{name}={path}" if name else path)
            per_class = {float(v): block_count(a == v, f) for v in values}
            parts.append((r0, c0, block_count(valid, f), per_class))
        return parts

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            parts = [p for strip_parts in pool.map(strip, starts) for p in strip_parts]
    finally:
        readers.close()
    if not categorical:
        out = np.full((1, coarse.height, coarse.width), np.nan, np.float32)
        for r0, c0, mean in parts:
            out[:, r0:r0 + mean.shape[1], c0:c0 + mean.shape[2]] = mean
        return CoarseLayer(name, out)
    totals: dict[float, int] = {}
    for *_, per_class in parts:
        for v, cnt in per_class.items():
            totals[v] = totals.get(v, 0) + int(cnt.sum())
    check_class_count(len(totals), f"{name}={path}" if name else path)
    classes = preselect_classes(np.array(list(totals), np.float64),
                                np.array(list(totals.values()), np.float64))
    shares = np.full((classes.size, coarse.height, coarse.width), np.nan, np.float32)
    for r0, c0, count, per_class in parts:
        h, w = count.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            for i, v in enumerate(classes):
                cnt = per_class.get(float(v))
                shares[i, r0:r0 + h, c0:c0 + w] = np.where(
                    count > 0, (0 if cnt is None else cnt) / np.maximum(count, 1), np.nan)
    return CoarseLayer(name, shares, tuple(float(v) for v in classes))
