"""`geosr downscale`: parse options, call :func:`geosr.downscale`, render."""

from __future__ import annotations

import resource
import shlex
import sys
from pathlib import Path

import typer

from geosr import api
from geosr.cli._app import GeosrCommand, app
from geosr.cli._common import emit_json, progress_bar, stdout
from geosr.cli.options import (
    parse_layers,
    parse_quantiles,
    parse_time_range,
    parse_valid_range,
)
from geosr.device import DeviceChoice
from geosr.inference.config import METHOD_LABELS, CellMean, DownscaleConfig, Method

EPILOG = """Examples:

  geosr downscale coarse.tif --aux dem.tif ndvi.tif        (regression sharpening, no model)

  geosr downscale t_16km.tif --aux dem=dem.tif --model alps-t2m -o t_1km.tif

  geosr downscale day1.tif day2.tif --aux dem=srtm.tif --out-dir out/ --scheduler tcp://10.0.0.5:8786
"""


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    On Linux, ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` carries
    the parent's peak across fork and exec, so a geosr started by a large pipeline
    process would report the parent's memory. Elsewhere ``ru_maxrss`` (macOS: bytes).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@app.command(name="downscale", cls=GeosrCommand, epilog=EPILOG, no_args_is_help=True)
def downscale_cmd(
    ctx: typer.Context,
    coarse: list[str] = typer.Argument(..., metavar="COARSE...",
                                       help="Coarse input rasters (bands = time steps); one "
                                            "output each."),
    aux: list[str] = typer.Option(None, "--aux", "-a", metavar="AUX...",
                                  help="Aux rasters: PATH or NAME=PATH, with :categorical or "
                                       ":continuous to say what they hold (unsaid: class "
                                       "rasters are detected); several after one flag. "
                                       "With --model they are matched to the model's aux "
                                       "by name, else by order."),
    out: Path = typer.Option(None, "--out", "-o", help="Output (one input only), format by "
                             "extension: .tif COG, .nc CF NetCDF, .zarr Zarr store."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Output folder (default: beside each "
                                 "input, named <stem>_<res>m.tif)."),
    model: str = typer.Option(None, "--model", "-m", help="Model bundle file, or the name of a "
                              "shipped model (--model NAME); implies --method net."),
    method: Method = typer.Option(None, "--method", case_sensitive=False,
                                  help="net (needs --model), sharpen (scene-fitted regression "
                                       "sharpening on the aux; default without a model) or "
                                       "bicubic (plain interpolation, aux optional)."),
    res: float = typer.Option(None, "--res", help="Fine resolution in metres (default: the "
                              "model's, else 500)."),
    factor: int = typer.Option(None, "--factor", help="Coarse/fine factor, 2..64 (default: "
                               "the model's, else from the input's cell size)."),
    crs: str = typer.Option(None, "--crs", help="Projected CRS of the grids, e.g. EPSG:3035 "
                            "(default: the input's if projected, else a projected aux's, else "
                            "a local UTM zone)."),
    bounds: tuple[float, float, float, float] | None = typer.Option(
        None, "--bounds", metavar="LEFT BOTTOM RIGHT TOP",
        help="Restrict the output to these bounds, in the grid CRS (default: where the input "
             "and every aux have data)."),
    time: str = typer.Option(None, "--time", metavar="START:END",
                             help="Keep the bands (time steps) dated in this range, e.g. "
                                  "2018-05-01:2018-05-07 or 2018-05 (either side optional)."),
    tile: int = typer.Option(None, "--tile", help="Tile core size in fine pixels, rounded to "
                             "whole coarse cells (default 512 for a network, 768 otherwise)."),
    overlap: int = typer.Option(None, "--overlap", help="Context per tile side in fine pixels, "
                                "blended across tiles (default from the method; 0 for a "
                                "network, whose tiles read their context and meet exactly)."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", case_sensitive=False,
                                        help="Where the network runs (auto: a GPU when present)."),
    workers: int = typer.Option(None, "--workers", help="Local tile threads (default "
                                "min(4, CPUs))."),
    scheduler: str = typer.Option(None, "--scheduler", help="Run tiles on a dask cluster: "
                                  "scheduler address (tcp://host:8786) or scheduler-file path."),
    conserve: bool = typer.Option(None, "--conserve/--no-conserve", help="Make each coarse "
                                  "cell's mean of the output equal the input (default: on, "
                                  "except for bicubic)."),
    cell_mean: CellMean = typer.Option(
        CellMean.auto, "--cell-mean", case_sensitive=False,
        help="What a coarse value is the mean of in a cell where an aux layer is partly "
             "nodata (the sea beyond a DEM's coast), for a network: aux = the pixels where the "
             "aux has data (a land-only product: station grids, ERA5-Land), cell = the whole "
             "cell (reanalysis, climate models); auto = aux when the input has nodata cells, "
             "else cell."),
    valid_range: str = typer.Option(
        None, "--valid-range", metavar="MIN:MAX",
        help="Keep every output pixel in this range while conserving, e.g. 0: (non-negative), "
             "0:100 (percent), -1:1 (either side optional); default: the model's, else the "
             "input's CF valid_range, else 0: for precipitation units."),
    quantiles: str = typer.Option(
        None, "--quantiles", metavar="Q,...",
        help="Also write one map per quantile beside OUT, e.g. 0.05,0.95 -> OUT_q05.tif, "
             "OUT_q95.tif: a probabilistic model's calibrated spread, or without a model the "
             "sharpening regression's residual spread (a rough interval, same at every pixel)."),
    members: int = typer.Option(
        0, "--members", metavar="N", help="Also write N spatially coherent ensemble members, "
        "each conserving every coarse cell, to OUT_members.tif (N x bands); same needs as "
        "--quantiles."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --members noise (same seed, same "
                             "members, whatever --tile)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Downscale coarse rasters onto the fine grid, guided by aux rasters; writes COGs
    (or NetCDF / Zarr by the -o extension)."""
    cfg = DownscaleConfig(
        coarse=tuple(coarse), aux=parse_layers(aux or ()), out=out, out_dir=out_dir,
        model=model, method=method, res_m=res, factor=factor, crs=crs,
        bounds=tuple(bounds) if bounds else None,
        time=parse_time_range(time) if time is not None else None, tile_px=tile,
        overlap_px=overlap, device=device.value, workers=workers, scheduler=scheduler,
        conserve=conserve, cell_mean=cell_mean,
        valid_range=parse_valid_range(valid_range) if valid_range is not None else None,
        overwrite=overwrite, command=shlex.join(["geosr", *sys.argv[1:]]),
        quantiles=parse_quantiles(quantiles) if quantiles is not None else (),
        members=members, seed=seed,
    )
    with progress_bar(ctx, enabled=not json_out, pixels=True) as progress:
        result = api.run_downscale(cfg, progress=progress)
    summary = {**result.to_dict(), "peak_rss_mb": round(_peak_rss_mb(), 1)}
    if json_out:
        emit_json(summary)
        return
    # The final line is printed even with --quiet.
    o = result.outputs
    where = str(o[0].path) if len(o) == 1 else f"{len(o)} files in {Path(o[0].path).parent}"
    bands = sum(x.bands for x in o)
    label = METHOD_LABELS[result.method] + (f" {result.model}" if result.model else "")
    stdout.print(
        f"downscaled {len(o)} input(s) -> {where}: {result.method.value} ({label}"
        f"{', conserved' if result.conserve else ''}), {bands} band(s), "
        f"{o[0].width}x{o[0].height} px at {result.res_m:g} m, {result.seconds:.1f} s, "
        f"{result.mpx_per_s:.2f} Mpx/s", highlight=False, soft_wrap=True)
