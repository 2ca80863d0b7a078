"""Quantile maps and ensemble members written beside a downscaled output.

``downscale --quantiles 0.05,0.95`` writes ``OUT_q05.tif`` and ``OUT_q95.tif`` beside
``OUT.tif`` (same grid, bands, band tags and format; ``.nc``/``.zarr`` outputs get sibling
files of their own format); ``--members N`` writes ``OUT_members.tif`` with ``N x bands``
bands, member-major (all dates of member 1, then member 2...), each described
``<variable> <date> member <m>``. ``OUT`` stays the conserved best estimate.

The extras stream through the same tiles as the best estimate: the engine stitches the
per-pixel spread beside the estimate, and each completed row of coarse cells is turned
into quantiles and members (:mod:`geosr.uncertainty`) in the output's units, after the
estimate's conservation and valid range, and written to a stage file of its own. Every
stage is copied to its final format and renamed into place only when all are complete.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geosr.arrays import mask_nodata_blocks
from geosr.constraints import ValidRange, bounded_conserve
from geosr.grid import Grid
from geosr.uncertainty import default_length_px, member_field, quantile_label, quantile_maps

log = logging.getLogger(__name__)

MAX_MEMBERS = 1000


@dataclass(frozen=True)
class UncertaintyRequest:
    """What to write beside the best estimate.

    Attributes:
        quantiles: probabilities in (0, 1), sorted.
        members: ensemble size (0: none).
        seed: seed of the members' noise.
        source: how the spread was obtained (recorded in the tags).
    """

    quantiles: tuple[float, ...] = ()
    members: int = 0
    seed: int = 0
    source: str = ""

    @property
    def wanted(self) -> bool:
        return bool(self.quantiles or self.members)


def sibling(out: Path, tag: str) -> Path:
    """``OUT_<tag>.<ext>`` beside ``OUT.<ext>``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_{tag}{out.suffix}")


def extra_paths(out: Path, req: UncertaintyRequest) -> list[Path]:
    """Every file ``req`` writes beside ``out``."""
    paths = [sibling(out, quantile_label(q)) for q in req.quantiles]
    if req.members:
        paths.append(sibling(out, "members"))
    return paths


def global_offset(grid: Grid) -> tuple[int, int]:
    """(row, col) of the grid's first pixel on the global lattice of its pixel size (pixels
    counted from the CRS origin), so noise keyed on it does not depend on the extent."""
    res = grid.res
    return int(round(-grid.transform.f / res)), int(round(grid.transform.c / res))


@dataclass
class _Target:
    path: Path
    tmp: Path
    stage: Path
    dst: object
    quantile: float | None = None
    writers: list = field(default_factory=list)


