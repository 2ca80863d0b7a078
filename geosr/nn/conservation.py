"""Hard conservation: make each coarse cell's block of fine pixels average to it.

Geometry: coarse cell ``(i, j)`` covers fine pixels ``[i*f, (i+1)*f) x [j*f, (j+1)*f)``.
The correction is additive and constant per block,
``fine + nearest_up(coarse - block_mean(fine))``, so it keeps all within-block detail.
It commutes with an affine rescaling of values (``(x - m) / s``), so conserving in the
network's standardised units conserves in physical units too.
"""

from __future__ import annotations

import torch
from torch import nn


def _check(fine: torch.Tensor, coarse: torch.Tensor, factor: int,
           valid_mask: torch.Tensor | None) -> None:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor: expected a positive integer, got {factor!r}")
    if fine.dim() != 4:
        raise ValueError(f"fine: expected shape (N, C, H, W), got {tuple(fine.shape)}")
    n, c, h, w = coarse.shape if coarse.dim() == 4 else (None,) * 4
    if coarse.dim() != 4 or fine.shape != (n, c, h * factor, w * factor):
        raise ValueError(f"coarse: expected shape (N, C, H/{factor}, W/{factor}) for fine "
                         f"{tuple(fine.shape)}, got {tuple(coarse.shape)}")
    if valid_mask is not None and (valid_mask.dim() != 4 or valid_mask.shape[1] not in (1, c)
                                   or valid_mask.shape[0] != n
                                   or valid_mask.shape[2:] != fine.shape[2:]):
        raise ValueError(f"valid_mask: expected shape ({n}, 1, {h * factor}, {w * factor}), "
                         f"got {tuple(valid_mask.shape)}")


def conserve(fine: torch.Tensor, coarse: torch.Tensor, factor: int,
             valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shift each ``factor x factor`` block of ``fine`` so its mean equals ``coarse``.

    Args:
        fine: ``(N, C, H, W)`` with ``H = h * factor``, ``W = w * factor``.
        coarse: ``(N, C, h, w)`` target block means.
        factor: block size in fine pixels.
        valid_mask: optional ``(N, 1, H, W)`` (or ``(N, C, H, W)``), bool or 0/1: the
            valid and the invalid cells of a block are shifted apart, each so that its
            mean is ``coarse``. Why both: the valid cells are where the coarse value
            holds (e.g. the land, where the aux has data); the invalid ones are still
            output (the sea), and they average to the coarse value too, so that a later
            conservation over all cells (after tiles are blended) moves neither part.

    Returns:
        ``(N, C, H, W)``, same dtype. Blocks whose coarse value is not finite are left
        unchanged (as in :func:`geosr.arrays.conserve_blocks`); a block without any
        valid cell is conserved over all its cells. A part whose mean is not finite (a
        NaN cell) is left unchanged and does not leak into the other. Differentiable.

    Raises:
        ValueError: on inconsistent shapes or a non-positive ``factor``.
    """
    _check(fine, coarse, factor, valid_mask)
    if valid_mask is None:
        delta = coarse.double() - block_sum(fine, factor) / factor**2
    else:
        m = valid_mask.expand_as(fine) > 0
        return fine + torch.where(m, repeat_blocks(_masked_delta(fine, coarse, factor, m), factor),
                                  repeat_blocks(_masked_delta(fine, coarse, factor, ~m), factor))
    delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta)).to(fine.dtype)
    return fine + repeat_blocks(delta, factor)


def _masked_delta(fine: torch.Tensor, coarse: torch.Tensor, factor: int,
                  m: torch.Tensor) -> torch.Tensor:
    """Per block, ``coarse`` minus the mean of the cells in ``m`` (0 where there are none,
    or where it is not finite), in ``fine``'s dtype."""
    count = block_sum(m, factor)
    # where(): no 0/0 in the forward pass nor NaN in the gradient of empty blocks
    total = block_sum(torch.where(m, fine, torch.zeros_like(fine)), factor)
    mean = total / torch.where(count > 0, count, torch.ones_like(count))
    delta = torch.where(count > 0, coarse.double() - mean, torch.zeros_like(mean))
    return torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta)).to(fine.dtype)


