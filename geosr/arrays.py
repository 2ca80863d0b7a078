"""Arrays on nested grids: block means and counts, the conservation correction, the
nodata mask of coarse cells, and nearest-valid fill.

Pure numpy (and :mod:`scipy.ndimage`): no files, no tensors, no other geosr module, so
metrics, baselines, training and the tiled engine share one definition of each.

Geometry: arrays are ``(..., rows, cols)``; a coarse cell ``(i, j)`` covers the fine
cells ``[i*f, (i+1)*f) x [j*f, (j+1)*f)``, so fine rows and cols are multiples of the
factor ``f``. NaN marks nodata; a block's mean is over its valid (finite) cells only.

Memory: the fine arrays here are the large ones (a group of bands of output rows), so
block operations work a few coarse rows at a time and keep their temporaries to about
:data:`CHUNK_CELLS` fine cells whatever the array size. Block sums are float64: a
float32 sum of 400 (factor 20) or 2 500 (factor 50) cells would lose the last digits
that exact conservation needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

CHUNK_CELLS = 1 << 20
"""Fine cells per step of the block operations (bounds their temporaries to a few MB)."""


def _blocks(arr: np.ndarray, factor: int, what: str) -> np.ndarray:
    """``(n, rows/f, f, cols/f, f)`` view of ``(..., rows, cols)`` (a copy only when the
    array's layout does not allow a view)."""
    if arr.ndim < 2:
        raise ValueError(f"{what}: expected an array (..., rows, cols), got shape {arr.shape}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"{what}: factor must be a positive integer, got {factor!r}")
    r, c = arr.shape[-2:]
    if r % factor or c % factor:
        raise ValueError(f"{what}: shape {arr.shape} is not a multiple of factor {factor}")
    return arr.reshape(math.prod(arr.shape[:-2]), r // factor, factor, c // factor, factor)


def _row_steps(blocks: np.ndarray, chunk_rows: int | None) -> Iterator[slice]:
    """Slices of coarse rows, each about :data:`CHUNK_CELLS` fine cells (``chunk_rows``
    coarse rows when given)."""
    n, rows, f, cols, _ = blocks.shape
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_CELLS // max(1, n * f * f * cols))
    for k in range(0, rows, chunk_rows):
        yield slice(k, k + chunk_rows)


def _sum_count(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 sums and int32 counts of the valid cells of ``(n, r, f, c, f)`` blocks."""
    valid = np.isfinite(part)
    if valid.all():  # the common case: no masking pass, counts known (same sums)
        total = part.sum(axis=4, dtype=np.float64).sum(axis=2)
        n, r, f, c, _ = part.shape
        return total, np.full((n, r, c), f * f, np.int32)
    total = np.where(valid, part, 0).sum(axis=4, dtype=np.float64).sum(axis=2)
    count = valid.sum(axis=4, dtype=np.int32).sum(axis=2)
    return total, count


def block_mean(fine: np.ndarray, factor: int, *, chunk_rows: int | None = None) -> np.ndarray:
    """Mean of the valid cells of each ``factor x factor`` block.

    Args:
        fine: ``(..., rows, cols)``, rows and cols multiples of ``factor``; NaN = nodata.
        factor: fine cells per coarse cell along each axis.
        chunk_rows: coarse rows per step (default: about :data:`CHUNK_CELLS` fine cells).

    Returns:
        ``(..., rows/factor, cols/factor)`` float32 (sums in float64); NaN where a block
        has no valid cell.

    Raises:
        ValueError: the shape is not a multiple of ``factor``.
    """
    fine = np.asarray(fine)
    blocks = _blocks(fine, factor, "block_mean")
    n, rows, _, cols, _ = blocks.shape
    out = np.empty((n, rows, cols), np.float32)
    for sl in _row_steps(blocks, chunk_rows):
        total, count = _sum_count(blocks[:, sl])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, sl] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.reshape(*fine.shape[:-2], rows, cols)


def block_count(mask: np.ndarray, factor: int) -> np.ndarray:
    """Number of True cells in each ``factor x factor`` block of a ``(..., rows, cols)``
    mask, as int32 ``(..., rows/factor, cols/factor)``."""
    mask = np.asarray(mask)
    blocks = _blocks(mask, factor, "block_count")
    out = blocks.sum(axis=(2, 4), dtype=np.int32)
    return out.reshape(*mask.shape[:-2], *out.shape[1:])


def _inplace_blocks(fine: np.ndarray, factor: int, what: str) -> np.ndarray:
    if not isinstance(fine, np.ndarray) or not np.issubdtype(fine.dtype, np.floating):
        raise TypeError(f"{what}: expected a floating-point numpy array to modify in place")
    blocks = _blocks(fine, factor, what)
    if fine.size and not np.may_share_memory(blocks, fine):
        raise ValueError(f"{what}: the array cannot be modified in place through blocks "
                         "(not contiguous); pass np.ascontiguousarray(fine)")
    return blocks


def conserve_blocks(fine: np.ndarray, coarse: np.ndarray, factor: int, *,
                    chunk_rows: int = 4) -> np.ndarray:
    """Add a constant per coarse cell so the mean of its valid fine cells equals ``coarse``.

    In place, a few coarse rows at a time (no full-size temporary), with float64 block
    sums; the correction is added in ``fine``'s dtype. Cells whose coarse value is NaN or
    that have no valid fine cell are left as they are; NaN fine cells stay NaN.

    Args:
        fine: ``(..., rows, cols)`` floating array, rows and cols multiples of ``factor``;
            modified.
        coarse: ``(..., rows/factor, cols/factor)``, same leading shape.
        factor: fine cells per coarse cell along each axis.
        chunk_rows: coarse rows per step.

    Returns:
        ``fine``.
    """
    blocks = _inplace_blocks(fine, factor, "conserve_blocks")
    n, rows, _, cols, _ = blocks.shape
    coarse = np.asarray(coarse)
    if coarse.shape != (*fine.shape[:-2], rows, cols):
        raise ValueError(f"conserve_blocks: coarse shape {coarse.shape} does not match fine "
                         f"{fine.shape} at factor {factor}")
    coarse = coarse.reshape(n, rows, cols)
    for sl in _row_steps(blocks, chunk_rows):
        part = blocks[:, sl]
        total, count = _sum_count(part)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = coarse[:, sl] - total / np.maximum(count, 1)
        delta[(count == 0) | ~np.isfinite(delta)] = 0.0
        part += delta.astype(fine.dtype)[:, :, None, :, None]
    return fine


def mask_nodata_blocks(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """Set the fine cells of NaN coarse cells to NaN, in place (no full-size temporary).

    Args:
        fine: ``(..., rows, cols)`` floating array, rows and cols multiples of ``factor``;
            modified.
        coarse: ``(..., rows/factor, cols/factor)``, same leading shape.
        factor: fine cells per coarse cell along each axis.

    Returns:
        ``fine``.
    """
    bad = ~np.isfinite(np.asarray(coarse))
    if bad.any():
        blocks = _inplace_blocks(fine, factor, "mask_nodata_blocks")
        bad = bad.reshape(blocks.shape[0], blocks.shape[1], blocks.shape[3])
        np.copyto(blocks, fine.dtype.type(np.nan), where=bad[:, :, None, :, None])
    return fine


def fill_nearest(arr: np.ndarray) -> np.ndarray:
    """NaN cells replaced by their nearest valid cell, in each 2-D field of
    ``(..., rows, cols)`` separately (a field with no valid cell stays NaN).

    Nearest by Euclidean distance in cells (:func:`scipy.ndimage.distance_transform_edt`).

    Returns:
        A new array of the same shape and dtype.
    """
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise ValueError(f"fill_nearest: expected an array (..., rows, cols), got shape "
                         f"{arr.shape}")
    out = arr.copy()
    flat = out.reshape(math.prod(arr.shape[:-2]), *arr.shape[-2:])
    for k, field in enumerate(flat):
        invalid = ~np.isfinite(field)
        if invalid.any() and not invalid.all():
            idx = ndimage.distance_transform_edt(invalid, return_distances=False,
                                                 return_indices=True)
            flat[k] = field[tuple(idx)]
    return out
