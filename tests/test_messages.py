"""What the CLI prints besides results: one line per problem, each once, above the
progress bar, and the bar's Mpx/s."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import write_raster
from rasterio.errors import NotGeoreferencedWarning
from rich.console import Console
from typer.testing import CliRunner

import geosr.api as api
from geosr.cli import _log, app
from geosr.cli._common import make_progress
from geosr.errors import InputError

runner = CliRunner()


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter: Python's own warning machinery, default
    filters, a real stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-m", "geosr", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["png", "netcdf-two-variables"])
def test_no_library_warning_leaks_before_the_error(kind, tmp_path):
    dem = write_raster(tmp_path / "dem.tif", np.full((16, 16), 500.0, np.float32), res=500.0)
    if kind == "png":
        from PIL import Image

        src = tmp_path / "in.png"
        Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20)).save(src)
        needles = ("in.png", "no CRS")
    else:
        import xarray as xr

        src = tmp_path / "two.nc"
        data = np.ones((3, 4), np.float32)
        xr.Dataset({"t2m": (("y", "x"), data), "d2m": (("y", "x"), data)}).to_netcdf(src)
        needles = ("two.nc", "holds 2 variables", "t2m", "d2m")
    res = _cli(["downscale", str(src), "--aux", str(dem), "-o", str(tmp_path / "o.tif")],
               tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("geosr downscale: error: ")
    assert all(n in lines[0] for n in needles), lines[0]


def test_repeated_warning_is_printed_once_and_python_warnings_are_one_line(monkeypatch):
    """The same warning for each of 31 bands prints once; a Python warning prints as a
    geosr line, without the file, line number and source line."""
    log = logging.getLogger("geosr.inference.run")

    def noisy(cfg, progress=None):
        for band in range(31):
            warnings.warn("Dataset has no geotransform, gcps, or rpcs. The identity matrix "
                          "will be returned.", NotGeoreferencedWarning, stacklevel=1)
            log.warning("COARSE in.nc: declares no CRS; assuming EPSG:4326")
            logging.getLogger("rasterio._env").warning("CPLE_AppDefined in band %d", band % 2)
        raise InputError("COARSE in.nc: stop here")

    monkeypatch.setattr(api, "run_downscale", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest (pyproject ignores this one)
        res = runner.invoke(app, ["downscale", "in.nc", "--aux", "dem.tif", "-o", "out.tif"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.stderr
    assert lines == [
        "geosr: warning: Dataset has no geotransform, gcps, or rpcs. The identity matrix will "
        "be returned.",
        "geosr: warning: COARSE in.nc: declares no CRS; assuming EPSG:4326",
        "geosr: warning: CPLE_AppDefined in band 0",
        "geosr: warning: CPLE_AppDefined in band 1",
        "geosr downscale: error: COARSE in.nc: stop here",
    ], lines
    # --quiet silences them all, the error stays
    res = runner.invoke(app, ["--quiet", "downscale", "in.nc", "--aux", "dem.tif"])
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [
        "geosr downscale: error: COARSE in.nc: stop here"]


def test_warning_mid_run_prints_above_the_progress_bar():
    """Through the bar's console: the bar line is erased, the warning printed whole on
    its own line, the bar drawn again below (a plain stream write would glue the text to
    the end of the bar)."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    log = logging.getLogger("test_messages")  # outside "geosr", whatever level a run left
    log.propagate = False
    handler = _log.ConsoleHandler(out=console)
    log.addHandler(handler)
    try:
        with make_progress(pixels=True, console=console, auto_refresh=False) as bar:
            task = bar.add_task("out.tif", total=4e6)
            bar.update(task, completed=1e6)
            bar.refresh()
            log.warning("bands 3-5: no valid coarse cells")
            bar.update(task, completed=2e6)
            bar.refresh()
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert text.count("geosr: warning: bands 3-5: no valid coarse cells\n") == 1
    assert "\x1b[2Kgeosr: warning: bands 3-5" in text  # the bar line was erased first
    # and the CLI binds the two to the same console
    assert make_progress().console is _log.console


def test_progress_shows_output_megapixels_per_second():
    now = [0.0]
    bar = make_progress(pixels=True, console=Console(file=io.StringIO()),
                        get_time=lambda: now[0])
    task = bar.add_task("out.tif", total=8_000_000)
    for t, done in [(1.0, 1_000_000), (2.0, 4_000_000), (3.0, 7_000_000)]:
        now[0] = t
        bar.update(task, completed=done)
    t = bar.tasks[0]
    cols = [c for c in bar.columns if not isinstance(c, str)]
    rendered = [str(c.render(t)) for c in cols if type(c).__name__.startswith("Pixel")]
    assert rendered == ["7.0/8.0 Mpx", "3.00 Mpx/s"], rendered


def test_downscale_progress_counts_output_pixels(tmp_path):
    """The library reports each stage in output pixels (bands x rows x cols), ending at
    the total, so the bar's Mpx/s is the output rate."""
    rng = np.random.default_rng(0)
    coarse = write_raster(tmp_path / "c.tif", 10 + rng.normal(size=(2, 6, 6)).astype(np.float32),
                          res=4000.0)
    dem = write_raster(tmp_path / "dem.tif", rng.normal(500, 50, (24, 24)).astype(np.float32))
    seen: dict[str, list[tuple[int, int]]] = {}
    api.downscale(coarse, aux=[dem], out=tmp_path / "o.tif", res=1000.0, tile=8,
                  progress=lambda stage, done, total: seen.setdefault(stage, []).append(
                      (done, total)))
    assert len(seen) == 2  # the tiles, then the COG write
    for calls in seen.values():
        assert {t for _, t in calls} == {2 * 24 * 24}
        assert calls[-1][0] == 2 * 24 * 24
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(next(iter(seen.values()))) > 3  # several tiles
