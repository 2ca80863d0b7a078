"""Validation figures as PNG: maps, a density scatter, power spectra.

Figures are built on :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, never through ``pyplot``: no global state, no GUI backend, safe in batch jobs
and threads. Each PNG is written to a temporary name and moved into place.

- ``maps.png``: truth | prediction (one shared colour scale, 2nd-98th percentile of
  both) | prediction - truth (diverging, symmetric around 0); axes in CRS units (km
  for metric CRSs), colour bars labelled with the units.
- ``errors.png`` (with baselines): the error of PRED and of each baseline on one shared
  symmetric scale, so the better method is the paler map.
- ``scatter.png``: 2-D histogram of truth vs prediction (log colour), 1:1 line.
- ``spectra.png``: radially averaged power spectra of truth, prediction and baselines
  against wavelength.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

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


def _grid_axes(fig: Figure, n: int, ncols: int = 3) -> list:
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    return [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


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


def plot_maps(path: Path, *, grid: Grid, truth: np.ndarray, pred: np.ndarray, units: str = "",
              variable: str = "", title: str = "") -> Path:
    """Truth, prediction and error maps side by side (2-D arrays on ``grid``).

    ``variable`` and ``units`` label the colour bars (``TabsM (degC)``).
    """
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
    return _save(fig, path)


def plot_errors(path: Path, *, grid: Grid, truth: np.ndarray, fields: dict[str, np.ndarray],
                units: str = "") -> Path:
    """Error maps (field - truth) of several predictions on one symmetric colour scale."""
    scale, xy = _axis_units(grid)
    errs = {k: v - truth for k, v in fields.items()}
    lim = _sym_limit(*errs.values())
    n = len(errs)
    ncols = min(n, 3)
    fig = Figure(figsize=(5.4 * ncols, 4.6 * math.ceil(n / ncols)), layout="constrained")
    for ax, (name, e) in zip(_grid_axes(fig, n), errs.items(), strict=True):
        r = M.rmse(fields[name], truth)
        _draw_map(fig, ax, e, grid, scale, xy, cmap="RdBu_r", vmin=-lim, vmax=lim,
                  title=f"{name} - truth (RMSE {r:.3g})", cbar_label=_label(units, "error"))
    return _save(fig, path)


def plot_scatter(path: Path, *, truth: np.ndarray, pred: np.ndarray, units: str = "",
                 variable: str = "", bins: int = 120) -> Path:
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
    return _save(fig, path)


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


def plot_spectra(path: Path, *, grid: Grid, fields: dict[str, np.ndarray],
                 truth: np.ndarray) -> Path:
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
    ax.set_xlabel(f"wavelength ({unit})")
    ax.set_ylabel("power (radially averaged)")
    ax.set_title("power spectra (NaN filled with the mean)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_all(folder: Path, *, grid: Grid, truth: np.ndarray, pred: np.ndarray,
              baselines: dict[str, np.ndarray], band: int = 1, units: str = "",
              variable: str = "", metrics: dict[str, float] | None = None) -> list[Path]:
    """Every figure for one validation run; returns the PNG paths.

    Args:
        folder: output folder; created if missing (its parent must exist).
        grid: the evaluation grid of ``truth``/``pred`` (CRS units on the axes).
        truth, pred: ``(bands, rows, cols)``, NaN outside the evaluated pixels.
        baselines: name -> field of the same shape.
        band: 1-based band for maps and spectra (the scatter pools all bands).
        units: field units for colour bars and axes.
        variable: field name for colour bars (e.g. the band description).
    """
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    b = band - 1
    title = ""
    if metrics:
        title = (f"band {band} shown; all bands: RMSE {metrics['rmse']:.3g}   "
                 f"bias {metrics['bias']:+.3g}   r {metrics['pearson_r']:.3f}   "
                 f"SSIM {metrics['ssim']:.3f}")
    out = [plot_maps(folder / "maps.png", grid=grid, truth=truth[b], pred=pred[b], units=units,
                     variable=variable, title=title)]
    if baselines:
        out.append(plot_errors(folder / "errors.png", grid=grid, truth=truth[b],
                               fields={"prediction": pred[b],
                                       **{k: v[b] for k, v in baselines.items()}}, units=units))
    out.append(plot_scatter(folder / "scatter.png", truth=truth, pred=pred, units=units,
                            variable=variable))
    out.append(plot_spectra(folder / "spectra.png", grid=grid, truth=truth[b],
                            fields={"prediction": pred[b],
                                    **{k: v[b] for k, v in baselines.items()}}))
    log.info("wrote %d figures to %s", len(out), folder)
    return out
