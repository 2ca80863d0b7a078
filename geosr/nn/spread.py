"""The spread head of a probabilistic generator, and the Gaussian CRPS it is trained with.

The head reads the fine features the best-estimate head reads and gives, per pixel, the
standard deviation ``sigma`` of the truth around the conserved best estimate, in the
network's standardised units. ``softplus`` keeps it positive with a gradient everywhere
(``exp`` overflows early in training); :data:`MIN_SPREAD` keeps the CRPS finite. The
``scale`` buffer is a calibration factor set after training (1 until then; see
:func:`geosr.training.loop.calibrate_spread`): part of the weights, so of the bundle hash.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geosr.nn.blocks import act, conv

MIN_SPREAD = 1e-3
"""Smallest sigma, standardised units."""

INIT_SPREAD = 0.3
"""Sigma at initialisation, standardised units (about the sub-grid spread of temperature
around an interpolation, before training narrows it)."""


class SpreadHead(nn.Module):
    """``(N, C, H, W)`` fine features -> ``(N, 1, H, W)`` sigma > 0."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, hidden, 3), act(), conv(hidden, 1, 3))
        with torch.no_grad():
            self.body[-1].weight.mul_(0.1)
            self.body[-1].bias.fill_(math.log(math.expm1(INIT_SPREAD - MIN_SPREAD)))
        self.register_buffer("scale", torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (F.softplus(self.body(features)) + MIN_SPREAD) * self.scale


def gaussian_crps(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Mean CRPS of ``N(mu, sigma^2)`` against ``target`` over the ``mask`` pixels.

    Closed form (Gneiting & Raftery 2007): ``sigma (z (2 Phi(z) - 1) + 2 phi(z) -
    1 / sqrt(pi))`` with ``z = (target - mu) / sigma``. A proper score: minimised by the
    true distribution, in the field's units (it equals the MAE for ``sigma -> 0``).
    """
    m = mask.to(mu.dtype)
    z = (target - mu) / sigma
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = torch.special.ndtr(z)
    crps = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return (crps * m).sum() / m.sum().clamp_min(1.0)
