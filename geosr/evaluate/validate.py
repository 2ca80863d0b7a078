"""Validation: a prediction against the truth, beside reference baselines.

:func:`validate` reads PRED on its own grid, puts TRUTH on that grid (reprojecting it
when the grids differ), and computes every metric of :data:`geosr.evaluate.metrics.METRICS` over
the pixels valid in both. With a coarse input it also

- infers the integer factor from the coarse cell size (``round(coarse_res / pred_res)``),
  crops PRED's grid to whole coarse cells and reads the coarse input onto that grid's
  nested coarse twin with area-weighted averaging;
- reports the conservation error (PRED averaged over each coarse cell vs the coarse
  input);
- runs the baselines of :data:`BASELINES` (interpolation, regression sharpening with the
  aux layers) and scores them on exactly the same pixels as PRED, with the skill
  ``1 - RMSE_pred / RMSE_baseline`` (> 0: PRED beats the baseline).

With a valid range (``valid_range``, else PRED's own, as ``downscale`` records it) it
reports the fraction of pixels outside it; for precipitation units (or with
``wet_threshold``) the wet-pixel frequency bias and the bias of the 99th percentile,
which show what smoothing does to rain: drizzle everywhere and no heavy tail.

For multi-date inputs (2 bands or more) of precipitation or temperature it also compares
climate indices computed per pixel over the dates (Rx1day and R10mm for rain, TXx and
TNn for temperature; :mod:`geosr.evaluate.indices`), for PRED and each baseline, on the
pixels valid at every date in all of them.

Optionally the same metrics per spatial block and per band (date), figures, and
thresholds that a pipeline can gate on. The whole rasters are held in memory:
roughly ``(3 + baselines) x bands x rows x cols x 4`` bytes.
"""


from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr.align import check_coverage, is_aligned, resampling_for
from geosr.constraints import ValidRange
from geosr.errors import InputError
from geosr.evaluate import indices as CI
from geosr.evaluate import metrics as M
from geosr.evaluate.report import SubsetResult, ValidationReport, write_csv, write_json
from geosr.grid import Grid, native_cell_m
from geosr.io.atomic import check_not_input, check_output_file
from geosr.io.read import AlignedReader, RasterInfo, gdal_env, raster_info
from geosr.sources import LayerSpec, resolve_categorical
from geosr.units import AMOUNT, RATE, conversion, is_temperature, parse_unit

log = logging.getLogger(__name__)


class Baseline(str, Enum):
    """Reference methods that need no training, computed from the coarse input."""

    bicubic = "bicubic"
    bilinear = "bilinear"
    nearest = "nearest"
    sharpen = "sharpen"


@dataclass(frozen=True)
class BaselineSpec:
    """How a baseline runs: whether it needs ``--aux``, and a one-line description."""

    needs_aux: bool
    description: str


BASELINES: dict[Baseline, BaselineSpec] = {
    Baseline.bicubic: BaselineSpec(False, "bicubic interpolation of the coarse input"),
    Baseline.bilinear: BaselineSpec(False, "bilinear interpolation of the coarse input"),
    Baseline.nearest: BaselineSpec(False, "each coarse cell copied onto its fine cells"),
    Baseline.sharpen: BaselineSpec(True, "regression sharpening: coarse-scale linear fit on "
                                         "the aux layers (class indicators for categorical ones), "
                                         "applied at the fine scale, conserving"),
}


DEFAULT_BASELINES = (Baseline.bicubic, Baseline.bilinear, Baseline.sharpen)


def run_baseline(name: Baseline, coarse: np.ndarray, aux: np.ndarray, factor: int, *,
                 categorical: tuple[bool, ...] | None = None,
                 names: tuple[str, ...] | None = None) -> np.ndarray:
    """One baseline on a ``(bands, h, w)`` coarse stack -> ``(bands, h*f, w*f)`` float32.

    Args:
        coarse: the coarse input on the nested coarse grid, NaN = nodata.
        aux: ``(A, h*f, w*f)`` aux layers on the fine grid (sharpen only).
        factor: fine cells per coarse cell.
        categorical: per aux layer, whether it holds classes (sharpen: class indicators).
        names: aux layer names, for logs.
    """
    from geosr import baselines as B

    if name is Baseline.sharpen:
        return np.stack([B.sharpen(c, aux, factor, categorical=categorical, names=names,
                                   conserve=True) for c in coarse])
    return B.upsample(coarse, factor, name.value)


