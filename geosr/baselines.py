"""Reference downscaling methods: interpolation and scene-fitted regression sharpening.

These need no training data. They are the yardsticks ``validate`` reports beside the
network, and ``downscale --method sharpen`` is the default when no model is given.

Sharpening takes continuous aux as they are and categorical aux (land cover) as 0/1
indicators of their classes: :func:`coarse_layers` (or the tiled reader of
``downscale``) summarises each layer on the coarse grid, :func:`fit_sharpen` fits the
scene once, :func:`sharpen_tile` applies the fit to any window; :func:`sharpen` is the
three on a whole array.

Geometry: a coarse cell ``(i, j)`` covers fine pixels ``[i*f, (i+1)*f) x [j*f, (j+1)*f)``;
interpolation places coarse values at cell centres (``align_corners=False``), which is
what makes a tile of a padded coarse window identical to the same pixels of the whole.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage

from geosr.arrays import block_mean, conserve_blocks, fill_nearest, mask_nodata_blocks

log = logging.getLogger(__name__)


class Interp(str, Enum):
    """Interpolation kernels for :func:`upsample`."""

    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


def upsample(coarse: np.ndarray, factor: int, method: str | Interp = Interp.bicubic) -> np.ndarray:
    """Interpolate a coarse field onto the nested fine grid.

    Args:
        coarse: ``(..., h, w)`` values on the coarse grid, NaN = nodata.
        factor: integer fine/coarse ratio.
        method: ``nearest``, ``bilinear`` or ``bicubic``.

    Returns:
        ``(..., h*factor, w*factor)`` float32; NaN where the covering coarse cell is NaN.
        NaN cells are filled from their nearest valid neighbour before interpolating, so
        nodata never leaks into valid cells.

    The kernels are torch's ``interpolate`` (``align_corners=False``; bicubic with
    ``A = -0.75``) on the field replicate-padded by the kernel's reach, so that the edge
    continues flat. Both axes are separable: two small matrix products per field in
    float64 (:func:`_axis_weights`), without torch (its import alone takes ~2 s) and 3x
    faster than its kernel at factor 20.
    """
    method = Interp(method)
    lead = coarse.shape[:-2]
    h, w = coarse.shape[-2:]
    flat = coarse.reshape(-1, h, w).astype(np.float32)
    filled = fill_nearest(flat)
    t = np.nan_to_num(filled, nan=0.0).astype(np.float64)
    wy = _axis_weights(h, factor, method.value)
    wx = _axis_weights(w, factor, method.value)
    out = np.matmul(np.matmul(wy, t), wx.T)
    out = mask_nodata_blocks(np.ascontiguousarray(out, dtype=np.float32), flat, factor)
    return out.reshape(*lead, h * factor, w * factor)


def _cubic(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractions ``t`` (torch's A=-0.75)."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def _axis_weights(n: int, factor: int, method: str) -> np.ndarray:
    """``(n * factor, n)`` float64 matrix taking ``n`` coarse values along an axis to the
    fine pixels; the edge value is repeated past the ends (replicate padding)."""
    out = np.zeros((n * factor, n), np.float64)
    rows = np.arange(n * factor)
    if method == "nearest":
        out[rows, rows // factor] = 1.0
        return out
    pad = 2 if method == "bicubic" else 1
    # Source coordinate on the padded axis of torch's align_corners=False (scale 1/factor).
    x = (rows + pad * factor + 0.5) / factor - 0.5
    if method == "bilinear":
        x = np.maximum(x, 0.0)
        x0 = np.floor(x).astype(np.int64)
        lam = x - x0
        taps = np.stack([x0, x0 + 1], axis=-1)
        weights = np.stack([1.0 - lam, lam], axis=-1)
    else:
        x0 = np.floor(x).astype(np.int64)
        taps = x0[:, None] + np.arange(-1, 3)[None, :]
        weights = _cubic(x - x0)
    src = np.clip(taps, 0, n + 2 * pad - 1) - pad  # index on the padded axis -> coarse cell
    np.add.at(out, (np.repeat(rows, taps.shape[1]), np.clip(src, 0, n - 1).ravel()),
              weights.ravel())
    out.setflags(write=False)  # shared by the cache
    return out


MIN_CLASS_SHARE = 0.01
"""Classes covering less of the valid area get no indicator (pooled into the reference)."""
MAX_CLASSES = 12
"""Classes of one categorical layer modelled at most, the reference included."""
CLASS_SHRINK = 0.5
"""Ridge weight of class indicators, in pixel units (see :func:`_fit_classes`). With 0.5
the MeteoSwiss land type made none of 7 temperature, precipitation and sunshine fields
worse at 16 km -> 1 km or 8 km -> 1 km (0.1: up to 6 % worse), while a real class effect
keeps a fair share of its size (benchmarks/landcover_sharpen.py, tests/test_classes.py)."""
MAX_CLASS_VALUES = 256
"""Distinct values a categorical layer may hold (as ``prepare`` allows)."""
CLASS_P_MAX = 1e-3
"""Class terms are used only when they explain the local contrasts of the coarse field
at this significance (F test); else their coefficients are 0."""


@dataclass(frozen=True)
class CoarseLayer:
    """One aux layer summarised on the coarse grid, as the sharpening fit needs it.

    Attributes:
        name: layer name (for logs and output tags).
        values: ``(1, h, w)`` mean of a continuous layer over each coarse cell, or
            ``(K, h, w)`` share of each class among the layer's valid fine pixels of the
            cell (the exact mean of the fine 0/1 indicators); NaN where no fine pixel of
            the cell is valid.
        classes: the ``K`` class values; None for a continuous layer.
    """

    name: str
    values: np.ndarray
    classes: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SharpenTerm:
    """One predictor of the sharpening regression.

    Attributes:
        layer: index of the aux layer it is computed from.
        value: class of a categorical layer (the predictor is the 0/1 indicator
            ``aux == value``); None for a continuous layer's own value.
        label: name in logs and output tags: ``dem``, ``landcover=12``.
    """

    layer: int
    value: float | None = None
    label: str = ""


def _column(term: SharpenTerm, aux: np.ndarray) -> np.ndarray:
    """One predictor from aux layers ``(A, ...)``: float32, NaN where its layer is NaN."""
    a = aux[term.layer]
    if term.value is None:
        return a
    out = (a == np.float32(term.value)).astype(np.float32)
    out[~np.isfinite(a)] = np.nan
    return out


def check_class_count(n: int, label: str) -> None:
    """Refuse a "categorical" layer with more distinct values than a class raster has.

    ``label``: ``name=path`` (or the layer name) for the message.
    """
    if n > MAX_CLASS_VALUES:
        from geosr.errors import InputError

        fix = f"{label}:continuous" if "=" in label else f"{label}=PATH:continuous"
        raise InputError(f"--aux {label} is categorical but has more than {MAX_CLASS_VALUES} "
                         f"distinct values; expected a class raster (mark it {fix} for "
                         "continuous data)")


def preselect_classes(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Classes worth summarising on the coarse grid, from their fine pixel counts.

    Keeps classes with at least half of :data:`MIN_CLASS_SHARE` of the pixels, the
    ``2 * MAX_CLASSES`` most frequent at most: this bounds the memory of the per-class
    coarse shares while leaving the final choice (:func:`fit_sharpen`, on the area where
    the coarse field is valid) to classes that can still pass it in practice.
    """
    values, counts = np.asarray(values, np.float64), np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return values[:0]
    order = np.argsort(-counts, kind="stable")[:2 * MAX_CLASSES]
    keep = order[counts[order] >= 0.5 * MIN_CLASS_SHARE * total]
    return np.sort(values[keep])


