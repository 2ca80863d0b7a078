"""Model bundles: one file holding a trained network and everything needed to use it.

A bundle is a ``torch.save`` dictionary of plain values only::

    {"format": "geosr-bundle", "format_version": 1,
     "meta": "<JSON string>",   # config, aux, factor, norm, units, coarse range, training, hash
     "state_dict": {name: tensor, ...}}

The content hash (``meta["sha256"]``) covers the weights and every metadata field that
geosr reads to compute an output -- all of ``meta`` except :data:`UNHASHED_FIELDS`, the
descriptive ones (``meta["hash_version"]`` 2). Bundles written before that rule (no
``hash_version``: version 1) hashed only the weights, ``config``, ``aux``, ``factor``,
``res_m`` and ``norm``; they still load and are checked under that rule.

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
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geosr import __version__
from geosr.constraints import ValidRange
from geosr.errors import BundleError
from geosr.io.atomic import atomic_path
from geosr.units import ValueRange

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geosr.nn import NetConfig


log = logging.getLogger(__name__)


BUNDLE_FORMAT = "geosr-bundle"


BUNDLE_FORMAT_VERSION = 1


BUNDLE_SUFFIX = ".geosr"
HASH_VERSION = 2
"""Rule of the content hash written by this geosr (see the module docstring)."""
UNHASHED_FIELDS = frozenset({"sha256", "training", "geosr_version"})
"""Metadata outside the version-2 hash: the hash itself and the descriptive fields (the
training summary, which only cards and ``train --json`` show, and the writing geosr's
version). Every other field, including ones added later, is hashed."""
HALO_METHOD = "exact-1"
"""Tag of the halo measurement stored in bundles; others are re-measured on load."""


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
        sha256: hash of the weights and of every metadata field that changes outputs.
        state_dict: the generator's weights.
        halo_coarse: measured context (coarse cells per side) a tile needs; 0 = unknown
            (see :func:`measure_halo`).
        decode_halo: measured context of the fine decoder alone; 0 = unknown (see
            :func:`measure_decode_halo`).
        coarse_stats: ``{"min", "max", "mean", "std"}`` of the coarse training input in
            :attr:`units` (empty in bundles written before geosr recorded it; see
            :meth:`training_range`).
        valid_range: the variable's valid range in :attr:`units`, the default of
            ``downscale --valid-range`` (None when not recorded, as in older bundles).
        hash_version: rule :attr:`sha256` was computed with (1: older bundles, whose
            halos, units and ranges are outside it; 2: all but :data:`UNHASHED_FIELDS`).
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
    valid_range: ValidRange | None = None
    hash_version: int = HASH_VERSION

    @property
    def kind(self) -> str:
        """``probabilistic`` (a per-pixel spread beside the best estimate) or
        ``deterministic``; recorded in the metadata as ``kind``."""
        return bundle_kind(self.config)

    @property
    def probabilistic(self) -> bool:
        return self.kind == "probabilistic"

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


def bundle_kind(config) -> str:
    """``probabilistic`` for a network with a spread head, else ``deterministic``
    (every bundle written before probabilistic models existed)."""
    return "probabilistic" if getattr(config, "spread", False) else "deterministic"


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


def _hash_fields(config, aux, factor, res_m, norm) -> dict:
    return {"config": asdict(config), "aux": [a.to_dict() for a in aux], "factor": int(factor),
            "res_m": float(res_m), "norm": norm}


def hashed_meta(meta: dict) -> dict:
    """The part of a bundle's JSON-decoded metadata that a version-2 hash covers."""
    return {k: v for k, v in meta.items() if k not in UNHASHED_FIELDS}


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


