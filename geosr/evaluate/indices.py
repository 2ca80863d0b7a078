"""Climate indices of a multi-date stack, compared between a prediction and the truth.

In the spirit of CORDEX-ML-Bench and the ETCCDI indices: each index is computed per pixel
over the band (date) axis of a ``(bands, rows, cols)`` stack, then PRED's index map is
compared with TRUTH's over the pixels where both have an index.

- precipitation: **Rx1day**, the largest value over the dates (``rx1day_bias`` = mean over
  pixels of pred - truth, ``rx1day_rmse``); **R10mm**, the number of dates at or above
  10 mm/day (``r10mm_bias``, in dates; needs the field's units to place 10 mm/day).
- temperature: **TXx**, the largest value over the dates, and **TNn**, the smallest
  (``txx_bias``/``txx_rmse``, ``tnn_bias``/``tnn_rmse``). On a daily-maximum field TXx is
  the ETCCDI TXx; on a daily-minimum field TNn is the ETCCDI TNn.

NaN handling: a pixel has an index only when it is valid (finite) at **every** date in
both fields. A maximum over a series with gaps would be biased low by the gaps, and the
gaps would differ between fields; requiring complete series keeps the comparison fair.
Indices need at least :data:`MIN_DATES` dates; pure numpy, float64.
"""

from __future__ import annotations

import math

import numpy as np

from geosr.evaluate.metrics import Better, MetricSpec

MIN_DATES = 2
"""Fewest bands (dates) a stack needs for its indices to mean anything."""

HEAVY_MM_DAY = 10.0
"""Threshold of R10mm: 10 mm/day (ETCCDI), converted into the field's units."""

PRECIPITATION = "precipitation"
TEMPERATURE = "temperature"

INDICES: dict[str, MetricSpec] = {m.key: m for m in (
    MetricSpec("rx1day_bias", "Rx1day bias (max over dates)", Better.zero, PRECIPITATION,
               "field"),
    MetricSpec("rx1day_rmse", "Rx1day RMSE", Better.lower, PRECIPITATION, "field"),
    MetricSpec("r10mm_bias", "R10mm bias (dates >= 10 mm/day)", Better.zero, PRECIPITATION),
    MetricSpec("txx_bias", "TXx bias (max over dates)", Better.zero, TEMPERATURE, "field"),
    MetricSpec("txx_rmse", "TXx RMSE", Better.lower, TEMPERATURE, "field"),
    MetricSpec("tnn_bias", "TNn bias (min over dates)", Better.zero, TEMPERATURE, "field"),
    MetricSpec("tnn_rmse", "TNn RMSE", Better.lower, TEMPERATURE, "field"),
)}
"""Every index score, in report order; ``kind`` is the field they apply to."""


def complete(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` mask of the pixels valid at every date in both stacks."""
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (bands, rows, cols) stacks of one shape, got "
                         f"{pred.shape} and {truth.shape}")
    return np.isfinite(pred).all(axis=0) & np.isfinite(truth).all(axis=0)


def _diff_scores(p: np.ndarray, t: np.ndarray, name: str, *, rmse: bool = True
                 ) -> dict[str, float]:
    d = p.astype(np.float64) - t.astype(np.float64)
    out = {f"{name}_bias": float(d.mean()) if d.size else math.nan}
    if rmse:
        out[f"{name}_rmse"] = float(np.sqrt((d * d).mean())) if d.size else math.nan
    return out


def precipitation_indices(pred: np.ndarray, truth: np.ndarray, *,
                          heavy: float | None) -> dict[str, float]:
    """``rx1day_bias``, ``rx1day_rmse`` and ``r10mm_bias`` over the complete pixels (NaN
    when there is none).

    Args:
        pred, truth: ``(dates, rows, cols)`` stacks, NaN = no value.
        heavy: the R10mm threshold in the field's units (``>=``); None: ``r10mm_bias``
            is NaN (units unknown).
    """
    ok = complete(pred, truth)
    p, t = pred[:, ok], truth[:, ok]
    out = _diff_scores(p.max(axis=0), t.max(axis=0), "rx1day")
    if heavy is None:
        out["r10mm_bias"] = math.nan
    else:
        out.update(_diff_scores((p >= heavy).sum(axis=0), (t >= heavy).sum(axis=0), "r10mm",
                                rmse=False))
    return out


def temperature_indices(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``txx_bias``, ``txx_rmse``, ``tnn_bias`` and ``tnn_rmse`` over the complete pixels."""
    ok = complete(pred, truth)
    p, t = pred[:, ok], truth[:, ok]
    return {**_diff_scores(p.max(axis=0), t.max(axis=0), "txx"),
            **_diff_scores(p.min(axis=0), t.min(axis=0), "tnn")}


def index_scores(pred: np.ndarray, truth: np.ndarray, kind: str, *,
                 heavy: float | None = None) -> dict[str, float]:
    """The index scores of ``kind`` (:data:`PRECIPITATION` or :data:`TEMPERATURE`)."""
    if kind == PRECIPITATION:
        return precipitation_indices(pred, truth, heavy=heavy)
    if kind == TEMPERATURE:
        return temperature_indices(pred, truth)
    raise ValueError(f"unknown index kind {kind!r}; expected {PRECIPITATION!r} or "
                     f"{TEMPERATURE!r}")
