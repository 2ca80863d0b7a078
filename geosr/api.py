"""The public Python API: ``prepare``, ``train``, ``downscale``, ``validate``.

Each function takes keyword arguments named like the command-line options and calls the
same engine as ``geosr <verb>``; the command line is a thin shell over these functions
and the config objects behind them. Rasters may be given as paths (any GDAL-readable
file; a NetCDF variable as ``file.nc:var``) or as georeferenced :class:`xarray.DataArray`
objects (CRS and transform through rioxarray, e.g. from ``rioxarray.open_rasterio``).

Grids, units and CRS: the fine grid has square pixels of ``res`` metres in a projected
CRS (see the README's "Grids"); ``bounds`` are ``(left, bottom, right, top)`` in that CRS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geosr.errors import InputError
from geosr.grid import Bounds
from geosr.sources import LayerSpec, layer_name_from_path
from geosr.timerange import TimeRange

Progress = Callable[[str, int, int], None]
TimeInput = TimeRange | tuple[str | None, str | None] | None
Raster = Any  # a path (str | os.PathLike) or a georeferenced xarray.DataArray
AuxInput = Mapping[str, Raster] | Sequence[Raster | LayerSpec] | None


def _aux_specs(aux: AuxInput, spool, *, categorical: Sequence[str] = ()) -> tuple[LayerSpec, ...]:
    """Aux layers as specs: a mapping ``{name: raster}`` or a sequence of rasters (named by
    file stem or DataArray name) or :class:`~geosr.sources.LayerSpec`."""
    from geosr.io.dataarray import is_dataarray

    if aux is None:
        return ()
    if isinstance(aux, (str, os.PathLike)) or is_dataarray(aux):
        aux = [aux]
    items: list[tuple[str | None, Any]] = (
        list(aux.items()) if isinstance(aux, Mapping) else [(None, a) for a in aux])
    specs = []
    for name, obj in items:
        if isinstance(obj, LayerSpec):
            specs.append(obj)
            continue
        if name is None:
            if is_dataarray(obj):
                if obj.name is None:
                    raise InputError("aux: a DataArray without a name; pass aux as a mapping "
                                     "{name: DataArray} or set its .name")
                name = str(obj.name)
            else:
                name = layer_name_from_path(os.fspath(obj))
        path = spool.path(obj, what=f"aux {name}", name=name)
        specs.append(LayerSpec(name=name, path=path,
                               categorical=True if name in categorical else None))
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise InputError(f"aux: layer name {s.name!r} is given twice; name them apart")
        seen.add(s.name)
    return tuple(specs)


def _time(time: TimeInput) -> TimeRange | None:
    if time is None or isinstance(time, TimeRange):
        return time
    start, end = time
    return TimeRange(start, end)


def _paths(rasters: Raster | Sequence[Raster] | None, spool, *, what: str) -> tuple[str, ...]:
    from geosr.io.dataarray import is_dataarray

    if rasters is None:
        return ()
    if isinstance(rasters, (str, os.PathLike)) or is_dataarray(rasters):
        rasters = [rasters]
    return tuple(spool.path(r, what=what) for r in rasters)


def prepare(*, out: str | os.PathLike, coarse: Raster | Sequence[Raster] | None = None,
            target: Raster | Sequence[Raster] | None = None, aux: AuxInput = None,
            categorical: Sequence[str] = (), res: float = 500.0, factor: int | None = None,
            crs: str | None = None, bounds: Bounds | None = None,
            time: TimeInput = None, valid_range: Any = None, overwrite: bool = False,
            progress: Progress | None = None):
    """Align coarse inputs, fine targets and aux onto one fine grid; write a dataset.

    Args:
        out: dataset folder to create.
        coarse: coarse rasters (bands = samples), any CRS; may be omitted with ``target``
            (the coarse layer is then the target's mean over each coarse cell).
        target: fine target rasters (bands = samples), for training.
        aux: aux layers, ``{name: raster}`` or a sequence of rasters.
        categorical: aux names that hold classes (class rasters are also detected).
        res: fine pixel size in metres.
        factor: coarse cell = ``factor * res``; default from the coarse input's cells.
        crs: projected CRS of the grids (metres); default from the inputs.
        bounds: ``(left, bottom, right, top)`` in the grid CRS.
        time: keep the bands dated in this range: a :class:`~geosr.timerange.TimeRange`
            or ``(start, end)`` ISO dates, either ``None``.
        valid_range: the variable's ``(lo, hi)`` (None for an open side) or ``"MIN:MAX"``,
            recorded in the manifest and by ``train`` in the model, where it is the
            default of ``downscale``; default: the input's CF ``valid_range``, else
            ``(0, None)`` for precipitation units.
        overwrite: replace a non-empty ``out``.
        progress: ``callback(stage, done, total)``.

    Returns:
        :class:`geosr.dataset.prepare.PrepareResult` (the manifest and timings).
    """
    from geosr.dataset.prepare import PrepareConfig
    from geosr.dataset.prepare import prepare as run
    from geosr.io.dataarray import spooled

    with spooled() as sp:
        cfg = PrepareConfig(out_dir=Path(out), coarse=_paths(coarse, sp, what="coarse"),
                            target=_paths(target, sp, what="target"),
                            aux=_aux_specs(aux, sp, categorical=categorical), res_m=res,
                            factor=factor, crs=crs, bounds=bounds, time=_time(time),
                            valid_range=_valid_range(valid_range), overwrite=overwrite)
        return run(cfg, progress=progress)


def train(dataset: str | os.PathLike | Sequence[str | os.PathLike], *, out: str | os.PathLike,
          progress: Progress | None = None, **options: Any):
    """Train the network on prepared datasets and write a model bundle.

    Args:
        dataset: prepared dataset folder (from :func:`prepare`, with a target), or several
            (other regions or periods: the same factor, resolution, units and aux layers),
            trained on together.
        out: model bundle to write (``.geosr``); the checkpoint and logs go beside it.
        progress: callback receiving :class:`geosr.training.config.TrainEvent` updates.
        **options: any field of :class:`geosr.training.config.TrainConfig`, e.g.
            ``epochs=30``, ``max_minutes=5``, ``aux=("dem",)``, ``val_fraction=0.2``,
            ``conserve=True``, ``seed=0``, ``device="auto"``.

    Returns:
        :class:`geosr.training.config.TrainResult` (bundle, history, best epoch).
    """
    import dataclasses

    from geosr.training.config import TrainConfig
    from geosr.training.loop import train as run

    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"dataset", "more_datasets",
                                                                   "out"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"train: unknown option(s) {', '.join(unknown)}; expected fields of "
                         f"TrainConfig: {', '.join(sorted(known))}")
    if "aux" in options and options["aux"] is not None:
        options["aux"] = tuple(options["aux"])
    paths = ([Path(d) for d in dataset] if isinstance(dataset, Sequence)
             and not isinstance(dataset, str) else [Path(dataset)])
    if not paths:
        raise InputError("train: no dataset given; expected a prepared dataset folder")
    cfg = TrainConfig(dataset=paths[0], more_datasets=tuple(paths[1:]), out=Path(out), **options)
    return run(cfg, progress=progress)


def downscale(coarse: Raster, *, aux: AuxInput = None, model: str | os.PathLike | None = None,
              method: str | None = None, out: str | os.PathLike | None = None,
              res: float | None = None, factor: int | None = None, crs: str | None = None,
              bounds: Bounds | None = None, time: TimeInput = None,
              conserve: bool | None = None, valid_range: Any = None, tile: int | None = None,
              overlap: int | None = None, device: str = "auto", workers: int | None = None,
              scheduler: str | None = None, cell_mean: str = "auto",
              overwrite: bool = False, categorical: Sequence[str] = (),
              progress: Progress | None = None, chunks: Any = True):
    """Downscale one coarse raster onto the fine grid; return it as a DataArray.

    Args:
        coarse: the coarse raster (bands or a ``time`` dimension = time steps).
        aux: aux layers, ``{name: raster}`` or a sequence of rasters; with a model they
            are matched to the model's aux by name.
        model: a model bundle path or a shipped model's name (``"alps-t2m"``).
        method: ``"net"``, ``"sharpen"`` or ``"bicubic"`` (default: the network with a
            model, else regression sharpening).
        out: also write the result here (``.tif`` COG, or the formats the command line
            writes by extension); the returned array is then read lazily from it.
        res: fine pixel size in metres (default: the model's, else 500).
        factor: coarse cell = ``factor * res`` (default: the model's, else the input's).
        crs: projected CRS of the grids (metres).
        bounds: ``(left, bottom, right, top)`` in the grid CRS.
        time: keep the time steps dated in this range, ``(start, end)`` ISO dates.
        conserve: each coarse cell's mean of the output equals the input (default on,
            except for bicubic).
        valid_range: ``(lo, hi)`` every output pixel is kept in, conserving (None for an
            open side, e.g. ``(0, None)`` for precipitation), or ``"MIN:MAX"`` text;
            default: the model's, else the input's CF ``valid_range``, else ``(0, None)``
            for precipitation units.
        tile, overlap: tile core and blended overlap in fine pixels.
        device, workers, scheduler: where the work runs (see ``geosr downscale --help``).
        cell_mean: what a coarse value is the mean of where an aux layer is partly nodata
            in the cell (the sea beyond a DEM's coast), for a network: ``"aux"`` the
            pixels where the aux has data (a land-only product), ``"cell"`` the whole
            cell (reanalysis, climate models), ``"auto"`` (default) ``"aux"`` when the
            input has nodata cells.
        overwrite: replace an existing ``out``.
        categorical: aux names that hold classes (class rasters are also detected).
        progress: ``callback(stage, done, total)``; ``done`` and ``total`` count output
            pixels (bands x rows x cols) of the stage (one output, or its final write).
        chunks: dask chunks of the returned array when ``out`` is given (``True``: the
            file's blocks; ``None``: load it into memory).

    Returns:
        An :class:`xarray.DataArray` ``(band|time, y, x)`` in the fine grid's CRS with the
        output's units and provenance attributes (``GEOSR_*``). Without ``out`` it is in
        memory; for outputs larger than memory, pass ``out`` and get a lazy array back.
    """
    from geosr.inference.config import CellMean, DownscaleConfig, Method
    from geosr.inference.run import downscale as run
    from geosr.io.dataarray import open_output, spooled

    try:
        cell = CellMean(cell_mean)
    except ValueError:
        raise InputError(f"cell_mean {cell_mean!r}: expected one of "
                         f"{', '.join(c.value for c in CellMean)}") from None
    with spooled() as sp:
        paths = _paths(coarse, sp, what="coarse")
        if len(paths) != 1:
            raise InputError(f"downscale: {len(paths)} coarse inputs; expected one (call it "
                             "once per input, or use run_downscale with a DownscaleConfig)")
        dst = Path(out) if out is not None else sp.folder / "out" / "result.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        cfg = DownscaleConfig(
            coarse=paths, aux=_aux_specs(aux, sp, categorical=categorical), out=dst,
            model=os.fspath(model) if model is not None else None,
            method=Method(method) if method is not None else None, res_m=res, factor=factor,
            crs=crs, bounds=bounds, time=_time(time), tile_px=tile, overlap_px=overlap,
            device=device, workers=workers, scheduler=scheduler, conserve=conserve,
            cell_mean=cell, valid_range=_valid_range(valid_range), overwrite=overwrite)
        run(cfg, progress=progress)
        if out is None:
            return open_output(dst, chunks=None, load=True)
    return open_output(dst, chunks=chunks)


def _valid_range(value: Any):
    from geosr.constraints import ValidRange

    try:
        return ValidRange.of(value)
    except (ValueError, TypeError) as e:
        raise InputError(f"valid_range {value!r}: {e}; expected (lo, hi) with None for an "
                         "open side, or 'MIN:MAX'") from None


def run_downscale(config, *, progress: Progress | None = None):
    """Downscale with a :class:`geosr.inference.config.DownscaleConfig` (several inputs,
    output folders): what ``geosr downscale`` runs. Returns a
    :class:`geosr.inference.config.DownscaleResult` (outputs, method, timings)."""
    from geosr.inference.run import downscale as run

    return run(config, progress=progress)


def validate(pred: Raster, truth: Raster, *, coarse: Raster | None = None, aux: AuxInput = None,
             categorical: Sequence[str] = (), baselines: Sequence[str] | None = None,
             blocks: int = 0, plots_dir: str | os.PathLike | None = None, plot_band: int = 1,
             json_path: str | os.PathLike | None = None,
             csv_path: str | os.PathLike | None = None, valid_range: Any = None,
             wet_threshold: float | None = None, overwrite: bool = False):
    """Score a prediction against truth, beside baselines.

    Args:
        pred: the prediction (its grid is the evaluation grid).
        truth: the reference, any CRS/resolution (reprojected onto PRED's grid).
        coarse: the coarse input PRED was made from (conservation error and baselines).
        aux: aux layers for the regression-sharpening baseline.
        categorical: aux names that hold classes.
        baselines: names among ``bicubic``, ``bilinear``, ``nearest``, ``sharpen``
            (default: bicubic, bilinear, and sharpen with aux).
        blocks: N > 1 also scores N x N spatial blocks.
        plots_dir: write PNG figures there.
        plot_band: 1-based band shown in the figures.
        json_path, csv_path: write the report there.
        valid_range: ``(lo, hi)`` or ``"MIN:MAX"`` for ``frac_outside_range`` (default:
            the range PRED records).
        wet_threshold: wet pixels are ``>=`` this (field units; default 1 mm/day for
            precipitation units).
        overwrite: replace existing report files.

    Returns:
        :class:`geosr.evaluate.report.ValidationReport`.
    """
    from geosr.evaluate.validate import Baseline, ValidateConfig
    from geosr.evaluate.validate import validate as run
    from geosr.io.dataarray import spooled

    with spooled() as sp:
        cfg = ValidateConfig(
            pred=sp.path(pred, what="pred"), truth=sp.path(truth, what="truth"),
            coarse=sp.path(coarse, what="coarse") if coarse is not None else None,
            aux=_aux_specs(aux, sp, categorical=categorical),
            baselines=tuple(Baseline(b) for b in baselines) if baselines is not None else None,
            blocks=blocks, plots_dir=Path(plots_dir) if plots_dir else None,
            plot_band=plot_band, json_path=Path(json_path) if json_path else None,
            csv_path=Path(csv_path) if csv_path else None,
            valid_range=_valid_range(valid_range), wet_threshold=wet_threshold,
            overwrite=overwrite)
        return run(cfg)
