"""The generalisation benchmark's user-grid coarse input: off prepare's lattice, exact
block means of the truth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "generalisation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_generalisation", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_coarse_file_sits_on_its_own_offset_grid(tmp_path):
    bench = _bench()
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(2, 20, 22)).astype(np.float32)
    fine[:, 0, 0] = np.nan
    transform = Affine(1000.0, 0, 100_000.0, 0, -1000.0, 200_000.0)
    out = bench.coarse_file(fine, transform, "EPSG:32632", 8, (3000.0, 5000.0),
                            tmp_path / "c.tif")
    with rasterio.open(out) as src:
        coarse, t = src.read(), src.transform
        assert src.units == (None, None)
    assert t.a == 8000.0 and (t.c - 3000.0) % 8000 == 0 and (t.f - 5000.0) % 8000 == 0
    assert t.c <= 100_000.0 < t.c + 8000 and t.f >= 200_000.0 > t.f - 8000
    col, row = round((100_000.0 - t.c) / 1000), round((t.f - 200_000.0) / 1000)
    # the first whole coarse cell inside the truth: its mean is the truth's mean there
    r0, c0 = (8 - row) % 8, (8 - col) % 8
    block = fine[:, r0:r0 + 8, c0:c0 + 8]
    got = coarse[:, (row + r0) // 8, (col + c0) // 8]
    np.testing.assert_allclose(got, np.nanmean(block, axis=(1, 2)), rtol=1e-5)
    assert np.isfinite(coarse[:, 0, 0]).all()  # a partial cell holds its valid cells' mean
