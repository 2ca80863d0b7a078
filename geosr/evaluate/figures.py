"""Validation figures as PNG: maps, a density scatter, power spectra.

Figures are built on :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, never through ``pyplot``: no global state, no GUI backend, safe in batch jobs
and threads. Each PNG is written to a temporary name and moved into place.

- ``maps.png``: truth | prediction (one shared colour scale, 2nd-98th percentile of
  both) | prediction - truth (diverging, symmetric around 0); axes in CRS units (km
  for metric CRSs), colour bars labelled with the variable and its units.
- ``errors.png`` (with baselines): the error of PRED and of each baseline on one shared
  symmetric scale, so the better method is the paler map; the panel grid is sized to
  the panels (4 maps: 2 x 2), so no cell is left empty where it can be avoided.
- ``scatter.png``: 2-D histogram of truth vs prediction (log colour), 1:1 line.
- ``spectra.png``: radially averaged power spectra of truth, prediction and baselines
  against wavelength; plain-number ticks at 1-2-5 steps and no minor tick labels, which
  would collide on an axis spanning less than a decade.

Maps show the bounding box of the valid pixels, not the whole grid. Each figure is
built by a ``build_*`` function (a :class:`~matplotlib.figure.Figure`, nothing written)
and saved by the matching ``plot_*``.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from rasterio.windows import Window

from geosr.evaluate import metrics as M
from geosr.grid import Grid
from geosr.io.atomic import atomic_path

log = logging.getLogger(__name__)

MAX_MAP_PX = 1500
"""Maps larger than this along a side are decimated for drawing (the figure is ~1000 px)."""
DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _axis_units(grid: Grid) -> tuple[float, str]:
    """Scale and label for the map axes: km for metre CRSs, else the CRS's own units."""
    crs = grid.rio_crs
    name = grid.crs if grid.crs.startswith("EPSG:") else (crs.name or "CRS")
    try:
        units = (crs.linear_units or "").lower() if crs.is_projected else "degree"
    except Exception:  # pragma: no cover - exotic CRS
        units = ""
    if units in ("metre", "meter", "m", "metres", "meters"):
        return 1000.0, f"km, {name}"
    return 1.0, f"{units or 'units'}, {name}"


def _thin(a: np.ndarray) -> np.ndarray:
    step = max(1, math.ceil(max(a.shape) / MAX_MAP_PX))
    return a[::step, ::step]


