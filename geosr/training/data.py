"""Training patches from a prepared dataset: the train/validation split and the sampler.

A patch is a square of ``patch`` x ``patch`` coarse cells and the ``patch*f`` x
``patch*f`` fine pixels under it, so coarse input, fine target and aux line up exactly
(the prepared grids are nested). Patches are read as rasterio windows through
:func:`geosr.io.read_window`; a dataset small enough (``cache_mb``) is read once, window
by window over its full extent, and patches are then sliced from memory.

Why patches sit on whole coarse cells: the conservation layer and the loss compare a
coarse cell with exactly the fine pixels it covers; a patch cut mid-cell would not.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from rasterio.windows import Window

from geosr.dataset.manifest import Manifest
from geosr.errors import InputError
from geosr.io.read import open_raster, read_window

log = logging.getLogger(__name__)

MIN_VALID_FRACTION = 0.25
"""A training patch needs at least this fraction of valid coarse cells (coast, borders)."""


class SplitKind(str, Enum):
    """How the validation data were held out."""

    samples = "samples"    # --val-samples ID ...
    fraction = "fraction"  # --val-fraction F: the last F of the samples by date
    block = "block"        # a contiguous block of coarse columns (east side)


@dataclass(frozen=True)
class Split:
    """Which samples and which coarse columns train and validate.

    Attributes:
        kind: how validation was chosen.
        train_bands: 1-based bands of coarse.tif/target.tif used for training.
        val_bands: bands used for validation.
        train_cols: ``(start, stop)`` coarse columns training patches may use.
        val_cols: ``(start, stop)`` coarse columns whose targets are validated.
    """

    kind: SplitKind
    train_bands: tuple[int, ...]
    val_bands: tuple[int, ...]
    train_cols: tuple[int, int]
    val_cols: tuple[int, int]

    def describe(self, manifest: Manifest) -> str:
        ids = {s.band: s.id for s in manifest.samples}
        if self.kind is SplitKind.block:
            return (f"spatial block: coarse columns {self.val_cols[0]}..{self.val_cols[1] - 1} "
                    f"(east) held out of {len(self.train_bands)} sample(s)")
        return (f"{len(self.train_bands)} training sample(s), validation on "
                f"{', '.join(ids[b] for b in self.val_bands)}")

    def to_dict(self, manifest: Manifest) -> dict:
        ids = {s.band: s.id for s in manifest.samples}
        return {"kind": self.kind.value, "train_samples": [ids[b] for b in self.train_bands],
                "val_samples": [ids[b] for b in self.val_bands],
                "train_cols": list(self.train_cols), "val_cols": list(self.val_cols)}


def make_split(manifest: Manifest, *, val_samples: tuple[str, ...] = (),
               val_fraction: float | None = None, val_block: float | None = None,
               coarse_valid: np.ndarray | None = None) -> Split:
    """Choose the validation data.

    Precedence: ``val_samples``, then ``val_fraction``, then ``val_block``; with none of
    them, 20% of the samples by date when there are several, else the eastern 25% of a
    single sample.

    Args:
        manifest: the prepared dataset.
        val_samples: sample ids to hold out.
        val_fraction: fraction (0, 1) of samples to hold out, the latest by date.
        val_block: fraction (0, 1) of the valid coarse cells to hold out as a block of
            eastern columns, for all samples.
        coarse_valid: ``(rows, cols)`` count of valid coarse cells (for the block split).
    """
    samples = manifest.samples
    all_bands = tuple(s.band for s in samples)
    width = manifest.coarse_grid.width
    if val_samples and (val_fraction is not None or val_block is not None):
        raise InputError("--val-samples cannot be combined with --val-fraction or --val-block; "
                         "expected one way of holding out validation data")
    if val_fraction is not None and val_block is not None:
        raise InputError("--val-fraction cannot be combined with --val-block; expected one")
    if val_samples:
        by_id = {s.id: s.band for s in samples}
        unknown = [v for v in val_samples if v not in by_id]
        if unknown:
            shown = ", ".join(list(by_id)[:8]) + (" ..." if len(by_id) > 8 else "")
            raise InputError(f"--val-samples {unknown[0]!r} is not a sample of {manifest.root}; "
                             f"expected sample ids from its manifest: {shown}")
        val = tuple(sorted({by_id[v] for v in val_samples}))
        train = tuple(b for b in all_bands if b not in val)
        if not train:
            raise InputError(f"--val-samples holds out all {len(samples)} samples; expected at "
                             "least one left for training")
        return Split(SplitKind.samples, train, val, (0, width), (0, width))
    if val_fraction is not None:
        if not (0 < val_fraction < 1) or not math.isfinite(val_fraction):
            raise InputError(f"--val-fraction {val_fraction!r} is out of range; expected a "
                             "fraction between 0 and 1 (e.g. 0.2)")
        if len(samples) == 1:
            log.info("one sample: --val-fraction %.2f holds out a spatial block instead",
                     val_fraction)
            return _block_split(manifest, val_fraction, coarse_valid)
        return _fraction_split(manifest, val_fraction)
    if val_block is not None:
        if not (0 < val_block < 1) or not math.isfinite(val_block):
            raise InputError(f"--val-block {val_block!r} is out of range; expected a fraction "
                             "between 0 and 1 (e.g. 0.25)")
        return _block_split(manifest, val_block, coarse_valid)
    if len(samples) >= 2:
        return _fraction_split(manifest, 0.2)
    return _block_split(manifest, 0.25, coarse_valid)


def _fraction_split(manifest: Manifest, fraction: float) -> Split:
    order = sorted(manifest.samples, key=lambda s: (s.date or "", s.band))
    n_val = min(len(order) - 1, max(1, round(fraction * len(order))))
    val = tuple(sorted(s.band for s in order[len(order) - n_val:]))
    train = tuple(sorted(s.band for s in order[:len(order) - n_val]))
    width = manifest.coarse_grid.width
    return Split(SplitKind.fraction, train, val, (0, width), (0, width))


def _block_split(manifest: Manifest, fraction: float, coarse_valid: np.ndarray | None) -> Split:
    """Hold out the eastern columns holding ``fraction`` of the valid coarse cells."""
    width = manifest.coarse_grid.width
    bands = tuple(s.band for s in manifest.samples)
    if coarse_valid is None:
        coarse_valid = np.ones(manifest.coarse_grid.shape)
    per_col = coarse_valid.sum(axis=0).astype(np.float64)
    total = per_col.sum()
    if width < 4 or total == 0:
        raise InputError(f"{manifest.root}: {width} coarse columns are too few for a spatial "
                         "validation block; expected at least 4 (or several samples and "
                         "--val-samples/--val-fraction)")
    from_east = np.cumsum(per_col[::-1])
    n_cols = int(np.searchsorted(from_east, fraction * total) + 1)
    n_cols = min(max(n_cols, 1), width - 2)
    split = width - n_cols
    return Split(SplitKind.block, bands, bands, (0, split), (split, width))


# --------------------------------------------------------------------------- reading


class DatasetReader:
    """Windowed access to a prepared dataset's coarse, target and selected aux layers.

    Use as a context manager. Windows are in pixels of the layer's own grid. With
    ``cache_mb`` large enough for the layers (only ``bands`` of coarse/target), each is
    read once through full-extent windows and later windows are sliced from memory.

    Args:
        manifest: the prepared dataset.
        aux_names: aux layers to read, in channel order.
        bands: coarse/target bands that will be read (1-based).
        cache_mb: read everything into memory when it fits in this many MB.
    """

    def __init__(self, manifest: Manifest, aux_names: tuple[str, ...], bands: tuple[int, ...],
                 *, cache_mb: float = 256.0):
        self.manifest = manifest
        self.aux_names = aux_names
        self.bands = tuple(sorted(set(bands)))
        self._band_pos = {b: i for i, b in enumerate(self.bands)}
        fine_px = manifest.fine_grid.width * manifest.fine_grid.height
        coarse_px = manifest.coarse_grid.width * manifest.coarse_grid.height
        total = 4 * (fine_px * (len(self.bands) + len(aux_names)) + coarse_px * len(self.bands))
        self.cached = total <= cache_mb * (1 << 20)
        self._stack = contextlib.ExitStack()
        self._src: dict[str, object] = {}
        self._mem: dict[str, np.ndarray] = {}

    def __enter__(self) -> DatasetReader:
        m = self.manifest
        if m.target is None:
            raise InputError(f"{m.root}: the dataset has no target layer; expected a training "
                             "dataset (`geosr prepare ... --target FINE.tif`)")
        layers = {"coarse": m.coarse, "target": m.target,
                  **{f"aux/{n}": m.aux_layer(n) for n in self.aux_names}}
        try:
            for key, layer in layers.items():
                self._src[key] = self._stack.enter_context(open_raster(m.path_of(layer)))
            if self.cached:
                for key, src in self._src.items():
                    bands = [1] if key.startswith("aux/") else list(self.bands)
                    self._mem[key] = _read_all(src, bands)
                log.info("training data cached in memory (%.0f MB)",
                         sum(a.nbytes for a in self._mem.values()) / (1 << 20))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _read(self, key: str, band: int, window: Window) -> np.ndarray:
        if key in self._mem:
            arr = self._mem[key]
            idx = 0 if key.startswith("aux/") else self._band_pos[band]
            r0, c0 = int(window.row_off), int(window.col_off)
            h, w = int(window.height), int(window.width)
            H, W = arr.shape[1:]
            if r0 >= 0 and c0 >= 0 and r0 + h <= H and c0 + w <= W:
                return arr[idx, r0:r0 + h, c0:c0 + w].copy()
            out = np.full((h, w), np.nan, np.float32)
            rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r0 + h, H), min(c0 + w, W)
            if rr1 > rr0 and cc1 > cc0:
                out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = arr[idx, rr0:rr1, cc0:cc1]
            return out
        return read_window(self._src[key], window, band)[0]

    def coarse(self, band: int, window: Window) -> np.ndarray:
        """``(rows, cols)`` coarse values of sample ``band`` in a coarse-grid window."""
        return self._read("coarse", band, window)

    def target(self, band: int, window: Window) -> np.ndarray:
        """``(rows, cols)`` fine target of sample ``band`` in a fine-grid window."""
        return self._read("target", band, window)

    def aux(self, window: Window) -> np.ndarray:
        """``(A, rows, cols)`` selected aux layers in a fine-grid window."""
        if not self.aux_names:
            return np.zeros((0, int(window.height), int(window.width)), np.float32)
        return np.stack([self._read(f"aux/{n}", 1, window) for n in self.aux_names])

    def coarse_valid_count(self, bands: tuple[int, ...]) -> np.ndarray:
        """``(rows, cols)`` number of ``bands`` with a valid coarse value (read by rows)."""
        g = self.manifest.coarse_grid
        count = np.zeros(g.shape, np.int32)
        step = max(1, (4 << 20) // max(g.width, 1))
        for r0 in range(0, g.height, step):
            win = Window(0, r0, g.width, min(step, g.height - r0))
            for b in bands:
                count[r0:r0 + int(win.height)] += np.isfinite(self.coarse(b, win))
        return count


def _read_all(src, bands: list[int], block_rows: int = 1024) -> np.ndarray:
    out = np.empty((len(bands), src.height, src.width), np.float32)
    for r0 in range(0, src.height, block_rows):
        h = min(block_rows, src.height - r0)
        out[:, r0:r0 + h] = read_window(src, Window(0, r0, src.width, h), bands)
    return out


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class PatchPlan:
    """Where training patches may start: top-left coarse cells per training band."""

    patch: int
    starts: np.ndarray  # (K, 3) int: band, row, col
    cells_valid: int    # valid coarse cells in the training area, all bands

    def patches_per_pass(self) -> int:
        """Patches that cover the training cells about once."""
        return max(1, math.ceil(self.cells_valid / (self.patch * self.patch)))


def plan_patches(valid: np.ndarray, split: Split, patch: int,
                 band_valid: dict[int, np.ndarray] | None = None) -> PatchPlan:
    """Patch start cells inside the training columns with enough valid coarse cells.

    Args:
        valid: ``(rows, cols)`` bool, coarse cells valid in (most) training bands.
        split: the split (training columns).
        patch: patch size in coarse cells.
        band_valid: optional per-band validity, overriding ``valid``.
    """
    rows, cols = valid.shape
    c0, c1 = split.train_cols
    if patch > rows or patch > c1 - c0:
        raise InputError(f"--patch {patch} coarse cells does not fit the training area of "
                         f"{rows} x {c1 - c0} coarse cells; expected a smaller --patch")
    starts = []
    cells = 0
    for band in split.train_bands:
        v = (band_valid or {}).get(band, valid).astype(np.float64)
        region = v[:, c0:c1]
        cells += int(region.sum())
        integ = np.pad(region.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        sums = (integ[patch:, patch:] - integ[:-patch, patch:] - integ[patch:, :-patch]
                + integ[:-patch, :-patch])
        frac = sums / (patch * patch)
        ok = frac >= MIN_VALID_FRACTION
        if not ok.any():
            ok = frac > 0
        rr, cc = np.nonzero(ok)
        starts.append(np.stack([np.full_like(rr, band), rr, cc + c0], axis=1))
    allstarts = np.concatenate(starts) if starts else np.zeros((0, 3), int)
    if len(allstarts) == 0:
        raise InputError("no training patch has valid coarse cells; expected data in the "
                         "training area (check the dataset and the validation split)")
    return PatchPlan(patch=patch, starts=allstarts.astype(np.int64), cells_valid=cells)


@dataclass
class Batch:
    """A batch of aligned patches, physical units, NaN = nodata.

    Attributes:
        coarse: ``(B, p, p)``.
        target: ``(B, p*f, p*f)``.
        aux: ``(B, A, p*f, p*f)``.
    """

    coarse: np.ndarray
    target: np.ndarray
    aux: np.ndarray


def read_batch(reader: DatasetReader, plan: PatchPlan, picks: np.ndarray, factor: int, *,
               transforms: np.ndarray | None = None) -> Batch:
    """Read the patches ``plan.starts[picks]``; ``transforms`` (0..7) flip/rotate each."""
    p = plan.patch
    pf = p * factor
    cs, ts, auxs = [], [], []
    for i, k in enumerate(picks):
        band, r, c = (int(v) for v in plan.starts[k])
        cwin = Window(c, r, p, p)
        fwin = Window(c * factor, r * factor, pf, pf)
        co, ta, au = reader.coarse(band, cwin), reader.target(band, fwin), reader.aux(fwin)
        if transforms is not None and transforms[i]:
            co, ta, au = (_dihedral(x, int(transforms[i])) for x in (co, ta, au))
        cs.append(co)
        ts.append(ta)
        auxs.append(au)
    return Batch(np.stack(cs), np.stack(ts), np.stack(auxs))


def _dihedral(x: np.ndarray, t: int) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes."""
    if t & 4:
        x = x[..., ::-1]
    return np.ascontiguousarray(np.rot90(x, t & 3, axes=(-2, -1)))


