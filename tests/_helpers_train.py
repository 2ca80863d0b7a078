"""Fixtures for training and bundle tests: tiny prepared datasets and a tiny network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import terrain, write_raster
from scipy.ndimage import gaussian_filter

from geosr.dataset.prepare import PrepareConfig, prepare
from geosr.sources import LayerSpec

# A network small enough that a few epochs take seconds on two CPU cores.
TINY_ARCH = (("coarse_width", 8), ("branch_width", 4), ("up_width", 8), ("fine_width", 8),
             ("n_blocks", 1), ("fine_blocks", 1))
TINY_ARCH_CLI = [tok for k, v in TINY_ARCH for tok in ("--arch", f"{k}={v}")]


def make_scene(folder: Path, *, size: int = 48, days: int = 4, seed: int = 0,
               categorical: bool = False) -> dict[str, Path]:
    """Write a DEM-driven daily temperature scene (EPSG:32632, 1000 m) into ``folder``.

    ``t = a_day - 0.0065 * dem + smooth noise``; returns paths of target, dem (and lc).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dem = terrain((size, size), seed=seed)
    bands = []
    for d in range(days):
        noise = gaussian_filter(rng.normal(size=(size, size)), 6) * 8
        bands.append(15.0 + d - 0.0065 * dem + noise)
    t = np.stack(bands).astype(np.float32)
    t[:, :3, :5] = np.nan  # a corner of nodata
    paths = {
        "target": write_raster(folder / "t2m.tif", t, band_tags=[
            {"DATE_TIME": f"2020-01-{d + 1:02d}"} for d in range(days)]),
        "dem": write_raster(folder / "dem.tif", dem),
    }
    if categorical:
        lc = np.digitize(dem, [700, 1100]).astype(np.float32)  # classes 0, 1, 2
        paths["lc"] = write_raster(folder / "lc.tif", lc)
    return paths


def make_dataset(tmp_path: Path, *, name: str = "ds", factor: int = 4, **scene) -> Path:
    """Prepare a tiny training dataset (fine 1000 m, ``factor``) and return its folder."""
    src = make_scene(tmp_path / f"{name}_src", **scene)
    aux = [LayerSpec("dem", str(src["dem"]))]
    if "lc" in src:
        aux.append(LayerSpec("lc", str(src["lc"]), categorical=True))
    out = tmp_path / name
    prepare(PrepareConfig(out_dir=out, target=(str(src["target"]),), aux=tuple(aux),
                          res_m=1000.0, factor=factor))
    return out
