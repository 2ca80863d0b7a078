"""Pure metric functions comparing a predicted field with the true one.

Every function takes numpy arrays of the same shape with NaN marking cells without a
value, and compares only the cells valid (finite) in *both*. Pixel and distribution
metrics pool all cells (any shape); spatial metrics work on 2-D fields, and for
``(bands, rows, cols)`` stacks return the mean over bands weighted by each band's
valid-cell count. Arithmetic is float64. A metric that is undefined for the data (too
few cells, zero variance, a zero mean for KGE's beta) is NaN, never an exception.

The registry :data:`METRICS` names every metric once (key, label, which way is better);
``validate`` and the CLI reuse it for the report, thresholds and help texts. Physical
metrics need more than the two fields: the valid range (``frac_outside_range``) or, for
precipitation, a wet threshold (``wet_day_freq_bias``); without it they are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage, stats
from scipy.spatial import distance

from geosr.arrays import block_mean

SSIM_SIGMA = 1.5
"""Gaussian window of SSIM (Wang et al. 2004): sigma 1.5 px, truncated to 11 x 11."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
SPECTRUM_FLOOR = 1e-10
"""Power below this fraction of the peak counts as the floor in ``spectrum_error``."""
JS_BINS = 64
"""Histogram bins shared by prediction and truth for the Jensen-Shannon divergence."""


class Better(str, Enum):
    """Which way a metric improves: its ideal value is 0, 1, lower or higher."""

    lower = "lower"      # rmse, mae, wasserstein ...: 0 is perfect
    higher = "higher"    # psnr: unbounded above
    zero = "zero"        # bias: 0 is perfect, either sign is an error
    one = "one"          # r, r2, ssim, kge, gradient_ratio: 1 is perfect


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the validation report.

    Attributes:
        key: name in JSON/CSV and thresholds (``rmse``).
        label: short human label for tables.
        better: which way is better.
        kind: ``pixel``, ``distribution``, ``spatial``, ``conservation``, ``range`` or
            ``precipitation``.
        units: ``"field"`` when the value is in the field's units, else ``""``.
    """

    key: str
    label: str
    better: Better
    kind: str
    units: str = ""


METRICS: dict[str, MetricSpec] = {m.key: m for m in (
    MetricSpec("rmse", "RMSE", Better.lower, "pixel", "field"),
    MetricSpec("mae", "MAE", Better.lower, "pixel", "field"),
    MetricSpec("bias", "bias (pred - truth)", Better.zero, "pixel", "field"),
    MetricSpec("pearson_r", "Pearson r", Better.one, "pixel"),
    MetricSpec("r2", "R²", Better.one, "pixel"),
    MetricSpec("ssim", "SSIM", Better.one, "spatial"),
    MetricSpec("psnr", "PSNR (dB)", Better.higher, "pixel"),
    MetricSpec("kge", "KGE", Better.one, "pixel"),
    MetricSpec("wasserstein", "Wasserstein-1", Better.lower, "distribution", "field"),
    MetricSpec("js_divergence", "JS divergence", Better.lower, "distribution"),
    MetricSpec("gradient_ratio", "gradient ratio", Better.one, "spatial"),
    MetricSpec("spectrum_error", "spectrum error (log10)", Better.lower, "spatial"),
    MetricSpec("conservation_rmse", "conservation RMSE", Better.lower, "conservation", "field"),
    MetricSpec("frac_outside_range", "fraction outside valid range", Better.lower, "range"),
    MetricSpec("wet_day_freq_bias", "wet-pixel frequency bias", Better.zero, "precipitation"),
    MetricSpec("p99_bias", "p99 bias (pred - truth)", Better.zero, "precipitation", "field"),
)}
"""Every metric, in report order."""

NAN = float("nan")


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values valid in both, as float64 vectors."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} != truth shape {truth.shape}")
    ok = np.isfinite(pred) & np.isfinite(truth)
    return pred[ok].astype(np.float64), truth[ok].astype(np.float64)


def valid_count(pred: np.ndarray, truth: np.ndarray) -> int:
    """Number of cells valid in both arrays."""
    return int((np.isfinite(pred) & np.isfinite(truth)).sum())


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error, in the field's units."""
    p, t = _pair(pred, truth)
    return float(np.sqrt(np.mean((p - t) ** 2))) if p.size else NAN


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error, in the field's units."""
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t))) if p.size else NAN


