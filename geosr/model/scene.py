"""Scene statistics: what a scene-adaptive network is told about the field it downscales.

A network trained with fixed input statistics learns one mapping from standardised
values; applied to another season, year, variable or region it sees values it never
saw, and a level or spread shift goes straight into its output (measured: 4x the RMSE
of regression sharpening on a colder month of the same region). Regression sharpening
does not suffer from this, because it refits on every scene.

A scene-adaptive network (:attr:`geosr.nn.config.NetConfig.scene`) therefore gets, per
sample, three things computed from the whole input band (the *scene*), never from a
tile, so that tiling does not change the output:

- ``mean`` and ``std`` of the coarse field: the input and the target are standardised
  with them, so level and spread shifts vanish (the output is mapped back with them);
- ``gain``: the scene's sharpening regression (:func:`geosr.baselines.fit_sharpen` of
  the coarse field on the continuous aux layers averaged over each coarse cell),
  expressed in network units, which the network adds to its learned local gains. The
  network then corrects a scene-fitted regression instead of learning one fixed slope.

Categorical aux layers get no scene gain (the network learns theirs): class effects are
rarely stable enough across scenes to be worth a per-scene fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STD_FLOOR = 0.05
"""A scene's std is at least this fraction of the training data's coarse std: a nearly
flat field (a calm day, a tiny area) must not blow its anomalies up."""


@dataclass(frozen=True)
class Scene:
    """One scene's statistics (see the module docstring).

    Attributes:
        mean: mean of the valid coarse cells, model units.
        std: their standard deviation (floored), model units.
        gain: per network aux channel, the scene regression's slope in network units
            (target std per encoded aux unit); 0 for class channels.
        r2: R^2 of the scene regression.
        cells: valid coarse cells the statistics come from.
    """

    mean: float
    std: float
    gain: tuple[float, ...]
    r2: float = 0.0
    cells: int = 0

    def tags(self) -> dict[str, str]:
        """Output band tags recording the scene."""
        return {"GEOSR_SCENE_MEAN": f"{self.mean:.6g}", "GEOSR_SCENE_STD": f"{self.std:.6g}",
                "GEOSR_SCENE_GAIN": ",".join(f"{g:.4g}" for g in self.gain),
                "GEOSR_SCENE_R2": f"{self.r2:.4f}"}


def scene_of(coarse: np.ndarray, aux_coarse: Sequence[np.ndarray | None], specs,
             *, train_std: float) -> Scene:
    """The statistics of one scene.

    Args:
        coarse: ``(h, w)`` coarse field in model units, NaN = nodata.
        aux_coarse: per aux spec, its ``(h, w)`` mean over each coarse cell in layer
            units (NaN = nodata), or None for a categorical layer.
        specs: the bundle's :class:`~geosr.model.bundle.AuxChannelSpec` per layer.
        train_std: the training data's coarse std (for the floor).

    Returns:
        the :class:`Scene`; a scene without valid cells gets mean 0, the floor std and
        no gain (the caller's output is nodata there anyway).
    """
    from geosr.baselines import fit_sharpen

    y = np.asarray(coarse, np.float64)
    ok = np.isfinite(y)
    floor = STD_FLOOR * float(train_std)
    n_chan = sum(s.channels for s in specs)
    if not ok.any():
        return Scene(0.0, max(floor, 1e-12), (0.0,) * n_chan, 0.0, 0)
    mean = float(y[ok].mean())
    std = max(float(y[ok].std()), floor, 1e-12)
    cont = [k for k, s in enumerate(specs) if not s.categorical and aux_coarse[k] is not None]
    slopes: dict[int, float] = {}
    r2 = 0.0
    if cont:
        fit = fit_sharpen(coarse.astype(np.float32),
                          np.stack([np.asarray(aux_coarse[k], np.float32) for k in cont]))
        r2 = float(fit.r2)
        for term, c in zip(fit.terms, fit.coef, strict=True):
            if math.isfinite(float(c)):
                slopes[cont[term.layer]] = float(c)
    gain: list[float] = []
    for k, s in enumerate(specs):
        if s.categorical:
            gain += [0.0] * s.channels
        else:  # target units per layer unit -> target std per layer std
            gain.append(slopes.get(k, 0.0) * float(s.std) / std)
    return Scene(mean, std, tuple(gain), r2, int(ok.sum()))


def window_scene(coarse: np.ndarray, aux: np.ndarray | None, specs, factor: int, *,
                 train_std: float) -> Scene:
    """A scene from one window: ``coarse (h, w)`` and fine ``aux (A, h*f, w*f)``.

    For callers without a whole input band (a bare :class:`~geosr.model.predictor.Predictor`
    call): the window is its own scene.
    """
    from geosr.arrays import block_mean

    layers: list[np.ndarray | None] = []
    for k, s in enumerate(specs):
        layers.append(None if s.categorical or aux is None else block_mean(aux[k], factor))
    return scene_of(coarse, layers, specs, train_std=train_std)
