"""Slope augmentation: training samples whose field depends on the aux more or less
steeply than the training data's, so a scene-adaptive network learns to follow the
scene's regression slope instead of the few slopes its training scenes had.

Why: a scene-adaptive network is given each scene's sharpening slopes
(:mod:`geosr.model.scene`), but a training set of a few bands spans a few slopes only
(two Swiss monthly fields: DEM gains -1.03 and -1.02 in network units); a scene with
another slope (a Cornish day: -18) is then an input the network never saw, and it
extrapolates (measured: 2x bicubic's RMSE where sharpening is 1.26x).

Per sample, with ``u ~ U(-s, s)`` per continuous aux layer ``k`` (``s`` =
``TrainConfig.slope_augment``)::

    beta_k = u_k * std(coarse band) / std(layer k over the band's coarse cells)
    target += sum_k beta_k * (aux_k - mean_k)            (fine pixels)
    coarse += sum_k beta_k * (cell mean of aux_k - mean_k)

``mean_k`` is the layer's mean over the band's cells (a cell without the layer is not
changed through it). Every coarse cell stays the mean of
its fine pixels (aux nodata is filled with its cell's valid mean first, as for the
network's input), and the sample's scene is the band's scene after the same change: an
ordinary least-squares slope moves by exactly ``beta``, and the band's mean and spread
follow from its moments (kept per band, so no band is held in memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class BandMoments:
    """Moments of one band's coarse field ``y`` and its continuous aux cell means ``a_k``,
    over the band's valid cells (those its scene is computed on).

    ``a~_k = a_k - mean_a_k``, 0 where layer ``k`` is nodata (a cell the augmentation
    does not change through that layer). ``mean_a (K,)``: the centres ``mean_a_k`` (means
    over the cells where ``a_k`` is valid); ``mean_d (K,)``: the means of ``a~_k``;
    ``var_y``; ``cov_ya (K,)``: covariances of ``y`` and ``a~_k``; ``cov_aa (K, K)``:
    of the ``a~_k`` (population moments).
    """

    mean_a: np.ndarray
    mean_d: np.ndarray
    var_y: float
    cov_ya: np.ndarray
    cov_aa: np.ndarray

    @staticmethod
    def of(coarse: np.ndarray, layers: list[np.ndarray]) -> BandMoments | None:
        """The moments, or None with fewer than 3 valid cells."""
        y = np.asarray(coarse, np.float64).reshape(-1)
        ok = np.isfinite(y)
        if ok.sum() < 3:
            return None
        a = np.stack([np.asarray(x, np.float64).reshape(-1)[ok] for x in layers])
        valid = np.isfinite(a)
        centre = np.array([row[v].mean() if v.any() else 0.0
                           for row, v in zip(a, valid, strict=True)])
        d = np.where(valid, a - centre[:, None], 0.0)
        cov = np.atleast_2d(np.cov(np.vstack([y[ok], d]), bias=True))
        return BandMoments(centre, d.mean(axis=1), float(cov[0, 0]), cov[0, 1:], cov[1:, 1:])


class SlopeAugmenter:
    """Applies the slope augmentation (module docstring) to training batches."""

    def __init__(self, scale: float, scenes: dict, moments: dict, specs, *,
                 train_std: float) -> None:
        """Args:
            scale: ``s`` of the module docstring (> 0).
            scenes: per band, its :class:`~geosr.model.scene.Scene`.
            moments: per band, its :class:`BandMoments` (None: the band is not augmented).
            specs: the model's aux layers.
            train_std: the training data's coarse std (for the scene std floor).
        """
        from geosr.model.scene import STD_FLOOR

        self.scale = float(scale)
        self.scenes, self.moments, self.specs = scenes, moments, specs
        self.floor = STD_FLOOR * float(train_std)
        # (layer index, network channel index) of each continuous layer
        self.layers: list[tuple[int, int]] = []
        ch = 0
        for k, s in enumerate(specs):
            if not s.categorical:
                self.layers.append((k, ch))
            ch += s.channels

    def __call__(self, coarse: np.ndarray, target: np.ndarray, aux: np.ndarray,
                 bands: list[int], rng: np.random.Generator):
        """Augment a batch in place.

        Args:
            coarse: ``(N, h, w)`` model units; target ``(N, H, W)``.
            aux: ``(N, A, H, W)`` layer units, nodata filled per cell
                (:func:`~geosr.model.predictor.fill_aux_cells`).
            bands: the band of each sample.
            rng: the training loop's generator.

        Returns:
            per sample, its scene after the change.
        """
        from geosr.arrays import block_mean

        f = target.shape[-1] // coarse.shape[-1]
        out = []
        for i, band in enumerate(bands):
            scene, mom = self.scenes[band], self.moments.get(band)
            if mom is None or not self.layers:
                out.append(scene)
                continue
            sd_a = np.sqrt(np.maximum(np.diag(mom.cov_aa), 0.0))
            u = rng.uniform(-self.scale, self.scale, size=len(self.layers))
            # a constant layer (sd 0) gets no change
            beta = np.divide(u * math.sqrt(max(mom.var_y, 0.0)), sd_a,
                             out=np.zeros_like(sd_a), where=sd_a > 0)
            fine = np.zeros(target.shape[1:], np.float64)
            for j, (k, _) in enumerate(self.layers):  # a cell without the layer: no change
                fine += beta[j] * np.nan_to_num(aux[i, k].astype(np.float64) - mom.mean_a[j])
            target[i] += fine.astype(target.dtype)
            coarse[i] += block_mean(fine, f).astype(coarse.dtype)
            out.append(self._scene(scene, mom, beta))
        return out

    def _scene(self, scene, mom: BandMoments, beta: np.ndarray):
        """The band's scene after adding ``beta . a~`` to its field."""
        mean = scene.mean + float(beta @ mom.mean_d)
        var = mom.var_y + 2.0 * float(beta @ mom.cov_ya) + float(beta @ mom.cov_aa @ beta)
        std = max(math.sqrt(max(var, 0.0)), self.floor, 1e-12)
        gain = list(scene.gain)
        for j, (k, ch) in enumerate(self.layers):
            # gains are per scene aux std for a scene_aux model, else per training std
            s_a = float(scene.aux_scale[ch]) if scene.aux_scale else float(self.specs[k].std)
            slope = gain[ch] * scene.std / s_a if s_a else 0.0  # target units per layer unit
            gain[ch] = (slope + float(beta[j])) * s_a / std
        return replace(scene, mean=mean, std=std, gain=tuple(gain))


def band_moments(reader, bands, layers: list[np.ndarray | None]) -> dict:
    """Per band, its :class:`BandMoments` over the whole coarse grid, from the aux
    layers' cell means ``layers`` (:func:`~geosr.training.data.aux_coarse_means`; None
    for class layers); None without a continuous layer or enough valid cells."""
    from rasterio.windows import Window

    layers = [x for x in layers if x is not None]
    if not layers:
        return {b: None for b in bands}
    g = reader.manifest.coarse_grid
    full = Window(0, 0, g.width, g.height)
    return {b: BandMoments.of(reader.coarse(b, full), layers) for b in sorted(set(bands))}
