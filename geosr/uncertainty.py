"""Per-pixel uncertainty: Gaussian quantile maps and spatially coherent ensemble members
that conserve every coarse cell exactly. Pure numpy, no I/O.

A probabilistic method gives, per fine pixel, a best estimate ``mu`` (conserved: each
coarse cell's block of pixels averages to the coarse value) and a spread ``sigma``: the
standard deviation of the truth around ``mu`` (a Gaussian). From them:

- **quantiles** ``mu + sigma * Phi^-1(q)``: for ``q < 0.5 < q'`` the interval always
  brackets ``mu``;
- **members** ``mu + e - block_mean(e)``: ``e = inflation * sigma * g`` with ``g`` a
  smooth unit-variance Gaussian random field (:func:`coherent_noise`), so members are
  spatially coherent (a warm valley stays warm across pixels) rather than independent
  pixel noise. Subtracting the block mean of the perturbation keeps every coarse cell
  exactly; ``inflation`` (:func:`member_inflation`) puts back the variance that the
  subtraction removes, so a member pixel's spread matches ``sigma`` on average.

The noise is a function of the *global* pixel position (row and column counted from the
origin of the projected CRS), the seed, the member and the band: each pixel's white
noise comes from a counter-based hash of those integers, so any window computes the
same values for its pixels whatever the tile plan, and two runs with the same ``seed``
give identical members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, special

from geosr.arrays import conserve_blocks

LATTICE_PER_LENGTH = 4
"""Lattice points per noise smoothing length: the white noise lives on a lattice of
``length / 4`` pixels and is interpolated bilinearly to pixels, which costs
``(length / 4)**2`` times less than smoothing at every pixel and loses < 1 % of the
variance (neighbouring lattice values correlate at 0.98)."""

KERNEL_TRUNCATE = 4.0
"""Gaussian kernel radius in standard deviations (scipy's default)."""


def check_quantiles(qs: Sequence[float], *, option: str = "--quantiles") -> tuple[float, ...]:
    """Sorted, distinct probabilities in (0, 1).

    Raises:
        ValueError: a value outside (0, 1) or given twice (the message names ``option``).
    """
    out = []
    for q in qs:
        q = float(q)
        if not (0.0 < q < 1.0):
            raise ValueError(f"{option}: {q:g} is not a probability strictly between 0 and 1; "
                             "expected e.g. 0.05,0.95")
        if any(math.isclose(q, o, abs_tol=1e-9) for o in out):
            raise ValueError(f"{option}: {q:g} is given twice; expected distinct values")
        out.append(q)
    return tuple(sorted(out))


def quantile_label(q: float) -> str:
    """File-name tag of a quantile: 0.05 -> ``q05``, 0.5 -> ``q50``, 0.025 -> ``q025``."""
    digits = f"{q:.6f}".rstrip("0").split(".")[1]
    return f"q{digits if len(digits) > 1 else digits + '0'}"


def quantile_maps(mu: np.ndarray, sigma: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """``mu + sigma * Phi^-1(q)`` for each ``q`` (float32, NaN where either is NaN)."""
    return [(mu + np.float32(special.ndtri(q)) * sigma).astype(np.float32) for q in qs]


# ----------------------------------------------------------------- coherent noise


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective 64-bit hash (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _key(*parts: int) -> np.uint64:
    h = np.array([0x9E3779B97F4A7C15], np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            h = _mix(h ^ np.array([p], np.int64).view(np.uint64))
    return h[0]


def hashed_normal(key: np.uint64, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Standard normal white noise at integer lattice positions ``rows x cols``
    (float64), a pure function of ``(key, row, col)``.

    Written by hand: numpy's generators draw streams, not values addressed by position,
    and a tile must reproduce its neighbour's values without drawing them.
    """
    r = np.asarray(rows, np.int64).view(np.uint64)[:, None]
    c = np.asarray(cols, np.int64).view(np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _mix(_mix(key ^ r) ^ c)
        h2 = _mix(h ^ np.uint64(0xD1B54A32D192ED03))
    u1 = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _kernel(sd: float) -> np.ndarray:
    radius = int(KERNEL_TRUNCATE * sd + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sd) ** 2)
    return k / k.sum()


def coherent_noise(*, seed: int, member: int, band: int, row0: int, col0: int, height: int,
                   width: int, length_px: float) -> np.ndarray:
    """A unit-variance Gaussian random field on the pixels ``[row0, row0 + height) x
    [col0, col0 + width)`` of a global pixel lattice.

    White noise on a lattice of spacing ``s = length_px / 4`` pixels, smoothed with a
    Gaussian kernel of ``length_px`` pixels' standard deviation and interpolated
    bilinearly: the field's correlation is ``exp(-d^2 / (4 length_px^2))`` at ``d``
    pixels, i.e. it falls to 1/e at ``2 * length_px``.

    Args:
        seed, member, band: what the field is drawn for.
        row0, col0: global pixel position of the window's first pixel (may be negative).
        height, width: window size in pixels.
        length_px: smoothing length in pixels (> 0).

    Returns:
        ``(height, width)`` float32, the same for a pixel whatever window holds it.
    """
    s = max(1, int(round(length_px / LATTICE_PER_LENGTH)))
    k = _kernel(length_px / s)
    rad = (k.size - 1) // 2

    def axis(p0: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        pos = np.arange(p0, p0 + n, dtype=np.int64)
        lo = np.floor_divide(pos, s)
        frac = (pos - lo * s) / s
        first = int(lo.min()) - rad
        lattice = np.arange(first, int(lo.max()) + 2 + rad, dtype=np.int64)
        return lattice, lo - first - rad, frac, first

    lr, ir, fr, _ = axis(row0, height)
    lc, ic, fc, _ = axis(col0, width)
    white = hashed_normal(_key(seed, member, band), lr, lc)
    smooth = ndimage.correlate1d(white, k, axis=0, mode="constant")[rad:-rad or None]
    smooth = ndimage.correlate1d(smooth, k, axis=1, mode="constant")[:, rad:-rad or None]
    smooth /= float((k * k).sum())  # unit variance: white noise keeps sum(k^2) per axis
    rows = smooth[ir] * (1.0 - fr)[:, None] + smooth[ir + 1] * fr[:, None]
    out = rows[:, ic] * (1.0 - fc)[None, :] + rows[:, ic + 1] * fc[None, :]
    return out.astype(np.float32)


def member_inflation(factor: int, length_px: float) -> float:
    """``1 / sqrt(1 - var(block mean))`` of the unit field of :func:`coherent_noise`.

    Removing each block's mean from a unit-variance field leaves its pixels a mean
    variance of ``1 - var(block mean)``; the correlation is separable, so the block
    mean's variance is the square of the 1-D mean correlation over ``factor`` pixels.
    """
    d = np.arange(factor, dtype=np.float64)
    rho = np.exp(-((d[:, None] - d[None, :]) ** 2) / (4.0 * length_px ** 2))
    var_mean = float(rho.mean()) ** 2
    return 1.0 / math.sqrt(max(1.0 - var_mean, 1e-6))


def default_length_px(factor: int) -> float:
    """Noise smoothing length for a factor: ``factor / 2`` pixels, so that the field's
    correlation falls to 1/e over one coarse cell."""
    return max(1.0, factor / 2.0)


def member_field(mu: np.ndarray, sigma: np.ndarray, coarse: np.ndarray, factor: int, *,
                 seed: int, member: int, bands: Sequence[int], row0: int, col0: int,
                 length_px: float | None = None, conserve: bool = True) -> np.ndarray:
    """One ensemble member of ``(bands, rows, cols)`` fields that conserves every cell.

    Args:
        mu: ``(B, R, C)`` conserved best estimate (NaN = nodata).
        sigma: ``(B, R, C)`` per-pixel standard deviation, same units.
        coarse: ``(B, R / factor, C / factor)`` the coarse values the member conserves.
        factor: fine pixels per coarse cell.
        seed, member: the draw.
        bands: per array band, its band index (the noise key).
        row0, col0: global pixel position of the arrays' first pixel.
        length_px: noise smoothing length; default :func:`default_length_px`.
        conserve: shift each coarse cell back to ``coarse`` (off: the raw perturbation).

    Returns:
        ``(B, R, C)`` float32: ``mu`` plus the coherent perturbation, then shifted per
        coarse cell so that each cell's mean over its valid pixels equals ``coarse``.
    """
    length = default_length_px(factor) if length_px is None else float(length_px)
    gain = np.float32(member_inflation(factor, length))
    out = np.empty_like(mu, dtype=np.float32)
    for k, b in enumerate(bands):
        g = coherent_noise(seed=seed, member=member, band=int(b), row0=row0, col0=col0,
                           height=mu.shape[-2], width=mu.shape[-1], length_px=length)
        sig = np.where(np.isfinite(sigma[k]), sigma[k], 0.0).astype(np.float32)
        out[k] = mu[k] + gain * sig * g
    return conserve_blocks(out, coarse, factor) if conserve else out