def bias(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean error ``pred - truth`` (positive: the prediction is too high)."""
    p, t = _pair(pred, truth)
    return float(np.mean(p - t)) if p.size else NAN


def _r(p: np.ndarray, t: np.ndarray) -> float:
    if p.size < 2:
        return NAN
    sp, st = p.std(), t.std()
    if sp == 0 or st == 0:
        return NAN
    return float(np.clip(np.mean((p - p.mean()) * (t - t.mean())) / (sp * st), -1.0, 1.0))


def pearson_r(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation; NaN when either field is constant."""
    return _r(*_pair(pred, truth))


def r2(pred: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination ``1 - SSE/SST`` (negative when worse than the mean)."""
    p, t = _pair(pred, truth)
    if p.size < 2:
        return NAN
    sst = float(((t - t.mean()) ** 2).sum())
    if sst == 0:
        return NAN
    return 1.0 - float(((p - t) ** 2).sum()) / sst


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, data range = truth max - min; +inf when equal."""
    p, t = _pair(pred, truth)
    if not p.size:
        return NAN
    rng = float(t.max() - t.min())
    mse = float(np.mean((p - t) ** 2))
    if mse == 0:
        return math.inf
    if rng == 0:
        return NAN
    return 10.0 * math.log10(rng * rng / mse)


def kge(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kling-Gupta efficiency (Gupta et al. 2009).

    ``1 - sqrt((r - 1)^2 + (alpha - 1)^2 + (beta - 1)^2)`` with ``alpha = std_p/std_t``
    and ``beta = mean_p/mean_t``. Beta makes KGE depend on the origin of the units: it is
    NaN when the true mean is 0 and unstable near it (e.g. temperatures in degC near 0).
    """
    p, t = _pair(pred, truth)
    r = _r(p, t)
    if not math.isfinite(r):
        return NAN
    mt, st = float(t.mean()), float(t.std())
    if mt == 0 or st == 0:
        return NAN
    alpha = float(p.std()) / st
    beta = float(p.mean()) / mt
    return 1.0 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)


def wasserstein(pred: np.ndarray, truth: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance between the value distributions, field units."""
    p, t = _pair(pred, truth)
    return float(stats.wasserstein_distance(p, t)) if p.size else NAN


def js_divergence(pred: np.ndarray, truth: np.ndarray, *, bins: int = JS_BINS) -> float:
    """Jensen-Shannon divergence of the value histograms, base 2, in [0, 1].

    Both histograms share ``bins`` equal bins spanning the joint value range, so the
    number depends on ``bins``; compare runs made with the same setting.
    """
    p, t = _pair(pred, truth)
    if not p.size:
        return NAN
    lo, hi = min(p.min(), t.min()), max(p.max(), t.max())
    if hi <= lo:
        return 0.0
    edges = np.linspace(lo, hi, bins + 1)
    hp = np.histogram(p, edges)[0].astype(np.float64)
    ht = np.histogram(t, edges)[0].astype(np.float64)
    # scipy returns the JS *distance* (square root of the divergence).
    return float(np.clip(distance.jensenshannon(hp, ht, base=2) ** 2, 0.0, 1.0))


def _per_band(fn: Callable[[np.ndarray, np.ndarray], float], pred: np.ndarray,
              truth: np.ndarray) -> float:
    """Apply a 2-D metric per band; mean weighted by the band's valid-cell count."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} != truth shape {truth.shape}")
    if pred.ndim == 2:
        return fn(pred, truth)
    pred = pred.reshape(-1, *pred.shape[-2:])
    truth = truth.reshape(-1, *truth.shape[-2:])
    total, weight = 0.0, 0
    for p, t in zip(pred, truth, strict=True):
        n = valid_count(p, t)
        v = fn(p, t) if n else NAN
        if n and math.isfinite(v):
            total += v * n
            weight += n
    return total / weight if weight else NAN


def _ssim2d(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(truth)
    if ok.sum() < 2:
        return NAN
    t = truth.astype(np.float64)
    p = pred.astype(np.float64)
    rng = float(t[ok].max() - t[ok].min())
    if rng == 0:
        return 1.0 if np.array_equal(p[ok], t[ok]) else NAN
    # Invalid cells take the field's mean so they add no structure to the windows.
    t = np.where(ok, t, t[ok].mean())
    p = np.where(ok, p, p[ok].mean())
    c1, c2 = (SSIM_K1 * rng) ** 2, (SSIM_K2 * rng) ** 2

    def g(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=3.5, mode="reflect")

    mp, mt = g(p), g(t)
    vp = g(p * p) - mp * mp
    vt = g(t * t) - mt * mt
    cov = g(p * t) - mp * mt
    ssim_map = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp ** 2 + mt ** 2 + c1) * (vp + vt + c2))
    return float(ssim_map[ok].mean())


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Structural similarity (Gaussian window, sigma 1.5 px), averaged over valid cells.

    Invalid cells are filled with the field's mean before filtering and left out of the
    average. The data range is the truth's range (max - min), so the constants do not
    depend on the prediction.
    """
    return _per_band(_ssim2d, pred, truth)


def _gradient_magnitude(a: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient magnitude at interior cells whose 4 neighbours are in ``ok``."""
    gx = (a[1:-1, 2:] - a[1:-1, :-2]) / 2.0
    gy = (a[2:, 1:-1] - a[:-2, 1:-1]) / 2.0
    mask = ok[1:-1, 2:] & ok[1:-1, :-2] & ok[2:, 1:-1] & ok[:-2, 1:-1]
    return np.hypot(gx, gy), mask


def _gradient_ratio2d(pred: np.ndarray, truth: np.ndarray) -> float:
    if min(pred.shape) < 3:
        return NAN
    ok = np.isfinite(pred) & np.isfinite(truth)
    gp, mask = _gradient_magnitude(pred.astype(np.float64), ok)
    gt, _ = _gradient_magnitude(truth.astype(np.float64), ok)
    if not mask.any():
        return NAN
    mt = float(gt[mask].mean())
    return float(gp[mask].mean()) / mt if mt > 0 else NAN


def gradient_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean gradient magnitude of the prediction over that of the truth.

    Below 1: the prediction is smoother than the truth (typical of interpolation);
    above 1: it has too much small-scale detail. Central differences, over the cells
    whose four neighbours are valid in both fields.
    """
    return _per_band(_gradient_ratio2d, pred, truth)


def radial_spectrum(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a 2-D field (NaN filled with its mean).

    Returns:
        ``(freq, power)``: frequencies in cycles per pixel (1/N .. 0.5, one bin per
        integer wavenumber of the shorter side) and the mean power in each ring.
        The wavelength in CRS units is ``pixel size / freq``.
    """
    a = np.asarray(field, dtype=np.float64)
    ok = np.isfinite(a)
    if not ok.any() or min(a.shape) < 4:
        return np.empty(0), np.empty(0)
    a = np.where(ok, a, a[ok].mean())
    a = a - a.mean()
    h, w = a.shape
    power = np.abs(np.fft.fft2(a)) ** 2 / (h * w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    n = min(h, w)
    # Ring index in units of the shorter side's fundamental frequency.
    k = np.rint(np.hypot(fy, fx) * n).astype(int)
    kmax = n // 2
    sums = np.bincount(k.ravel(), power.ravel(), minlength=kmax + 1)[1:kmax + 1]
    counts = np.bincount(k.ravel(), minlength=kmax + 1)[1:kmax + 1]
    keep = counts > 0
    freq = np.arange(1, kmax + 1)[keep] / n
    return freq, sums[keep] / counts[keep]


def valid_bbox(ok: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the bounding box of the True cells of a 2-D mask."""
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if not rows.size:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _spectrum_error2d(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(truth)
    box = valid_bbox(ok)
    if box is None:
        return NAN
    p = np.where(ok, pred, np.nan)[box]
    t = np.where(ok, truth, np.nan)[box]
    _, sp = radial_spectrum(p)
    _, st = radial_spectrum(t)
    if not sp.size:
        return NAN
    top = max(float(sp.max()), float(st.max()))
    if top <= 0:
        return 0.0
    # Rings with (numerically) no power would turn round-off into huge log differences:
    # floor both spectra at 1e-10 of the peak (100 dB below it).
    floor = SPECTRUM_FLOOR * top
    sp, st = np.maximum(sp, floor), np.maximum(st, floor)
    return float(np.sqrt(np.mean((np.log10(sp) - np.log10(st)) ** 2)))


def spectrum_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMS difference of the log10 radially averaged power spectra (0 = same spectrum).

    Computed on the bounding box of the cells valid in both, with the other cells filled
    by each field's mean. 1.0 means the powers differ by a factor of 10 on average over
    the wavenumbers.
    """
    return _per_band(_spectrum_error2d, pred, truth)


def conservation_rmse(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """RMSE between the fine field averaged over each coarse cell and the coarse field.

    Args:
        fine: ``(..., H, W)`` fine field, ``H`` and ``W`` multiples of ``factor``.
        coarse: ``(..., H/factor, W/factor)`` coarse field on the nested coarse grid.
        factor: fine cells per coarse cell along each axis.

    Block means use the valid fine cells only; cells NaN on either side are skipped.
    """
    return rmse(block_mean(np.asarray(fine, dtype=np.float32), factor), coarse)


def frac_outside_range(pred: np.ndarray, lo: float = -math.inf, hi: float = math.inf) -> float:
    """Fraction of the valid (finite) cells of ``pred`` below ``lo`` or above ``hi``."""
    v = np.asarray(pred)
    ok = np.isfinite(v)
    n = int(ok.sum())
    if n == 0:
        return NAN
    return float(((v[ok] < lo) | (v[ok] > hi)).sum() / n)


WET_DAY_MM = 1.0
"""Default wet threshold of ``wet_day_freq_bias``: 1 mm/day, the usual wet-day definition
(ETCCDI), converted into the field's units."""


def wet_day_freq_bias(pred: np.ndarray, truth: np.ndarray, threshold: float = WET_DAY_MM
                      ) -> float:
    """Fraction of wet cells (``>= threshold``) in ``pred`` minus that in ``truth``.

    Over the cells valid in both; > 0: the prediction rains on too many pixel-days
    (drizzle spread by interpolation), < 0: too few. ``threshold`` in the field's units.
    """
    p, t = _pair(pred, truth)
    if not p.size:
        return NAN
    return float(np.mean(p >= threshold) - np.mean(t >= threshold))


def p99_bias(pred: np.ndarray, truth: np.ndarray, q: float = 99.0) -> float:
    """``q``-th percentile of ``pred`` minus that of ``truth`` (field units), over the cells
    valid in both: < 0 means the heavy-rain tail is smoothed away."""
    p, t = _pair(pred, truth)
    if not p.size:
        return NAN
    return float(np.percentile(p, q) - np.percentile(t, q))


PAIR_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "rmse": rmse, "mae": mae, "bias": bias, "pearson_r": pearson_r, "r2": r2, "ssim": ssim,
    "psnr": psnr, "kge": kge, "wasserstein": wasserstein, "js_divergence": js_divergence,
    "gradient_ratio": gradient_ratio, "spectrum_error": spectrum_error,
}
"""Metrics computed from (prediction, truth) alone, keyed as in :data:`METRICS`."""


CONTEXT_METRICS = ("conservation_rmse", "frac_outside_range", "wet_day_freq_bias", "p99_bias")
"""Metrics that need more than (prediction, truth): NaN in :func:`compute_all` without it."""


def compute_all(pred: np.ndarray, truth: np.ndarray, *, coarse: np.ndarray | None = None,
                factor: int | None = None, fine_for_conservation: np.ndarray | None = None,
                valid_range: tuple[float, float] | None = None,
                wet_threshold: float | None = None,
                js_bins: int = JS_BINS) -> dict[str, float]:
    """Every metric of :data:`METRICS`, in order; ``conservation_rmse`` is NaN without
    ``coarse``, ``frac_outside_range`` without ``valid_range``, the precipitation metrics
    without ``wet_threshold``.

    Args:
        pred, truth: same-shape arrays, NaN = no value.
        coarse: the coarse field on the nested coarse grid, for the conservation error.
        factor: fine cells per coarse cell.
        fine_for_conservation: the fine field to aggregate (default ``pred``); pass the
            prediction *before* masking by the truth, since conservation concerns the
            prediction alone.
        valid_range: ``(lo, hi)`` (``-inf``/``inf`` for an open side).
        wet_threshold: wet cells are ``>= wet_threshold`` (field units); given for
            precipitation only.
        js_bins: histogram bins of the Jensen-Shannon divergence.
    """
    out = {k: fn(pred, truth) for k, fn in PAIR_METRICS.items() if k != "js_divergence"}
    out["js_divergence"] = js_divergence(pred, truth, bins=js_bins)
    if coarse is not None and factor:
        fine = pred if fine_for_conservation is None else fine_for_conservation
        out["conservation_rmse"] = conservation_rmse(fine, coarse, factor)
    else:
        out["conservation_rmse"] = NAN
    out.update(physical_metrics(pred, truth, valid_range=valid_range,
                                wet_threshold=wet_threshold))
    return {k: out[k] for k in METRICS}


def physical_metrics(pred: np.ndarray, truth: np.ndarray, *,
                     valid_range: tuple[float, float] | None = None,
                     wet_threshold: float | None = None) -> dict[str, float]:
    """``frac_outside_range``, ``wet_day_freq_bias`` and ``p99_bias`` (NaN where not asked)."""
    out = {"frac_outside_range": NAN, "wet_day_freq_bias": NAN, "p99_bias": NAN}
    if valid_range is not None:
        out["frac_outside_range"] = frac_outside_range(pred, *valid_range)
    if wet_threshold is not None:
        out["wet_day_freq_bias"] = wet_day_freq_bias(pred, truth, wet_threshold)
        out["p99_bias"] = p99_bias(pred, truth)
    return out
