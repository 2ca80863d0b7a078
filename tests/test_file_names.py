"""Outputs look like files the user made: folder modes follow the umask, default names
keep the input's letters."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import write_raster
from typer.testing import CliRunner

from geosr.cli import app
from geosr.inference.run import _default_output
from geosr.io.atomic import atomic_dir
from geosr.sources import file_stem_from_path


@pytest.fixture
def umask():
    """Set a umask for the test; the previous one comes back after it."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_folder_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    with atomic_dir(tmp_path / "ds", overwrite=False) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o777 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_prepared_dataset_folder_is_not_private(tmp_path, umask):
    umask(0o022)
    rng = np.random.default_rng(0)
    target = write_raster(tmp_path / "t.tif", 10 + rng.normal(size=(2, 16, 16)), res=1000.0)
    res = CliRunner().invoke(app, ["prepare", "--target", str(target), "--factor", "4",
                                   "--res", "1000", "-o", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o755


@pytest.mark.parametrize(("path", "stem"), [
    ("Zürich.tif", "Zürich"),
    ("/data/東京 気温.tif", "東京 気温"),
    ("São_Paulo-t2m.nc:t2m", "t2m"),
    ('NETCDF:"/d/Genève.nc":tas', "tas"),
    ("a:b|c?.tif", "a_b_c_"),
    ("Zu\u0308rich.tif", "Zürich"),  # decomposed umlaut, as macOS stores it: composed
    ("..hidden .tif", "hidden"),
])
def test_default_output_names_keep_letters(path, stem):
    assert file_stem_from_path(path) == stem


def test_default_output_beside_the_input(tmp_path):
    out = _default_output(str(tmp_path / "Zürich.tif"), 500.0, None)
    assert out == tmp_path / "Zürich_500m.tif"
    assert _default_output("Zürich.tif", 250.0, Path("outs")) == Path("outs/Zürich_250m.tif")
