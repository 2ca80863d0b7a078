"""`geosr prepare`: parse options, call :func:`geosr.prepare`, render."""

from __future__ import annotations

from pathlib import Path

import typer

from geosr import api
from geosr.cli._app import GeosrCommand, app
from geosr.cli._common import emit_json, progress_bar, say
from geosr.cli.options import parse_layers, parse_time_range, parse_valid_range

EPILOG = """Examples:

  geosr prepare --target tasmax1km.tif --aux dtmm.tif --factor 16 --res 1000 -o ds/

  geosr prepare era5_t2m.tif --target haduk_tasmax.tif --aux dem=dtm.tif \
lc=landcover.tif:categorical -o ds/

  geosr prepare coarse.tif --aux dem.tif ndvi.tif -o ds/   (inference dataset, no target)
"""


@app.command(name="prepare", cls=GeosrCommand, epilog=EPILOG, no_args_is_help=True)
def prepare_cmd(
    ctx: typer.Context,
    coarse: list[str] = typer.Argument(None, metavar="[COARSE]...",
                                       help="Coarse input rasters (bands = samples)."),
    target: list[str] = typer.Option(None, "--target", "-t", metavar="FINE...",
                                     help="Fine target rasters for training (bands = samples)."),
    aux: list[str] = typer.Option(None, "--aux", "-a", metavar="AUX...",
                                  help="Aux rasters: PATH or NAME=PATH, with :categorical or "
                                       ":continuous to say what they hold (unsaid: class "
                                       "rasters are detected); several after one flag."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create."),
    res: float = typer.Option(500.0, "--res", help="Fine resolution in metres."),
    factor: int = typer.Option(None, "--factor", help="Coarse/fine factor, 2..64 "
                               "(default: from the coarse input's cell size)."),
    crs: str = typer.Option(None, "--crs", help="Projected CRS of the grids, e.g. EPSG:3035 "
                            "(default: the input's if projected, else a projected aux's, "
                            "else a local UTM zone)."),
    bounds: tuple[float, float, float, float] | None = typer.Option(
        None, "--bounds", metavar="LEFT BOTTOM RIGHT TOP",
        help="Restrict to these bounds, in the grid CRS."),
    time: str = typer.Option(None, "--time", metavar="START:END",
                             help="Keep the bands (samples) dated in this range, e.g. "
                                  "2018-05-01:2018-05-20 (either side optional)."),
    valid_range: str = typer.Option(
        None, "--valid-range", metavar="MIN:MAX",
        help="The variable's valid range, e.g. 0: (precipitation) or 0:100, recorded for "
             "train and downscale (default: the input's CF valid_range, else 0: for "
             "precipitation units)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Align coarse inputs, fine targets and aux rasters onto one fine grid and its coarse twin."""
    kwargs = dict(
        out=out, coarse=tuple(coarse or ()), target=tuple(target or ()),
        aux=parse_layers(aux or ()), res=res, factor=factor, crs=crs,
        bounds=tuple(bounds) if bounds else None,
        time=parse_time_range(time) if time is not None else None,
        valid_range=parse_valid_range(valid_range) if valid_range is not None else None,
        overwrite=overwrite,
    )
    with progress_bar(ctx, enabled=not json_out) as progress:
        result = api.prepare(**kwargs, progress=progress)
    if json_out:
        emit_json(result.to_dict())
        return
    d = result.to_dict()
    say(ctx, f"prepared {d['n_samples']} sample(s) on a "
             f"{d['fine_shape'][1]}x{d['fine_shape'][0]} px "
             f"{d['res_m']:g} m grid (factor {d['factor']}, {d['crs'][:40]}) -> {out} "
             f"in {d['seconds']:.1f} s")
