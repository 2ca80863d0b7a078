"""Running a bundle: input encoding, the measured halo of context a network needs, and
:class:`Predictor`, which turns coarse and aux arrays into the fine field."""


from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from geosr.arrays import fill_nearest, mask_nodata_blocks
from geosr.errors import BundleError, InputError
from geosr.model.bundle import AuxChannelSpec, Bundle, _build_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

MAX_PREDICT_PX = 2_000_000
"""Fine pixels per forward pass in :meth:`Predictor.predict` (bounds activation memory)."""

STRIP_PX = "auto"
"""Fine rows per strip of the network's fine stage (``strip_px`` of
:meth:`~geosr.nn.generator.Generator.decode`); ``"auto"``: as many as keep the stage's
largest array under :data:`STRIP_BYTES`."""

STRIP_BYTES = 28 * 1024 * 1024
"""Largest array of the fine stage per strip with ``strip_px="auto"``. Why: below glibc's
largest mmap threshold (32 MB) the retained heap (:mod:`geosr.inference.heap`) serves
each array from freed blocks instead of fresh pages. The default tiles (528 rows and
columns with their context, 27 MB) then run whole; a 1152 px wide window took 1.4x
longer whole than in strips of 256 rows (784 against 570 ms, shipped model, one
thread)."""


def encode_coarse(coarse: torch.Tensor, norm: dict) -> torch.Tensor:
    """Standardise an already NaN-filled coarse tensor; remaining NaN -> 0 (the mean)."""
    import torch

    mean, std = float(norm["coarse"]["mean"]), float(norm["coarse"]["std"])
    z = (coarse - mean) / std
    return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def encode_aux(aux: torch.Tensor, specs: tuple[AuxChannelSpec, ...],
               scenes=None) -> torch.Tensor:
    """Turn ``(N, A, H, W)`` aux layers (physical units, NaN nodata) into network channels.

    Continuous layers are standardised (NaN -> 0, the mean) with the training statistics,
    or with each sample's scene statistics when ``scenes`` carry them (``aux_loc``,
    ``aux_scale``: a ``scene_aux`` model); categorical layers become one 0/1 channel per
    class (NaN or an unknown class -> all zeros).
    """
    import torch

    per_scene = scenes is not None and len(scenes) > 0 and bool(scenes[0].aux_loc)
    chans = []
    ch = 0
    for k, spec in enumerate(specs):
        x = aux[:, k:k + 1]
        if spec.categorical:
            for c in spec.classes:
                chans.append((x == c).to(aux.dtype))
            ch += spec.channels
            continue
        if per_scene:
            loc = torch.tensor([s.aux_loc[ch] for s in scenes], dtype=aux.dtype,
                               device=aux.device).view(-1, 1, 1, 1)
            scale = torch.tensor([s.aux_scale[ch] for s in scenes], dtype=aux.dtype,
                                 device=aux.device).view(-1, 1, 1, 1)
            z = (x - loc) / scale
        else:
            z = (x - spec.mean) / spec.std
        chans.append(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0))
        ch += 1
    if not chans:
        return aux.new_zeros((aux.shape[0], 0, *aux.shape[2:]))
    return torch.cat(chans, dim=1)