@dataclass(frozen=True)
class Threshold:
    """A gate on one metric of PRED: fail when the value is ``above`` (or ``below``) ``limit``.

    A metric that came out NaN (undefined for the data) breaks its threshold too, since
    the run cannot show it is within bounds.
    """

    metric: str
    limit: float
    bound: str = "above"

    @property
    def option(self) -> str:
        return f"--fail-{self.bound}"

    def check(self, value: float) -> str | None:
        """None when ``value`` is within bounds, else a one-line reason."""
        spec = f"({self.option} {self.metric}={self.limit:g})"
        if value is None or math.isnan(value):
            return f"{self.metric} is undefined (NaN) for these data {spec}"
        if self.bound == "above" and value > self.limit:
            return f"{self.metric} = {value:.6g} is above {self.limit:g} {spec}"
        if self.bound == "below" and value < self.limit:
            return f"{self.metric} = {value:.6g} is below {self.limit:g} {spec}"
        return None


@dataclass(frozen=True)
class ValidateConfig:
    """What to compare and what to produce.

    Attributes:
        pred: the prediction raster (its grid is the evaluation grid).
        truth: the reference raster, any CRS/resolution; reprojected onto PRED's grid
            when different (average when finer, bilinear when coarser).
        coarse: the coarse input the prediction was made from (enables conservation and
            baselines); any CRS, cell size an integer multiple of PRED's (within 10%).
        aux: aux layers for the ``sharpen`` baseline.
        baselines: baselines to run; None = :data:`DEFAULT_BASELINES` when ``coarse`` is
            given (``sharpen`` only with aux).
        blocks: N > 1: also report N x N spatial blocks (edges on coarse cells).
        thresholds: gates checked on PRED's overall metrics.
        plots_dir: folder for PNG figures (created when its parent exists).
        plot_band: 1-based band shown in the maps and spectra.
        json_path, csv_path: report files to write (never one of the inputs).
        overwrite: replace existing report files.
        js_bins: histogram bins for the Jensen-Shannon divergence.
        valid_range: range for ``frac_outside_range`` (default: PRED's recorded range).
        wet_threshold: wet pixels are ``>=`` this, in the field's units (default: 1 mm/day
            in the field's units when they are precipitation units; else no
            precipitation metrics).
        interval: ``(LO, HI)`` rasters of an interval (e.g. ``OUT_q05.tif``,
            ``OUT_q95.tif``), read on PRED's grid: ``interval_coverage`` and
            ``interval_width`` (:func:`geosr.evaluate.probabilistic.interval_scores`).
        members: an ensemble raster of ``M x bands`` bands, member-major (as
            ``downscale --members`` writes it): fair CRPS, spread/skill ratio and, with
            ``plots_dir``, a rank histogram.
    """

    pred: str
    truth: str
    coarse: str | None = None
    aux: tuple[LayerSpec, ...] = ()
    baselines: tuple[Baseline, ...] | None = None
    blocks: int = 0
    thresholds: tuple[Threshold, ...] = ()
    plots_dir: Path | None = None
    plot_band: int = 1
    json_path: Path | None = None
    csv_path: Path | None = None
    overwrite: bool = False
    js_bins: int = M.JS_BINS
    valid_range: ValidRange | None = None
    wet_threshold: float | None = None
    interval: tuple[str, str] | None = None
    members: str | None = None


def _grid_of(info: RasterInfo) -> Grid:
    from affine import Affine

    left, _, _, top = info.bounds
    return Grid(info.crs, Affine(info.res[0], 0.0, left, 0.0, -info.res[1], top), info.width,
                info.height)