def _extent(grid: Grid, scale: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = grid.bounds
    return (left / scale, right / scale, bottom / scale, top / scale)


def _label(units: str, what: str = "") -> str:
    text = what or "value"
    return f"{text} ({units})" if units else text


def panel_grid(n: int, max_cols: int = 5) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels: the grid with the fewest empty cells, then the
    squarest, with no more rows than columns (4: 2 x 2, 5: 1 x 5, 6: 2 x 3, 7: 2 x 4)."""
    n = max(1, n)
    shapes = [(math.ceil(n / c), c) for c in range(1, max_cols + 1)]
    shapes = [(r, c) for r, c in shapes if r <= c and (r - 1) * c < n] or \
        [(math.ceil(n / max_cols), max_cols)]
    return min(shapes, key=lambda rc: (rc[0] * rc[1] - n, rc[1] - rc[0]))


def _grid_axes(fig: Figure, n: int) -> list:
    nrows, ncols = panel_grid(n)
    return [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


_BAND_SUFFIX = re.compile(r"[\s_:-]+(\d{1,4}|\d{4}-\d{2}(-\d{2})?([T ][\d:.]+Z?)?)$")


def field_labels(descriptions: tuple[str, ...] | list[str], dates: tuple[str, ...] | list[str],
                 band: int, variable: str = "") -> tuple[str, str]:
    """``(variable, band label)`` for figure labels, instead of raw band ids.

    The variable is ``variable`` when given, else the band description without a trailing
    band number or date (``tasmax_1`` and ``tmax 2018-05-01`` give ``tasmax``, ``tmax``).
    The band label is the band's date, else its description when that says more than the
    variable, else ``band N``. ``band`` is 1-based.
    """
    b = band - 1
    desc = descriptions[b] if b < len(descriptions) and descriptions[b] else ""
    name = variable or _BAND_SUFFIX.sub("", desc).strip() or desc
    date = dates[b] if b < len(dates) and dates[b] else ""
    if date:
        date = re.sub(r"T00:00(:00)?$", "", date)
        label = date
    elif desc and desc != name and not _BAND_SUFFIX.search(desc):
        label = desc
    else:
        label = f"band {band}"
    return name, label


def _crop_to_data(grid: Grid, *arrays: np.ndarray) -> tuple[Grid, list[np.ndarray]]:
    """The arrays and grid cut to the bounding box of pixels valid in any of them."""
    ok = np.zeros(arrays[0].shape, bool)
    for a in arrays:
        ok |= np.isfinite(a)
    box = M.valid_bbox(ok)
    if box is None:
        return grid, list(arrays)
    rows, cols = box
    sub = grid.subgrid(Window(cols.start, rows.start, cols.stop - cols.start,
                              rows.stop - rows.start))
    return sub, [a[rows, cols] for a in arrays]


def _robust_range(*arrays: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if not vals.size:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [2, 98])
    if hi <= lo:
        lo, hi = float(vals.min()), float(vals.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def _sym_limit(*errors: np.ndarray) -> float:
    vals = np.concatenate([np.abs(e[np.isfinite(e)]).ravel() for e in errors])
    lim = float(np.percentile(vals, 98)) if vals.size else 1.0
    return lim if lim > 0 else 1.0


def _draw_map(fig, ax, data, grid, scale, xy_label, *, cmap, vmin, vmax, title, cbar_label):
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(_thin(data)), extent=_extent(grid, scale), cmap=cm,
                   vmin=vmin, vmax=vmax, interpolation="nearest", origin="upper")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(f"easting ({xy_label})", fontsize=8)
    ax.set_ylabel(f"northing ({xy_label})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_aspect("equal")
    cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cb.set_label(cbar_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)


def plot_maps(path: Path, **kw) -> Path:
    """Write :func:`build_maps` as PNG."""
    return _save(build_maps(**kw), path)


def build_maps(*, grid: Grid, truth: np.ndarray, pred: np.ndarray, units: str = "",
               variable: str = "", title: str = "") -> Figure:
    """Truth, prediction and error maps side by side (2-D arrays on ``grid``), cut to the
    valid pixels.

    ``variable`` and ``units`` label the colour bars (``TabsM (degC)``).
    """
    grid, (truth, pred) = _crop_to_data(grid, truth, pred)
    scale, xy = _axis_units(grid)
    lo, hi = _robust_range(truth, pred)
    err = pred - truth
    lim = _sym_limit(err)
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax = _grid_axes(fig, 3)
    _draw_map(fig, ax[0], truth, grid, scale, xy, cmap="viridis", vmin=lo, vmax=hi,
              title="truth", cbar_label=_label(units, variable))
    _draw_map(fig, ax[1], pred, grid, scale, xy, cmap="viridis", vmin=lo, vmax=hi,
              title="prediction", cbar_label=_label(units, variable))
    _draw_map(fig, ax[2], err, grid, scale, xy, cmap="RdBu_r", vmin=-lim, vmax=lim,
              title="prediction - truth", cbar_label=_label(units, f"{variable} error".strip()))
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_errors(path: Path, **kw) -> Path:
    """Write :func:`build_errors` as PNG."""
    return _save(build_errors(**kw), path)


def build_errors(*, grid: Grid, truth: np.ndarray, fields: dict[str, np.ndarray],
                 units: str = "", variable: str = "", title: str = "") -> Figure:
    """Error maps (field - truth) of several predictions on one symmetric colour scale,
    cut to the valid pixels, one panel per field (see :func:`panel_grid`)."""
    names = list(fields)
    grid, (truth, *values) = _crop_to_data(grid, truth, *fields.values())
    fields = dict(zip(names, values, strict=True))
    scale, xy = _axis_units(grid)
    errs = {k: v - truth for k, v in fields.items()}
    lim = _sym_limit(*errs.values())
    nrows, ncols = panel_grid(len(errs))
    fig = Figure(figsize=(5.4 * ncols, 4.6 * nrows), layout="constrained")
    for ax, (name, e) in zip(_grid_axes(fig, len(errs)), errs.items(), strict=True):
        r = M.rmse(fields[name], truth)
        _draw_map(fig, ax, e, grid, scale, xy, cmap="RdBu_r", vmin=-lim, vmax=lim,
                  title=f"{name} - truth (RMSE {r:.3g})",
                  cbar_label=_label(units, f"{variable} error".strip()))
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_scatter(path: Path, **kw) -> Path:
    """Write :func:`build_scatter` as PNG."""
    return _save(build_scatter(**kw), path)


def build_scatter(*, truth: np.ndarray, pred: np.ndarray, units: str = "",
                  variable: str = "", bins: int = 120) -> Figure:
    """Density of truth vs prediction (2-D histogram, log colour) with the 1:1 line."""
    ok = np.isfinite(truth) & np.isfinite(pred)
    t, p = truth[ok].ravel(), pred[ok].ravel()
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    lo = float(min(t.min(), p.min())) if t.size else 0.0
    hi = float(max(t.max(), p.max())) if t.size else 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    if t.size:
        h = ax.hist2d(t, p, bins=bins, range=[[lo, hi], [lo, hi]], norm=LogNorm(),
                      cmap="magma_r", cmin=1)
        cb = fig.colorbar(h[3], ax=ax, pad=0.02)
        cb.set_label("pixels per bin", fontsize=8)
    ax.plot([lo, hi], [lo, hi], color="#1f77b4", lw=1.2, label="1:1")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(_label(units, f"truth {variable}".strip()))
    ax.set_ylabel(_label(units, f"prediction {variable}".strip()))
    ax.set_title(f"n = {t.size:,}   RMSE {M.rmse(p, t):.3g}   r {M.pearson_r(p, t):.3f}",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_rank_histogram(path: Path, counts: np.ndarray) -> Path:
    """Bars of the truth's rank among the ensemble members, as frequencies; a flat
    histogram (dashed line) is a calibrated ensemble, a U shape an over-confident one."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    fig = Figure(figsize=(6.2, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(freq.size), freq, color="#4c72b0", width=0.85)
    ax.axhline(1.0 / freq.size, color="k", ls="--", lw=1, label="calibrated")
    ax.set_xlabel(f"rank of the truth among {freq.size - 1} members")
    ax.set_ylabel("frequency")
    ax.set_title(f"rank histogram, n = {int(counts.sum()):,}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_spectra(path: Path, **kw) -> Path:
    """Write :func:`build_spectra` as PNG."""
    return _save(build_spectra(**kw), path)


def _plain_log_ticks(axis) -> None:
    """Ticks at 1-2-5 steps labelled as plain numbers; minor ticks unlabelled (matplotlib
    labels them on an axis spanning under a decade, and they then overlap)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def build_spectra(*, grid: Grid, fields: dict[str, np.ndarray], truth: np.ndarray,
                  units: str = "", variable: str = "") -> Figure:
    """Radially averaged power spectra of the truth and each field, vs wavelength."""
    ok = np.isfinite(truth)
    for f in fields.values():
        ok &= np.isfinite(f)
    box = M.valid_bbox(ok)
    scale, xy = _axis_units(grid)
    unit = xy.split(",")[0]
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    styles = {"truth": dict(color="black", lw=2.2)}
    for name, f in {"truth": truth, **fields}.items():
        if box is None:
            break
        freq, power = M.radial_spectrum(np.where(ok, f, np.nan)[box])
        if not freq.size:
            continue
        wavelength = grid.res / freq / scale
        ax.loglog(wavelength, power, label=name, **styles.get(name, dict(lw=1.3)))
    ax.invert_xaxis()  # large scales left, fine detail right
    _plain_log_ticks(ax.xaxis)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"wavelength ({unit})")
    power = f"({units})²" if units else ""
    ax.set_ylabel(" ".join(x for x in ("power", power, "(radially averaged)") if x))
    ax.set_title(f"{variable + ' ' if variable else ''}power spectra (NaN filled with the "
                 "mean)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_all(folder: Path, *, grid: Grid, truth: np.ndarray, pred: np.ndarray,
              baselines: dict[str, np.ndarray], band: int = 1, units: str = "",
              variable: str = "", band_label: str = "",
              metrics: dict[str, float] | None = None) -> list[Path]:
    """Every figure for one validation run; returns the PNG paths.

    Args:
        folder: output folder; created if missing (its parent must exist).
        grid: the evaluation grid of ``truth``/``pred`` (CRS units on the axes).
        truth, pred: ``(bands, rows, cols)``, NaN outside the evaluated pixels.
        baselines: name -> field of the same shape.
        band: 1-based band for maps and spectra (the scatter pools all bands).
        units: field units for colour bars and axes.
        variable: field name for colour bars (see :func:`field_labels`).
        band_label: what the shown band is (its date, see :func:`field_labels`).
    """
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    b = band - 1
    shown = f"{variable + ' ' if variable else ''}{band_label or f'band {band}'}"
    if truth.shape[0] > 1:
        shown += f" (band {band} of {truth.shape[0]})" if band_label else f" of {truth.shape[0]}"
    title = shown
    if metrics:
        title = (f"{shown} shown; all bands: RMSE {metrics['rmse']:.3g}   "
                 f"bias {metrics['bias']:+.3g}   r {metrics['pearson_r']:.3f}   "
                 f"SSIM {metrics['ssim']:.3f}")
    out = [plot_maps(folder / "maps.png", grid=grid, truth=truth[b], pred=pred[b], units=units,
                     variable=variable, title=title)]
    if baselines:
        out.append(plot_errors(folder / "errors.png", grid=grid, truth=truth[b],
                               fields={"prediction": pred[b],
                                       **{k: v[b] for k, v in baselines.items()}}, units=units,
                               variable=variable, title=shown))
    out.append(plot_scatter(folder / "scatter.png", truth=truth, pred=pred, units=units,
                            variable=variable))
    out.append(plot_spectra(folder / "spectra.png", grid=grid, truth=truth[b],
                            fields={"prediction": pred[b],
                                    **{k: v[b] for k, v in baselines.items()}},
                            units=units, variable=variable))
    log.info("wrote %d figures to %s", len(out), folder)
    return out
