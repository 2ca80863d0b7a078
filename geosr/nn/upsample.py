"""Upsampling by any integer factor: stage plan and the upsampling stage.

Why bilinear interpolation followed by a convolution rather than transposed
convolutions or pixel shuffle: it handles any integer (20, 50, primes like 37) with
the same layer, its parameter count does not grow with the factor, and it has no
checkerboard artefacts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geosr.nn.blocks import act, conv
from geosr.nn.norm import make_norm


def split_factor(factor: int) -> tuple[int, ...]:
    """Split ``factor`` into at most two upsampling stages, smaller one first.

    Two stages give one intermediate scale for blocks and attention. The smaller
    factor goes first so the intermediate map, at ``1 / last**2`` of the fine pixel
    count, stays cheap. Factors <= 3 and primes take a single stage.

    Examples: 2 -> (2,), 4 -> (2, 2), 16 -> (4, 4), 20 -> (4, 5), 37 -> (37,),
    50 -> (5, 10), 64 -> (8, 8).

    Raises:
        ValueError: if ``factor`` is not an integer >= 2.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"factor: expected an integer >= 2, got {factor!r}")
    first = max(d for d in range(1, math.isqrt(factor) + 1) if factor % d == 0)
    if factor <= 3 or first == 1:
        return (factor,)
    return (first, factor // first)


class UpStage(nn.Module):
    """``(N, in_ch, h, w) -> (N, out_ch, h*r, w*r)``.

    1x1 conv (at the low resolution, so the channel change is cheap), LeakyReLU,
    bilinear interpolation by ``r`` (``align_corners=False``: values at cell centres,
    as in :func:`geosr.baselines.upsample`), 3x3 conv, norm, LeakyReLU.
    """

    def __init__(self, in_ch: int, out_ch: int, r: int, *, norm: str = "none") -> None:
        """Build the stage.

        Args:
            in_ch: input channels.
            out_ch: output channels.
            r: integer upsampling factor (>= 2).
            norm: normalisation kind (see :mod:`geosr.nn.norm`).

        Raises:
            ValueError: if ``r`` is not an integer >= 2.
        """
        super().__init__()
        if not isinstance(r, int) or isinstance(r, bool) or r < 2:
            raise ValueError(f"r: expected an integer >= 2, got {r!r}")
        self.r = r
        self.reduce = nn.Sequential(conv(in_ch, out_ch, 1), act())
        self.refine = nn.Sequential(conv(out_ch, out_ch, 3), make_norm(norm, out_ch), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(h * self.r, w * self.r), mode="bilinear",
                          align_corners=False)
        return self.refine(x)

    def extra_repr(self) -> str:
        return f"r={self.r}"
