"""`geosr validate`: parse options, call :func:`geosr.validate`, render."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from geosr.cli._app import MULTI_VALUE_OPTIONS, GeosrCommand, app, expand_multi_value
from geosr.cli._common import emit_json, settings, stdout
from geosr.cli.options import (
    parse_baselines,
    parse_layers,
    parse_threshold,
    parse_valid_range,
)
from geosr.errors import InputError
from geosr.evaluate.indices import INDICES
from geosr.evaluate.metrics import METRICS, Better
from geosr.evaluate.report import ValidationReport
from geosr.evaluate.validate import BASELINES, ValidateConfig, validate

EPILOG = """Examples:

  geosr validate pred.tif truth.tif

  geosr validate pred.tif truth.tif --coarse era5.tif --aux dem.tif --plots figs/ --json report.json

  geosr validate pred.tif truth.tif --fail-above rmse=1.2 bias=0.5 --fail-below pearson_r=0.9

Exit codes: 0 all thresholds met, 1 a threshold broken (one line each on stderr),
2 bad input or option. CSV (--csv): long format, one row per (scope, subject, metric):
scope,subject,block_row,block_col,band,date,n_valid,metric,value.
"""

_MULTI = MULTI_VALUE_OPTIONS | {"--fail-below"}
_BASELINE_CHOICES = ", ".join(f"{b.value}{' (needs --aux)' if s.needs_aux else ''}"
                              for b, s in BASELINES.items())


class ValidateCommand(GeosrCommand):
    """``--fail-below`` takes several values after one flag, like ``--fail-above``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value(list(args), _MULTI))


