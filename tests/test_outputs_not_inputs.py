"""An output never replaces one of the run's inputs, even through another path or a link,
with or without --overwrite; reports need --overwrite like every other output."""

from __future__ import annotations

import os

import numpy as np
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


# --------------------------------------------------------------------------- rough edges


def _lines(r):
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


@pytest.mark.parametrize("bounds", [["nan", "0", "1", "1"], ["10", "0", "0", "10"]])
def test_bad_bounds_are_named(files, tmp_path, bounds):
    for verb in (["downscale", str(files["coarse"]), "--aux", str(files["dem"]), "-o",
                  str(tmp_path / "o.tif")],
                 ["prepare", "--target", str(files["truth"]), "--factor", "8", "-o",
                  str(tmp_path / "ds")]):
        r = runner.invoke(app, [*verb, "--res", "1000", "--bounds", *bounds])
        _refused(r, "--bounds", "left < right")


def test_crs_far_from_the_data_warns_once(files, tmp_path):
    r = runner.invoke(app, ["downscale", str(files["coarse"]), "--method", "bicubic", "--res",
                            "1000", "--crs", "EPSG:32601", "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 0, r.stderr
    far = [ln for ln in _lines(r) if "meant for" in ln]
    assert len(far) == 1 and "distorted" in far[0], r.stderr


def test_overlap_below_the_method_support_warns(files, tmp_path):
    r = runner.invoke(app, ["downscale", str(files["coarse"]), "--aux", str(files["dem"]),
                            "--res", "1000", "--overlap", "0", "-o", str(tmp_path / "o.tif")])
    assert r.exit_code == 0, r.stderr
    assert any("--overlap 0 px" in ln and "depends on --tile" in ln for ln in _lines(r))


def test_aux_without_information(files, tmp_path):
    dem = files["dem"]
    import rasterio

    with rasterio.open(dem) as src:
        shape, t = (src.height, src.width), src.transform
    empty = write_raster(tmp_path / "empty.tif", np.full(shape, np.nan), transform=t)
    flat = write_raster(tmp_path / "flat.tif", np.full(shape, 300.0), transform=t)
    three = write_raster(tmp_path / "three.tif", np.stack([terrain(shape)] * 3), transform=t)
    base = ["downscale", str(files["coarse"]), "--res", "1000", "-o", str(tmp_path / "o.tif"),
            "--overwrite", "--aux"]
    _refused(runner.invoke(app, [*base, str(empty)]), "empty.tif", "all nodata")
    r = runner.invoke(app, [*base, str(flat)])
    assert r.exit_code == 0 and any("constant" in ln for ln in _lines(r)), r.stderr
    r = runner.invoke(app, [*base, str(three)])
    assert r.exit_code == 0 and any("3 bands" in ln and "band 1" in ln for ln in _lines(r))
