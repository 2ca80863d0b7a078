"""Reference downscaling methods: interpolation and scene-fitted regression sharpening.

These need no training data. They are the yardsticks ``validate`` reports beside the
network, and ``downscale --method sharpen`` is the default when no model is given.

Geometry: a coarse cell ``(i, j)`` covers fine pixels ``[i*f, (i+1)*f) x [j*f, (j+1)*f)``;
interpolation places coarse values at cell centres (``align_corners=False``), which is
what makes a tile of a padded coarse window identical to the same pixels of the whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


class Interp(str, Enum):
    """Interpolation kernels for :func:`upsample`."""

    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


def fill_nearest(arr: np.ndarray) -> np.ndarray:
    """Replace NaN cells of a 2-D array by their nearest valid cell (all-NaN stays NaN)."""
    invalid = ~np.isfinite(arr)
    if not invalid.any() or invalid.all():
        return arr.copy()
    idx = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    return arr[tuple(idx)]


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
    """
    import torch
    import torch.nn.functional as F

    method = Interp(method)
    lead = coarse.shape[:-2]
    h, w = coarse.shape[-2:]
    flat = coarse.reshape(-1, h, w).astype(np.float32)
    filled = np.stack([fill_nearest(a) for a in flat]) if flat.size else flat
    t = torch.from_numpy(np.nan_to_num(filled, nan=0.0))[:, None]
    if method is Interp.nearest:
        out = t.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    else:
        # Replicate-pad one coarse cell so the kernels see a flat continuation at the edge
        # instead of torch's clamped-index border; crop back afterwards.
        pad = 2 if method is Interp.bicubic else 1
        tp = F.pad(t, (pad, pad, pad, pad), mode="replicate")
        out = F.interpolate(tp, scale_factor=factor, mode=method.value, align_corners=False)
        out = out[..., pad * factor:(pad + h) * factor, pad * factor:(pad + w) * factor]
    out = out[:, 0].numpy().astype(np.float32)
    nan_cells = ~np.isfinite(flat)
    if nan_cells.any():
        out[np.repeat(np.repeat(nan_cells, factor, -2), factor, -1)] = np.nan
    return out.reshape(*lead, h * factor, w * factor)


@dataclass(frozen=True)
class SharpenFit:
    """A linear model ``y = intercept + coef . aux`` fitted at the coarse scale.

    Attributes:
        coef: ``(A,)`` slope per aux layer (field units per aux unit, e.g. K/m).
        intercept: field units.
        r2: coefficient of determination of the coarse-scale fit.
        n: number of coarse cells used.
    """

    coef: np.ndarray
    intercept: float
    r2: float
    n: int

    def predict(self, aux: np.ndarray) -> np.ndarray:
        """Apply to ``aux`` of shape ``(A, ...)``; returns ``(...)`` float32."""
        out = np.full(aux.shape[1:], self.intercept, dtype=np.float64)
        for k, c in enumerate(self.coef):
            out += c * aux[k]
        return out.astype(np.float32)


def fit_sharpen(coarse: np.ndarray, aux_coarse: np.ndarray, *, ridge: float = 1e-6) -> SharpenFit:
    """Least-squares fit of the coarse field against the coarse-aggregated aux layers.

    Args:
        coarse: ``(h, w)`` coarse field.
        aux_coarse: ``(A, h, w)`` aux layers block-averaged onto the coarse grid.
        ridge: tiny ridge term on standardised predictors, for collinear or flat aux.

    Falls back to ``coef = 0`` (pure interpolation) when fewer than ``A + 2`` cells are
    valid in all layers.
    """
    n_aux = aux_coarse.shape[0]
    y = coarse.reshape(-1).astype(np.float64)
    x = aux_coarse.reshape(n_aux, y.size).astype(np.float64)
    ok = np.isfinite(y) & np.all(np.isfinite(x), axis=0)
    n = int(ok.sum())
    if n_aux == 0 or n < n_aux + 2:
        mean = float(np.nanmean(y)) if np.isfinite(y).any() else 0.0
        if n_aux:
            log.warning("sharpening: only %d valid coarse cells; using interpolation only", n)
        return SharpenFit(coef=np.zeros(n_aux), intercept=mean, r2=0.0, n=n)
    y, x = y[ok], x[:, ok]
    xm, xs = x.mean(axis=1), x.std(axis=1)
    xs[xs == 0] = 1.0
    z = (x - xm[:, None]) / xs[:, None]
    ym = y.mean()
    beta = np.linalg.solve(z @ z.T + ridge * n * np.eye(n_aux), z @ (y - ym))
    coef = beta / xs
    intercept = float(ym - coef @ xm)
    pred = intercept + coef @ x
    sst = float(((y - ym) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else 0.0
    return SharpenFit(coef=coef, intercept=intercept, r2=r2, n=n)


def block_mean_valid(fine: np.ndarray, factor: int) -> np.ndarray:
    """Mean over valid cells of each ``factor x factor`` block; NaN for empty blocks."""
    from geosr.align import block_mean

    return block_mean(fine, factor)


def conserve_blocks(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """Add a per-coarse-cell constant so that each block's valid mean equals ``coarse``.

    Blocks whose coarse value or all fine cells are NaN are left unchanged.
    """
    mean = block_mean_valid(fine, factor)
    delta = coarse.astype(np.float64) - mean
    delta[~np.isfinite(delta)] = 0.0
    up = np.repeat(np.repeat(delta, factor, -2), factor, -1)
    return (fine + up).astype(np.float32)


def sharpen_tile(fit: SharpenFit, coarse_win: np.ndarray, aux_fine_win: np.ndarray, factor: int,
                 *, conserve: bool = True, interp: str | Interp = Interp.bilinear) -> np.ndarray:
    """Regression sharpening of one window.

    ``fine = fit(aux_fine) + interp(coarse - fit(aux_coarse))``, i.e. the aux-driven
    detail plus the interpolated residual the regression could not explain; then,
    optionally, an additive per-cell correction so block means equal the coarse field.

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
    n_aux = aux_fine_win.shape[0]
    if n_aux:
        aux_c = block_mean_valid(aux_fine_win, factor)
        resid = coarse_win - fit.predict(aux_c)
        fine = fit.predict(aux_fine_win) + upsample(resid, factor, interp)
        # Where aux is missing but the coarse value exists, fall back to interpolation.
        plain = upsample(coarse_win, factor, interp)
        fine = np.where(np.isfinite(fine), fine, plain)
    else:
        fine = upsample(coarse_win, factor, interp)
    if conserve:
        fine = conserve_blocks(fine, coarse_win, factor)
    return fine.astype(np.float32)


def sharpen(coarse: np.ndarray, aux_fine: np.ndarray, factor: int, *, conserve: bool = True,
            interp: str | Interp = Interp.bilinear) -> np.ndarray:
    """Whole-array regression sharpening (fit on this scene, apply, add residual).

    Args:
        coarse: ``(h, w)`` coarse field.
        aux_fine: ``(A, h*f, w*f)`` aux layers on the fine grid.
        factor: fine/coarse ratio.
        conserve: make block means equal the coarse field.
    """
    aux_c = (block_mean_valid(aux_fine, factor) if aux_fine.shape[0]
             else aux_fine[:, ::factor, ::factor])
    fit = fit_sharpen(coarse, aux_c)
    return sharpen_tile(fit, coarse, aux_fine, factor, conserve=conserve, interp=interp)