def _infer_factor(cinfo: RasterInfo, grid: Grid) -> int:
    coarse_m = native_cell_m(cinfo.crs, cinfo.bounds, cinfo.width, cinfo.height, grid.crs)
    raw = coarse_m / grid.res
    factor = round(raw)
    if factor < 2:
        raise InputError(f"--coarse {cinfo.path}: cell size {coarse_m:.0f} is not coarser than "
                         f"PRED's {grid.res:g} (ratio {raw:.2f}); expected the coarse input "
                         "the prediction was made from")
    if factor > min(grid.width, grid.height):
        raise InputError(f"--coarse {cinfo.path}: one coarse cell ({coarse_m:.0f}, factor "
                         f"{factor}) is larger than PRED ({grid.width}x{grid.height} px); "
                         "expected a PRED covering whole coarse cells")
    if abs(raw - factor) / raw > 0.1:
        log.warning("--coarse cell %.0f / PRED cell %g = %.2f, rounded to factor %d", coarse_m,
                    grid.res, raw, factor)
    return factor


def _coarse_crop(cinfo: RasterInfo, grid: Grid, factor: int) -> Window:
    """The largest window of whole coarse cells; in phase with the coarse raster's own cells
    when it shares PRED's CRS (so no coarse cell is split), else from PRED's corner."""
    col_off = row_off = 0
    if cinfo.crs == grid.crs or grid.rio_crs == _rio(cinfo.crs):
        dx = (cinfo.bounds[0] - grid.bounds[0]) / grid.res
        dy = (grid.bounds[3] - cinfo.bounds[3]) / grid.res
        if abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6:
            col_off, row_off = round(dx) % factor, round(dy) % factor
    w = (grid.width - col_off) // factor * factor
    h = (grid.height - row_off) // factor * factor
    if w == 0 or h == 0:
        col_off = row_off = 0
        w, h = grid.width // factor * factor, grid.height // factor * factor
    return Window(col_off, row_off, w, h)


def _rio(crs: str):
    from rasterio.crs import CRS

    return CRS.from_user_input(crs)


def _read(path: str, grid: Grid, resampling: Resampling) -> np.ndarray:
    with AlignedReader(path, grid, resampling) as rd:
        return rd.read()


def _edges(n_px: int, n_blocks: int, factor: int) -> list[int]:
    """Block edges along one axis, on coarse-cell boundaries."""
    cells = n_px // factor
    return sorted({int(e) * factor for e in np.linspace(0, cells, n_blocks + 1).round()})


def _skill(rmse_pred: float, rmse_base: float) -> float:
    if not (math.isfinite(rmse_pred) and math.isfinite(rmse_base)) or rmse_base == 0:
        return math.nan
    return 1.0 - rmse_pred / rmse_base


def _check_outputs(cfg: ValidateConfig) -> None:
    """Report and figure destinations must be writable; checked before any work."""
    inputs = [("PRED", cfg.pred), ("TRUTH", cfg.truth),
              *((("--coarse", cfg.coarse),) if cfg.coarse else ()),
              *((f"--aux {s.name}", s.path) for s in cfg.aux)]
    for p, option in ((cfg.json_path, "--json"), (cfg.csv_path, "--csv")):
        if p is not None:
            check_not_input(p, inputs, option=option)
            check_output_file(p, overwrite=cfg.overwrite)
    if cfg.json_path is not None and cfg.csv_path is not None and \
            Path(cfg.json_path).resolve() == Path(cfg.csv_path).resolve():
        raise InputError(f"--json and --csv are both {cfg.json_path}; expected two files")
    if cfg.plots_dir is not None:
        d = Path(cfg.plots_dir)
        if d.exists() and not d.is_dir():
            raise InputError(f"--plots {d}: exists and is not a folder; expected a folder name")
        parent = d.parent if str(d.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"--plots {d}: parent folder {parent} does not exist; create it "
                             "first")


