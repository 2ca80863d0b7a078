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

With :attr:`~geosr.nn.config.NetConfig.scene_aux` the scene also carries each continuous
aux layer's mean and std over its cells (``aux_loc``, ``aux_scale``): the fine aux is
standardised with them instead of the training data's, and ``gain`` is per scene aux
std. Why: a DEM standardised with Alpine statistics (std 745 m) gives Cornish relief
(std 47 m) as near-constant input; measured with ``benchmarks/generalisation.py`` a
Swiss-trained network in Cornwall went from 1.71x to 1.16x bicubic's RMSE with it, and a
model trained on both regions from 0.428 to 0.250 degC on Cornish days.

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

AUX_STD_FLOOR = 0.01
"""With scene aux statistics, a layer's scene std is at least this fraction of its
training std: flat terrain (a plain, a lake) must not blow tiny aux anomalies up."""


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
        aux_loc, aux_scale: per network aux channel, the scene's mean and std of the
            layer's cell means (layer units; 0 and 1 for class channels), when the model
            standardises its aux per scene (``scene_aux``); empty otherwise.
    """

    mean: float
    std: float
    gain: tuple[float, ...]
    r2: float = 0.0
    cells: int = 0
    aux_loc: tuple[float, ...] = ()
    aux_scale: tuple[float, ...] = ()

    def tags(self) -> dict[str, str]:
        """Output band tags recording the scene."""
        tags = {"GEOSR_SCENE_MEAN": f"{self.mean:.6g}", "GEOSR_SCENE_STD": f"{self.std:.6g}",
                "GEOSR_SCENE_GAIN": ",".join(f"{g:.4g}" for g in self.gain),
                "GEOSR_SCENE_R2": f"{self.r2:.4f}"}
        if self.aux_loc:
            tags["GEOSR_SCENE_AUX_MEAN"] = ",".join(f"{v:.6g}" for v in self.aux_loc)
            tags["GEOSR_SCENE_AUX_STD"] = ",".join(f"{v:.6g}" for v in self.aux_scale)
        return tags


def scene_of(coarse: np.ndarray, aux_coarse: Sequence[np.ndarray | None], specs,
             *, train_std: float, aux_scene: bool = False) -> Scene:
    """The statistics of one scene.

    Args:
        coarse: ``(h, w)`` coarse field in model units, NaN = nodata.
        aux_coarse: per aux spec, its ``(h, w)`` mean over each coarse cell in layer
            units (NaN = nodata), or None for a categorical layer.
        specs: the bundle's :class:`~geosr.model.bundle.AuxChannelSpec` per layer.
        train_std: the training data's coarse std (for the floor).
        aux_scene: also the aux layers' scene statistics (a ``scene_aux`` model).

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
        loc, scale = _aux_stats(ok, aux_coarse, specs) if aux_scene else ((), ())
        return Scene(0.0, max(floor, 1e-12), (0.0,) * n_chan, 0.0, 0, loc, scale)
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
    loc, scale = _aux_stats(ok, aux_coarse, specs) if aux_scene else ((), ())
    gain: list[float] = []
    for k, s in enumerate(specs):
        if s.categorical:
            gain += [0.0] * s.channels
        else:  # target units per layer unit -> target std per (scene or training) layer std
            spread = scale[len(gain)] if aux_scene else float(s.std)
            gain.append(slopes.get(k, 0.0) * spread / std)
    return Scene(mean, std, tuple(gain), r2, int(ok.sum()), loc, scale)


def _aux_stats(ok: np.ndarray, aux_coarse, specs) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per network aux channel, the scene mean and std (floored) of a continuous layer's
    cell means over the valid cells ``ok`` (the training statistics where it has none);
    0 and 1 for class channels."""
    loc: list[float] = []
    scale: list[float] = []
    for k, s in enumerate(specs):
        if s.categorical:
            loc += [0.0] * s.channels
            scale += [1.0] * s.channels
            continue
        a = None if aux_coarse[k] is None else np.asarray(aux_coarse[k], np.float64)
        v = a[ok & np.isfinite(a)] if a is not None else np.empty(0)
        train = float(s.std) if math.isfinite(float(s.std)) and s.std > 0 else 1.0
        loc.append(float(v.mean()) if v.size else float(s.mean))
        scale.append(max(float(v.std()) if v.size > 1 else train, AUX_STD_FLOOR * train))
    return tuple(loc), tuple(scale)


def window_scene(coarse: np.ndarray, aux: np.ndarray | None, specs, factor: int, *,
                 train_std: float, aux_scene: bool = False) -> Scene:
    """A scene from one window: ``coarse (h, w)`` and fine ``aux (A, h*f, w*f)``.

    For callers without a whole input band (a bare :class:`~geosr.model.predictor.Predictor`
    call): the window is its own scene.
    """
    from geosr.arrays import block_mean

    layers: list[np.ndarray | None] = []
    for k, s in enumerate(specs):
        layers.append(None if s.categorical or aux is None else block_mean(aux[k], factor))
    return scene_of(coarse, layers, specs, train_std=train_std, aux_scene=aux_scene)
