"""Channel (CAM) and spatial (SAM) attention, after CBAM.

Both return their input re-weighted and never change its shape ``(N, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geosr.nn.blocks import Conv2d, replicate_pad


class ChannelAttention(nn.Module):
    """CAM: weight each channel by ``sigmoid(mlp(maxpool(x)) + mlp(avgpool(x)))``.

    The MLP (``C -> C / reduction -> C``, ReLU) is shared by the two pooled vectors.

    ``window = 0`` pools over the whole input (global, as in the research design).
    Global pooling makes every output pixel depend on the whole tile, so tiled
    predictions change with tile size. ``window = k`` (odd) pools over the ``k x k``
    neighbourhood of each pixel instead: the weights vary in space and the block stays
    a local operator of radius ``k // 2``, which tiled inference needs.
    """

    def __init__(self, channels: int, *, reduction: int = 2, window: int = 0) -> None:
        """Build the block.

        Args:
            channels: ``C`` (>= 1).
            reduction: hidden-layer reduction of the MLP (>= 1).
            window: 0 for global pooling, else an odd local window size.

        Raises:
            ValueError: naming the argument that is out of range.
        """
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: expected a positive integer, got {channels!r}")
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction: expected a positive integer, got {reduction!r}")
        if not isinstance(window, int) or window < 0 or (window and window % 2 == 0):
            raise ValueError(f"window: expected 0 (global) or an odd positive integer, "
                             f"got {window!r}")
        hidden = max(1, channels // reduction)
        # 1x1 convs = a per-pixel MLP; works for pooled (1x1) and local (HxW) maps alike
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.window = window

    @property
    def radius(self) -> int | None:
        """Receptive-field radius in pixels; ``None`` when global."""
        return self.window // 2 if self.window else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window:
            r = self.window // 2
            xp = replicate_pad(x, r, r)
            if torch.is_grad_enabled():
                mx = F.max_pool2d(xp, self.window, stride=1)
                avg = F.avg_pool2d(xp, self.window, stride=1)
            else:  # inference: separably, 4x faster (the same maximum; the mean to rounding)
                k = self.window
                mx = _window_max(_window_max(xp, k, 2), k, 3)
                avg = F.avg_pool2d(F.avg_pool2d(xp, (k, 1), stride=1), (1, k), stride=1)
        else:
            mx = torch.amax(x, dim=(2, 3), keepdim=True)
            avg = torch.mean(x, dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.mlp(mx) + self.mlp(avg))


def _window_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Maximum over every window of ``k`` elements along ``dim`` (no padding), by doubling
    spans: 3 maxima of shifted views for ``k = 7``, and no indices as ``max_pool2d``
    writes them."""
    span = 1
    while 2 * span <= k:
        n = x.shape[dim]
        x = torch.maximum(x.narrow(dim, 0, n - span), x.narrow(dim, span, n - span))
        span *= 2
    if span < k:  # windows [i, i + span) and [i + k - span, i + k) cover [i, i + k)
        n, s = x.shape[dim], k - span
        x = torch.maximum(x.narrow(dim, 0, n - s), x.narrow(dim, s, n - s))
    return x


class SpatialAttention(nn.Module):
    """SAM: weight each pixel by ``sigmoid(conv7x7([max_c(x), mean_c(x)]))``.

    The same ``(N, 1, H, W)`` map multiplies every channel. Replicate padding;
    receptive-field radius ``kernel // 2``.
    """

    def __init__(self, *, kernel: int = 7) -> None:
        """Build the block.

        Args:
            kernel: odd convolution size (7 in the research design).

        Raises:
            ValueError: if ``kernel`` is not an odd positive integer.
        """
        super().__init__()
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel: expected an odd positive integer, got {kernel!r}")
        self.conv = Conv2d(2, 1, kernel, padding=kernel // 2, padding_mode="replicate")
        self.radius = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([torch.amax(x, dim=1, keepdim=True),
                          torch.mean(x, dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))
