"""Calibration of a probabilistic model's spread on the held-out validation data.

A spread trained with the CRPS on training patches tends to be too narrow on unseen
data (the best estimate fits the training patches better than new ones). One scalar
fixes most of it: after training, the validation tiles are predicted, the standardised
errors ``z = (truth - mu) / sigma`` collected, and the spread multiplied by
``quantile(|z|, 0.9) / Phi^-1(0.95)``, so that the central 90 % interval holds 90 % of
the validation pixels. The factor lives in the spread head's ``scale`` buffer.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import special

log = logging.getLogger(__name__)

CALIBRATION_LEVEL = 0.9
"""Central interval whose validation coverage the calibration matches."""

MAX_SAMPLES = 2_000_000
"""Validation pixels kept for the quantile of ``|z|`` (a systematic subsample beyond)."""


def spread_calibration(model, parts: list, specs, norm, device) -> dict:
    """The spread factor and the validation coverage before and after it, pooled over the
    validation data of every dataset.

    ``parts``: per dataset, ``(reader, manifest, split, scenes, mean_over_aux)``
    (``scenes`` None for a fixed-statistics model; ``mean_over_aux``: see
    :func:`~geosr.training.loop.predict_tile`).

    Returns:
        ``{"scale", "coverage_raw", "coverage", "n"}``; ``scale`` 1 when the validation
        data hold no valid pixel.
    """
    import torch

    from geosr.training.loop import _fine, _val_tiles, predict_tile

    zs = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for reader, manifest, split, scenes, mean_over_aux in parts:
                f = manifest.factor
                for read, core in _val_tiles(manifest, split):
                    fread, fcore = _fine(read, f), _fine(core, f)
                    aux = reader.aux(fread)
                    y0 = int(fcore.row_off - fread.row_off)
                    x0 = int(fcore.col_off - fread.col_off)
                    ys = slice(y0, y0 + int(fcore.height))
                    xs = slice(x0, x0 + int(fcore.width))
                    for band in split.val_bands:
                        truth = reader.target(band, fcore)
                        coarse = reader.coarse(band, read)
                        if not (np.isfinite(truth).any() and np.isfinite(coarse).any()):
                            continue
                        y = predict_tile(model, coarse, aux, norm, specs, device,
                                         scenes.get(band) if scenes else None,
                                         mean_over_aux=mean_over_aux)
                        z = (truth - y[0][ys, xs]) / y[1][ys, xs]
                        zs.append(np.abs(z[np.isfinite(z)]))
    finally:
        model.train(was_training)
    z = np.concatenate(zs) if zs else np.empty(0)
    if z.size == 0:
        return {"scale": 1.0, "coverage_raw": None, "coverage": None, "n": 0}
    if z.size > MAX_SAMPLES:
        z = z[:: math.ceil(z.size / MAX_SAMPLES)]
    zq = float(special.ndtri(0.5 + CALIBRATION_LEVEL / 2))
    scale = float(np.quantile(z, CALIBRATION_LEVEL)) / zq
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    return {"scale": scale, "coverage_raw": float((z <= zq).mean()),
            "coverage": float((z <= zq * scale).mean()), "n": int(z.size)}
