"""The README's Quick start, run as written on real data (HadUK-Grid Cornwall)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_raster

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands() -> list[list[str]]:
    text = README.read_text()
    block = re.search(r"## Quick start\n+```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(ln) for ln in block.splitlines() if ln.startswith("geosr ")]


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_start_runs_as_written(real_data, tmp_path):
    hk = real_data / "haduk-cornwall-1km-may2018"
    os.symlink(hk / "target" / "tasmax1km.tif", tmp_path / "tasmax_obs_1km.tif")
    os.symlink(hk / "aux" / "dtmm.tif", tmp_path / "dtm.tif")
    with rasterio.open(hk / "target" / "tasmax1km.tif") as src:  # a user's own 16 km file
        t, tr = src.read(masked=True).filled(np.nan), src.transform
    n, h, w = t.shape
    with np.errstate(all="ignore"):
        c = np.nanmean(t[:, :h // 16 * 16, :w // 16 * 16].reshape(n, h // 16, 16, w // 16, 16),
                       axis=(2, 4))
    write_raster(tmp_path / "era5_tasmax.tif", c, crs="EPSG:27700",
                 transform=Affine(16 * tr.a, 0, tr.c, 0, 16 * tr.e, tr.f))
    commands = quick_start_commands()
    assert [c[1] for c in commands] == ["prepare", "train", "downscale", "validate"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for cmd in commands:
        r = subprocess.run([sys.executable, "-m", "geosr", *cmd[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    assert (tmp_path / "tasmax_1km.tif").exists() and any((tmp_path / "figs").iterdir())
