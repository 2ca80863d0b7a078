"""Where a ``downscale`` run spends its time: seconds per stage, for the benchmark's
breakdown and ``--json``.

Stages (:data:`STAGES`): ``read`` (aux windows of the tiles), ``align`` (the coarse field
onto the coarse grid, nodata filled), ``fit`` (the sharpening regression: coarse aux
and fit), ``predict`` (the method on the tiles), ``blend`` (weighted stitching),
``conserve`` (conservation, units, range and mask of completed rows), ``stage``
(writing rows to the stage file) and ``overviews+compress (FORMAT)`` (the copy to the
output, which GDAL's COG driver does in one call). Tile stages run on
worker threads: their figures are thread-seconds, which may add up to more than the
wall time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

STAGES = ("read", "align", "fit", "predict", "blend", "conserve", "stage")


class StageTimes:
    """Seconds per stage, added from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secs: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._secs[stage] = self._secs.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def reset(self) -> None:
        with self._lock:
            self._secs.clear()

    def as_dict(self) -> dict[str, float]:
        """Stages in :data:`STAGES` order (then any others), rounded to milliseconds."""
        with self._lock:
            secs = dict(self._secs)
        if "tiles" in secs:  # whole tiles are timed, their reads inside them
            secs["predict"] = secs.pop("tiles") - secs.get("read", 0.0)
        names = [s for s in STAGES if s in secs] + sorted(set(secs) - set(STAGES))
        return {s: round(secs[s], 3) for s in names}


TIMES = StageTimes()
"""The process's stage times (reset at the start of each ``downscale``)."""
