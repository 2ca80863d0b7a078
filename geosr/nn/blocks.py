"""Convolution building blocks: padded convolutions and the inception block.

All spatial layers pad by replication: a tile border then looks like a continuation
of the field rather than a drop to zero, which keeps edge artefacts small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geosr.nn.norm import make_norm

# Slope of the LeakyReLU used throughout the generator (research design).
LEAKY_SLOPE = 0.01


def replicate_pad(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``F.pad(x, (cols, cols, rows, rows), mode="replicate")`` of ``(N, C, H, W)``.

    Why by hand: on a channels-last CPU tensor PyTorch's ``replication_pad2d`` is 2-3x
    slower than copying the interior and then the edge columns and rows into a new
    channels-last tensor (measured on 4-16 channels of 578^2 px, one thread), and the
    pads of the fine-scale convolutions are a tenth of the network's inference time.
    The same values exactly. Other layouts, and autograd, take ``F.pad``.
    """
    if torch.is_grad_enabled() or x.dim() != 4 \
            or not x.is_contiguous(memory_format=torch.channels_last):
        return F.pad(x, (cols, cols, rows, rows), mode="replicate")
    n, c, h, w = x.shape
    out = torch.empty((n, c, h + 2 * rows, w + 2 * cols), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[:, :, rows:rows + h, cols:cols + w] = x
    if cols:
        out[:, :, rows:rows + h, :cols] = x[..., :1]
        out[:, :, rows:rows + h, cols + w:] = x[..., -1:]
    if rows:
        out[:, :, :rows] = out[:, :, rows:rows + 1]
        out[:, :, rows + h:] = out[:, :, rows + h - 1:rows + h]
    return out


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose replicate padding uses :func:`replicate_pad` (the same
    parameters, state-dict keys and values; a faster pad at inference)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,  # noqa: A002
                      bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "replicate":
            return super()._conv_forward(input, weight, bias)
        rows, cols = self.padding
        return F.conv2d(replicate_pad(input, rows, cols), weight, bias, self.stride, 0,
                        self.dilation, self.groups)


def conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """A stride-1, size-preserving convolution with replicate padding (odd ``kernel``)."""
    return Conv2d(in_ch, out_ch, kernel, padding=kernel // 2,
                  padding_mode="replicate" if kernel > 1 else "zeros")


def act() -> nn.LeakyReLU:
    """The generator's activation, LeakyReLU(0.01)."""
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


class MaxPool3(nn.Module):
    """3x3 max-pool, stride 1, replicate padding: ``(N, C, H, W) -> (N, C, H, W)``.

    Computed as maxima of shifted views, separably: on CPU this is ~4x faster than
    ``F.max_pool2d`` at stride 1 (which also writes the indices of the maxima), and
    the pool is a large share of fine-scale cost. A channels-last tensor without
    autograd (inference) takes a path 1.3x faster still, without the padded copy.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.is_contiguous(memory_format=torch.channels_last):
            return _max_pool3_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        xp = replicate_pad(x, 1, 1)
        h = torch.maximum(torch.maximum(xp[..., :-2], xp[..., 1:-1]), xp[..., 2:])
        return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


POOL_ROWS = 32
"""Rows per block of :func:`_max_pool3_nhwc`: a block's temporaries stay in the CPU's
cache (1.4x faster than whole-tensor passes on a 576^2 x 24 input)."""


def _max_pool3_nhwc(y: torch.Tensor) -> torch.Tensor:
    """:class:`MaxPool3` of a contiguous NHWC tensor, in blocks of :data:`POOL_ROWS` rows."""
    rows = y.shape[1]
    out = torch.empty_like(y)
    for r0 in range(0, rows, POOL_ROWS):
        r1 = min(rows, r0 + POOL_ROWS)
        lo, hi = max(0, r0 - 1), min(rows, r1 + 1)  # one row of context (or the true edge)
        h = _max3(y[:, lo:hi], 2)  # along the row; then across rows r0..r1 of h
        k, mid = r1 - r0, r0 - lo
        above = h[:, mid - 1:mid - 1 + k] if mid else torch.cat([h[:, :1], h[:, :k - 1]], 1)
        below = (h[:, mid + 1:mid + 1 + k] if hi > r1
                 else torch.cat([h[:, mid + 1:], h[:, -1:]], 1))
        torch.maximum(torch.maximum(above, h[:, mid:mid + k]), below, out=out[:, r0:r1])
    return out


def _max3(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Maximum over each element and its two neighbours along ``dim``, edges replicated.

    A replicated edge value is already in its window, so the edge outputs are maxima
    of the two in-bounds values.
    """
    n = y.shape[dim]
    if n == 1:
        return y
    pair = torch.maximum(y.narrow(dim, 0, n - 1), y.narrow(dim, 1, n - 1))  # max(y[i], y[i+1])
    out = torch.empty_like(y)
    if n > 2:
        torch.maximum(pair.narrow(dim, 0, n - 2), pair.narrow(dim, 1, n - 2),
                      out=out.narrow(dim, 1, n - 2))
    out.narrow(dim, 0, 1).copy_(pair.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(pair.narrow(dim, n - 2, 1))
    return out


class Inception(nn.Module):
    """Four parallel paths of ``out_ch / 4`` channels each, concatenated.

    Paths: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1, each followed by
    LeakyReLU(0.01). The concatenation is normalised (``norm``). When
    ``in_ch == out_ch`` the input is added back (a residual skip, a geosr addition that
    lets stacks of blocks start near the identity and train faster).

    Shapes: ``(N, in_ch, H, W) -> (N, out_ch, H, W)``; any ``H, W >= 1``.
    Receptive-field radius: 2 pixels (the 5x5 path).
    """

    RADIUS = 2

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "none") -> None:
        """Build the block.

        Args:
            in_ch: input channels (>= 1).
            out_ch: output channels, a positive multiple of 4.
            norm: ``"batch"``, ``"group"`` or ``"none"`` (see :mod:`geosr.nn.norm`).

        Raises:
            ValueError: on a non-positive ``in_ch`` or an ``out_ch`` not a multiple of 4.
        """
        super().__init__()
        if not isinstance(in_ch, int) or in_ch < 1:
            raise ValueError(f"in_ch: expected a positive integer, got {in_ch!r}")
        if not isinstance(out_ch, int) or out_ch < 4 or out_ch % 4:
            raise ValueError(f"out_ch: expected a positive multiple of 4, got {out_ch!r}")
        q = out_ch // 4
        self.p1 = nn.Sequential(conv(in_ch, q, 1), act())
        self.p3 = nn.Sequential(conv(in_ch, q, 1), act(), conv(q, q, 3), act())
        self.p5 = nn.Sequential(conv(in_ch, q, 1), act(), conv(q, q, 5), act())
        self.pp = nn.Sequential(MaxPool3(), conv(in_ch, q, 1), act())
        self.norm = make_norm(norm, out_ch)
        self.residual = in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.is_contiguous(memory_format=torch.channels_last):
            y = self._paths_nhwc(x)
        else:
            y = torch.cat([self.p1(x), self.p3(x), self.p5(x), self.pp(x)], dim=1)
        y = self.norm(y)
        return x + y if self.residual else y

    def _paths_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """The four paths on a channels-last tensor, without autograd (inference).

        Why: the three 1x1 convs on ``x`` become one matrix product over the pixels
        (``x`` read once), and the 1x1 convs run as matrix products on the NHWC rows,
        which on one CPU thread is ~3x faster than PyTorch's 1x1 convolution. The same
        sums, so the same result to float rounding.
        """
        n, c, h, w = x.shape
        first = (self.p1[0], self.p3[0], self.p5[0])
        q = first[0].out_channels
        out = x.new_empty((n, h, w, 4 * q))  # NHWC: the paths write their channels here
        weight = torch.cat([m.weight for m in first]).view(3 * q, c)
        _rows_matmul(x, weight, torch.cat([m.bias for m in first]), out=out[..., :3 * q])
        for path, lo in ((self.p3, q), (self.p5, 2 * q)):  # overwrite their 1x1 outputs
            y = F.leaky_relu(out[..., lo:lo + q], LEAKY_SLOPE).permute(0, 3, 1, 2)
            out[..., lo:lo + q].copy_(path[2](y).permute(0, 2, 3, 1))
        pool = self.pp[1]
        _rows_matmul(self.pp[0](x), pool.weight.view(q, c), pool.bias, out=out[..., 3 * q:])
        # every path's last LeakyReLU, in one pass over the contiguous output
        return F.leaky_relu_(out, LEAKY_SLOPE).permute(0, 3, 1, 2)


def _rows_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                 out: torch.Tensor) -> None:
    """A 1x1 conv of a channels-last ``x`` (``weight`` (out, in)) as a matrix product on
    its NHWC rows, into ``out`` ``(N, H, W, out)`` (a channel slice of an NHWC tensor)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: x is channels-last
    torch.addmm(bias, rows, weight.t(), out=out.view(n * h * w, -1))


def inception_stack(in_ch: int, out_ch: int, n: int, *, norm: str) -> nn.Sequential:
    """``n`` inception blocks, the first mapping ``in_ch -> out_ch``, the rest ``out_ch``."""
    return nn.Sequential(*(Inception(in_ch if i == 0 else out_ch, out_ch, norm=norm)
                           for i in range(n)))
