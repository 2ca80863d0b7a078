"""Domain shift: how far an input lies from what a model was trained on.

A network applied outside its training distribution can be silently wrong. ``train``
records what the training scenes spanned (``training["scene_ranges"]``: the range of
the per-band coarse means and stds and of the per-band sharpening slopes of each aux
layer, :func:`geosr.training.data.scene_ranges`) and the aux layers' value ranges
(``training["aux_ranges"]``), for fixed-statistics networks too since they record them;
an older fixed-statistics model has at least the coarse training range
(:attr:`~geosr.model.bundle.Bundle.coarse_stats`). ``downscale`` compares each
input band with them (:func:`band_shifts`) and says in one line per input what lies far
outside, with the figures; the output's ``GEOSR_DOMAIN_SHIFT`` tag records it and
``validate`` reports it.

"Far" is judged per statistic, in units that do not depend on the variable:

- a band's mean: distance outside the training scenes' range of means (a model without
  scene records: the training values' range), in training standard deviations
  (:data:`MEAN_SD`);
- a band's spatial std (scene-adaptive models): ratio to the nearest end of the training
  range (:data:`STD_RATIO`);
- a band's sharpening slope per aux layer (e.g. a lapse rate): distance outside the
  training range of slopes, in units of that range's width or half its magnitude,
  whichever is larger (:data:`GAIN_WIDTHS`) - a reversed or much steeper relation;
- an aux layer: share of its coarse cells outside the training values (:data:`AUX_SHARE`).

These are warnings, not errors: a scene-adaptive model often does well beyond them, but
the user should know that the result is an extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MEAN_SD = 1.0
STD_RATIO = 2.0
GAIN_WIDTHS = 1.0
AUX_SHARE = 0.05
AUX_MARGIN = 0.05
"""Aux values within this fraction of the training range's width outside it still count
as inside (rounding, a slightly higher summit)."""


@dataclass(frozen=True)
class Shift:
    """One statistic of one band outside the training distribution.

    Attributes:
        what: ``mean``, ``std``, ``slope dem``, ``aux dem``.
        band: 1-based band (0: the whole input, for aux layers).
        value: the input's value (the share of cells outside, for aux layers).
        lo, hi: the training range.
        score: how far, in the statistic's own unit (see the module docstring).
    """

    what: str
    band: int
    value: float
    lo: float
    hi: float
    score: float

    def describe(self, units: str = "") -> str:
        u = f" {units}" if units and self.what == "mean" else ""
        where = f"band {self.band} " if self.band else ""
        if self.what.startswith("aux "):
            return (f"{self.what}: {100 * self.value:.0f}% of cells outside the training values "
                    f"{self.lo:.4g}..{self.hi:.4g}")
        return (f"{where}{self.what} {self.value:.4g}{u} (training {self.lo:.4g}..{self.hi:.4g}"
                f"{u})")


def _outside(v: float, lo: float, hi: float) -> float:
    return max(0.0, lo - v, v - hi)


def band_shifts(band: int, mean: float, std: float, gain: Sequence[float] | None,
                training: dict, coarse_stats: dict, channel_names: Sequence[str], *,
                check_std: bool = True) -> list[Shift]:
    """The statistics of one band that lie far outside the training distribution.

    Args:
        band: 1-based band number (for messages).
        mean, std: the band's coarse mean and spatial std (model units).
        gain: its scene's slopes per network aux channel (a scene-adaptive model), or None.
        training: the bundle's training summary (``scene_ranges`` when recorded).
        coarse_stats: the bundle's coarse training statistics (``min, max, mean, std``).
        channel_names: the network's aux channel names, in order.
        check_std: compare the band's spread too: a scene-adaptive model standardises
            with it; a fixed-statistics one works on values, whatever their spread.
    """
    out: list[Shift] = []
    ranges = training.get("scene_ranges") or {}
    sd = float(coarse_stats.get("std") or 0.0) or 1.0
    if ranges.get("mean"):
        lo, hi = ranges["mean"]
    elif coarse_stats.get("min") is not None and coarse_stats.get("max") is not None:
        # a fixed-statistics model records only its training values' range
        lo, hi = float(coarse_stats["min"]), float(coarse_stats["max"])
    else:
        return out
    if math.isfinite(mean):
        d = _outside(mean, lo, hi) / sd
        if d > MEAN_SD:
            out.append(Shift("mean", band, mean, lo, hi, d))
    if check_std and ranges.get("std") and math.isfinite(std) and std > 0:
        slo, shi = ranges["std"]
        ratio = max(slo / std, std / shi) if slo > 0 and shi > 0 else 1.0
        if ratio > STD_RATIO:
            out.append(Shift("std", band, std, slo, shi, ratio))
    gains = ranges.get("gain") or {}
    if gain is not None:
        for name, g in zip(channel_names, gain, strict=False):
            if name not in gains or not math.isfinite(g):
                continue
            glo, ghi = gains[name]
            width = max(ghi - glo, 0.5 * max(abs(glo), abs(ghi)), 1e-6)
            d = _outside(g, glo, ghi) / width
            if d > GAIN_WIDTHS:
                out.append(Shift(f"slope {name}", band, g, glo, ghi, d))
    return out


def aux_shifts(aux_coarse: Sequence[np.ndarray | None], names: Sequence[str],
               training: dict) -> list[Shift]:
    """Aux layers whose coarse-cell values lie outside the training values."""
    out: list[Shift] = []
    ranges = training.get("aux_ranges") or {}
    for name, a in zip(names, aux_coarse, strict=False):
        if a is None or name not in ranges:
            continue
        lo, hi = ranges[name]
        v = np.asarray(a)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        margin = AUX_MARGIN * max(hi - lo, 1e-12)
        share = float(((v < lo - margin) | (v > hi + margin)).mean())
        if share > AUX_SHARE:
            out.append(Shift(f"aux {name}", 0, share, lo, hi, share))
    return out


def summarise(shifts: Sequence[Shift], units: str = "", *, most: int = 3) -> str:
    """One line: the largest shifts of each kind, then how many more."""
    if not shifts:
        return "none"
    order = sorted(shifts, key=lambda s: -s.score)
    seen: dict[str, Shift] = {}
    for s in order:
        kind = s.what
        if kind not in seen:
            seen[kind] = s
    shown = list(seen.values())[:most]
    text = "; ".join(s.describe(units) for s in shown)
    more = len(shifts) - len(shown)
    return text + (f"; and {more} more" if more > 0 else "")