def save_bundle(path: str | os.PathLike, bundle: Bundle | None = None, *, overwrite: bool = False,
                config: NetConfig | None = None, aux: tuple[AuxChannelSpec, ...] = (),
                factor: int | None = None, res_m: float | None = None, variable: str = "",
                units: str = "", norm: dict | None = None, training: dict | None = None,
                state_dict: dict | None = None, coarse_stats: dict | None = None,
                valid_range: ValidRange | None = None) -> Bundle:
    """Write a bundle atomically and return it with its hash and version filled in.

    Give either an existing ``bundle`` (re-save; its hash and version are recomputed) or
    the fields as keywords.

    Args:
        path: output file (``.geosr`` suggested).
        bundle: a bundle to write instead of the keyword fields.
        overwrite: replace an existing file.
        config, aux, factor, res_m, variable, units, norm, training, state_dict,
            coarse_stats, valid_range: see :class:`Bundle`. All but ``training`` are
            inside the content hash (written under :data:`HASH_VERSION`, also when
            re-saving an older bundle).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        BundleError: a field is missing or not serialisable.
    """
    import torch

    if bundle is not None:
        config, aux, factor, res_m = bundle.config, bundle.aux, bundle.factor, bundle.res_m
        variable, units, norm = bundle.variable, bundle.units, bundle.norm
        training, state_dict = bundle.training, bundle.state_dict
        coarse_stats, valid_range = bundle.coarse_stats, bundle.valid_range
    if config is None or factor is None or res_m is None or norm is None or state_dict is None:
        raise BundleError(f"{path}: cannot save a bundle without config, factor, res_m, norm "
                          "and state_dict")
    aux = tuple(aux)
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    model = _build_model(config, state, where=str(path))
    from geosr.model.predictor import measure_decode_halo, measure_halo  # they run a model

    decode_halo = measure_decode_halo(model)
    halo = measure_halo(model, decode=decode_halo)
    meta = {
        **_hash_fields(config, aux, factor, res_m, norm),
        "variable": variable, "units": units, "training": training or {},
        "geosr_version": __version__, "hash_version": HASH_VERSION,
        "kind": bundle_kind(config),
        "channels": channel_layout(aux), "halo_coarse": halo,
        "decode_halo": decode_halo, "halo_method": HALO_METHOD,
        "coarse_stats": dict(coarse_stats or {}),
        "valid_range": str(valid_range) if valid_range is not None else None,
    }
    try:
        # Hash the metadata as it will be read back (JSON-decoded), so that loading
        # computes the same bytes whatever Python types the caller passed.
        decoded = json.loads(json.dumps(meta, default=_json_default, allow_nan=True))
        sha = content_hash(state, hashed_meta(decoded))
        meta_json = json.dumps({**decoded, "sha256": sha}, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: bundle metadata is not serialisable ({e})") from e
    payload = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
               "meta": meta_json, "state_dict": state}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Bundle(config=config, aux=aux, factor=int(factor), res_m=float(res_m),
                  variable=variable, units=units, norm=norm, training=dict(training or {}),
                  geosr_version=__version__, sha256=sha, state_dict=state, halo_coarse=halo,
                  decode_halo=decode_halo, coarse_stats=dict(coarse_stats or {}),
                  valid_range=valid_range)


