"""``geosr prepare``: align coarse inputs, fine targets and aux onto one grid pair.

Everything is processed window by window (``block_px`` fine pixels square, one band at
a time), so preparing a 20 000 x 20 000 grid needs a few tens of MB, not the stack.
The folder is built under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr import __version__
from geosr.align import (
    RunningStats,
    check_coverage,
    iter_windows,
    plan_grids,
    resampling_for,
)
from geosr.arrays import block_mean
from geosr.constraints import ValidRange, from_units
from geosr.dataset.manifest import Layer, Manifest, Sample
from geosr.errors import GridError, InputError
from geosr.grid import Bounds, Grid, footprint
from geosr.io.atomic import atomic_dir, check_not_input, check_output_dir
from geosr.io.read import AlignedReader, RasterInfo, gdal_env, raster_info
from geosr.io.write import open_writer
from geosr.sources import LayerSpec, layer_name_from_path, resolve_categorical
from geosr.timerange import TimeRange, select_bands

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
MAX_CLASSES = 256


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``geosr prepare``.

    Attributes:
        out_dir: dataset folder to create.
        coarse: coarse input rasters (bands = samples); may be empty with ``target``.
        target: fine target rasters (bands = samples), for training datasets.
        aux: auxiliary layers.
        res_m: fine resolution in metres.
        factor: coarse/fine factor (derived from the coarse input when None).
        crs: grid CRS (projected, metres); default from the reference input.
        bounds: (left, bottom, right, top) in the grid CRS.
        time: keep only the bands (samples) dated in this range (``--time``).
        valid_range: the variable's valid range, recorded in the manifest (and by
            ``train`` in the model); None: the input's CF ``valid_range``, else ``0:`` for
            precipitation units, else none.
        overwrite: replace a non-empty ``out_dir``.
        block_px: processing window size in fine pixels (rounded to whole coarse cells).
    """

    out_dir: Path
    coarse: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    aux: tuple[LayerSpec, ...] = ()
    res_m: float = 500.0
    factor: int | None = None
    crs: str | None = None
    bounds: Bounds | None = None
    time: TimeRange | None = None
    valid_range: ValidRange | None = None
    overwrite: bool = False
    block_px: int = 2048


@dataclass
class PrepareResult:
    """What ``prepare`` made."""

    out_dir: Path
    manifest: Manifest
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "out_dir": str(self.out_dir), "seconds": round(self.seconds, 3),
            "factor": m.factor, "res_m": m.res_m, "crs": m.fine_grid.crs,
            "fine_shape": list(m.fine_grid.shape), "coarse_shape": list(m.coarse_grid.shape),
            "bounds": list(m.fine_grid.bounds), "n_samples": len(m.samples),
            "layers": [la.name for la in (m.coarse, m.target, *m.aux) if la is not None],
            "variable": m.variable,
        }


def _band_list(infos: list[RasterInfo],
               time: TimeRange | None = None) -> list[tuple[RasterInfo, int]]:
    if time is None:
        return [(info, b) for info in infos for b in range(1, info.count + 1)]
    return [(info, b) for info in infos for b in select_bands(info.dates, time, path=info.path)]


def prepare(cfg: PrepareConfig, *, progress: Progress | None = None) -> PrepareResult:
    """Build a prepared dataset. See :class:`PrepareConfig`."""
    with gdal_env():
        return _prepare(cfg, progress)


