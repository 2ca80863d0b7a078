"""Several prepared datasets trained on together: checks, pooled statistics, and the
per-dataset state of the training loop.

Why: one region, season or grid teaches a network the relations of that regime only;
users with several prepared areas (an Alpine and a coastal one, several years on other
grids) want one model that has seen all of them. Prepared datasets cannot be stacked as
bands of one raster when their grids differ, so each keeps its own reader, validation
split and patch plan, and the loop draws every batch from all of them.

- **Compatibility**: the same factor and fine resolution (the network's scales), the
  same units (one normalisation) and the same aux layers, class layers with the same
  classes (one channel layout). A mismatch is a one-line input error naming the dataset.
- **Statistics**: the normalisation of the coarse field and of each continuous aux
  layer is pooled over the datasets, weighted by their valid cells, as if they were one.
- **Sampling**: each patch of a batch comes from a dataset chosen with equal probability,
  then from that dataset's patch positions: a small region counts as much as a large one.
- **Validation**: each dataset is split on its own (the same options for all); the
  validation error is pooled over every held-out pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geosr.dataset.manifest import LayerStats, Manifest
from geosr.errors import InputError


def pool_stats(stats: Sequence[LayerStats | None]) -> LayerStats | None:
    """Statistics of the union of the layers' valid cells, from each one's moments."""
    parts = [s for s in stats if s is not None and s.count]
    if not parts:
        return next((s for s in stats if s is not None), None)
    if len(parts) == 1:
        return parts[0]
    n = sum(s.count for s in parts)
    mean = sum(s.count * s.mean for s in parts) / n
    second = sum(s.count * (s.std ** 2 + s.mean ** 2) for s in parts) / n
    std = math.sqrt(max(second - mean ** 2, 0.0))
    valid = sum(s.count for s in parts) / sum(s.count / s.valid_fraction if s.valid_fraction
                                                else s.count for s in parts)
    return LayerStats(mean=mean, std=std, min=min(s.min for s in parts),
                      max=max(s.max for s in parts), count=n, valid_fraction=valid)


def check_compatible(manifests: Sequence[Manifest]) -> None:
    """Refuse datasets that one network cannot be trained on together (named by the
    folders they were read from)."""
    m0 = manifests[0]
    first = m0.root
    seen = {Path(first).resolve()}
    for m in manifests[1:]:
        path = m.root
        if Path(path).resolve() in seen:
            raise InputError(f"{path}: given twice; expected each prepared dataset once")
        seen.add(Path(path).resolve())
        if m.factor != m0.factor:
            raise InputError(f"{path}: factor {m.factor}, but {first} has factor {m0.factor}; "
                             "expected datasets prepared with the same --factor")
        if not math.isclose(m.res_m, m0.res_m, rel_tol=1e-6):
            raise InputError(f"{path}: fine resolution {m.res_m:g} m, but {first} has "
                             f"{m0.res_m:g} m; expected datasets prepared with the same --res")
        if m.units and m0.units and m.units != m0.units:
            raise InputError(f"{path}: units {m.units!r}, but {first} has {m0.units!r}; "
                             "expected the same variable in the same units")


def check_aux(manifests: Sequence[Manifest], names: Sequence[str]) -> None:
    """Every chosen aux layer in every dataset, of one kind and (class layers) classes."""
    m0 = manifests[0]
    for m in manifests[1:]:
        path = m.root
        for name in names:
            a0, a = m0.aux_layer(name), next((x for x in m.aux if x.name == name), None)
            if a is None:
                have = ", ".join(x.name for x in m.aux) or "none"
                raise InputError(f"{path}: has no aux layer {name!r} (it has: {have}); "
                                 "expected the same aux layers in every dataset")
            if a.categorical != a0.categorical or (a.categorical and a.classes != a0.classes):
                what = (f"classes {list(a.classes)}" if a.categorical else "a continuous layer")
                want = (f"classes {list(a0.classes)}" if a0.categorical else "a continuous layer")
                raise InputError(f"{path}: aux {name!r} is {what}, but in {m0.root} it is "
                                 f"{want}; expected the same layer kind and classes")


@dataclass
class Source:
    """One training dataset's state in the loop.

    Attributes:
        path: the dataset folder.
        manifest, reader: the dataset and its open reader.
        split: its validation split; plan: its training patch positions.
        mean_over_aux: whether its coarse values are means over where the aux has data
            (coarse nodata cells: a land-only product).
        layers: the aux layers' coarse-cell means (None for class layers).
        scenes: per band, its :class:`~geosr.model.scene.Scene`.
        augmenter: its slope augmenter, or None.
    """

    path: Path
    manifest: Manifest
    reader: Any
    split: Any = None
    plan: Any = None
    mean_over_aux: bool = False
    layers: list | None = None
    scenes: dict | None = None
    augmenter: Any = None


def draw(rng: np.random.Generator, sources: Sequence[Source], batch_size: int
         ) -> list[tuple[int, np.ndarray]]:
    """``(source index, patch picks)`` for one batch: each patch's dataset drawn with equal
    probability, then its position. One dataset draws exactly as a single-dataset run
    always did (its runs stay reproducible across versions)."""
    if len(sources) == 1:
        return [(0, rng.integers(0, len(sources[0].plan.starts), size=batch_size))]
    which = rng.integers(0, len(sources), size=batch_size)
    out = []
    for i, s in enumerate(sources):
        k = int((which == i).sum())
        if k:
            out.append((i, rng.integers(0, len(s.plan.starts), size=k)))
    return out