def validate(cfg: ValidateConfig) -> ValidationReport:
    """Compare PRED with TRUTH (and the baselines), on PRED's grid.

    Raises:
        InputError: unreadable inputs, no overlap, band-count mismatch, no pixel valid in
            both, a baseline that cannot run with the inputs given.
    """
    t0 = time.perf_counter()
    _check_options(cfg)
    baselines = _plan_baselines(cfg)
    data = _load(cfg, baselines)

    n_pt = M.valid_count(data.pred, data.truth)
    if n_pt == 0:
        raise InputError(f"PRED {cfg.pred} and TRUTH {cfg.truth}: no pixel has a value in both "
                         "(all nodata where they overlap); expected rasters of the same area "
                         "with data")
    fields = {b.value: run_baseline(b, data.coarse, data.aux, data.factor,
                                    categorical=data.aux_categorical, names=data.aux_names)
              for b in baselines}
    # Every column is scored on the same pixels: valid in PRED, TRUTH and every baseline.
    ok = np.isfinite(data.pred) & np.isfinite(data.truth)
    for f in fields.values():
        ok &= np.isfinite(f)
    n_valid = int(ok.sum())
    if n_valid == 0:
        raise InputError(f"--coarse {cfg.coarse}: the baselines have no value on any pixel "
                         "valid in PRED and TRUTH; expected a coarse input covering them")
    if n_valid < n_pt:
        log.info("%d of %d pixels valid in PRED and TRUTH have no baseline value (coarse "
                 "input nodata); all columns use the %d common pixels", n_pt - n_valid, n_pt,
                 n_valid)
    sc = _Scorer(ok, data, fields, js_bins=cfg.js_bins)
    overall = sc.score(np.s_[:], np.s_[:], scope="overall")
    bands = [overall if data.n_bands == 1 else
             sc.score(np.s_[b], np.s_[b], scope="band") for b in range(data.n_bands)]
    bands = [replace(r, scope="band", band=b + 1, date=data.dates[b]) for b, r in enumerate(bands)]
    blocks = []
    if cfg.blocks > 1:
        f = data.factor or 1
        rows = _edges(data.grid.height, cfg.blocks, f)
        cols = _edges(data.grid.width, cfg.blocks, f)
        for i, (r0, r1) in enumerate(zip(rows[:-1], rows[1:], strict=True)):
            for j, (c0, c1) in enumerate(zip(cols[:-1], cols[1:], strict=True)):
                blocks.append(replace(
                    sc.score(np.s_[:, r0:r1, c0:c1], np.s_[:, r0 // f:r1 // f, c0 // f:c1 // f],
                             scope="block"),
                    row=i, col=j, window=(r0, c0, r1 - r0, c1 - c0)))

    indices, n_indices = _indices(sc)
    uncertainty, ranks = _uncertainty(cfg, data, ok)
    plots: tuple[str, ...] = ()
    if cfg.plots_dir is not None and ranks is not None:
        from geosr.evaluate.figures import plot_rank_histogram

        Path(cfg.plots_dir).mkdir(exist_ok=True)
        plots += (str(plot_rank_histogram(Path(cfg.plots_dir) / "rank_histogram.png",
                                          ranks)),)
    if cfg.plots_dir is not None:
        from geosr.evaluate import figures

        variable, band_label = figures.field_labels(data.descriptions, data.dates,
                                                    cfg.plot_band)
        plots += tuple(str(p) for p in figures.write_all(
            Path(cfg.plots_dir), grid=data.grid, truth=sc.truth, pred=sc.pred,
            baselines=sc.fields, band=cfg.plot_band, units=data.units,
            variable=variable, band_label=band_label, metrics=overall.metrics))

    broken = tuple(msg for t in cfg.thresholds if (msg := t.check(overall.metrics[t.metric])))
    report = ValidationReport(
        pred=cfg.pred, truth=cfg.truth, coarse=cfg.coarse, grid=data.grid,
        n_bands=data.n_bands, n_valid=n_valid, n_valid_pred_truth=n_pt,
        metrics=overall.metrics, baselines=sc.baseline_metrics, skill=overall.skill,
        blocks=tuple(blocks), bands=tuple(bands), factor=data.factor,
        truth_resampling=data.truth_resampling, units=data.units,
        valid_range=str(data.valid_range) if data.valid_range is not None else None,
        wet_threshold=data.wet_threshold, plots=plots, broken=broken,
        seconds=time.perf_counter() - t0, uncertainty=uncertainty,
        indices=indices, n_valid_indices=n_indices,
        domain_shift=data.domain_shift or None,
    )
    if cfg.json_path is not None:
        write_json(report, cfg.json_path)
    if cfg.csv_path is not None:
        write_csv(report, cfg.csv_path)
    return report


def _indices(sc: _Scorer) -> tuple[dict[str, dict[str, float]], int]:
    """Climate-index scores of PRED and each baseline (``{}`` when the field is neither
    precipitation nor temperature, or has one band), and the number of pixels they use:
    those valid at every date in all the scored fields."""
    data = sc.data
    if data.n_bands < CI.MIN_DATES:
        return {}, 0
    if data.wet_threshold is not None:
        kind = CI.PRECIPITATION
    elif is_temperature(data.units):
        kind = CI.TEMPERATURE
    else:
        return {}, 0
    heavy = _mm_day_in(CI.HEAVY_MM_DAY, data.units)
    n = int(CI.complete(sc.pred, sc.truth).sum())
    if n == 0:
        log.info("no pixel is valid at all %d dates; climate indices are undefined",
                 data.n_bands)
    fields = {"pred": sc.pred, **sc.fields}
    return {k: CI.index_scores(f, sc.truth, kind, heavy=heavy) for k, f in fields.items()}, n


def _uncertainty(cfg: ValidateConfig, data: _Aligned, ok: np.ndarray
                 ) -> tuple[dict[str, float], np.ndarray | None]:
    """Interval and ensemble scores on the scored pixels (``ok``), and the rank counts."""
    from geosr.evaluate.probabilistic import ensemble_scores, interval_scores, rank_histogram

    out: dict[str, float] = {}
    ranks = None
    truth = np.where(ok, data.truth, np.nan)
    if cfg.interval is not None:
        bounds = []
        for option, path in zip(("--interval LO", "--interval HI"), cfg.interval, strict=True):
            info = raster_info(path)
            if info.count != data.n_bands:
                raise InputError(f"{option} {path}: has {info.count} band(s) but PRED has "
                                 f"{data.n_bands}; expected the same count")
            check_coverage(info, data.grid, option=option)
            with gdal_env():
                bounds.append(_read(path, data.grid, Resampling.nearest))
        iv = interval_scores(bounds[0], bounds[1], truth)
        out.update(interval_coverage=iv["interval_coverage"],
                   interval_width=iv["interval_width"])
    if cfg.members is not None:
        info = raster_info(cfg.members)
        if info.count % data.n_bands:
            raise InputError(f"--members {cfg.members}: has {info.count} band(s), not a "
                             f"multiple of PRED's {data.n_bands}; expected members x bands "
                             "(as downscale --members writes them)")
        m = info.count // data.n_bands
        if m < 2:
            raise InputError(f"--members {cfg.members}: holds {m} member(s); expected 2 or more")
        check_coverage(info, data.grid, option="--members")
        with gdal_env():
            ens = _read(cfg.members, data.grid, Resampling.nearest)
        ens = ens.reshape(m, data.n_bands, *ens.shape[1:])
        sc = ensemble_scores(ens, truth)
        out.update(crps=sc["crps"], spread_skill=sc["spread_skill"], members=float(m))
        ranks = rank_histogram(ens, truth)
    return out, ranks


def _check_options(cfg: ValidateConfig) -> None:
    """Option checks that need no raster, done before any work."""
    _check_outputs(cfg)
    if cfg.blocks < 0:
        raise InputError(f"--blocks {cfg.blocks}: expected 0 (none) or a positive number")
    if cfg.wet_threshold is not None and not math.isfinite(cfg.wet_threshold):
        raise InputError(f"--wet-threshold {cfg.wet_threshold}: expected a finite number")
    if cfg.js_bins < 2:
        raise InputError(f"js_bins {cfg.js_bins}: expected at least 2 histogram bins")
    for t in cfg.thresholds:
        if t.metric not in M.METRICS:
            raise InputError(f"{t.option} {t.metric}: unknown metric; expected one of: "
                             f"{', '.join(M.METRICS)}")
        if t.metric == "conservation_rmse" and not cfg.coarse:
            raise InputError(f"{t.option} {t.metric}={t.limit:g}: conservation_rmse needs "
                             "--coarse COARSE")


@dataclass
class _Aligned:
    """Everything read for one run, on the evaluation grid (and its coarse twin)."""

    grid: Grid
    pred: np.ndarray                      # (bands, H, W)
    truth: np.ndarray                     # (bands, H, W)
    n_bands: int
    dates: tuple[str, ...]
    descriptions: tuple[str, ...]
    units: str
    truth_resampling: str | None = None   # None when TRUTH was on PRED's pixel grid
    factor: int | None = None
    coarse: np.ndarray | None = None      # (bands, H/f, W/f)
    aux: np.ndarray | None = None         # (A, H, W)
    aux_categorical: tuple[bool, ...] = ()
    aux_names: tuple[str, ...] = ()
    valid_range: ValidRange | None = None
    wet_threshold: float | None = None
    domain_shift: str = ""  # PRED's GEOSR_DOMAIN_SHIFT tag


def _load(cfg: ValidateConfig, baselines: tuple[Baseline, ...]) -> _Aligned:
    pinfo, tinfo = raster_info(cfg.pred), raster_info(cfg.truth)
    if pinfo.count != tinfo.count:
        raise InputError(f"TRUTH {cfg.truth}: has {tinfo.count} band(s) but PRED {cfg.pred} has "
                         f"{pinfo.count}; expected the same count (bands pair by position)")
    if not 1 <= cfg.plot_band <= pinfo.count:
        raise InputError(f"--plot-band {cfg.plot_band}: PRED has {pinfo.count} band(s); "
                         f"expected 1..{pinfo.count}")
    grid = _grid_of(pinfo)
    factor = cinfo = None
    if cfg.coarse:
        cinfo = raster_info(cfg.coarse)
        if cinfo.count != pinfo.count:
            raise InputError(f"--coarse {cfg.coarse}: has {cinfo.count} band(s) but PRED has "
                             f"{pinfo.count}; expected the same count (bands pair by position)")
        factor = _infer_factor(cinfo, grid)
        win = _coarse_crop(cinfo, grid, factor)
        if (win.width, win.height) != (grid.width, grid.height):
            log.info("PRED is %dx%d px, not whole %dx%d coarse cells; evaluating the %dx%d px "
                     "at column %d, row %d", grid.width, grid.height, factor, factor,
                     win.width, win.height, win.col_off, win.row_off)
        grid = grid.subgrid(win)
    check_coverage(tinfo, grid, option="TRUTH")
    data = _Aligned(
        grid=grid, pred=np.empty(0), truth=np.empty(0), n_bands=pinfo.count, factor=factor,
        dates=tuple(t or p for t, p in zip(tinfo.dates, pinfo.dates, strict=True)),
        descriptions=tuple(t or p for t, p in zip(tinfo.descriptions, pinfo.descriptions,
                                                  strict=True)),
        units=pinfo.units[0] or tinfo.units[0],
        valid_range=cfg.valid_range or pinfo.valid_range, domain_shift=pinfo.domain_shift)
    data.wet_threshold = _wet_threshold(cfg.wet_threshold, data.units)
    with gdal_env():
        data.pred = _read(cfg.pred, grid, Resampling.nearest)
        truth_rs = resampling_for(tinfo, grid)
        if not is_aligned(tinfo, grid):
            data.truth_resampling = truth_rs.name
            log.warning("TRUTH %s is on another grid (%s, %g x %g) than PRED (%s, %g); "
                        "reprojected onto PRED's grid with %s resampling", cfg.truth,
                        tinfo.crs[:40], tinfo.res[0], tinfo.res[1], grid.crs[:40], grid.res,
                        truth_rs.name)
        elif (tinfo.width, tinfo.height, tinfo.bounds) != (grid.width, grid.height,
                                                           grid.bounds):
            log.info("TRUTH %s is on PRED's pixel grid with another extent; using the overlap",
                     cfg.truth)
        data.truth = _read(cfg.truth, grid, truth_rs)
        if cinfo is not None:
            cgrid = grid.coarsen(factor)
            check_coverage(cinfo, cgrid, option="--coarse")
            data.coarse = _read(cfg.coarse, cgrid,
                                resampling_for(cinfo, cgrid, coarse_input=True))
            if Baseline.sharpen in baselines:
                specs = resolve_categorical(cfg.aux)
                data.aux = _read_aux(specs, grid)
                data.aux_categorical = tuple(bool(s.categorical) for s in specs)
                data.aux_names = tuple(s.name for s in specs)
    return data


class _Scorer:
    """Scores PRED and the baselines on any slice of the common pixels."""

    def __init__(self, ok: np.ndarray, data: _Aligned, fields: dict[str, np.ndarray], *,
                 js_bins: int):
        def masked(a: np.ndarray) -> np.ndarray:
            return np.where(ok, a, np.nan).astype(np.float32)

        self.data = data
        self.pred, self.truth = masked(data.pred), masked(data.truth)
        self.raw = {"pred": data.pred, **fields}  # unmasked, for conservation
        self.fields = {k: masked(f) for k, f in fields.items()}
        self.js_bins = js_bins
        self.baseline_metrics = {k: self.metrics(f, self.truth, k, np.s_[:], np.s_[:])
                                 for k, f in self.fields.items()}

    def metrics(self, p, t, name, sl_fine, sl_coarse) -> dict[str, float]:
        """:func:`geosr.evaluate.metrics.compute_all` on one slice; all NaN (conservation
        included) when no pixel of the slice is valid in both."""
        if not M.valid_count(p, t):
            return {k: math.nan for k in M.METRICS}
        coarse = None if self.data.coarse is None else self.data.coarse[sl_coarse]
        vr = self.data.valid_range
        return M.compute_all(p, t, coarse=coarse, factor=self.data.factor,
                             fine_for_conservation=self.raw[name][sl_fine],
                             valid_range=(vr.lo, vr.hi) if vr else None,
                             wet_threshold=self.data.wet_threshold, js_bins=self.js_bins)

    def score(self, sl_fine, sl_coarse, *, scope: str) -> SubsetResult:
        p, t = self.pred[sl_fine], self.truth[sl_fine]
        m = self.metrics(p, t, "pred", sl_fine, sl_coarse)
        skill = {k: _skill(m["rmse"], M.rmse(f[sl_fine], t)) for k, f in self.fields.items()}
        return SubsetResult(scope=scope, n_valid=M.valid_count(p, t), metrics=m, skill=skill)


def _wet_threshold(given: float | None, units: str) -> float | None:
    """``given``, else 1 mm/day (a rate) or 1 mm (an amount: daily totals) in ``units``;
    None for a field that is not precipitation."""
    if given is not None:
        return float(given)
    return _mm_day_in(M.WET_DAY_MM, units)


def _mm_day_in(mm: float, units: str) -> float | None:
    """``mm`` mm/day in ``units``: a rate, or an amount read as a daily total; None when
    ``units`` are not precipitation units."""
    unit = parse_unit(units)
    if unit is None or unit.quantity not in (RATE, AMOUNT):
        return None
    scale, offset = conversion("mm day-1" if unit.quantity == RATE else "mm", units)
    return mm * scale + offset


def _plan_baselines(cfg: ValidateConfig) -> tuple[Baseline, ...]:
    if cfg.baselines is None:
        if not cfg.coarse:
            return ()
        if not cfg.aux:
            log.info("baseline sharpen skipped: it needs --aux (e.g. an elevation raster)")
            return tuple(b for b in DEFAULT_BASELINES if not BASELINES[b].needs_aux)
        return DEFAULT_BASELINES
    if cfg.baselines and not cfg.coarse:
        raise InputError(f"--baselines {','.join(b.value for b in cfg.baselines)}: baselines "
                         "are computed from the coarse input; add --coarse COARSE")
    for b in cfg.baselines:
        if BASELINES[b].needs_aux and not cfg.aux:
            raise InputError(f"--baselines {b.value}: needs --aux (the fine layers it "
                             "regresses on, e.g. --aux dem.tif)")
    return tuple(cfg.baselines)


def _read_aux(specs: tuple[LayerSpec, ...], grid: Grid) -> np.ndarray:
    """Aux layers on the fine grid, ``(A, H, W)``; band 1 of each (categorical ones
    resampled with mode/nearest)."""
    layers = []
    for spec in specs:
        info = raster_info(spec.path)
        check_coverage(info, grid, option=f"--aux {spec.name}")
        with AlignedReader(spec.path, grid, resampling_for(
                info, grid, categorical=bool(spec.categorical))) as rd:
            layers.append(rd.read(bands=1)[0])
    if not layers:
        return np.empty((0, grid.height, grid.width), np.float32)
    return np.stack(layers)
