"""Shared fixtures: a raster factory writing to tmp_path, and the real sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"


def write_raster(path, data, *, crs="EPSG:32632", transform=None, res=1000.0,
                 origin=(500_000.0, 5_200_000.0), nodata=float("nan"), dtype="float32",
                 tags=None, band_tags=None):
    """Write ``data`` (bands, rows, cols) or (rows, cols) as a GeoTIFF; return the path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if transform is None:
        transform = Affine(res, 0, origin[0], 0, -res, origin[1])
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": dtype, "transform": transform, "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        if tags:
            dst.update_tags(**tags)
        for b, bt in enumerate(band_tags or [], start=1):
            dst.update_tags(b, **bt)
    return Path(path)


def terrain(shape, seed=0):
    """A smooth synthetic DEM (metres) with ridges and valleys."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    dem = 800 + 600 * np.sin(6 * x + 1.3) * np.cos(4 * y) + 400 * np.sin(13 * x * y + 0.5)
    noise = rng.normal(size=(h // 4 + 2, w // 4 + 2))
    from scipy.ndimage import zoom

    dem += 120 * zoom(noise, 4, order=3)[:h, :w]
    return dem.astype(np.float32)


@pytest.fixture
def make_raster(tmp_path):
    """Factory: ``make_raster("name.tif", data, **kw) -> Path`` in tmp_path."""

    def factory(name, data, **kw):
        return write_raster(tmp_path / name, data, **kw)

    return factory


@pytest.fixture
def real_data():
    """Path to ../shared/data/real; skips the test when it is absent."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/real is not available")
    return REAL


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module: tiny tensors run faster on one thread, and
    timings do not collapse when the machine is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