def _net_config(d: Any, *, where: str) -> NetConfig:
    """The architecture stored in a bundle, through :meth:`geosr.nn.NetConfig.from_dict`
    (which gives fields added since the bundle was written the value that keeps its
    behaviour)."""
    from geosr.nn import NetConfig

    if not isinstance(d, dict):
        raise BundleError(f"{where}: architecture config is a {type(d).__name__}; expected an "
                          "object")
    try:
        return NetConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        newer = set(d) - {f.name for f in dataclasses.fields(NetConfig)}
        hint = "; it was written by a newer geosr: upgrade geosr" if newer else ""
        raise BundleError(f"{where}: architecture config is invalid ({e}){hint}") from e


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
        if not isinstance(meta, dict):
            raise TypeError(f"metadata is a {type(meta).__name__}")
        hash_version = meta.get("hash_version", 1)
        if hash_version not in (1, HASH_VERSION):
            raise BundleError(f"{path}: content hash version {hash_version!r} is not supported "
                              f"by geosr {__version__}; expected 1 or {HASH_VERSION} (upgrade "
                              "geosr)")
        state = payload["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"state_dict is a {type(state).__name__}")
        config = _net_config(meta["config"], where=str(path))
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
                        valid_range=_valid_range(meta.get("valid_range"), where=str(path)),
                        hash_version=hash_version, **_stored_halos(meta))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: bundle metadata is damaged ({type(e).__name__}: {e}); "
                          "expected a file written by `geosr train`") from e
    if hash_version == 1:
        hashed = _hash_fields(config, aux, bundle.factor, bundle.res_m, norm)
        # The config as recorded: a bundle written before a NetConfig field existed was
        # hashed without it (the field then takes its behaviour-keeping default).
        hashed["config"] = meta["config"]
    else:
        hashed = hashed_meta(meta)
    actual = content_hash(state, hashed)
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
        raise BundleError(f"{path}: not a valid {what} (not a zip archive: truncated, damaged or "
                          f"another kind of file); expected a {what} written by `geosr train`")
    _check_archive(path, data, what=what)
    try:
        return torch.load(_stdio.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _REFUSED_OBJECT.search(str(e)):
            raise BundleError(f"{path}: holds Python objects other than tensors and plain "
                              "values, which could run code when loaded; refused. Expected a "
                              f"{what} written by `geosr train`") from e
        # Any other unpickling failure is a damaged stream (torch words every failure
        # under weights_only=True as a "weights only load failed").
        raise BundleError(f"{path}: damaged: not a valid {what} (its data stream does not "
                          f"decode: {_unpickler_reason(e)}); copy it again") from e
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on damaged archives
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: damaged or truncated ({type(e).__name__}: {first[:160]}); "
                          f"expected a {what}") from e


_REFUSED_OBJECT = re.compile(r"Unsupported (global|class)|allowed global", re.IGNORECASE)
"""How torch's restricted unpickler words a refused object (as opposed to damage)."""


def _unpickler_reason(e: Exception) -> str:
    """The unpickler's own reason, without torch's multi-line preamble."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = (m.group(1) if m else text).strip().splitlines()
    return reason[0][:120] if reason and reason[0] else type(e).__name__


def _check_archive(path: Path, data: bytes, *, what: str) -> None:
    """Every zip entry's header and CRC, before torch reads it.

    torch's zip reader checks neither CRCs nor local headers; a damaged header makes it
    read the wrong bytes, which then fail as an unpickling error that reads like a refused
    object. Python's zipfile checks both.
    """
    try:
        with zipfile.ZipFile(_stdio.BytesIO(data)) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
            zlib.error) as e:
        raise BundleError(f"{path}: damaged: not a valid {what} (zip archive: {e}); copy it "
                          "again") from e
    if bad is not None:
        entry = bad.split("/", 1)[-1]
        raise BundleError(f"{path}: damaged: not a valid {what} (zip entry {entry!r} fails its "
                          "header or CRC check); copy it again")


def _coarse_stats(d) -> dict:
    """``coarse_stats`` as floats; absent (older bundles) or malformed -> {}."""
    if not isinstance(d, dict):
        return {}
    try:
        return {k: float(d[k]) for k in ("min", "max", "mean", "std") if k in d}
    except (TypeError, ValueError):
        return {}


def _valid_range(text, *, where: str) -> ValidRange | None:
    """The recorded ``MIN:MAX`` range; None when absent (older bundles)."""
    if not text:
        return None
    try:
        return ValidRange.parse(str(text))
    except ValueError as e:
        raise BundleError(f"{where}: recorded valid range {text!r} is invalid ({e}); expected "
                          "a file written by `geosr train`") from e


def _stored_halos(meta: dict) -> dict[str, int]:
    """The halos a bundle records; 0 (measure again) when written by another method."""
    current = meta.get("halo_method") == HALO_METHOD
    return {k: int(meta.get(k, 0)) if current else 0 for k in ("halo_coarse", "decode_halo")}
