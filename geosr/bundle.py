"""Model bundles: one file holding a trained network and everything needed to use it.

A bundle is a ``torch.save`` dictionary of plain values only::

    {"format": "geosr-bundle", "format_version": 1,
     "meta": "<JSON string>",   # config, aux, factor, norm, units, coarse range, training, hash
     "state_dict": {name: tensor, ...}}

Metadata is a JSON *string* so that the file loads with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler then accepts only
tensors and builtin containers, and a crafted file that would run code is refused
before anything in it executes. Writing is atomic (temporary file + rename).

The network sees standardised values: the coarse field and the output share one
affine map (the coarse layer's mean/std), which is what keeps the conservation layer
exact in physical units; continuous aux layers are standardised with their own
statistics and categorical layers are one-hot encoded (one channel per class). NaN
inputs become 0 after standardisation, i.e. the layer mean; NaN coarse cells are first
filled from their nearest valid neighbour so that the coast of a field does not look
like a cliff to the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _stdio
import json
import logging
import math
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosr import __version__
from geosr.errors import BundleError, InputError
from geosr.io import atomic_path
from geosr.units import ValueRange

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geosr.nn import NetConfig

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "geosr-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".geosr"
MAX_PREDICT_PX = 2_000_000
"""Fine pixels per forward pass in :meth:`Predictor.predict` (bounds activation memory)."""


@dataclass(frozen=True)
class AuxChannelSpec:
    """How one aux layer becomes network input channels.

    Attributes:
        name: layer name (the ``--aux`` name).
        categorical: class raster, one-hot encoded (one channel per class).
        classes: class values, in channel order (categorical layers only).
        mean: mean used to standardise a continuous layer (layer units).
        std: standard deviation used to standardise a continuous layer (layer units).
        units: layer units ('' when unknown).
    """

    name: str
    categorical: bool = False
    classes: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    units: str = ""

    @property
    def channels(self) -> int:
        """Number of network input channels this layer takes."""
        return len(self.classes) if self.categorical else 1

    @property
    def channel_names(self) -> tuple[str, ...]:
        if self.categorical:
            return tuple(f"{self.name}={c:g}" for c in self.classes)
        return (self.name,)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AuxChannelSpec:
        return cls(name=str(d["name"]), categorical=bool(d.get("categorical", False)),
                   classes=tuple(float(c) for c in d.get("classes", ())),
                   mean=float(d.get("mean", 0.0)), std=float(d.get("std", 1.0)),
                   units=str(d.get("units", "")))


def channel_layout(aux: tuple[AuxChannelSpec, ...] | list[AuxChannelSpec]) -> list[str]:
    """Names of the aux input channels, in the order the network sees them."""
    return [name for spec in aux for name in spec.channel_names]


@dataclass(frozen=True)
class Bundle:
    """A loaded (or just saved) model bundle. See the module docstring for the format.

    Attributes:
        config: the network architecture (:class:`geosr.nn.NetConfig`).
        aux: aux layers in input order, with their encoding.
        factor: coarse/fine factor the model was trained for.
        res_m: fine resolution in metres the model was trained at.
        variable: name of the predicted variable.
        units: its units.
        norm: ``{"coarse": {"mean", "std"}, "target": {"mean", "std"}}`` in physical units.
        training: summary of the training run (data, epochs, validation metrics...).
        geosr_version: version of geosr that wrote the bundle.
        sha256: hash of the weights and of everything that changes predictions.
        state_dict: the generator's weights.
        halo_coarse: measured context (coarse cells per side) a tile needs; 0 = unknown
            (see :func:`measure_halo`).
        decode_halo: measured context of the fine decoder alone; 0 = unknown (see
            :func:`measure_decode_halo`).
        coarse_stats: ``{"min", "max", "mean", "std"}`` of the coarse training input in
            :attr:`units` (empty in bundles written before geosr recorded it; see
            :meth:`training_range`).
    """

    config: NetConfig
    aux: tuple[AuxChannelSpec, ...]
    factor: int
    res_m: float
    variable: str
    units: str
    norm: dict
    training: dict
    geosr_version: str
    sha256: str
    state_dict: dict = field(repr=False, compare=False)
    halo_coarse: int = 0
    decode_halo: int = 0
    coarse_stats: dict = field(default_factory=dict)

    @property
    def aux_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aux)

    @property
    def channels(self) -> list[str]:
        """Aux input channel layout (categorical layers expand to one channel per class)."""
        return channel_layout(self.aux)

    def training_range(self) -> ValueRange:
        """Range of the coarse training input in :attr:`units`.

        Bundles without :attr:`coarse_stats` give the normalisation mean and std, which
        are the same statistics (min and max unknown).
        """
        if self.coarse_stats:
            return ValueRange.from_dict(self.coarse_stats)
        c = self.norm.get("coarse", {})
        return ValueRange(mean=float(c.get("mean", math.nan)), std=float(c.get("std", math.nan)))

    def build_model(self) -> torch.nn.Module:
        """The generator with the bundle's weights, in eval mode, on the CPU."""
        return _build_model(self.config, self.state_dict, where="bundle")