class ExtraSinks:
    """Stage files and row writers of the quantile and member outputs of one input.

    Use inside a :class:`contextlib.ExitStack` (the temporary outputs are removed when
    the stack unwinds with an error).
    """

    def __init__(self, stack: contextlib.ExitStack, *, out: Path, req: UncertaintyRequest,
                 fine: Grid, n_bands: int, descriptions: list[str], units: list[str],
                 tags: dict, band_tags: list[dict], overwrite: bool, factor: int,
                 conserve: bool, valid: ValidRange | None) -> None:
        from geosr.io.sinks import atomic_output, stage_path
        from geosr.io.write import open_stream_writer

        self.req, self.fine, self.n_bands, self.factor = req, fine, n_bands, factor
        self.conserve, self.valid = conserve, valid
        self.row0, self.col0 = global_offset(fine)
        self.length_px = default_length_px(factor)
        self.targets: list[_Target] = []
        base = {**tags, "GEOSR_UNCERTAINTY": req.source}

        def open_target(path: Path, count: int, desc: list[str], ttags: dict,
                        btags: list[dict], quantile: float | None) -> None:
            tmp = stack.enter_context(atomic_output(path, overwrite=overwrite))
            stage = stage_path(tmp)
            stack.callback(_unlink, stage)
            dst = open_stream_writer(stage, fine, count, block_rows=32, descriptions=desc,
                                     units=units * (count // max(n_bands, 1)), tags=ttags)
            stack.callback(dst.close)
            for b, t in enumerate(btags):
                if t:
                    dst.update_tags(b + 1, **t)
            self.targets.append(_Target(path, tmp, stage, dst, quantile))

        for q in req.quantiles:
            open_target(sibling(out, quantile_label(q)), n_bands, descriptions,
                        {**base, "GEOSR_OUTPUT": "quantile", "GEOSR_QUANTILE": f"{q:g}"},
                        band_tags, q)
        if req.members:
            n = req.members
            desc = [f"{d} member {m + 1}" for m in range(n) for d in descriptions]
            btags = [{**t, "member": str(m + 1)} for m in range(n) for t in band_tags]
            open_target(sibling(out, "members"), n * n_bands, desc,
                        {**base, "GEOSR_OUTPUT": "members", "GEOSR_MEMBERS": str(n),
                         "GEOSR_SEED": str(req.seed),
                         "GEOSR_NOISE_LENGTH_PX": f"{self.length_px:g}"}, btags, None)

    def start_group(self, group: list[int], row_writer) -> None:
        """Row writers for a group of 0-based bands; ``row_writer(dst, bands)`` makes one."""
        for t in self.targets:
            if t.quantile is not None:
                t.writers = [row_writer(t.dst, [b + 1 for b in group])]
            else:
                t.writers = [row_writer(t.dst, [m * self.n_bands + b + 1 for b in group])
                             for m in range(self.req.members)]

    def end_group(self) -> None:
        for t in self.targets:
            for w in t.writers:
                w.close()
            t.writers = []

    def write(self, top: int, mean: np.ndarray, sigma: np.ndarray, coarse: np.ndarray,
              group: list[int], scale: np.ndarray) -> None:
        """Write the extras of completed rows.

        Args:
            top: grid row of the rows.
            mean: ``(B, R, W)`` the final best estimate (output units, masked).
            sigma: ``(B, R, W)`` spread in the model's units.
            coarse: ``(B, R / f, W)`` coarse values in output units.
            group: the 0-based bands.
            scale: ``(B,)`` output units per model unit.
        """
        sig = sigma * scale.astype(np.float32)[:, None, None]
        qs = [t for t in self.targets if t.quantile is not None]
        for t, qmap in zip(qs, quantile_maps(mean, sig, [t.quantile for t in qs]), strict=True):
            if self.valid is not None:
                np.clip(qmap, self.valid.lo, self.valid.hi, out=qmap)
            # the interval brackets the best estimate, also where a bound clipped it
            (np.minimum if t.quantile < 0.5 else np.maximum)(qmap, mean, out=qmap)
            t.writers[0].write(top, qmap)
        for t in self.targets:
            if t.quantile is not None:
                continue
            for m, w in enumerate(t.writers):
                field_ = member_field(mean, sig, coarse, self.factor, seed=self.req.seed,
                                      member=m, bands=group, row0=self.row0 + top,
                                      col0=self.col0, length_px=self.length_px,
                                      conserve=self.conserve)
                if self.valid is not None:
                    if self.conserve:
                        bounded_conserve(field_, coarse, self.factor, self.valid.lo,
                                         self.valid.hi)
                    else:
                        np.clip(field_, self.valid.lo, self.valid.hi, out=field_)
                w.write(top, mask_nodata_blocks(field_, coarse, self.factor))

    def finish(self, *, fmt, variable: str) -> None:
        """Close the stages and copy each to its output format (still temporary)."""
        from geosr.io.sinks import write_output
        from geosr.io.write import check_written

        for t in self.targets:
            t.dst.close()
            check_written(t.stage)
            write_output(t.stage, t.tmp, fmt=fmt, variable=variable)


def _unlink(path: Path) -> None:
    for p in (path, Path(f"{path}.aux.xml")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