def _prepare(cfg: PrepareConfig, progress: Progress | None) -> PrepareResult:
    t0 = time.perf_counter()
    if not cfg.coarse and not cfg.target:
        raise InputError("no input: give COARSE rasters, --target rasters, or both")
    check_output_dir(cfg.out_dir, overwrite=cfg.overwrite)
    check_not_input(cfg.out_dir, [*(("COARSE", c) for c in cfg.coarse),
                                  *(("--target", t) for t in cfg.target),
                                  *((f"--aux {s.name}", s.path) for s in cfg.aux)],
                    option="-o", inside=True)
    coarse_infos = [raster_info(p) for p in cfg.coarse]
    target_infos = [raster_info(p) for p in cfg.target]
    aux_infos = [raster_info(s.path) for s in cfg.aux]
    aux = resolve_categorical(cfg.aux)

    coarse_bands = _band_list(coarse_infos, cfg.time)
    target_bands = _band_list(target_infos, cfg.time)
    if coarse_bands and target_bands and len(coarse_bands) != len(target_bands):
        raise InputError(
            f"COARSE has {len(coarse_bands)} bands in {len(coarse_infos)} file(s) but --target has "
            f"{len(target_bands)}; expected one coarse band per target band (paired by position)")

    ref = coarse_infos[0] if coarse_infos else target_infos[0]
    fine, coarse = plan_grids(ref, res_m=cfg.res_m, factor=cfg.factor, crs=cfg.crs,
                              bounds=cfg.bounds, ref_is_coarse=bool(coarse_infos),
                              aux=aux_infos)
    factor = fine.width // coarse.width
    area = footprint(ref.crs, ref.bounds, fine.crs)
    for info in coarse_infos:
        check_coverage(info, coarse, option="COARSE", area=area)
    for info in target_infos:
        check_coverage(info, fine, option="--target", area=area)
    for spec, info in zip(aux, aux_infos, strict=True):
        check_coverage(info, fine, option=f"--aux {spec.name}", area=area)

    block = max(factor, (cfg.block_px // factor) * factor)
    first = target_infos[0] if target_infos else coarse_infos[0]
    variable = layer_name_from_path(first.path)
    units = next((u for u in first.units if u), "")
    long_name = next((n for n in first.long_names if n), "")
    valid_range = cfg.valid_range or first.valid_range or from_units(units)
    if valid_range is not None and cfg.valid_range is None:
        log.info("valid range %s (from %s); pass --valid-range to change it", valid_range,
                 "its CF valid_range" if first.valid_range else f"units {units}")
    samples = tuple(
        Sample(id=_sample_id(info, b), band=i + 1, source=info.path, source_band=b,
               date=info.dates[b - 1] if b - 1 < len(info.dates) else "")
        for i, (info, b) in enumerate(target_bands or coarse_bands)
    )
    n = len(samples)
    log.info("fine grid %dx%d px at %g m in %s; coarse %dx%d (factor %d); %d sample(s)",
             fine.width, fine.height, fine.res, fine.crs, coarse.width, coarse.height, factor, n)

    with atomic_dir(cfg.out_dir, overwrite=cfg.overwrite) as tmp:
        (tmp / "aux").mkdir()
        target_layer = agg_layer = None
        if target_bands:
            target_layer, agg_layer = _write_target(
                target_bands, fine, coarse, factor, block, tmp, aggregate=not coarse_bands,
                units=units, progress=progress)
        coarse_layer = (_write_coarse(coarse_bands, coarse, block // factor, tmp, units, progress)
                        if coarse_bands else agg_layer)
        aux_layers = tuple(_write_aux(spec, info, fine, block, tmp, progress)
                           for spec, info in zip(aux, aux_infos, strict=True))
        manifest = Manifest(
            fine_grid=fine, coarse_grid=coarse, factor=factor, res_m=fine.res, variable=variable,
            units=units, long_name=long_name, valid_range=valid_range, coarse=coarse_layer,
            target=target_layer, aux=aux_layers,
            samples=samples, geosr_version=__version__,
        )
        manifest.write(tmp)
    final = Manifest(**{**manifest.__dict__, "root": Path(cfg.out_dir)})
    return PrepareResult(out_dir=Path(cfg.out_dir), manifest=final,
                         seconds=time.perf_counter() - t0)


def _sample_id(info: RasterInfo, band: int) -> str:
    return f"{layer_name_from_path(info.path)}_b{band:03d}"


def _check_valid(stats, what: str) -> None:
    if stats.count == 0:
        raise GridError(f"{what}: no valid pixels inside the grid (all nodata); expected data "
                        "over the area")


def _write_target(bands: list[tuple[RasterInfo, int]], fine: Grid, coarse: Grid, factor: int,
                  block: int, tmp: Path, *, aggregate: bool, units: str,
                  progress: Progress | None) -> tuple[Layer, Layer | None]:
    """Warp target bands onto the fine grid; when ``aggregate``, also write their exact
    block means as the coarse layer (the perfect-model experiment)."""
    n = len(bands)
    stats, cstats = RunningStats(), RunningStats()
    windows = list(iter_windows(fine, block))
    total = len(windows) * n
    done = 0
    desc = [f"{layer_name_from_path(i.path)}:{b}" for i, b in bands]
    dst = open_writer(tmp / "target.tif", fine, n, descriptions=desc, units=[units] * n)
    cdst = open_writer(tmp / "coarse.tif", coarse, n, descriptions=desc, units=[units] * n) \
        if aggregate else None
    empty: list[str] = []
    try:
        by_file: dict[str, list[tuple[int, int]]] = {}
        for out_band, (info, b) in enumerate(bands, start=1):
            by_file.setdefault(info.path, []).append((out_band, b))
        infos = {i.path: i for i, _ in bands}
        for path, pairs in by_file.items():
            info = infos[path]
            with AlignedReader(path, fine, resampling_for(info, fine)) as rd:
                for out_band, b in pairs:
                    band_stats = RunningStats()
                    for w in windows:
                        arr = rd.read(w, b)[0]
                        dst.write(arr, out_band, window=w)
                        stats.update(arr)
                        band_stats.update(arr)
                        if cdst is not None:
                            cw = Window(w.col_off // factor, w.row_off // factor,
                                        w.width // factor, w.height // factor)
                            agg = block_mean(arr, factor)
                            cdst.write(agg, out_band, window=cw)
                            cstats.update(agg)
                        done += 1
                        if progress:
                            progress("target", done, total)
                    if band_stats.result().count == 0:
                        empty.append(f"{path} band {b}")
    finally:
        dst.close()
        if cdst is not None:
            cdst.close()
    st = stats.result()
    _check_valid(st, f"--target {', '.join(sorted({i.path for i, _ in bands}))}")
    for what in empty:
        log.warning("--target %s has no valid pixels in the grid", what)
    sources = tuple(sorted({i.path for i, _ in bands}))
    target = Layer(name="target", path="target.tif", grid="fine", bands=n, units=units,
                   source=sources, stats=st)
    agg_layer = None
    if aggregate:
        agg_layer = Layer(name="coarse", path="coarse.tif", grid="coarse", bands=n, units=units,
                          source=sources, stats=cstats.result())
    return target, agg_layer


def _write_coarse(bands: list[tuple[RasterInfo, int]], coarse: Grid, block: int, tmp: Path,
                  units: str, progress: Progress | None) -> Layer:
    """Warp coarse inputs onto the coarse grid with area-weighted averaging."""
    n = len(bands)
    stats = RunningStats()
    windows = list(iter_windows(coarse, max(block, 256)))
    desc = [f"{layer_name_from_path(i.path)}:{b}" for i, b in bands]
    dst = open_writer(tmp / "coarse.tif", coarse, n, descriptions=desc, units=[units] * n)
    done, total = 0, len(windows) * n
    by_file: dict[str, list[tuple[int, int]]] = {}
    infos = {i.path: i for i, _ in bands}
    for out_band, (info, b) in enumerate(bands, start=1):
        by_file.setdefault(info.path, []).append((out_band, b))
    try:
        for path, pairs in by_file.items():
            info = infos[path]
            with AlignedReader(path, coarse, resampling_for(info, coarse, coarse_input=True)) as rd:
                for w in windows:
                    # Several bands per read (hourly NetCDF stacks have hundreds), within
                    # ~64 MB per read.
                    step = max(1, (16 << 20) // max(int(w.width * w.height), 1))
                    for k in range(0, len(pairs), step):
                        chunk = pairs[k:k + step]
                        arr = rd.read(w, [b for _, b in chunk])
                        dst.write(arr, [o for o, _ in chunk], window=w)
                        stats.update(arr)
                        done += len(chunk)
                        if progress:
                            progress("coarse", done, total)
    finally:
        dst.close()
    st = stats.result()
    _check_valid(st, f"COARSE {', '.join(sorted({i.path for i, _ in bands}))}")
    return Layer(name="coarse", path="coarse.tif", grid="coarse", bands=n, units=units,
                 source=tuple(sorted({i.path for i, _ in bands})), stats=st)


def _write_aux(spec: LayerSpec, info: RasterInfo, fine: Grid, block: int, tmp: Path,
               progress: Progress | None) -> Layer:
    """Warp one aux layer (band 1) onto the fine grid."""
    if info.count > 1:
        log.warning("--aux %s has %d bands; using band 1", info.path, info.count)
    stats = RunningStats()
    classes: set[float] = set()
    rel = f"aux/{spec.name}.tif"
    windows = list(iter_windows(fine, block))
    units = info.units[0] if info.units else ""
    dst = open_writer(tmp / rel, fine, 1, descriptions=[spec.name], units=[units])
    resampling = resampling_for(info, fine, categorical=spec.categorical)
    try:
        with AlignedReader(info.path, fine, resampling) as rd:
            for i, w in enumerate(windows, start=1):
                arr = rd.read(w, 1)[0]
                dst.write(arr, 1, window=w)
                stats.update(arr)
                if spec.categorical:
                    classes.update(np.unique(arr[np.isfinite(arr)]).tolist())
                    if len(classes) > MAX_CLASSES:
                        raise InputError(f"--aux {spec.name}={info.path} is categorical but has "
                                         f"more than {MAX_CLASSES} distinct values; expected a "
                                         f"class raster (mark it {spec.name}={info.path}"
                                         ":continuous for continuous data)")
                if progress:
                    progress(f"aux {spec.name}", i, len(windows))
    finally:
        dst.close()
    st = stats.result()
    _check_valid(st, f"--aux {spec.name}={info.path}")
    if resampling is Resampling.nearest and not spec.categorical:
        log.debug("aux %s copied without resampling (aligned)", spec.name)
    return Layer(name=spec.name, path=rel, grid="fine", bands=1, units=units,
                 categorical=bool(spec.categorical), classes=tuple(sorted(classes)),
                 source=(info.path,), stats=st)
