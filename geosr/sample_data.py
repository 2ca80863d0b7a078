"""A generator of realistic sample data for demos and tests, when no real data is at hand.

Terrain: a fractal DEM made by spectral synthesis (power spectrum ~ k^-beta, beta = 2.7,
the range measured on real mountain DEMs) with a mountain range across the scene,
clipped at sea level. Temperature per day: a daily base value, a daily lapse rate
(-4.5 to -7.5 K/km), a regional gradient, a slope-aspect insolation term (warmer on
south-facing slopes, stronger on clear days) and cold-air pooling in valleys on calm
days, plus a little spatially correlated noise. These are the processes a DEM-guided
network should learn; the coarse field is the exact block mean of the fine one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from geosr.arrays import block_mean
from geosr.grid import Grid
from geosr.io.write import open_writer


def fractal_dem(shape: tuple[int, int], *, res_m: float, seed: int = 0, beta: float = 2.7,
                relief_m: float = 2200.0) -> np.ndarray:
    """A fractal DEM in metres (``shape`` rows x cols at ``res_m``)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    k[0, 0] = 1.0
    amp = k ** (-beta / 2)
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, size=amp.shape)
    field = np.fft.irfft2(amp * np.exp(1j * phase), s=(h, w))
    field = (field - field.mean()) / field.std()
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    ridge = np.exp(-((y - 0.45 - 0.15 * np.sin(3 * x)) ** 2) / 0.03)  # a mountain range
    dem = 700 + relief_m * (0.5 * ridge + 0.2 * field + 0.1 * ridge * field)
    return np.clip(dem, 0, None).astype(np.float32)


def temperature_days(dem: np.ndarray, *, res_m: float, n_days: int, seed: int = 1) -> np.ndarray:
    """Daily 2 m air temperature (degC), ``(n_days, rows, cols)``, driven by the DEM."""
    rng = np.random.default_rng(seed)
    h, w = dem.shape
    gy, gx = np.gradient(dem.astype(np.float64), res_m)
    slope = np.arctan(np.hypot(gx, gy))
    aspect_south = -gy / (np.hypot(gx, gy) + 1e-9)  # +1 on south-facing slopes (north-up)
    insolation = np.sin(slope) * aspect_south
    valley = ndimage.gaussian_filter(dem, 12) - dem  # > 0 in valleys
    valley = np.clip(valley, 0, None) / (valley.std() + 1e-9)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n_days, h, w), np.float32)
    for d in range(n_days):
        base = 18 + 4 * np.sin(2 * np.pi * d / 14) + rng.normal(0, 1.0)
        lapse = rng.uniform(-7.5e-3, -4.5e-3)
        clear = rng.uniform(0, 1)
        calm = rng.uniform(0, 1)
        noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6)
        noise /= noise.std() + 1e-9
        t = (base + lapse * dem + 2.0 * (x - 0.5) - 1.0 * (y - 0.5)
             + 4.0 * clear * insolation - 1.5 * calm * valley + 0.25 * noise)
        out[d] = t
    return out


@dataclass(frozen=True)
class SampleScene:
    """Paths of a generated scene."""

    folder: Path
    dem: Path
    train_target: Path
    test_coarse: Path
    test_truth: Path
    factor: int
    res_m: float


def write_sample_scene(folder: str | Path, *, size_px: int = 256, res_m: float = 500.0,
                       factor: int = 16, n_train: int = 12, n_test: int = 4,
                       seed: int = 0) -> SampleScene:
    """Write a DEM, training days (fine target) and test days (coarse input + fine truth).

    The grid is UTM 32N (EPSG:32632) over a made-up Alpine-like area; ``size_px`` is rounded
    down to whole coarse cells.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size_px = max(factor, (size_px // factor) * factor)
    fine = Grid("EPSG:32632", Affine(res_m, 0, 600_000.0, 0, -res_m, 5_200_000.0), size_px, size_px)
    coarse = fine.coarsen(factor)
    dem = fractal_dem((size_px, size_px), res_m=res_m, seed=seed)
    temps = temperature_days(dem, res_m=res_m, n_days=n_train + n_test, seed=seed + 1)
    paths = {
        "dem": folder / "dem.tif", "train": folder / "tas_train.tif",
        "coarse": folder / "tas_test_coarse.tif", "truth": folder / "tas_test_truth.tif",
    }
    _write(paths["dem"], fine, dem[None], units="m", names=["elevation"])
    days = [f"day{d + 1:02d}" for d in range(n_train + n_test)]
    _write(paths["train"], fine, temps[:n_train], units="degC", names=days[:n_train])
    _write(paths["truth"], fine, temps[n_train:], units="degC", names=days[n_train:])
    _write(paths["coarse"], coarse, block_mean(temps[n_train:], factor), units="degC",
           names=days[n_train:])
    return SampleScene(folder=folder, dem=paths["dem"], train_target=paths["train"],
                       test_coarse=paths["coarse"], test_truth=paths["truth"], factor=factor,
                       res_m=res_m)


def _write(path: Path, grid: Grid, data: np.ndarray, *, units: str, names: list[str]) -> None:
    dst = open_writer(path, grid, data.shape[0], descriptions=names, units=[units] * data.shape[0])
    try:
        dst.write(data.astype(np.float32))
    finally:
        dst.close()