def encode_batch(coarse, aux, norm: dict, specs: tuple[AuxChannelSpec, ...],
                 scenes=None):
    """Network inputs of a batch, and how to map its output back to physical units.

    Args:
        coarse: ``(N, 1, h, w)`` NaN-filled coarse tensor, model units.
        aux: ``(N, A, H, W)`` aux tensor in layer units, or None.
        norm: the bundle's normalisation (``coarse``/``target`` mean and std).
        specs: the bundle's aux layers.
        scenes: per sample a :class:`~geosr.model.scene.Scene` (a scene-adaptive model):
            the coarse input is standardised with the scene's mean and std instead of
            the training statistics, and the scene's gains are returned.

    Returns:
        ``(xc, xa, scene_gain, mean, std)``: network inputs (``xa``/``scene_gain`` None
        when absent); the output is ``y * std + mean`` (``(N, 1, 1, 1)`` tensors).
    """
    import torch

    xa = encode_aux(aux, specs, scenes) if aux is not None and specs else None
    n = coarse.shape[0]
    if scenes is None:
        tn = norm["target"]
        xc = encode_coarse(coarse, norm)
        mean = coarse.new_full((n, 1, 1, 1), float(tn["mean"]))
        std = coarse.new_full((n, 1, 1, 1), float(tn["std"]))
        return xc, xa, None, mean, std
    if len(scenes) != n:
        raise InputError(f"scenes: expected one per sample ({n}), got {len(scenes)}")
    mean = torch.tensor([s.mean for s in scenes], dtype=coarse.dtype,
                        device=coarse.device).view(n, 1, 1, 1)
    std = torch.tensor([s.std for s in scenes], dtype=coarse.dtype,
                       device=coarse.device).view(n, 1, 1, 1)
    xc = torch.nan_to_num((coarse - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
    sg = None
    if xa is not None and xa.shape[1]:
        sg = torch.tensor([list(s.gain) for s in scenes], dtype=coarse.dtype,
                          device=coarse.device)
    return xc, xa, sg, mean, std


def fill_aux_cells(aux: np.ndarray, specs: tuple[AuxChannelSpec, ...], factor: int) -> np.ndarray:
    """Fill nodata in continuous aux layers with the mean of the valid pixels of their
    coarse cell: ``(N, A, H, W)`` (H, W multiples of ``factor``), a copy where needed.

    Why: a nodata pixel (the sea in a DEM that stops at the coast, a border) filled with
    the training mean looks to the network like terrain at that height, and shifts the
    cell's aux mean and every land pixel's anomaly - measured: several degrees of error
    along the Cornish coast. With the cell's own valid mean, the filled pixels carry no
    anomaly and the cell mean is that of the valid pixels, as the coarse value over
    land is. A cell without any valid pixel keeps NaN (encoded as the training mean).
    The fill is per cell, so it does not depend on the tiling.
    """
    from geosr.arrays import block_mean

    out = aux
    for k, spec in enumerate(specs):
        if spec.categorical:
            continue
        layer = aux[:, k]
        bad = np.isnan(layer)
        if not bad.any():
            continue
        if out is aux:
            out = aux.copy()
        with np.errstate(invalid="ignore"):
            means = block_mean(layer, factor)
        full = np.repeat(np.repeat(means, factor, axis=-2), factor, axis=-1)
        out[:, k] = np.where(bad, full, layer)
    return out


def aux_valid_mask(aux: np.ndarray) -> np.ndarray | None:
    """The conservation mask of the network (``fine_mask`` of
    :meth:`~geosr.nn.generator.Generator.decode`): ``(N, 1, H, W)`` bool, the pixels
    where every aux layer has data; ``None`` when the aux has no nodata (conservation
    over all pixels, the fast path).

    Why: the coarse value of a cell that is half sea in a DEM that stops at the coast
    is taken as the mean over its land, as :func:`fill_aux_cells` takes it, and the
    sea pixels (where the aux says nothing) are conserved apart. Conserving over all
    pixels let the network's guess over the sea shift the land: measured 0.59 degC on
    average, up to 1.45, on the coastal land of a Cornish day through a model trained
    inland. Per pixel, so tiling does not matter.
    """
    bad = np.isnan(aux).any(axis=1, keepdims=True)
    return ~bad if bad.any() else None


def check_aux_array(aux: np.ndarray | None, specs: tuple[AuxChannelSpec, ...], n: int,
                    fine_shape: tuple[int, int], *, where: str = "model") -> None:
    """Raise a one-line error when ``aux`` does not fit the model's aux layers."""
    names = ", ".join(s.name for s in specs) or "none"
    if not specs:
        if aux is not None and aux.shape[1] != 0:
            raise BundleError(f"{where} was trained without aux layers but {aux.shape[1]} were "
                              "given; expected none")
        return
    if aux is None:
        raise BundleError(f"{where} needs {len(specs)} aux layer(s) ({names}); none were given")
    if aux.ndim == 4 and aux.shape[1] != len(specs):
        raise BundleError(f"{where} was trained with {len(specs)} aux layer(s) ({names}) but "
                          f"{aux.shape[1]} were given; expected the same layers in that order")
    if aux.ndim != 4 or aux.shape[0] != n or tuple(aux.shape[2:]) != tuple(fine_shape):
        raise BundleError(f"{where} needs aux of shape ({n}, {len(specs)}, {fine_shape[0]}, "
                          f"{fine_shape[1]}) (layers: {names}); got {tuple(aux.shape)}")


HALO_TOLERANCE = 1e-6
"""Largest change, relative to the output's std, that the context a tile lacks beyond its
measured halo may cause (on probe fields): float rounding. Tiles are then exact, and the
downscale engine puts them side by side without blending (measured on a 4000^2 px scene
with the shipped model: 6e-6 of the std from the whole raster in one piece)."""


HALO_MAX_CELLS = 16


def full_halo(model) -> int:
    """Coarse cells per side covering the model's whole receptive field (an upper bound)."""
    f = int(model.cfg.factor)
    px = getattr(model, "halo_px", None)
    return max(1, math.ceil(px / f)) if px else 8


def _smooth_noise(gen, shape: tuple[int, ...], k: int):
    """Unit-variance noise smoothed over about ``2k`` pixels (a stand-in for real fields)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(*shape, generator=gen)
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (k, k, k, k), mode="replicate"), 2 * k + 1, stride=1)
    return x / x.std().clamp_min(1e-12)


def _probe(cfg, n: int, seed: int):
    """Smooth random coarse field and aux, ``n`` coarse cells square, standardised units."""
    import torch

    f = int(cfg.factor)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, cfg.n_coarse, n, n)
    coarse = _smooth_noise(gen, shape, 2) + 0.3 * torch.randn(*shape, generator=gen)
    aux = None
    if cfg.n_aux:
        fine = (1, cfg.n_aux, n * f, n * f)
        aux = _smooth_noise(gen, fine, f) + 0.3 * _smooth_noise(gen, fine, 1)
    return coarse, aux


def _context_needed(model, run, radius: int, core: int, tol: float, seed: int,
                    least: int = 1) -> int:
    """Smallest context ``d`` (coarse cells per side, at least ``least``) such that
    ``run`` on every crop with ``d`` or more cells around a ``core`` reproduces the whole
    window's core within ``tol`` of the output's std.

    ``run(coarse, aux, lo, d)`` predicts the core of the crop of coarse cells
    ``lo:lo + core + 2 d`` (both axes) of the probe window ``coarse``/``aux``, which has
    ``d`` cells of context around the core; ``d = None``: the whole window's output.
    """
    import torch

    f = int(model.cfg.factor)
    n = core + 2 * radius
    coarse, aux = _probe(model.cfg, n, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = run(coarse, aux, 0, None)
            scale = float(full.std()) or 1.0
            ref = full[..., radius * f:(radius + core) * f, radius * f:(radius + core) * f]
            # From the widest context down: the first crop that misses is the answer.
            for d in range(radius, least - 1, -1):
                got = run(coarse, aux, radius - d, d)
                err = float((got - ref).abs().max()) / scale
                if not (math.isfinite(err) and err <= tol):
                    return min(d + 1, radius)
    finally:
        model.train(was_training)
    return least


def _crop(aux, lo: int, hi: int, f: int):
    return aux[..., lo * f:hi * f, lo * f:hi * f] if aux is not None else None


def measure_halo(model, *, tol: float = HALO_TOLERANCE, core: int = 4, seed: int = 0,
                 decode: int | None = None) -> int:
    """Context a tile needs, in coarse cells per side, measured on the trained weights.

    The architecture's receptive field (:attr:`Generator.halo_px`) is an upper bound of
    10-20 coarse cells; the trained weights concentrate the influence much closer. The
    measurement is direct and runs the network as the downscale engine does (see
    :meth:`Predictor.predict`'s ``margin``): on a large window of smooth random fields,
    and on crops of it that keep ``d`` cells of context around a ``core`` of cells for the
    coarse encoder, of which the fine decoder sees ``decode`` cells
    (:func:`measure_decode_halo`, measured first when not given); the halo is the
    smallest ``d`` such that every crop with ``d`` or more cells of context reproduces the
    core within ``tol`` of the output's standard deviation. (Input gradients were tried
    first: they miss the collective effect of padding on the windowed attention
    statistics, and underestimate the halo by 3-4 cells.)
    """
    f = int(model.cfg.factor)
    if decode is None:
        decode = measure_decode_halo(model, tol=tol, core=core, seed=seed)
    radius = max(decode, min(full_halo(model), HALO_MAX_CELLS))

    def run(coarse, aux, lo, d):
        hi = coarse.shape[-1] - lo
        c, a = coarse[..., lo:hi, lo:hi], _crop(aux, lo, hi, f)
        feats = model.encode(c, model.pool_aux(a) if a is not None else None)
        if d is None:
            return model.decode(feats, c, a)
        k = d - min(decode, d)  # encoder context the decoder does not see
        e = c.shape[-1] - k
        return model.decode(feats[..., k:e, k:e], c[..., k:e, k:e], _crop(a, k, e, f),
                            crop=(d - k,) * 4)

    return _context_needed(model, run, radius, core, tol, seed, least=decode)


def measure_decode_halo(model, *, tol: float = HALO_TOLERANCE, core: int = 4,
                        seed: int = 0) -> int:
    """Context the fine decoder needs, in coarse cells per side, given exact features.

    Like :func:`measure_halo`, but the coarse features (:meth:`Generator.encode`) come
    from the whole window and only :meth:`Generator.decode` runs on crops. The decoder
    is small and local, so this is usually 2-3 cells where the whole network needs 5-8.
    """
    f = int(model.cfg.factor)
    feats = {}

    def run(coarse, aux, lo, d):
        if "all" not in feats:  # the probe window is the same for every crop
            feats["all"] = model.encode(coarse, model.pool_aux(aux) if aux is not None else None)
        hi = coarse.shape[-1] - lo
        return model.decode(feats["all"][..., lo:hi, lo:hi], coarse[..., lo:hi, lo:hi],
                            _crop(aux, lo, hi, f), crop=None if d is None else (d,) * 4)

    radius = max(1, min(math.ceil((model.decode_halo_px or 4 * f) / f), HALO_MAX_CELLS))
    return _context_needed(model, run, radius, core, tol, seed)


class Predictor:
    """Runs a bundle's network on numpy arrays (the downscale engine calls this per batch).

    Args:
        bundle: a loaded bundle.
        device: torch device or its name.
        conserve: None runs the model as trained; False disables the hard conservation
            layer; True forces it on.
        strip_px: fine rows per strip of the network's fine stage (the result does not
            depend on it); ``None`` runs each window's fine stage at once; ``"auto"``
            sizes strips by :data:`STRIP_BYTES`.
    """

    def __init__(self, bundle: Bundle, *, device: Any = "cpu", conserve: bool | None = None,
                 strip_px: int | str | None = STRIP_PX):
        import torch

        if strip_px is not None and strip_px != "auto" and (
                not isinstance(strip_px, int) or strip_px < 1):
            raise InputError(f"strip_px: expected a positive integer, 'auto' or None, got "
                             f"{strip_px!r}")
        self.bundle = bundle
        self.strip_px = strip_px
        self.device = torch.device(device)
        self.factor = int(bundle.factor)
        self.aux_names = bundle.aux_names
        config = bundle.config
        if conserve is not None and hasattr(config, "conserve") and \
                bool(config.conserve) != bool(conserve):
            config = dataclasses.replace(config, conserve=bool(conserve))
        self.config = config
        self.conserve = bool(getattr(config, "conserve", False))
        self.model = _build_model(config, bundle.state_dict, where="model bundle").to(self.device)
        # Measured at save time; measured now for a bundle without a current measurement.
        # halo_coarse: context for the coarse encoder; decode_halo: the part of it the
        # decoder sees (see predict's margin).
        if not (int(bundle.halo_coarse) and int(bundle.decode_halo)):
            log.info("model %s records no tile context of the current measurement (written "
                     "by an older geosr): measuring it now (about a second per run)",
                     bundle.sha256[:12])
        self.decode_halo = int(bundle.decode_halo) or measure_decode_halo(self.model)
        self.halo_coarse = int(bundle.halo_coarse) or measure_halo(self.model,
                                                                   decode=self.decode_halo)

    @property
    def scene(self) -> bool:
        """Whether the model is scene-adaptive (it wants :class:`~geosr.model.scene.Scene` s)."""
        return bool(getattr(self.config, "scene", False))

    def scene_of(self, coarse: np.ndarray, aux_coarse) -> Any:
        """The :class:`~geosr.model.scene.Scene` of a whole band (see
        :func:`geosr.model.scene.scene_of`); ``aux_coarse`` per aux layer."""
        from geosr.model.scene import scene_of

        return scene_of(coarse, aux_coarse, self.bundle.aux,
                        train_std=float(self.bundle.norm["coarse"]["std"]),
                        aux_scene=bool(getattr(self.config, "scene_aux", False)))

    def predict(self, coarse: np.ndarray, aux: np.ndarray | None, *,
                margin: tuple[int, int, int, int] = (0, 0, 0, 0),
                with_spread: bool = False, scenes=None,
                mean_over_aux: bool = False) -> np.ndarray:
        """Downscale a batch of coarse windows.

        Args:
            coarse: ``(N, h, w)`` float32 on the coarse grid, physical units, NaN = nodata.
            aux: ``(N, A, h*f, w*f)`` float32 on the fine grid, physical units (class
                values for categorical layers), NaN = nodata; ``A`` = the model's aux
                layers in :attr:`aux_names` order.

            margin: coarse cells (top, left, bottom, right) of the input that are context
                only: the coarse encoder sees the whole input, the decoder's
                intermediate scales the inner region plus :attr:`decode_halo` cells, its
                full-resolution stage (most of the cost) the inner region plus a few
                pixels, and the result covers the inner region.
            with_spread: also return the per-pixel spread of a probabilistic model.
            scenes: per sample, the :class:`~geosr.model.scene.Scene` of the band it
                comes from (a scene-adaptive model; ignored otherwise). Without them a
                scene-adaptive model takes each window as its own scene, so the output
                then depends on the window: the downscale engine passes whole-band
                scenes.
            mean_over_aux: a coarse value is the mean over the pixels where every aux
                layer has data (a land-only product beside a DEM that stops at the
                coast): with conservation, those pixels and the others are conserved
                apart (:func:`aux_valid_mask`). ``False``: over the whole cell.

        Returns:
            ``(N, h*f, w*f)`` float32 in physical units (the inner region with a
            ``margin``), NaN where the coarse cell is NaN; with ``with_spread``,
            ``(N, 2, h*f, w*f)``: the best estimate and its standard deviation.

        Raises:
            BundleError: ``aux`` does not match the model's aux layers.
            InputError: ``coarse`` is not ``(N, h, w)``.
        """
        import torch

        coarse = np.asarray(coarse, dtype=np.float32)
        if coarse.ndim != 3:
            raise InputError(f"coarse: expected shape (N, h, w), got {coarse.shape}")
        n, h, w = coarse.shape
        f = self.factor
        if aux is not None:
            aux = np.asarray(aux, dtype=np.float32)
        check_aux_array(aux, self.bundle.aux, n, (h * f, w * f),
                        where=f"model ({self.bundle.variable or 'bundle'} "
                              f"{self.bundle.sha256[:8]})")
        top, left, bottom, right = (int(m) for m in margin)
        if min(margin) < 0 or top + bottom >= h or left + right >= w:
            raise InputError(f"margin {margin}: expected non-negative cells leaving an inner "
                             f"region of the {h}x{w} coarse window")
        if with_spread and not self.bundle.probabilistic:
            raise BundleError(f"model {self.bundle.sha256[:8]} is deterministic: it gives no "
                              "spread; expected a model trained with --probabilistic")
        ih, iw = h - top - bottom, w - left - right
        out = np.full((n, 2 if with_spread else 1, ih * f, iw * f), np.nan, dtype=np.float32)
        if n == 0:
            return out
        filled = fill_nearest(coarse)
        valid = None
        if aux is not None and self.bundle.aux:
            valid = aux_valid_mask(aux) if self.conserve and mean_over_aux else None
            aux = fill_aux_cells(aux, self.bundle.aux, f)
        step = max(1, MAX_PREDICT_PX // max(h * f * w * f, 1))
        if self.scene and scenes is None:
            from geosr.model.scene import window_scene

            scenes = [window_scene(coarse[i], None if aux is None else aux[i], self.bundle.aux,
                                   f, train_std=float(self.bundle.norm["coarse"]["std"]),
                                   aux_scene=bool(getattr(self.config, "scene_aux", False)))
                      for i in range(n)]
        if not self.scene:
            scenes = None
        elif len(scenes) != n:  # encode_batch sees only slices of it
            raise InputError(f"scenes: expected one per sample ({n}), got {len(scenes)}")
        with torch.inference_mode():
            for k in range(0, n, step):
                tc = torch.from_numpy(filled[k:k + step]).to(self.device)[:, None]
                ta = torch.from_numpy(aux[k:k + step]).to(self.device) \
                    if self.bundle.aux else None
                xc, xa, sg, mean, std = encode_batch(
                    tc, ta, self.bundle.norm, self.bundle.aux,
                    None if scenes is None else scenes[k:k + step])
                vm = None if valid is None else torch.from_numpy(
                    valid[k:k + step]).to(self.device)
                y = self._run(xc, xa, sg, top, left, bottom, right, vm)
                out[k:k + step, 0] = (y[:, :1].float() * std + mean)[:, 0].cpu().numpy()
                if with_spread:
                    out[k:k + step, 1] = (y[:, 1:2].float() * std)[:, 0].cpu().numpy()
        inner = coarse[:, None, top:h - bottom, left:w - right]
        out = mask_nodata_blocks(out, np.broadcast_to(inner, (*out.shape[:2], *inner.shape[2:])),
                                 f)
        return out if with_spread else out[:, 0]

    def _run(self, xc, xa, sg, top: int, left: int, bottom: int, right: int, valid=None):
        """The network on one batch (:meth:`Generator.forward` as encode, then decode);
        with a margin, decode only the inner region; ``valid`` the conservation mask
        (:func:`aux_valid_mask`) or ``None``."""
        m, f, d = self.model, self.factor, self.decode_halo
        h, w = xc.shape[-2:]
        feats = m.encode(xc, m.pool_aux(xa) if xa is not None else None)
        t0, l0 = top - min(d, top), left - min(d, left)
        b1, r1 = h - bottom + min(d, bottom), w - right + min(d, right)
        a = xa[..., t0 * f:b1 * f, l0 * f:r1 * f] if xa is not None else None
        vm = valid[..., t0 * f:b1 * f, l0 * f:r1 * f] if valid is not None else None
        crop = (top - t0, left - l0, b1 - (h - bottom), r1 - (w - right))
        strip = self.strip_px
        if strip == "auto":
            width = (w - left - right) * f + 2 * m.strip_halo_px
            strip = max(1, STRIP_BYTES // (4 * width * m.fine_channels * xc.shape[0]))
        return m.decode(feats[..., t0:b1, l0:r1], xc[..., t0:b1, l0:r1], a, scene_gain=sg,
                        strip_px=strip, fine_mask=vm, crop=crop)
