"""Scores of probabilistic predictions: an interval's coverage and width, and an
ensemble's CRPS, spread/skill ratio and rank histogram. Pure numpy.

Pixels count where the truth and every bound (or member) are finite.
"""

from __future__ import annotations

import math

import numpy as np


def interval_scores(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``interval_coverage``: fraction of the truth inside ``[lo, hi]``;
    ``interval_width``: mean ``hi - lo`` (field units); ``n``: pixels scored."""
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(truth)
    n = int(ok.sum())
    if n == 0:
        return {"interval_coverage": math.nan, "interval_width": math.nan, "n": 0}
    t, a, b = truth[ok], lo[ok], hi[ok]
    return {"interval_coverage": float(((t >= a) & (t <= b)).mean()),
            "interval_width": float((b.astype(np.float64) - a).mean()), "n": n}


def ensemble_scores(members: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Scores of an ensemble ``(M, ...)`` against ``truth`` ``(...)``.

    - ``crps``: the *fair* ensemble CRPS (Ferro 2014), ``mean|x_i - y| -
      sum_ij |x_i - x_j| / (2 M (M - 1))``: unbiased for the CRPS of the distribution the
      members are drawn from, so it does not favour large ensembles; field units.
    - ``spread_skill``: ``sqrt((M + 1) / M * mean member variance) / RMSE of the ensemble
      mean``; 1 for a calibrated ensemble, < 1 over-confident.
    - ``n``: pixels scored; ``members``: M.
    """
    m = members.shape[0]
    x = members.reshape(m, -1).astype(np.float64)
    y = truth.reshape(-1).astype(np.float64)
    ok = np.isfinite(y) & np.isfinite(x).all(axis=0)
    n = int(ok.sum())
    if n == 0 or m < 2:
        return {"crps": math.nan, "spread_skill": math.nan, "n": n, "members": m}
    x, y = np.sort(x[:, ok], axis=0), y[ok]
    skill = np.abs(x - y).mean(axis=0)
    # sum_ij |x_i - x_j| = 2 sum_i (2i - M + 1) x_(i) over the sorted members (0-based i)
    w = (2 * np.arange(m) - m + 1)[:, None]
    spread = 2 * (w * x).sum(axis=0) / (2 * m * (m - 1))
    mean = x.mean(axis=0)
    rmse = float(np.sqrt(((mean - y) ** 2).mean()))
    var = float(x.var(axis=0, ddof=1).mean())
    ratio = math.sqrt((m + 1) / m * var) / rmse if rmse > 0 else math.nan
    return {"crps": float((skill - spread).mean()), "spread_skill": ratio, "n": n,
            "members": m}


def rank_histogram(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Counts of the truth's rank among the ``M`` members (``M + 1`` bins; ties split
    evenly by taking the midpoint rank, rounded down)."""
    m = members.shape[0]
    x = members.reshape(m, -1)
    y = truth.reshape(-1)
    ok = np.isfinite(y) & np.isfinite(x).all(axis=0)
    below = (x[:, ok] < y[ok]).sum(axis=0)
    equal = (x[:, ok] == y[ok]).sum(axis=0)
    return np.bincount(below + equal // 2, minlength=m + 1)
