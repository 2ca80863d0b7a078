import pytest
from typer.testing import CliRunner

from geosr import __version__
from geosr.cli import app
from geosr.cli._app import expand_multi_value

runner = CliRunner()


def test_help_lists_four_verbs():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for verb in ("prepare", "train", "downscale", "validate"):
        assert verb in r.stdout


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


@pytest.mark.parametrize("verb", ["prepare", "train", "downscale", "validate"])
def test_each_verb_has_help(verb):
    r = runner.invoke(app, [verb, "--help"])
    assert r.exit_code == 0 and "Usage" in r.stdout


def test_expand_multi_value():
    assert expand_multi_value(["c.tif", "--aux", "a.tif", "b.tif", "-o", "x"]) == \
        ["c.tif", "--aux", "a.tif", "--aux", "b.tif", "-o", "x"]
    assert expand_multi_value(["--aux", "a", "--aux", "b", "c"]) == \
        ["--aux", "a", "--aux", "b", "--aux", "c"]
    assert expand_multi_value(["--aux", "--res", "5"]) == ["--aux", "--res", "5"]
    assert expand_multi_value(["--aux", "a", "--", "--aux"]) == ["--aux", "a", "--", "--aux"]


def test_unknown_option_is_one_line_exit_2():
    r = runner.invoke(app, ["prepare", "--nope", "-o", "x"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--nope" in lines[0]


def test_global_flags_after_the_command(tmp_path):
    r = runner.invoke(app, ["prepare", "--target", str(tmp_path / "missing.tif"), "--factor", "4",
                            "-o", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 2 and "missing.tif" in r.stderr and "file not found" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = runner.invoke(app, ["--debug", "prepare", "--target", str(tmp_path / "missing.tif"),
                            "--factor", "4", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_python_m_geosr():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "geosr", "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_prepare_parses_options_and_calls_the_api_once(monkeypatch, tmp_path):
    """The CLI only parses: the API receives exactly the typed values."""
    from types import SimpleNamespace

    import geosr.api
    from geosr.sources import LayerSpec
    from geosr.timerange import TimeRange

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return SimpleNamespace(to_dict=lambda: {"n_samples": 1})

    monkeypatch.setattr(geosr.api, "prepare", fake)
    r = CliRunner().invoke(app, ["prepare", "c.nc:t2m", "--aux", "dem=d.tif", "lc.tif:categorical",
                                 "--res", "1000", "--time", "2018-05", "--bounds", "0", "0",
                                 "10", "10", "-o", str(tmp_path / "ds"), "--json"])
    assert r.exit_code == 0, r.stderr
    seen.pop("progress")
    assert seen == dict(out=tmp_path / "ds", coarse=("c.nc:t2m",), target=(),
                        aux=(LayerSpec("dem", "d.tif"), LayerSpec("lc", "lc.tif", True)),
                        res=1000.0, factor=None, crs=None, bounds=(0.0, 0.0, 10.0, 10.0),
                        time=TimeRange("2018-05", "2018-05"), valid_range=None,
                        overwrite=False)
