"""The validation report: its JSON and CSV shapes and their writers."""


from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from geosr.grid import Grid
from geosr.io.atomic import atomic_path

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SubsetResult:
    """Metrics of PRED on a spatial block or one band, with skill against each baseline.

    ``row``/``col`` (0-based block indices) are set for blocks, ``band`` (1-based) and
    ``date`` for bands.
    """

    scope: str
    n_valid: int
    metrics: dict[str, float]
    skill: dict[str, float] = field(default_factory=dict)
    row: int | None = None
    col: int | None = None
    window: tuple[int, int, int, int] | None = None  # (row_off, col_off, height, width) px
    band: int | None = None
    date: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """Result of :func:`validate`. ``to_dict`` gives the JSON shape; ``to_rows`` the CSV."""

    pred: str
    truth: str
    coarse: str | None
    grid: Grid
    n_bands: int
    n_valid: int
    n_valid_pred_truth: int
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    skill: dict[str, float]
    blocks: tuple[SubsetResult, ...]
    bands: tuple[SubsetResult, ...]
    factor: int | None = None
    truth_resampling: str | None = None
    units: str = ""
    valid_range: str | None = None  # MIN:MAX the range metrics used
    wet_threshold: float | None = None  # the precipitation metrics' wet threshold
    plots: tuple[str, ...] = ()
    broken: tuple[str, ...] = ()
    seconds: float = 0.0
    uncertainty: dict[str, float] = field(default_factory=dict)  # interval / ensemble scores
    # climate-index scores per subject ("pred", then each baseline); {} when not computed
    indices: dict[str, dict[str, float]] = field(default_factory=dict)
    n_valid_indices: int = 0  # pixels valid at every date, those the indices use
    # PRED's record of how far its input lay from the model's training data ("none":
    # inside; None: not a model's output)
    domain_shift: str | None = None

    @property
    def passed(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN and infinite values become None (null)."""
        def sub(s: SubsetResult) -> dict:
            d: dict = {}
            if s.scope == "block":
                d.update(row=s.row, col=s.col, window=list(s.window) if s.window else None)
            else:
                d.update(band=s.band, date=s.date)
            d.update(n_valid=s.n_valid, metrics=_clean(s.metrics), skill=_clean(s.skill))
            return d

        return {
            "pred": self.pred, "truth": self.truth, "coarse": self.coarse,
            "grid": self.grid.to_dict(), "n_bands": self.n_bands, "units": self.units,
            "n_valid": self.n_valid, "n_valid_pred_truth": self.n_valid_pred_truth,
            "factor": self.factor, "truth_resampling": self.truth_resampling,
            "valid_range": self.valid_range, "wet_threshold": self.wet_threshold,
            "domain_shift": self.domain_shift,
            "metrics": _clean(self.metrics),
            "baselines": {k: _clean(v) for k, v in self.baselines.items()},
            "skill": _clean(self.skill),
            "blocks": [sub(b) for b in self.blocks],
            "bands": [sub(b) for b in self.bands],
            "uncertainty": _clean(self.uncertainty),
            "indices": {k: _clean(v) for k, v in self.indices.items()},
            "n_valid_indices": self.n_valid_indices,
            "plots": list(self.plots), "passed": self.passed, "broken": list(self.broken),
            "seconds": round(self.seconds, 3),
        }

    def to_rows(self) -> list[dict]:
        """Long-format rows, one per (scope, subject, metric).

        Columns (:data:`CSV_COLUMNS`): ``scope`` (overall | block | band), ``subject``
        (``pred`` or a baseline name), ``block_row``, ``block_col``, ``band``, ``date``,
        ``n_valid``, ``metric`` (a key of METRICS, or ``skill`` = 1 - RMSE_pred /
        RMSE_subject, or a climate index score of :data:`geosr.evaluate.indices.INDICES`,
        whose ``n_valid`` counts the pixels valid at every date), ``value`` (empty when
        undefined).
        """
        rows: list[dict] = []

        def add(scope, subject, values, n, **where):
            for k, v in values.items():
                rows.append({"scope": scope, "subject": subject, "block_row": where.get("row"),
                             "block_col": where.get("col"), "band": where.get("band"),
                             "date": where.get("date", ""), "n_valid": n, "metric": k,
                             "value": _num(v)})

        add("overall", "pred", {**self.metrics, **self.uncertainty}, self.n_valid)
        for name, values in self.baselines.items():
            add("overall", name, {**values, "skill": self.skill.get(name)}, self.n_valid)
        for name, values in self.indices.items():
            add("overall", name, values, self.n_valid_indices)
        for s in (*self.blocks, *self.bands):
            where = {"row": s.row, "col": s.col, "band": s.band, "date": s.date}
            add(s.scope, "pred", s.metrics, s.n_valid, **where)
            for name, v in s.skill.items():
                add(s.scope, name, {"skill": v}, s.n_valid, **where)
        return rows


CSV_COLUMNS = ("scope", "subject", "block_row", "block_col", "band", "date", "n_valid", "metric",
               "value")


def _num(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in d.items()}


def write_json(report: ValidationReport, path: str | Path) -> Path:
    """Write ``report.to_dict()`` as JSON (atomically; an existing file is replaced)."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return Path(path)


def write_csv(report: ValidationReport, path: str | Path) -> Path:
    """Write ``report.to_rows()`` as CSV (long format, see :meth:`ValidationReport.to_rows`)."""
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for row in report.to_rows():
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return Path(path)
