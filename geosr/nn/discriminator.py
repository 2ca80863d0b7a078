"""Patch discriminator for adversarial training of the generator."""

from __future__ import annotations

import torch
from torch import nn

from geosr.nn.norm import check_norm, make_norm

# LeakyReLU slope of the discriminator (research design).
DISC_SLOPE = 0.2


class Discriminator(nn.Module):
    """Strided 4x4 convolutions, then a 3x3 conv to one logit per patch.

    ``(N, in_channels, H, W) -> (N, 1, H / 2**k, W / 2**k)`` logits, ``k = len(widths)``
    (floor division at each level); ``H, W >= 2**k``.

    The research design ends in a sigmoid (widths 64-128-256-512-512); here the
    widths default smaller, and the output is the logit. Why: train with
    :class:`torch.nn.BCEWithLogitsLoss`, which fuses the sigmoid into the log and
    stays accurate where a separate sigmoid saturates to 0 or 1.
    :meth:`probabilities` gives the sigmoid when wanted.

    Conditioning: pass fine aux (or upsampled coarse) as ``cond``; it is concatenated
    to ``fine`` along channels, and ``in_channels`` counts both.
    """

    def __init__(self, *, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 128),
                 norm: str = "batch") -> None:
        """Build the discriminator.

        Args:
            in_channels: channels of ``fine`` plus those of ``cond``.
            widths: output channels of each stride-2 level (at least one).
            norm: normalisation after every level but the first (``"batch"`` as in
                the design, ``"group"`` or ``"none"``).

        Raises:
            ValueError: naming the argument that is out of range.
        """
        super().__init__()
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels: expected a positive integer, got {in_channels!r}")
        widths = tuple(widths)
        if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"widths: expected one or more positive integers, got {widths!r}")
        check_norm(norm)
        layers: list[nn.Module] = []
        ch = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(ch, w, 4, stride=2, padding=1, bias=i == 0 or norm == "none"))
            if i > 0:  # no norm on the first level, as in pix2pix
                layers.append(make_norm(norm, w))
            layers.append(nn.LeakyReLU(DISC_SLOPE, inplace=True))
            ch = w
        layers.append(nn.Conv2d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.min_size = 2 ** len(widths)

    def forward(self, fine: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Patch logits.

        Args:
            fine: ``(N, C, H, W)`` real or generated fine field.
            cond: optional ``(N, C2, H, W)`` conditioning, ``C + C2 == in_channels``.

        Returns:
            ``(N, 1, H / 2**k, W / 2**k)`` logits.

        Raises:
            ValueError: on a channel count or size that does not fit.
        """
        x = fine if cond is None else torch.cat([fine, cond], dim=1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"fine (+ cond): expected (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            levels = self.min_size.bit_length() - 1
            raise ValueError(f"fine: expected H, W >= {self.min_size} for {levels} stride-2 "
                             f"levels, got {tuple(x.shape[-2:])}")
        return self.net(x)

    @torch.no_grad()
    def probabilities(self, fine: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``sigmoid(forward(...))``: probability that each patch is real."""
        return torch.sigmoid(self.forward(fine, cond))