@app.command(name="validate", cls=ValidateCommand, epilog=EPILOG, no_args_is_help=True)
def validate_cmd(
    ctx: typer.Context,
    pred: str = typer.Argument(..., metavar="PRED", help="Prediction raster (evaluation grid)."),
    truth: str = typer.Argument(..., metavar="TRUTH", help="Reference raster; reprojected "
                                "onto PRED's grid when different."),
    coarse: str = typer.Option(None, "--coarse", "-c", metavar="COARSE",
                               help="Coarse input the prediction was made from: enables "
                                    "baselines and the conservation error."),
    aux: list[str] = typer.Option(None, "--aux", "-a", metavar="AUX...",
                                  help="Aux rasters for the sharpen baseline (PATH or "
                                       "NAME=PATH, :categorical or :continuous as in "
                                       "downscale); several after one flag."),
    baselines: str = typer.Option(None, "--baselines", metavar="NAME,...",
                                  help=f"Baselines beside PRED, from: {_BASELINE_CHOICES}; or "
                                       "none. Default with --coarse: bicubic,bilinear,sharpen."),
    blocks: int = typer.Option(0, "--blocks", min=0, metavar="N",
                               help="Also report N x N spatial blocks (and every band)."),
    json_out: str = typer.Option(None, "--json", metavar="FILE|-",
                                 help="Write the report as JSON ('-': stdout, no table)."),
    csv_out: Path = typer.Option(None, "--csv", metavar="FILE",
                                 help="Write the report as CSV (long format, see below)."),
    plots: Path = typer.Option(None, "--plots", metavar="DIR",
                               help="Write PNG maps, scatter and spectra into DIR."),
    plot_band: int = typer.Option(1, "--plot-band", min=1, help="Band shown in the maps."),
    fail_above: list[str] = typer.Option(None, "--fail-above", metavar="METRIC=VALUE...",
                                         help="Exit 1 when PRED's METRIC is above VALUE, "
                                              "e.g. rmse=1.2."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --json/--csv "
                                   "reports."),
    fail_below: list[str] = typer.Option(None, "--fail-below", metavar="METRIC=VALUE...",
                                         help="Exit 1 when PRED's METRIC is below VALUE, "
                                              "e.g. pearson_r=0.9 ssim=0.8."),
    valid_range: str = typer.Option(None, "--valid-range", metavar="MIN:MAX",
                                    help="Report the fraction of pixels outside this range "
                                         "(default: the range PRED records)."),
    interval: tuple[str, str] | None = typer.Option(
        None, "--interval", metavar="LO HI",
        help="Interval bound rasters (e.g. OUT_q05.tif OUT_q95.tif): interval_coverage "
             "(fraction of TRUTH inside) and interval_width (mean HI - LO)."),
    members: str = typer.Option(None, "--members", metavar="FILE",
                                help="Ensemble raster (members x bands, as downscale "
                                     "--members writes): fair CRPS, spread/skill ratio, rank "
                                     "histogram with --plots."),
    wet_threshold: float = typer.Option(None, "--wet-threshold", metavar="VALUE",
                                        help="Wet pixels are >= VALUE (field units) for the "
                                             "wet-pixel frequency bias and p99 bias (default: "
                                             "1 mm/day for precipitation units)."),
) -> None:
    """Compare a prediction with the truth: metrics, baselines, blocks, figures, gates.

    Metrics: rmse, mae, bias (pred - truth), pearson_r, r2, ssim, psnr, kge, wasserstein,
    js_divergence, gradient_ratio, spectrum_error, conservation_rmse (with --coarse),
    frac_outside_range (with a valid range), wet_day_freq_bias and p99_bias (precipitation).
    Multi-date inputs: climate-index biases per pixel over the dates, for PRED and each
    baseline: Rx1day and R10mm (precipitation), TXx and TNn (temperature units).
    """
    thresholds = tuple(parse_threshold(t, bound="above") for t in fail_above or ()) + \
        tuple(parse_threshold(t, bound="below") for t in fail_below or ())
    if json_out is not None and not json_out.strip():
        raise InputError("--json '': expected a file name or '-' for stdout")
    to_stdout = json_out == "-"
    cfg = ValidateConfig(
        pred=pred, truth=truth, coarse=coarse, aux=parse_layers(aux or ()),
        baselines=parse_baselines(baselines) if baselines is not None else None,
        blocks=blocks, thresholds=thresholds, plots_dir=plots, plot_band=plot_band,
        json_path=None if (json_out is None or to_stdout) else Path(json_out),
        csv_path=csv_out, overwrite=overwrite,
        valid_range=parse_valid_range(valid_range) if valid_range is not None else None,
        wet_threshold=wet_threshold,
        interval=tuple(interval) if interval else None, members=members,
    )
    report = validate(cfg)
    if to_stdout:
        emit_json(report.to_dict())
    elif not settings(ctx).quiet:
        render(report)
    for line in report.broken:
        print(f"geosr validate: threshold broken: {line}", file=sys.stderr)
    if report.broken:
        raise typer.Exit(1)


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _best(spec, values: list[float]) -> int | None:
    """Index of the best finite value of a row (None when fewer than two compare)."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(finite) < 2 or len(values) < 2:
        return None
    key = {Better.lower: lambda v: v, Better.higher: lambda v: -v, Better.zero: abs,
           Better.one: lambda v: abs(v - 1)}[spec.better]
    return min(finite, key=lambda iv: key(iv[1]))[0]


def render(report: ValidationReport) -> None:
    """The report as rich tables on stdout."""
    g = report.grid
    units = f" {report.units}" if report.units else ""
    head = (f"PRED {report.pred} vs TRUTH {report.truth}: {report.n_valid:,} valid px "
            f"({g.width}x{g.height} px of {g.res:g}, {g.crs[:30]}, {report.n_bands} band(s))")
    if report.truth_resampling:
        head += f"; TRUTH reprojected ({report.truth_resampling})"
    if report.factor:
        head += f"; coarse factor {report.factor}"
    stdout.print(head, highlight=False)
    cols = ["pred", *report.baselines]
    t = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
              caption="best per row in green" + ("; skill = 1 - RMSE_PRED / RMSE_baseline, "
                                                 "> 0: PRED is better" if report.baselines
                                                 else ""))
    t.add_column("metric")
    for c in cols:
        t.add_column(c.upper() if c == "pred" else c, justify="right")
    for key, spec in METRICS.items():
        values = [report.metrics[key], *(report.baselines[b][key] for b in report.baselines)]
        if key == "conservation_rmse" and not report.factor:
            continue
        if spec.kind in ("range", "precipitation") and not any(
                v is not None and math.isfinite(v) for v in values):
            continue
        best = _best(spec, values)
        cells = [f"[bold green]{_fmt(v)}[/]" if i == best else _fmt(v)
                 for i, v in enumerate(values)]
        label = spec.label + (units if spec.units == "field" else "")
        t.add_row(label, *cells)
    if report.baselines:
        t.add_section()
        t.add_row("skill", "",
                  *(_fmt(report.skill[b]) for b in report.baselines))
    stdout.print(t)
    if report.indices:
        _render_indices(report, units)
    subsets = [*report.blocks, *(report.bands if report.n_bands > 1 else ())]
    if subsets:
        s = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True,
                  title="PRED per block / band" + (" (skill vs each baseline)"
                                                   if report.baselines else ""))
        for name in ("subset", "n_valid", "RMSE", "bias", "r", "SSIM", *report.baselines):
            s.add_column(name, justify="left" if name == "subset" else "right", no_wrap=True)
        for r in subsets:
            where = (f"blk {r.row},{r.col}" if r.scope == "block"
                     else f"band {r.band}{' ' + r.date if r.date else ''}")
            m = r.metrics
            s.add_row(where, str(r.n_valid), *(_fmt(m[k], 3) for k in
                      ("rmse", "bias", "pearson_r", "ssim")),
                      *(_fmt(r.skill.get(b), 3) for b in report.baselines))
        stdout.print(s)
    if report.uncertainty:
        u = report.uncertainty
        labels = {"interval_coverage": "interval coverage", "interval_width": "interval width",
                  "crps": "CRPS (fair, ensemble)", "spread_skill": "spread/skill",
                  "members": "members"}
        stdout.print("uncertainty: " + ", ".join(
            f"{labels[k]} {_fmt(v)}" + (units if k in ("interval_width", "crps") else "")
            for k, v in u.items()), highlight=False)
    if report.domain_shift and report.domain_shift != "none":
        stdout.print(f"domain shift (recorded by downscale): {report.domain_shift}",
                     highlight=False)
    for p in report.plots:
        stdout.print(f"figure: {p}", highlight=False)


def _render_indices(report: ValidationReport, units: str) -> None:
    """One row per climate index score, PRED and the baselines side by side."""
    subjects = list(report.indices)
    t = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
              title=f"climate indices over {report.n_bands} dates "
                    f"({report.n_valid_indices:,} px valid at every date)",
              caption="per pixel over the dates, then pred - truth; best per row in green")
    t.add_column("index")
    for c in subjects:
        t.add_column(c.upper() if c == "pred" else c, justify="right")
    for key in report.indices["pred"]:
        spec = INDICES[key]
        values = [report.indices[s][key] for s in subjects]
        best = _best(spec, values)
        cells = [f"[bold green]{_fmt(v)}[/]" if i == best else _fmt(v)
                 for i, v in enumerate(values)]
        t.add_row(spec.label + (units if spec.units == "field" else ""), *cells)
    stdout.print(t)
