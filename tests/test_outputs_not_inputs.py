"""An output never replaces one of the run's inputs, even through another path or a link,
with or without --overwrite; reports need --overwrite like every other output."""

from __future__ import annotations

import os

import pytest
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr.cli import app

runner = CliRunner()
F = 8


@pytest.fixture
def files(tmp_path):
    dem = terrain((4 * F, 4 * F), seed=1)
    c = (15 - 0.0065 * dem).reshape(4, F, 4, F).mean(axis=(1, 3))
    return {"coarse": write_raster(tmp_path / "c.tif", c, res=F * 1000.0),
            "dem": write_raster(tmp_path / "dem.tif", dem, res=1000.0),
            "truth": write_raster(tmp_path / "truth.tif", 15 - 0.0065 * dem, res=1000.0)}


def _refused(r, *needles):
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("target", ["coarse", "dem"])
def test_downscale_output_onto_an_input_is_refused(files, tmp_path, target):
    before = files[target].read_bytes()
    link = tmp_path / "link.tif"
    os.symlink(files[target], link)
    for out in (files[target], link, tmp_path / "." / files[target].name):
        r = runner.invoke(app, ["downscale", str(files["coarse"]), "--aux", str(files["dem"]),
                                "--res", "1000", "-o", str(out), "--overwrite"])
        _refused(r, "-o", "the input", "none of the run's inputs")
    assert files[target].read_bytes() == before


def test_downscale_second_input_is_the_first_output(files, tmp_path):
    first_out = tmp_path / "c_1000m.tif"
    r = runner.invoke(app, ["downscale", str(files["coarse"]), "--aux", str(files["dem"]),
                            "--res", "1000"])
    assert r.exit_code == 0, r.stderr and first_out.exists()
    r = runner.invoke(app, ["downscale", str(files["coarse"]), str(first_out), "--aux",
                            str(files["dem"]), "--res", "1000", "--overwrite"])
    _refused(r, "c_1000m.tif", "the input COARSE")


def test_prepare_folder_holding_an_input_is_refused(files, tmp_path):
    r = runner.invoke(app, ["prepare", "--target", str(files["truth"]), "--aux",
                            str(files["dem"]), "--res", "1000", "--factor", str(F), "-o",
                            str(tmp_path), "--overwrite"])
    _refused(r, "holds", "--target")
    assert files["truth"].exists()


def test_train_onto_the_dataset_is_refused(files, tmp_path):
    ds = tmp_path / "ds"
    r = runner.invoke(app, ["prepare", "--target", str(files["truth"]), "--aux",
                            str(files["dem"]), "--res", "1000", "--factor", str(F), "-o", str(ds)])
    assert r.exit_code == 0, r.stderr
    manifest = (ds / "manifest.json").read_bytes()
    for out in (ds / "manifest.json", ds / "target.tif"):
        r = runner.invoke(app, ["train", str(ds), "-o", str(out), "--epochs", "1", "--overwrite"])
        _refused(r, str(out), "dataset")
    assert (ds / "manifest.json").read_bytes() == manifest


def test_validate_reports_never_replace_inputs_and_need_overwrite(files, tmp_path):
    truth = files["truth"].read_bytes()
    r = runner.invoke(app, ["validate", str(files["truth"]), str(files["truth"]), "--json",
                            str(files["truth"]), "--overwrite"])
    _refused(r, "--json", "the input PRED")
    assert files["truth"].read_bytes() == truth
    report = tmp_path / "r.json"
    report.write_text("{}")
    r = runner.invoke(app, ["validate", str(files["truth"]), str(files["truth"]), "--json",
                            str(report)])
    _refused(r, "r.json", "--overwrite")
    r = runner.invoke(app, ["validate", str(files["truth"]), str(files["truth"]), "--json",
                            str(report), "--overwrite"])
    assert r.exit_code == 0, r.stderr and report.read_text() != "{}"
