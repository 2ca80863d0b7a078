"""geosr.io.read: the per-thread reader cache shared by the tile engine and the
sharpening fit."""

from __future__ import annotations

import threading

import numpy as np
from affine import Affine
from conftest import write_raster
from rasterio.enums import Resampling
from rasterio.windows import Window

from geosr.grid import Grid
from geosr.io.read import AlignedReader, OnGridReader, ReaderCache

GRID = Grid("EPSG:32632", Affine(1000.0, 0, 500_000.0, 0, -1000.0, 5_200_000.0), 8, 6)


def test_reader_cache_keeps_one_reader_per_thread_and_key(tmp_path):
    data = np.arange(48, dtype=np.float32).reshape(6, 8)
    path = write_raster(tmp_path / "a.tif", data)
    with ReaderCache() as cache:
        on_grid = cache.get(path, GRID, None)
        warped = cache.get(str(path), GRID, Resampling.bilinear)
        assert isinstance(on_grid, OnGridReader) and isinstance(warped, AlignedReader)
        assert cache.get(str(path), GRID, None) is on_grid  # same thread, same key
        coarse = cache.get(path, GRID.coarsen(2), Resampling.average)
        assert coarse is not on_grid and coarse.read(Window(0, 0, 4, 3), 1).shape == (1, 3, 4)
        other = []
        t = threading.Thread(target=lambda: other.append(cache.get(path, GRID, None)))
        t.start()
        t.join()
        assert other[0] is not on_grid  # GDAL handles are never shared between threads
        np.testing.assert_array_equal(other[0].read(bands=1)[0], data)
        np.testing.assert_array_equal(warped.read(bands=1)[0], data)
    assert on_grid._src.closed and other[0]._src.closed  # closed for every thread