# --------------------------------------------------------------------------- scenes


def aux_coarse_means(reader: DatasetReader, specs, factor: int,
                     strip_cells: int = 64) -> list[np.ndarray | None]:
    """Per aux layer, its mean over each coarse cell (None for categorical layers).

    Read in strips of ``strip_cells`` coarse rows, so memory stays bounded.
    """
    from geosr.arrays import block_mean

    g = reader.manifest.coarse_grid
    out: list[np.ndarray | None] = [None if s.categorical else
                                    np.full(g.shape, np.nan, np.float32) for s in specs]
    if not any(o is not None for o in out):
        return out
    for r0 in range(0, g.height, strip_cells):
        h = min(strip_cells, g.height - r0)
        aux = reader.aux(Window(0, r0 * factor, g.width * factor, h * factor))
        for k, o in enumerate(out):
            if o is not None:
                o[r0:r0 + h] = block_mean(aux[k], factor)
    return out


def training_scenes(reader: DatasetReader, bands: tuple[int, ...], specs, factor: int, *,
                    train_std: float, layers: list[np.ndarray | None] | None = None,
                    aux_scene: bool = False) -> dict:
    """The :class:`~geosr.model.scene.Scene` of each band: the whole coarse band and the
    aux means over its cells, as ``downscale`` computes them for a whole input band.

    ``layers``: :func:`aux_coarse_means` when the caller has them already (it reads the
    whole aux); ``aux_scene``: with the aux layers' scene statistics (a ``scene_aux``
    model).
    """
    from geosr.model.scene import scene_of

    g = reader.manifest.coarse_grid
    if layers is None:
        layers = aux_coarse_means(reader, specs, factor)
    full = Window(0, 0, g.width, g.height)
    return {b: scene_of(reader.coarse(b, full), layers, specs, train_std=train_std,
                        aux_scene=aux_scene)
            for b in sorted(set(bands))}


def scene_ranges(scenes: dict, specs) -> dict:
    """What the training scenes spanned (the bundle's record, for domain-shift checks)."""
    if not scenes:
        return {}
    vals = list(scenes.values())

    def span(xs):
        return [float(min(xs)), float(max(xs))]

    # Channel i of a continuous layer is the layer itself; class channels get no slope.
    channels = [(n, not s.categorical) for s in specs for n in s.channel_names]
    return {"n": len(vals), "mean": span([s.mean for s in vals]),
            "std": span([s.std for s in vals]),
            "gain": {n: span([s.gain[i] for s in vals])
                     for i, (n, continuous) in enumerate(channels) if continuous}}
