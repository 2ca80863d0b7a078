"""Normalisation layers selectable by name.

Why the choice matters for geosr: rasters are predicted tile by tile, and a tile's
prediction should depend only on the pixels around it.

- ``"none"``: every layer is a local operator, so a tile with enough context matches
  the whole-raster result exactly. Default of :class:`~geosr.nn.config.NetConfig`.
- ``"batch"``: in train mode the output depends on the other samples of the batch,
  and statistics are noisy with the small batches of large patches that fit in memory.
  In eval mode it is a fixed per-channel affine map, hence local.
- ``"group"``: per sample, but statistics are taken over the whole spatial extent, so
  a prediction changes with tile size and content (seams between tiles).
"""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "group", "none")


def check_norm(norm: str, *, name: str = "norm") -> str:
    """Return ``norm`` if it is a known kind, else raise ``ValueError`` naming ``name``."""
    if norm not in NORMS:
        raise ValueError(f"{name}: expected one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def make_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer for ``(N, channels, H, W)`` tensors.

    Args:
        norm: ``"batch"``, ``"group"`` or ``"none"`` (identity).
        channels: number of channels normalised.

    Returns:
        The layer; for ``"group"`` the largest group count <= 8 dividing ``channels``.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()