def block_sum(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Float64 sum over each block: ``(N, C, hf, wf) -> (N, C, h, w)``.

    Why float64: a float32 sum over the 2500 pixels of a factor-50 block loses ~1e-5
    relative; the conserved means should be exact to float32 rounding.
    """
    n, c, hf, wf = x.shape
    return x.reshape(n, c, hf // factor, factor, wf // factor, factor).sum(
        dim=(3, 5), dtype=torch.float64)


def repeat_blocks(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by index arithmetic: ``(N, C, h, w) -> (N, C, hf, wf)``.

    Exact for any size, unlike a float scale factor.
    """
    n, c, h, w = x.shape
    return (x[:, :, :, None, :, None].expand(n, c, h, factor, w, factor)
            .reshape(n, c, h * factor, w * factor))


class Conservation(nn.Module):
    """Module form of :func:`conserve` for a fixed ``factor``."""

    def __init__(self, factor: int) -> None:
        """Build the layer.

        Args:
            factor: block size in fine pixels (positive integer).

        Raises:
            ValueError: if ``factor`` is not a positive integer.
        """
        super().__init__()
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor: expected a positive integer, got {factor!r}")
        self.factor = factor

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor,
                valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """See :func:`conserve`; shapes ``(N, C, H, W)``, ``(N, C, H/f, W/f)``."""
        return conserve(fine, coarse, self.factor, valid_mask)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# A floor under the base before its logarithm, in the network's units (the field
# divided by its training std): ~1e-2 std is far below any amount that matters, and
# keeps log() finite where the interpolation is dry.
LOG_FLOOR = 1e-2


def conserve_softmax(logits: torch.Tensor, coarse: torch.Tensor, factor: int,
                     valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Non-negative fine field whose ``factor x factor`` blocks average to ``coarse``.

    The softmax constraint layer of Harder et al. (JMLR 2023): within each block,
    ``fine = n * coarse * softmax(logits)`` over the block's ``n`` valid pixels, so every
    pixel is ``>= 0`` when ``coarse >= 0`` and the block mean is ``coarse`` by
    construction; dry cells stay dry. Why not the additive :func:`conserve` for
    precipitation: an additive shift makes negative rain beside a shower; clipping it
    afterwards breaks the mean.

    Args:
        logits: ``(N, C, H, W)`` unnormalised log-weights (``H = h * factor``...).
        coarse: ``(N, C, h, w)`` block means; negative values are taken as 0.
        factor: block size in fine pixels.
        valid_mask: optional ``(N, 1, H, W)`` (or ``(N, C, H, W)``) valid fine cells: the
            weights and the count ``n`` cover valid cells only; invalid cells get the
            block's coarse value.

    Returns:
        ``(N, C, H, W)``, same dtype; a block without any valid cell holds the coarse
        value; a non-finite coarse value is taken as 0. Differentiable.

    Raises:
        ValueError: on inconsistent shapes or a non-positive ``factor``.
    """
    _check(logits, coarse, factor, valid_mask)
    n, c, hf, wf = logits.shape
    h, w = hf // factor, wf // factor
    blocks = logits.reshape(n, c, h, factor, w, factor)
    target = torch.nan_to_num(coarse.clamp_min(0.0), nan=0.0, posinf=0.0)
    target = target[:, :, :, None, :, None]
    if valid_mask is None:
        return (_block_softmax(blocks) * (factor * factor) * target).reshape(n, c, hf, wf)
    m = (valid_mask.expand_as(logits) > 0).reshape(n, c, h, factor, w, factor)
    count = m.sum(dim=(3, 5), keepdim=True).to(logits.dtype)
    # an all-invalid block gets zero weights, then its coarse value
    weight = _block_softmax(torch.where(m, blocks, torch.full_like(blocks, -torch.inf)))
    fine = torch.where(m & (count > 0), weight * count * target, target.expand_as(weight))
    return fine.reshape(n, c, hf, wf)


def _block_softmax(blocks: torch.Tensor) -> torch.Tensor:
    """Softmax over the two pixel axes (3 and 5) of ``(N, C, h, f, w, f)`` blocks; a block
    of ``-inf`` only gets zero weights (no NaN, nor in the gradient)."""
    top = blocks.amax(dim=(3, 5), keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(blocks - top)
    return e / e.sum(dim=(3, 5), keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


class SoftmaxConservation(Conservation):
    """Module form of :func:`conserve_softmax` for a fixed ``factor``."""

    def forward(self, logits: torch.Tensor, coarse: torch.Tensor,
                valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """See :func:`conserve_softmax`."""
        return conserve_softmax(logits, coarse, self.factor, valid_mask)
