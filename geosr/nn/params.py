"""Model size helper."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (only those requiring grad by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