def coarse_layers(aux_fine: np.ndarray, factor: int, *,
                  categorical: Sequence[bool] | None = None,
                  names: Sequence[str] | None = None) -> list[CoarseLayer]:
    """Summarise whole fine aux layers ``(A, H, W)`` on the coarse grid.

    Continuous layers: block means of their valid cells. Categorical layers: the share of
    each class (:func:`preselect_classes`) among the valid fine pixels of each block.
    """
    n = aux_fine.shape[0]
    categorical = [False] * n if categorical is None else list(categorical)
    names = [f"aux{k + 1}" for k in range(n)] if names is None else list(names)
    out = []
    for k in range(n):
        a = aux_fine[k]
        if not categorical[k]:
            out.append(CoarseLayer(names[k], block_mean(a[None], factor)))
            continue
        values, counts = np.unique(a[np.isfinite(a)], return_counts=True)
        check_class_count(values.size, names[k])
        classes = preselect_classes(values, counts)
        shares = np.stack([block_mean(_column(SharpenTerm(0, float(v)), a[None]), factor)
                           for v in classes]) if classes.size \
            else np.empty((0, a.shape[0] // factor, a.shape[1] // factor), np.float32)
        out.append(CoarseLayer(names[k], shares, tuple(float(v) for v in classes)))
    return out


def _class_terms(k: int, layer: CoarseLayer, ok: np.ndarray
                 ) -> tuple[list[SharpenTerm], list[np.ndarray], str | None]:
    """Indicator terms of categorical layer ``k`` over coarse cells ``ok``.

    The most frequent class is the reference: it gets no term, since a full set of
    indicators sums to 1 and would be collinear with the intercept. Classes under
    :data:`MIN_CLASS_SHARE` of the valid area, and those beyond the :data:`MAX_CLASSES`
    most frequent, are pooled into it.
    """
    sh = layer.values.reshape(len(layer.classes), -1)
    cells = ok & np.all(np.isfinite(sh), axis=0)
    if not cells.any() or not layer.classes:
        return [], [], None
    share = sh[:, cells].mean(axis=1)
    order = np.argsort(-share, kind="stable")
    ref = int(order[0])
    keep = sorted(int(i) for i in order[1:MAX_CLASSES] if share[i] >= MIN_CLASS_SHARE)
    terms = [SharpenTerm(k, layer.classes[i], f"{layer.name}={layer.classes[i]:g}") for i in keep]
    return terms, [sh[i] for i in keep], f"{layer.name}={layer.classes[ref]:g}"


@dataclass(frozen=True)
class SharpenFit:
    """A linear model ``y = intercept + coef . x`` fitted at the coarse scale.

    The predictors ``x`` (:attr:`terms`) are continuous aux layers and 0/1 indicators of
    the classes of categorical ones; at the coarse scale an indicator is the class's
    share of the cell.

    Attributes:
        coef: ``(T,)`` slope per term (field units per aux unit, e.g. K/m; per class:
            the difference from the reference class, in field units).
        intercept: field units.
        r2: coefficient of determination of the coarse-scale fit.
        n: number of coarse cells used.
        terms: what each coefficient multiplies.
        reference: per categorical layer, its reference class (``landcover=10``).
        class_p: p-value of the test that the class terms explain anything (None
            without class terms); at :data:`CLASS_P_MAX` or above they are all 0.
        resid_std: standard deviation of the coarse-cell residuals (field units, with
            the terms' degrees of freedom), the spread of the sharpening interval.
    """

    coef: np.ndarray
    intercept: float
    r2: float
    n: int
    terms: tuple[SharpenTerm, ...] = ()
    reference: tuple[str, ...] = ()
    class_p: float | None = None
    resid_std: float = float("nan")

    def apply(self, aux: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """The fit on fine aux ``(A, H, W)`` and on its block means (class shares).

        Returns ``(H, W)`` and ``(H / factor, W / factor)`` float32, NaN where a term is
        NaN. One predictor at a time: memory does not grow with the number of classes.
        """
        return self._apply(lambda t: _column(t, aux), lambda t, x: block_mean(x, factor),
                           aux.shape[-2:], factor)

    def _apply(self, column, mean, shape: tuple[int, int], factor: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`apply` with the predictors from ``column(term)`` and their block means
        from ``mean(term, x)`` (shared between the bands of a tile)."""
        h, w = shape
        coarse = np.full((h // factor, w // factor), self.intercept, dtype=np.float64)
        if not self.terms:
            return np.full((h, w), np.float32(self.intercept)), coarse.astype(np.float32)
        fine = None
        for t, c in zip(self.terms, self.coef, strict=True):
            x = column(t)
            if fine is None:  # intercept + c * x, the sum in float64 (one pass fewer)
                fine = np.add(c * x, self.intercept, dtype=np.float64)
            else:
                fine += c * x
            coarse += c * mean(t, x)
        return fine.astype(np.float32), coarse.astype(np.float32)

    def describe(self) -> str:
        """``dem -0.0061, landcover=4 0.52`` (for logs)."""
        return ", ".join(f"{t.label} {c:.4g}" for t, c in zip(self.terms, self.coef, strict=True))


def _local_contrast(a: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``a`` minus its mean over the valid cells of the surrounding 3 x 3 cells (``ok``)."""
    w = ok.astype(np.float64)
    num = ndimage.uniform_filter(np.where(ok, a, 0.0), 3, mode="constant")
    den = ndimage.uniform_filter(w, 3, mode="constant")
    return a - num / np.maximum(den, 1e-12)


def _solve_standardised(y: np.ndarray, x: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """Ridge least squares on standardised predictors; returns (coef, intercept)."""
    n, n_terms = y.size, x.shape[0]
    xm, xs = x.mean(axis=1), x.std(axis=1)
    xs[xs == 0] = 1.0
    z = (x - xm[:, None]) / xs[:, None]
    ym = y.mean()
    beta = np.linalg.solve(z @ z.T + ridge * n * np.eye(n_terms), z @ (y - ym))
    coef = beta / xs
    return coef, float(ym - coef @ xm)


def _fit_classes(resid: np.ndarray, shares: np.ndarray, others: np.ndarray, ok: np.ndarray, *,
                 shrink: float) -> tuple[np.ndarray, float]:
    """Class coefficients from local contrasts, tested, and shrunk in pixel units.

    Args:
        resid: ``(h, w)`` coarse field minus the continuous part of the fit.
        shares: ``(C, h, w)`` class shares of the cells (one row per indicator term).
        others: ``(Q, h, w)`` the continuous layers' cell means.
        ok: ``(h, w)`` cells valid in everything.
        shrink: ridge weight; see :data:`CLASS_SHRINK`.

    Safeguards, because a coefficient fitted on coarse shares is applied to 0/1 pixels,
    which the coarse grid cannot check (on MeteoSwiss temperature, precipitation and
    sunshine, an unguarded fit made every field worse, up to several times the error):

    - only *local contrasts* are used: each cell's residual and shares minus their means
      over the surrounding 3 x 3 cells, so that regional gradients that happen to follow
      land cover (a wetter north side of the Alps with more grassland) are not read as
      class effects;
    - the continuous layers' local contrasts enter too, their coefficients unused: a
      coarse field resampled onto the grid is slightly blurred against the aux, which
      leaves a residual that follows them, and classes that go with them (snow on peaks)
      would otherwise take it up;
    - the classes must explain the local contrasts: an F test of the class terms (given
      the continuous ones) at :data:`CLASS_P_MAX`; otherwise every class coefficient is
      0 (the layer then changes nothing);
    - the ridge penalty is in pixel units: ``shrink * n * p (1 - p)`` for a class of mean
      share ``p``, the variance of its 0/1 indicator. A coefficient is then scaled by
      about ``rho / (rho + shrink)``, ``rho`` being the variance of its share contrasts
      between cells over ``p (1 - p)``: trusted as far as the class's pixel-level
      variation shows at the coarse scale, where it was fitted.

    Returns:
        The coefficients and the p-value of the F test.
    """
    from scipy import stats

    y = _local_contrast(resid, ok)[ok]
    xc = np.stack([_local_contrast(a, ok)[ok] for a in shares])
    xq = np.stack([_local_contrast(a, ok)[ok] for a in others]) if len(others) \
        else np.empty((0, y.size))
    xq = xq / np.maximum(xq.std(axis=1, keepdims=True), 1e-12)  # conditioning
    z = np.concatenate([xq, xc])
    n, c, q = y.size, xc.shape[0], xq.shape[0]
    if n <= c + q + 2 or not (y ** 2).sum() > 0:
        return np.zeros(c), 1.0

    def rss(x: np.ndarray) -> float:
        if not x.shape[0]:
            return float((y ** 2).sum())
        b = np.linalg.lstsq(x.T, y, rcond=None)[0]
        return float(((y - b @ x) ** 2).sum())

    rss0, rss1 = rss(xq), rss(z)
    f_stat = ((rss0 - rss1) / c) / max(rss1 / (n - c - q), 1e-30)
    p_value = float(stats.f.sf(f_stat, c, n - c - q))
    if p_value >= CLASS_P_MAX:
        return np.zeros(c), p_value
    p = np.array([a[ok].mean() for a in shares])
    pen = np.concatenate([np.full(q, 1e-9 * n), shrink * n * np.maximum(p * (1 - p), 1e-9)])
    return np.linalg.solve(z @ z.T + np.diag(pen), z @ y)[q:], p_value


def fit_sharpen(coarse: np.ndarray, aux_coarse: np.ndarray | Sequence[CoarseLayer], *,
                ridge: float = 1e-6, class_shrink: float | None = None) -> SharpenFit:
    """Least-squares fit of the coarse field against the aux summarised on the coarse grid.

    Continuous layers: ordinary least squares on the coarse cells (with a tiny ridge).
    Categorical layers: one 0/1 indicator per class (:func:`_class_terms`), fitted next
    on what the continuous layers leave unexplained (so adding a class layer never
    changes the continuous slopes), conservatively (:func:`_fit_classes`).

    Args:
        coarse: ``(h, w)`` coarse field.
        aux_coarse: :class:`CoarseLayer` per aux layer (:func:`coarse_layers`), or an
            ``(A, h, w)`` array of continuous layers block-averaged onto the coarse grid.
        ridge: tiny ridge term on standardised predictors, for collinear or flat aux.
        class_shrink: ridge weight of class terms (default :data:`CLASS_SHRINK`).

    Falls back to ``coef = 0`` (pure interpolation) when fewer than ``T + 2`` cells are
    valid in all terms.
    """
    if isinstance(aux_coarse, np.ndarray):
        aux_coarse = [CoarseLayer(f"aux{k + 1}", aux_coarse[k:k + 1])
                      for k in range(aux_coarse.shape[0])]
    shape = coarse.shape
    y = coarse.reshape(-1).astype(np.float64)
    ok = np.isfinite(y)
    cont: list[SharpenTerm] = []
    cont_x: list[np.ndarray] = []
    cls: list[SharpenTerm] = []
    cls_x: list[np.ndarray] = []
    reference: list[str] = []
    for k, layer in enumerate(aux_coarse):
        if layer.classes is None:
            cont.append(SharpenTerm(k, None, layer.name))
            cont_x.append(layer.values.reshape(-1))
            continue
        t, c, ref = _class_terms(k, layer, ok)
        cls += t
        cls_x += c
        if ref is not None:
            reference.append(ref)
    terms = tuple(cont + cls)
    n_terms = len(terms)
    x = np.stack(cont_x + cls_x).astype(np.float64) if terms else np.empty((0, y.size))
    ok_all = ok & np.all(np.isfinite(x), axis=0)
    n = int(ok_all.sum())
    if n_terms == 0 or n < n_terms + 2:
        mean = float(np.nanmean(y)) if np.isfinite(y).any() else 0.0
        if n_terms:
            log.warning("sharpening: only %d valid coarse cells; using interpolation only", n)
        spread = float(np.nanstd(y)) if np.isfinite(y).any() else 0.0
        return SharpenFit(coef=np.zeros(n_terms), intercept=mean, r2=0.0, n=n, terms=terms,
                          reference=tuple(reference), resid_std=spread)
    n_cont = len(cont)
    ok_cont = ok & np.all(np.isfinite(x[:n_cont]), axis=0)
    coef = np.zeros(n_terms)
    coef[:n_cont], intercept = _solve_standardised(y[ok_cont], x[:n_cont, ok_cont], ridge)
    class_p = None
    if cls:
        resid = (y - intercept - coef[:n_cont] @ x[:n_cont]).reshape(shape)
        coef[n_cont:], class_p = _fit_classes(
            resid, x[n_cont:].reshape(-1, *shape), x[:n_cont].reshape(-1, *shape),
            ok_all.reshape(shape),
            shrink=CLASS_SHRINK if class_shrink is None else class_shrink)
        intercept = float(np.mean(y[ok_all] - coef @ x[:, ok_all]))
    y, x = y[ok_all], x[:, ok_all]
    pred = intercept + coef @ x
    sst = float(((y - y.mean()) ** 2).sum())
    rss = float(((y - pred) ** 2).sum())
    r2 = 1.0 - rss / sst if sst > 0 else 0.0
    return SharpenFit(coef=coef, intercept=intercept, r2=r2, n=n, terms=terms,
                      reference=tuple(reference), class_p=class_p,
                      resid_std=math.sqrt(rss / max(n - n_terms - 1, 1)))


def sharpen_tile(fit: SharpenFit, coarse_win: np.ndarray, aux_fine_win: np.ndarray, factor: int,
                 *, conserve: bool = True, interp: str | Interp = Interp.bilinear) -> np.ndarray:
    """Regression sharpening of one window.

    ``fine = fit(x_fine) + interp(coarse - fit(x_coarse))``, i.e. the aux-driven
    detail plus the interpolated residual the regression could not explain; then,
    optionally, an additive per-cell correction so block means equal the coarse field.
    ``x_fine`` are the fit's predictors on the fine pixels (class indicators are 0/1),
    ``x_coarse`` their block means over the window's own pixels (class shares), so the
    residual is exact whatever the tile.

    Args:
        fit: coarse-scale regression from :func:`fit_sharpen` (fitted on the whole scene).
        coarse_win: ``(h, w)`` coarse values (a window, halo included).
        aux_fine_win: ``(A, h*f, w*f)`` aux on the matching fine window.
        factor: fine/coarse ratio.
        conserve: apply the conservation correction.
        interp: kernel for the residual.

    Returns:
        ``(h*f, w*f)`` float32; NaN where the coarse cell or any aux is NaN.
    """
    fine = sharpen_bands([fit], coarse_win[None], aux_fine_win, factor, interp=interp)[0]
    if conserve:
        conserve_blocks(fine, coarse_win, factor)
    return fine


def sharpen_bands(fits: Sequence[SharpenFit], coarse_win: np.ndarray, aux_fine_win: np.ndarray,
                  factor: int, *, interp: str | Interp = Interp.bilinear) -> np.ndarray:
    """:func:`sharpen_tile` (without conservation) for the bands of one window at once.

    The predictors and their block means are computed once for all bands, and the
    residuals (and, where some aux is missing, the plain interpolation) of all bands are
    interpolated together.

    Args:
        fits: per band, its scene fit.
        coarse_win: ``(B, h, w)`` coarse values of the bands.
        aux_fine_win: ``(A, h*f, w*f)`` aux on the matching fine window.

    Returns:
        ``(B, h*f, w*f)`` float32.
    """
    b, h, w = coarse_win.shape
    if not any(fit.terms for fit in fits):
        return upsample(coarse_win, factor, interp)
    columns: dict[SharpenTerm, np.ndarray] = {}
    means: dict[SharpenTerm, np.ndarray] = {}

    def column(t: SharpenTerm) -> np.ndarray:
        if t not in columns:
            columns[t] = _column(t, aux_fine_win)
        return columns[t]

    def mean(t: SharpenTerm, x: np.ndarray) -> np.ndarray:
        if t not in means:
            means[t] = block_mean(x, factor)
        return means[t]

    fine = np.empty((b, h * factor, w * factor), np.float32)
    resid = np.empty((b, h, w), np.float32)
    for k, fit in enumerate(fits):
        fine[k], coarse_fit = fit._apply(column, mean, (h * factor, w * factor), factor)
        resid[k] = coarse_win[k] - coarse_fit
    fine += upsample(resid, factor, interp)
    # Where aux is missing but the coarse value exists, fall back to interpolation.
    bad = ~np.isfinite(fine)
    if bad.any():
        np.copyto(fine, upsample(coarse_win, factor, interp), where=bad)
    return fine


def sharpen(coarse: np.ndarray, aux_fine: np.ndarray, factor: int, *,
            categorical: Sequence[bool] | None = None, names: Sequence[str] | None = None,
            conserve: bool = True, interp: str | Interp = Interp.bilinear) -> np.ndarray:
    """Whole-array regression sharpening (fit on this scene, apply, add residual).

    The same fit and application as the tiled ``downscale --method sharpen``.

    Args:
        coarse: ``(h, w)`` coarse field.
        aux_fine: ``(A, h*f, w*f)`` aux layers on the fine grid.
        factor: fine/coarse ratio.
        categorical: per aux layer, whether it holds classes (indicator regression);
            default all continuous.
        names: aux layer names, for logs.
        conserve: make block means equal the coarse field.
    """
    fit = fit_sharpen(coarse, coarse_layers(aux_fine, factor, categorical=categorical,
                                            names=names))
    return sharpen_tile(fit, coarse, aux_fine, factor, conserve=conserve, interp=interp)