def _build_model(config, state_dict: dict, *, where: str) -> torch.nn.Module:
    from geosr.nn import Generator

    try:
        model = Generator(config)
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"{where}: weights do not fit the architecture it declares "
                          f"({first}); expected a bundle written by `geosr train`") from e
    return model.eval()


# --------------------------------------------------------------------------- hashing


def _hash_fields(config, aux, factor, res_m, norm) -> dict:
    return {"config": asdict(config), "aux": [a.to_dict() for a in aux], "factor": int(factor),
            "res_m": float(res_m), "norm": norm}


def content_hash(state_dict: dict, hashed: dict) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes) and the prediction metadata."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps(hashed, sort_keys=True, default=_json_default).encode())
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise BundleError(f"state_dict[{name!r}] is a {type(t).__name__}; expected a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- save / load


def save_bundle(path: str | os.PathLike, bundle: Bundle | None = None, *, overwrite: bool = False,
                config: NetConfig | None = None, aux: tuple[AuxChannelSpec, ...] = (),
                factor: int | None = None, res_m: float | None = None, variable: str = "",
                units: str = "", norm: dict | None = None, training: dict | None = None,
                state_dict: dict | None = None, coarse_stats: dict | None = None) -> Bundle:
    """Write a bundle atomically and return it with its hash and version filled in.

    Give either an existing ``bundle`` (re-save; its hash and version are recomputed) or
    the fields as keywords.

    Args:
        path: output file (``.geosr`` suggested).
        bundle: a bundle to write instead of the keyword fields.
        overwrite: replace an existing file.
        config, aux, factor, res_m, variable, units, norm, training, state_dict,
            coarse_stats: see :class:`Bundle`. Units and ``coarse_stats`` are outside the
            content hash: they describe the model's inputs, not what it computes from them.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        BundleError: a field is missing or not serialisable.
    """
    import torch

    if bundle is not None:
        config, aux, factor, res_m = bundle.config, bundle.aux, bundle.factor, bundle.res_m
        variable, units, norm = bundle.variable, bundle.units, bundle.norm
        training, state_dict = bundle.training, bundle.state_dict
        coarse_stats = bundle.coarse_stats
    if config is None or factor is None or res_m is None or norm is None or state_dict is None:
        raise BundleError(f"{path}: cannot save a bundle without config, factor, res_m, norm "
                          "and state_dict")
    aux = tuple(aux)
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    sha = content_hash(state, _hash_fields(config, aux, factor, res_m, norm))
    model = _build_model(config, state, where=str(path))
    halo, decode_halo = measure_halo(model), measure_decode_halo(model)
    meta = {
        **_hash_fields(config, aux, factor, res_m, norm),
        "variable": variable, "units": units, "training": training or {},
        "geosr_version": __version__, "sha256": sha,
        "channels": channel_layout(aux), "halo_coarse": halo,
        "decode_halo": decode_halo, "halo_method": HALO_METHOD,
        "coarse_stats": dict(coarse_stats or {}),
    }
    try:
        meta_json = json.dumps(meta, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: bundle metadata is not serialisable ({e})") from e
    payload = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
               "meta": meta_json, "state_dict": state}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Bundle(config=config, aux=aux, factor=int(factor), res_m=float(res_m),
                  variable=variable, units=units, norm=norm, training=dict(training or {}),
                  geosr_version=__version__, sha256=sha, state_dict=state, halo_coarse=halo,
                  decode_halo=decode_halo, coarse_stats=dict(coarse_stats or {}))


def config_from_dict(d: dict, *, where: str) -> NetConfig:
    """Rebuild a :class:`geosr.nn.NetConfig` from its JSON form (lists back to tuples)."""
    from geosr.nn import NetConfig

    if not isinstance(d, dict):
        raise BundleError(f"{where}: architecture config is a {type(d).__name__}; expected an "
                          "object")
    known = {f.name: f for f in dataclasses.fields(NetConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise BundleError(f"{where}: architecture has unknown field(s) {', '.join(unknown)}; "
                          "it was written by a newer geosr: upgrade geosr")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return NetConfig(**kw)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: architecture config is invalid ({e})") from e


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a bundle without executing anything from the file.

    Raises:
        BundleError: (one line naming the file, what was found and what was expected) when
            the file is missing, truncated, corrupt, not a bundle, from an incompatible
            format version, holds objects other than tensors and plain values, or its
            weights do not match its hash.
    """
    path = Path(path)
    payload = _safe_load(path, what="model bundle")
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BundleError(f"{path}: not a geosr model bundle (found {found!r}); expected a "
                          "file written by `geosr train`")
    version = payload.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is not supported by geosr "
                          f"{__version__}; expected version {BUNDLE_FORMAT_VERSION} (retrain the "
                          "model or use the geosr version that wrote it)")
    try:
        meta = json.loads(payload["meta"])
        state = payload["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"state_dict is a {type(state).__name__}")
        config = config_from_dict(meta["config"], where=str(path))
        aux = tuple(AuxChannelSpec.from_dict(a) for a in meta["aux"])
        norm = meta["norm"]
        for key in ("coarse", "target"):
            float(norm[key]["mean"]), float(norm[key]["std"])
        bundle = Bundle(config=config, aux=aux, factor=int(meta["factor"]),
                        res_m=float(meta["res_m"]), variable=str(meta.get("variable", "")),
                        units=str(meta.get("units", "")), norm=norm,
                        training=dict(meta.get("training", {})),
                        geosr_version=str(meta.get("geosr_version", "")),
                        sha256=str(meta["sha256"]), state_dict=state,
                        coarse_stats=_coarse_stats(meta.get("coarse_stats")),
                        **_stored_halos(meta))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: bundle metadata is damaged ({type(e).__name__}: {e}); "
                          "expected a file written by `geosr train`") from e
    actual = content_hash(state, _hash_fields(config, aux, bundle.factor, bundle.res_m, norm))
    if actual != bundle.sha256:
        raise BundleError(f"{path}: content hash {actual[:12]}... does not match the recorded "
                          f"{bundle.sha256[:12]}...; the file is damaged: copy it again")
    return bundle


def _safe_load(path: Path, *, what: str) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a BundleError."""
    import torch

    if not path.exists():
        raise BundleError(f"{path}: file not found; expected a {what}")
    if path.is_dir():
        raise BundleError(f"{path}: is a folder; expected a {what} file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise BundleError(f"{path}: cannot be read ({e.strerror or e}); expected a {what}") from e
    if not data:
        raise BundleError(f"{path}: is empty; expected a {what}")
    if not zipfile.is_zipfile(_stdio.BytesIO(data)):
        # torch.save writes zip archives; anything else is a legacy pickle at best. The
        # restricted unpickler below would refuse code too, but never let it see one.
        if data[:1] == b"\x80" or data[:2] in (b"(d", b"}q", b"cp"):
            raise BundleError(f"{path}: is a raw Python pickle, which could run code when "
                              f"loaded; refused. Expected a {what} written by `geosr train`")
        raise BundleError(f"{path}: not a {what} (not a zip archive: truncated, damaged or "
                          f"another kind of file); expected a {what} written by `geosr train`")
    try:
        return torch.load(_stdio.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling failed"
        if "weights_only" in str(e) or "global" in str(e).lower():
            raise BundleError(f"{path}: holds Python objects other than tensors and plain "
                              "values, which could run code when loaded; refused. Expected a "
                              f"{what} written by `geosr train`") from e
        raise BundleError(f"{path}: damaged ({first}); expected a {what}") from e
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on damaged archives
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: damaged or truncated ({type(e).__name__}: {first[:160]}); "
                          f"expected a {what}") from e


def _coarse_stats(d) -> dict:
    """``coarse_stats`` as floats; absent (older bundles) or malformed -> {}."""
    if not isinstance(d, dict):
        return {}
    try:
        return {k: float(d[k]) for k in ("min", "max", "mean", "std") if k in d}
    except (TypeError, ValueError):
        return {}


# --------------------------------------------------------------------------- model lookup


def shipped_model_dirs() -> list[Path]:
    """Folders that hold shipped models (installed package data, then a source checkout)."""
    import geosr

    here = Path(geosr.__file__).resolve()
    dirs = [here.parent / "shipped_models", here.parents[1] / "models"]
    return [d for d in dirs if d.is_dir()]


def available_models() -> list[str]:
    """Names of the shipped models."""
    names: set[str] = set()
    for d in shipped_model_dirs():
        for p in d.glob(f"*{BUNDLE_SUFFIX}"):
            names.add(p.stem)
        for p in d.glob(f"*/*{BUNDLE_SUFFIX}"):
            if p.stem == p.parent.name:
                names.add(p.stem)
    return sorted(names)


def resolve_model(spec: str | os.PathLike) -> Path:
    """A model file from ``--model``: an existing path, or the name of a shipped model.

    Raises:
        BundleError: neither a file nor a known name; the message lists the shipped names.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return path
    if text and "/" not in text and os.sep not in text:
        name = text[: -len(BUNDLE_SUFFIX)] if text.endswith(BUNDLE_SUFFIX) else text
        for d in shipped_model_dirs():
            for cand in (d / name / f"{name}{BUNDLE_SUFFIX}", d / f"{name}{BUNDLE_SUFFIX}"):
                if cand.is_file():
                    return cand
    names = available_models()
    shown = ", ".join(names) if names else "none are installed"
    raise BundleError(f"--model {text!r}: no such file and no shipped model of that name; "
                      f"expected a .geosr file or one of: {shown}")


# --------------------------------------------------------------------------- encoding


def fill_coarse(coarse: np.ndarray) -> np.ndarray:
    """Fill NaN cells of ``(..., h, w)`` from their nearest valid cell (all-NaN -> NaN)."""
    from geosr.baselines import fill_nearest

    lead = coarse.shape[:-2]
    flat = coarse.reshape(-1, *coarse.shape[-2:])
    out = np.stack([fill_nearest(a) for a in flat]) if flat.shape[0] else flat.copy()
    return out.reshape(*lead, *coarse.shape[-2:])


def encode_coarse(coarse: torch.Tensor, norm: dict) -> torch.Tensor:
    """Standardise an already NaN-filled coarse tensor; remaining NaN -> 0 (the mean)."""
    import torch

    mean, std = float(norm["coarse"]["mean"]), float(norm["coarse"]["std"])
    z = (coarse - mean) / std
    return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def encode_aux(aux: torch.Tensor, specs: tuple[AuxChannelSpec, ...]) -> torch.Tensor:
    """Turn ``(N, A, H, W)`` aux layers (physical units, NaN nodata) into network channels.

    Continuous layers are standardised (NaN -> 0, the mean); categorical layers become
    one 0/1 channel per class (NaN or an unknown class -> all zeros).
    """
    import torch

    chans = []
    for k, spec in enumerate(specs):
        x = aux[:, k:k + 1]
        if spec.categorical:
            for c in spec.classes:
                chans.append((x == c).to(aux.dtype))
        else:
            z = (x - spec.mean) / spec.std
            chans.append(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0))
    if not chans:
        return aux.new_zeros((aux.shape[0], 0, *aux.shape[2:]))
    return torch.cat(chans, dim=1)


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


# --------------------------------------------------------------------------- inference


HALO_METHOD = "crop-2"
"""Tag of the halo measurement stored in bundles; others are re-measured on load."""
HALO_TOLERANCE = 2e-3
"""Largest change, relative to the output's std, that missing context may cause in a core."""
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


def _stored_halos(meta: dict) -> dict[str, int]:
    """The halos a bundle records; 0 (measure again) when written by another method."""
    current = meta.get("halo_method") == HALO_METHOD
    return {k: int(meta.get(k, 0)) if current else 0 for k in ("halo_coarse", "decode_halo")}


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


def _context_needed(model, run, radius: int, core: int, tol: float, seed: int) -> int:
    """Smallest context ``d`` (coarse cells per side) such that ``run`` on every crop
    with ``d`` or more cells around a ``core`` reproduces the whole window's core within
    ``tol`` of the output's std.

    ``run(coarse, aux, lo, hi)`` predicts the crop of coarse cells ``lo:hi`` (both axes)
    of the probe window ``coarse``/``aux``.
    """
    import torch

    f = int(model.cfg.factor)
    n = core + 2 * radius
    coarse, aux = _probe(model.cfg, n, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = run(coarse, aux, 0, n)
            scale = float(full.std()) or 1.0
            ref = full[..., radius * f:(radius + core) * f, radius * f:(radius + core) * f]
            # From the widest context down: the first crop that misses is the answer.
            for d in range(radius, 0, -1):
                out = run(coarse, aux, radius - d, radius + core + d)
                got = out[..., d * f:(d + core) * f, d * f:(d + core) * f]
                err = float((got - ref).abs().max()) / scale
                if not (math.isfinite(err) and err <= tol):
                    return min(d + 1, radius)
    finally:
        model.train(was_training)
    return 1


def _crop(aux, lo: int, hi: int, f: int):
    return aux[..., lo * f:hi * f, lo * f:hi * f] if aux is not None else None


def measure_halo(model, *, tol: float = HALO_TOLERANCE, core: int = 4, seed: int = 0) -> int:
    """Context a tile needs, in coarse cells per side, measured on the trained weights.

    The architecture's receptive field (:attr:`Generator.halo_px`) is an upper bound of
    10-20 coarse cells; the trained weights concentrate the influence much closer. The
    measurement is direct: the network runs on a large window of smooth random fields
    and on crops of it that keep ``d`` cells of context around a ``core`` of cells; the
    halo is the smallest ``d`` such that every crop with ``d`` or more cells of context
    reproduces the core within ``tol`` of the output's standard deviation. (Input
    gradients were tried first: they miss the collective effect of padding on the
    windowed attention statistics, and underestimate the halo by 3-4 cells.) The
    downscale engine gives each tile this much context for the network's coarse
    encoder (see :meth:`Predictor.predict`'s ``margin``).
    """
    f = int(model.cfg.factor)

    def run(coarse, aux, lo, hi):
        return model(coarse[..., lo:hi, lo:hi], _crop(aux, lo, hi, f))

    return _context_needed(model, run, min(full_halo(model), HALO_MAX_CELLS), core, tol, seed)


def measure_decode_halo(model, *, tol: float = 1e-4, core: int = 4, seed: int = 0) -> int:
    """Context the fine decoder needs, in coarse cells per side, given exact features.

    Like :func:`measure_halo`, but the coarse features (:meth:`Generator.encode`) come
    from the whole window and only :meth:`Generator.decode` runs on crops. The decoder
    is small and local, so this is usually 1-2 cells where the whole network needs 4-6;
    it is what the downscale engine blends across tiles.
    """
    f = int(model.cfg.factor)
    feats = {}

    def run(coarse, aux, lo, hi):
        if "all" not in feats:  # the probe window is the same for every crop
            feats["all"] = model.encode(coarse, model.pool_aux(aux) if aux is not None else None)
        return model.decode(feats["all"][..., lo:hi, lo:hi], coarse[..., lo:hi, lo:hi],
                            _crop(aux, lo, hi, f))

    radius = max(1, min(math.ceil((model.decode_halo_px or 4 * f) / f), HALO_MAX_CELLS))
    return _context_needed(model, run, radius, core, tol, seed)


class Predictor:
    """Runs a bundle's network on numpy arrays (the downscale engine calls this per batch).

    Args:
        bundle: a loaded bundle.
        device: torch device or its name.
        conserve: None runs the model as trained; False disables the hard conservation
            layer; True forces it on.
    """

    def __init__(self, bundle: Bundle, *, device: Any = "cpu", conserve: bool | None = None):
        import torch

        self.bundle = bundle
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
        # halo_coarse: context for the coarse encoder; decode_halo: what tiles blend over.
        self.halo_coarse = int(bundle.halo_coarse) or measure_halo(self.model)
        self.decode_halo = int(bundle.decode_halo) or measure_decode_halo(self.model)

    def predict(self, coarse: np.ndarray, aux: np.ndarray | None, *,
                margin: tuple[int, int, int, int] = (0, 0, 0, 0)) -> np.ndarray:
        """Downscale a batch of coarse windows.

        Args:
            coarse: ``(N, h, w)`` float32 on the coarse grid, physical units, NaN = nodata.
            aux: ``(N, A, h*f, w*f)`` float32 on the fine grid, physical units (class
                values for categorical layers), NaN = nodata; ``A`` = the model's aux
                layers in :attr:`aux_names` order.

            margin: coarse cells (top, left, bottom, right) of the input that are context
                only: the coarse encoder sees the whole input, the fine decoder (which
                is most of the cost) only the inner region plus :attr:`decode_halo`
                cells, and the result covers the inner region.

        Returns:
            ``(N, h*f, w*f)`` float32 in physical units (the inner region with a
            ``margin``), NaN where the coarse cell is NaN.

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
        ih, iw = h - top - bottom, w - left - right
        out = np.full((n, ih * f, iw * f), np.nan, dtype=np.float32)
        if n == 0:
            return out
        nan_coarse = ~np.isfinite(coarse[:, top:h - bottom, left:w - right])
        filled = fill_coarse(coarse)
        step = max(1, MAX_PREDICT_PX // max(h * f * w * f, 1))
        tn = self.bundle.norm["target"]
        with torch.inference_mode():
            for k in range(0, n, step):
                tc = torch.from_numpy(filled[k:k + step]).to(self.device)[:, None]
                xc = encode_coarse(tc, self.bundle.norm)
                xa = None
                if self.bundle.aux:
                    ta = torch.from_numpy(aux[k:k + step]).to(self.device)
                    xa = encode_aux(ta, self.bundle.aux)
                y = self._run(xc, xa, top, left, bottom, right)
                y = y[:, 0].float() * float(tn["std"]) + float(tn["mean"])
                out[k:k + step] = y.cpu().numpy()
        if nan_coarse.any():
            out[np.repeat(np.repeat(nan_coarse, f, -2), f, -1)] = np.nan
        return out

    def _run(self, xc, xa, top: int, left: int, bottom: int, right: int):
        """The network on one batch; with a margin, decode only the inner region."""
        if not (top or left or bottom or right):
            return self.model(xc, xa)
        m, f, d = self.model, self.factor, self.decode_halo
        h, w = xc.shape[-2:]
        feats = m.encode(xc, m.pool_aux(xa) if xa is not None else None)
        t0, l0 = top - min(d, top), left - min(d, left)
        b1, r1 = h - bottom + min(d, bottom), w - right + min(d, right)
        a = xa[..., t0 * f:b1 * f, l0 * f:r1 * f] if xa is not None else None
        y = m.decode(feats[..., t0:b1, l0:r1], xc[..., t0:b1, l0:r1], a)
        it, il = top - t0, left - l0
        return y[..., it * f:(it + h - top - bottom) * f, il * f:(il + w - left - right) * f]
