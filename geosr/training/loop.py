"""``geosr train``: fit the generator on a prepared dataset and write a model bundle.

The loop, in brief:

- Random square patches of whole coarse cells (:mod:`geosr.training.data`) are read through
  windows; the loss compares the network output with the fine target on valid target
  cells only, in standardised units (L1, MSE, or L1 plus an L1 on finite-difference
  gradients; with ``gan`` a weighted reconstruction term plus an adversarial term).
- AdamW with a linear warm-up then cosine decay of the learning rate, per step.
- After every epoch the model is validated on held-out data (samples, or an eastern
  block of coarse columns) by predicting whole tiles, and the error is reported in the
  target's physical units; the best epoch's weights are what the bundle keeps.
- Every epoch ends with an atomic checkpoint (``MODEL.ckpt``) and the per-epoch log
  (``MODEL.log.csv`` / ``MODEL.log.json``).

Reproducibility: the patches of epoch ``e`` are drawn from a generator seeded with
``(seed, e, rank)``, not from a stream carried across epochs, so a run resumed from the
checkpoint of epoch ``e`` draws exactly what the uninterrupted run drew, and on the CPU
ends with identical weights.

Distributed training (``DistConfig.world_size > 1``, e.g. under ``torchrun``): the
generator is wrapped in DistributedDataParallel, every process draws its own patches
(``--batch-size`` is per process; the steps of an epoch are divided among processes),
and only rank 0 validates and writes files; it tells the others when to stop.
"""


from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geosr import __version__
from geosr.arrays import fill_nearest
from geosr.dataset.manifest import LayerStats, Manifest, read_manifest
from geosr.errors import BundleError, InputError, OutputExistsError, ProcessingError
from geosr.io.atomic import check_not_input, check_output_file
from geosr.model.bundle import AuxChannelSpec, channel_layout, save_bundle
from geosr.model.predictor import aux_valid_mask, encode_batch, fill_aux_cells
from geosr.training.checkpoint import _fingerprint, _load_checkpoint, _write_checkpoint, _write_logs
from geosr.training.config import (
    DEFAULT_PATCH,
    MAX_STEPS_PER_EPOCH,
    MIN_STEPS_PER_EPOCH,
    DistConfig,
    Loss,
    Progress,
    TrainConfig,
    TrainEvent,
    TrainResult,
    side_paths,
)
from geosr.training.data import (
    DatasetReader,
    Split,
    SplitKind,
    aux_coarse_means,
    make_split,
    plan_patches,
    read_batch,
    scene_ranges,
    training_scenes,
)
from geosr.training.sources import Source, check_aux, check_compatible, draw, pool_stats
from geosr.training.spread import spread_calibration

log = logging.getLogger(__name__)


VAL_TILE_CELLS = 32
"""Validation tiles: core size and context in coarse cells (a whole small dataset is one tile)."""


VAL_HALO_CELLS = 6


def _check_options(cfg: TrainConfig) -> None:
    def bad(option: str, value: Any, expected: str) -> InputError:
        return InputError(f"{option} {value!r} is out of range; expected {expected}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(cfg.epochs) or not 1 <= cfg.epochs <= 100_000:
        raise bad("--epochs", cfg.epochs, "a whole number of epochs from 1 to 100000")
    if not is_int(cfg.batch_size) or not 1 <= cfg.batch_size <= 4096:
        raise bad("--batch-size", cfg.batch_size, "a whole number of patches from 1 to 4096")
    if cfg.patch is not None and (not is_int(cfg.patch) or not 2 <= cfg.patch <= 256):
        raise bad("--patch", cfg.patch, "a patch size of 2 to 256 coarse cells (e.g. 6)")
    if cfg.max_minutes is not None and not (math.isfinite(cfg.max_minutes)
                                            and cfg.max_minutes > 0):
        raise bad("--max-minutes", cfg.max_minutes, "a positive number of minutes")
    if not (math.isfinite(cfg.lr) and 0 < cfg.lr <= 1):
        raise bad("--lr", cfg.lr, "a learning rate in (0, 1], e.g. 1e-3")
    if cfg.steps_per_epoch is not None and (not is_int(cfg.steps_per_epoch)
                                            or not 1 <= cfg.steps_per_epoch <= 1_000_000):
        raise bad("--steps-per-epoch", cfg.steps_per_epoch, "a positive whole number")
    if cfg.threads is not None and (not is_int(cfg.threads) or not 1 <= cfg.threads <= 1024):
        raise bad("--threads", cfg.threads, "a positive number of CPU threads")
    if not 0 <= cfg.warmup < 1:
        raise bad("warmup", cfg.warmup, "a fraction in [0, 1)")
    for name in ("grad_weight", "gan_recon_weight", "gan_adv_weight", "weight_decay"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise bad(name, v, "a non-negative number")
    if cfg.loss is not None:
        Loss(cfg.loss)
    if cfg.slope_augment is not None and not (math.isfinite(cfg.slope_augment)
                                              and 0 <= cfg.slope_augment <= 100):
        raise bad("--slope-augment", cfg.slope_augment, "a scale from 0 to 100 (e.g. 2)")


def _aux_specs(manifests: list[Manifest], names: tuple[str, ...] | None
               ) -> tuple[AuxChannelSpec, ...]:
    """The model's aux layers from the first dataset, their statistics pooled over all."""
    manifest = manifests[0]
    if names is None:
        names = tuple(a.name for a in manifest.aux)
    available = ", ".join(a.name for a in manifest.aux) or "none"
    seen = set()
    specs = []
    for name in names:
        if name in seen:
            raise InputError(f"--aux {name!r} is given twice; expected each layer once")
        seen.add(name)
        layer = next((a for a in manifest.aux if a.name == name), None)
        if layer is None:
            raise InputError(f"--aux {name!r} is not a layer of the dataset {manifest.root}; "
                             f"expected some of: {available}")
    check_aux(manifests, names)
    for name in names:
        layer = manifest.aux_layer(name)
        st = pool_stats([m.aux_layer(name).stats for m in manifests])
        if layer.categorical:
            if not layer.classes:
                raise InputError(f"{manifest.root}: categorical aux {name!r} lists no classes; "
                                 "re-run `geosr prepare`")
            specs.append(AuxChannelSpec(name=name, categorical=True, classes=layer.classes,
                                        units=layer.units))
        else:
            mean = float(st.mean) if st else 0.0
            std = float(st.std) if st and st.std and math.isfinite(st.std) and st.std > 0 else 1.0
            specs.append(AuxChannelSpec(name=name, mean=mean, std=std, units=layer.units))
    return tuple(specs)


def _field_stats(manifests: list[Manifest]) -> LayerStats | None:
    """The coarse field's statistics (the target's where absent), pooled over datasets."""
    return pool_stats([m.coarse.stats if m.coarse.stats else m.target.stats
                       for m in manifests])


def _norm(manifests: list[Manifest], *, positive: bool = False) -> dict:
    """One affine map for coarse input and output, so conservation holds in physical units.

    ``positive`` (a non-negative model): scale only, so that zero stays zero for the
    softmax constraint layer.
    """
    st = _field_stats(manifests)
    mean = float(st.mean) if st and not positive else 0.0
    std = float(st.std) if st and st.std and math.isfinite(st.std) and st.std > 0 else 1.0
    return {"coarse": {"mean": mean, "std": std}, "target": {"mean": mean, "std": std}}


def _aux_ranges(manifests: list[Manifest], specs) -> dict:
    """``{name: [min, max]}`` of each continuous aux layer over the datasets (the bundle's
    record for :func:`geosr.model.domain.aux_shifts`)."""
    out = {}
    for s in specs:
        st = pool_stats([next((a.stats for a in m.aux if a.name == s.name), None)
                         for m in manifests])
        if not s.categorical and st is not None and st.min is not None and st.max is not None:
            out[s.name] = [float(st.min), float(st.max)]
    return out


def _coarse_stats(manifests: list[Manifest]) -> dict:
    """Range of the coarse training input (the statistics :func:`_norm` uses), so that
    ``downscale`` can flag inputs far outside it."""
    st = _field_stats(manifests)
    return {"min": st.min, "max": st.max, "mean": st.mean, "std": st.std} if st else {}


def _scene_default(cfg: TrainConfig, manifest: Manifest) -> bool:
    """``cfg.scene``, else on except for precipitation (units or variable name): on daily
    rain the scene's sharpening fit and per-day spread hurt (measured, README)."""
    if cfg.scene is not None:
        return bool(cfg.scene)
    from geosr.constraints import from_names, from_units

    rain = from_units(manifest.units) is not None or (
        not manifest.units and from_names([manifest.variable])[0] is not None)
    if rain:
        log.info("precipitation (%s): a fixed-statistics network (pass --scene to make it "
                 "scene-adaptive)", manifest.units or manifest.variable)
    return not rain


def _resolve_defaults(cfg: TrainConfig, net_cfg) -> TrainConfig:
    """Fill ``loss`` and ``augment`` left unset: the rain recipe for a non-negative network
    (``l1+grad``, flips/rotations), else ``l1`` without augmentation.

    Measured on HadUK daily rain (8 km -> 1 km, days 22-31, 40 epochs, seeds 0 and 1,
    the epoch chosen on the test days): RMSE 0.436 / 0.440 mm with the recipe against
    0.445 / 0.452 with plain ``l1``.
    """
    rain = net_cfg.positive
    return dataclasses.replace(
        cfg, loss=Loss(cfg.loss) if cfg.loss is not None else (Loss.l1_grad if rain else Loss.l1),
        augment=cfg.augment if cfg.augment is not None else rain)


def _positive_default(manifest: Manifest, scene: bool) -> bool:
    """The softmax-constrained network for a field whose valid range is ``0:`` (rain by
    its units or name, or a range given to ``prepare``), unless scene-adaptive.

    Chosen for physical consistency (never negative, every cell exact, dry cells dry,
    SSIM 0.839 against 0.738 additive), not RMSE: on HadUK daily rain (8 km -> 1 km,
    train days 1-16, test 22-31; README) it scored 0.509 mm against 0.496 additive,
    0.489 bicubic and 0.455 bicubic kept non-negative and conserved.
    """
    vr = manifest.valid_range
    positive = not scene and vr is not None and vr.lo == 0.0 and vr.hi == math.inf
    if positive:
        log.info("valid range 0: -> a non-negative network (softmax constraint layer)")
    return positive


def _net_config(cfg: TrainConfig, manifest: Manifest, specs: tuple[AuxChannelSpec, ...]):
    from geosr.nn import NetConfig

    arch = dict(cfg.arch)
    reserved = {"factor", "n_coarse", "n_aux", "conserve", "spread", "scene"} & set(arch)
    if reserved:
        raise InputError(f"--arch {sorted(reserved)[0]}: set by the dataset and options; "
                         "expected other architecture fields")
    scene = _scene_default(cfg, manifest)
    arch.setdefault("positive", _positive_default(manifest, scene))
    # a scene-adaptive network standardises its aux per scene too (measured: README,
    # Generalisation); `--arch scene_aux=false` keeps the training statistics
    arch.setdefault("scene_aux", scene and not arch["positive"] and bool(specs))
    try:
        return NetConfig(factor=manifest.factor, n_coarse=1,
                         n_aux=sum(s.channels for s in specs), conserve=cfg.conserve,
                         spread=cfg.probabilistic, scene=scene, **arch)
    except (TypeError, ValueError) as e:
        raise InputError(f"--arch: {e}") from e


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine decay to 1% of the peak."""
    n_warm = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < n_warm:
        return (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def recon_loss(pred, target, mask, kind: Loss, grad_weight: float):
    """Masked reconstruction loss in standardised units; ``mask`` marks valid targets."""
    import torch

    m = mask.to(pred.dtype)
    n = m.sum().clamp_min(1.0)
    diff = (pred - target) * m
    if kind is Loss.mse:
        return (diff * diff).sum() / n
    loss = diff.abs().sum() / n
    if kind is Loss.l1_grad and grad_weight > 0:
        terms = []
        for dim in (-1, -2):
            dp = torch.diff(pred, dim=dim)
            dt = torch.diff(target, dim=dim)
            mm = m.narrow(dim, 1, m.shape[dim] - 1) * m.narrow(dim, 0, m.shape[dim] - 1)
            terms.append(((dp - dt).abs() * mm).sum() / mm.sum().clamp_min(1.0))
        loss = loss + grad_weight * sum(terms)
    return loss


@dataclass
class _Acc:
    """Running sums for RMSE, MAE, bias and Pearson r (float64)."""

    n: int = 0
    se: float = 0.0
    ae: float = 0.0
    e: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        ok = np.isfinite(pred) & np.isfinite(truth)
        p, t = pred[ok].astype(np.float64), truth[ok].astype(np.float64)
        d = p - t
        self.n += int(p.size)
        self.se += float((d * d).sum())
        self.ae += float(np.abs(d).sum())
        self.e += float(d.sum())
        self.sx += float(p.sum())
        self.sy += float(t.sum())
        self.sxx += float((p * p).sum())
        self.syy += float((t * t).sum())
        self.sxy += float((p * t).sum())

    def merge(self, other: _Acc) -> _Acc:
        """Add another accumulator's sums (pixels of another dataset)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def result(self) -> dict:
        if self.n == 0:
            return {"rmse": None, "mae": None, "bias": None, "r": None, "n": 0}
        n = self.n
        cov = self.sxy / n - (self.sx / n) * (self.sy / n)
        vx = self.sxx / n - (self.sx / n) ** 2
        vy = self.syy / n - (self.sy / n) ** 2
        r = cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None
        return {"rmse": math.sqrt(self.se / n), "mae": self.ae / n, "bias": self.e / n,
                "r": r, "n": n}


def _val_tiles(manifest: Manifest, split: Split) -> list[tuple[Window, Window]]:
    """(read window with halo, core window) pairs in coarse cells, clipped to the grid."""
    g = manifest.coarse_grid
    c0, c1 = split.val_cols
    tiles = []
    for r in range(0, g.height, VAL_TILE_CELLS):
        for c in range(c0, c1, VAL_TILE_CELLS):
            core = Window(c, r, min(VAL_TILE_CELLS, c1 - c), min(VAL_TILE_CELLS, g.height - r))
            rr0, cc0 = max(0, r - VAL_HALO_CELLS), max(0, c - VAL_HALO_CELLS)
            rr1 = min(g.height, r + int(core.height) + VAL_HALO_CELLS)
            cc1 = min(g.width, c + int(core.width) + VAL_HALO_CELLS)
            tiles.append((Window(cc0, rr0, cc1 - cc0, rr1 - rr0), core))
    return tiles


def _fine(w: Window, f: int) -> Window:
    return Window(int(w.col_off) * f, int(w.row_off) * f, int(w.width) * f, int(w.height) * f)


def _valid_mask(model, aux: np.ndarray | None, specs, device, mean_over_aux: bool):
    """The conservation mask of a batch (:func:`~geosr.model.predictor.aux_valid_mask`,
    as :class:`~geosr.model.predictor.Predictor` uses it with ``mean_over_aux``) as a
    tensor, or ``None``."""
    import torch

    if not (mean_over_aux and specs) or aux is None \
            or getattr(model, "conservation", None) is None:
        return None
    vm = aux_valid_mask(aux)
    return None if vm is None else torch.from_numpy(vm).to(device)


def predict_tile(model, coarse: np.ndarray, aux: np.ndarray, norm: dict,
                 specs: tuple[AuxChannelSpec, ...], device, scene=None, *,
                 mean_over_aux: bool = False) -> np.ndarray:
    """The model on one window (eval mode, no grad): ``(C, H, W)`` in physical units.

    ``coarse (h, w)`` and ``aux (A, H, W)`` in physical units; ``scene`` the band's
    :class:`~geosr.model.scene.Scene` for a scene-adaptive model; ``mean_over_aux`` as
    in :meth:`~geosr.model.predictor.Predictor.predict`. Channel 1 (a probabilistic
    model's spread) is scaled but not shifted.
    """
    import torch

    tc = torch.from_numpy(fill_nearest(coarse))[None, None].to(device)
    f = aux.shape[-1] // coarse.shape[-1]
    ta = torch.from_numpy(fill_aux_cells(aux[None], specs, f)).to(device) if specs else None
    vm = _valid_mask(model, aux[None], specs, device, mean_over_aux)
    xc, xa, sg, mean, std = encode_batch(tc, ta, norm, specs,
                                         [scene] if scene is not None else None)
    y = model(xc, xa, scene_gain=sg, fine_mask=vm).float()
    y = torch.cat([y[:, :1] * std + mean, y[:, 1:] * std], dim=1)
    return y[0].cpu().numpy()


def validate(model, reader: DatasetReader, manifest: Manifest, split: Split,
             specs: tuple[AuxChannelSpec, ...], norm: dict, device, *,
             baseline: bool = False, scenes: dict | None = None,
             mean_over_aux: bool = False, into: tuple | None = None) -> tuple[dict, dict | None]:
    """Predict the validation data tile by tile; metrics in the target's physical units.

    ``scenes``: per band, its :class:`~geosr.model.scene.Scene` (a scene-adaptive model);
    ``mean_over_aux``: see :func:`predict_tile`; ``into``: accumulators (network,
    bilinear) to add to, shared by several datasets.

    Returns:
        (network metrics, bilinear-interpolation metrics on the same pixels or None).
    """
    import torch

    from geosr.baselines import upsample

    f = manifest.factor
    acc, base = into if into is not None else (_Acc(), _Acc())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for read, core in _val_tiles(manifest, split):
                fread, fcore = _fine(read, f), _fine(core, f)
                aux = reader.aux(fread)
                y0, x0 = int(fcore.row_off - fread.row_off), int(fcore.col_off - fread.col_off)
                ys, xs = slice(y0, y0 + int(fcore.height)), slice(x0, x0 + int(fcore.width))
                for band in split.val_bands:
                    truth = reader.target(band, fcore)
                    if not np.isfinite(truth).any():
                        continue
                    coarse = reader.coarse(band, read)
                    if not np.isfinite(coarse).any():
                        continue
                    pred = predict_tile(model, coarse, aux, norm, specs, device,
                                        scenes.get(band) if scenes else None,
                                        mean_over_aux=mean_over_aux)[0]
                    nanc = ~np.isfinite(coarse)
                    pred[np.repeat(np.repeat(nanc, f, 0), f, 1)] = np.nan
                    acc.add(pred[ys, xs], truth)
                    if baseline:
                        base.add(upsample(coarse, f, "bilinear")[ys, xs], truth)
    finally:
        model.train(was_training)
    return acc.result(), (base.result() if baseline else None)


def _count_val_targets(reader: DatasetReader, manifest: Manifest, split: Split) -> int:
    n = 0
    for _, core in _val_tiles(manifest, split):
        for band in split.val_bands:
            n += int(np.isfinite(reader.target(band, _fine(core, manifest.factor))).sum())
    return n


class _Group:
    """The few collective operations the loop needs (no-ops in a single process)."""

    def __init__(self, dist: DistConfig, device):
        self.dist = dist
        self.device = device
        self.active = dist.world_size > 1

    def flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([1.0 if value else 0.0], device=self.device)
        tdist.broadcast(t, src=0)
        return bool(t.item() > 0.5)

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([value], dtype=torch.float64 if self.device.type == "cpu"
                         else torch.float32, device=self.device)
        tdist.all_reduce(t)
        return float(t.item()) / self.dist.world_size


def train(cfg: TrainConfig, *, progress: Progress | None = None) -> TrainResult:
    """Train a generator on a prepared dataset and write the bundle. See :class:`TrainConfig`.

    Raises:
        InputError: bad options or dataset (exit 2); BundleError for a bad ``resume``.
        OutputExistsError: the model, checkpoint or logs exist without ``overwrite``.
        ProcessingError: a run-time failure (exit 1).
    """
    import torch

    from geosr.device import resolve_device

    t_start = time.perf_counter()
    _check_options(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dist = cfg.dist
    device = resolve_device(cfg.device)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    paths = list(cfg.datasets)
    manifests = [read_manifest(d) for d in paths]
    for path, m in zip(paths, manifests, strict=True):
        if m.target is None:
            raise InputError(f"{path}: the dataset has no target layer; expected a training "
                             "dataset (`geosr prepare ... --target FINE.tif`)")
    check_compatible(manifests)
    manifest = manifests[0]
    specs = _aux_specs(manifests, cfg.aux)
    net_cfg = _net_config(cfg, manifest, specs)
    cfg = _resolve_defaults(cfg, net_cfg)
    norm = _norm(manifests, positive=net_cfg.positive)
    out = Path(cfg.out)
    ckpt_path, csv_path, json_path = side_paths(out)
    dataset_files = [f for path, m in zip(paths, manifests, strict=True) for f in (
        ("dataset manifest", str(Path(path) / "manifest.json")),
        *((f"dataset layer {la.name}", str(m.path_of(la)))
          for la in (m.coarse, m.target, *m.aux) if la is not None))]
    for path, option in ((out, "-o"), (ckpt_path, "-o (its checkpoint)"),
                         (csv_path, "-o (its log)"), (json_path, "-o (its log)")):
        check_not_input(path, dataset_files, option=option)
    check_output_file(out, overwrite=cfg.overwrite)
    if dist.is_main and cfg.resume is None and not cfg.overwrite:
        for p in (ckpt_path, csv_path, json_path):
            if p.exists():
                raise OutputExistsError(f"{p}: exists from an earlier run; pass --resume "
                                        f"{ckpt_path} to continue it, or --overwrite to start "
                                        "over")
    if cfg.resume is not None and not Path(cfg.resume).exists():
        raise BundleError(f"--resume {cfg.resume}: file not found; expected a MODEL.ckpt "
                          "written by `geosr train`")
    group = None
    try:
        if dist.world_size > 1:
            import torch.distributed as tdist

            backend = dist.backend or ("nccl" if device.type == "cuda" else "gloo")
            tdist.init_process_group(backend, init_method=f"tcp://{dist.master_addr}:"
                                     f"{dist.master_port}", rank=dist.rank,
                                     world_size=dist.world_size)
        group = _Group(dist, device)
        with contextlib.ExitStack() as stack:
            sources = [Source(path, m, stack.enter_context(DatasetReader(
                m, tuple(s.name for s in specs), tuple(s.band for s in m.samples),
                cache_mb=cfg.cache_mb))) for path, m in zip(paths, manifests, strict=True)]
            result = _train(cfg, sources, specs, norm, net_cfg, device, group,
                            (out, ckpt_path, csv_path, json_path), t_start, progress)
        if group.active:
            # Every rank waits until rank 0 has written the bundle: a rank that tore down
            # its process group and exited while rank 0 was still saving aborted gloo
            # ("terminate called without an active exception") and torchrun failed.
            import torch.distributed as tdist

            tdist.barrier()
        return result
    except torch.cuda.OutOfMemoryError as e:
        raise ProcessingError(f"{device}: out of GPU memory ({str(e).splitlines()[0]}); use a "
                              "smaller --batch-size or --patch") from e
    finally:
        if group is not None and group.active:
            import gc

            import torch.distributed as tdist

            # The DDP wrapper and its reducer hold the process group in reference cycles:
            # freed only at interpreter exit, gloo's threads were destroyed still running
            # ("terminate called without an active exception", rarely, under load).
            # Collect them while the group is still registered, then destroy it.
            gc.collect()
            if tdist.is_initialized():
                tdist.destroy_process_group()


def _patch_size(cfg: TrainConfig, split, rows: int, factor: int) -> int:
    """``--patch``, or by default :data:`DEFAULT_PATCH` cells cut to the training area (a
    small area still trains); with ``--gan``, large enough for the discriminator."""
    c0, c1 = split.train_cols
    patch = cfg.patch if cfg.patch is not None else max(2, min(DEFAULT_PATCH, rows, c1 - c0))
    if cfg.patch is None and patch < DEFAULT_PATCH:
        log.info("patches of %d x %d coarse cells (the training area is %d x %d cells)", patch,
                 patch, c1 - c0, rows)
    if cfg.gan:
        from geosr.nn import Discriminator

        min_px = Discriminator().min_size
        if patch * factor < min_px:
            raise InputError(f"--patch {patch}: {patch * factor} fine pixels are too small for "
                             f"the discriminator with --gan; expected at least "
                             f"{math.ceil(min_px / factor)} coarse cells")
    return patch


def _prepare_source(cfg: TrainConfig, src: Source, specs, norm, single: bool,
                    aux_scene: bool) -> None:
    """A source's validation split, cell-mean rule, aux cell means and scenes."""
    m, reader = src.manifest, src.reader
    count = reader.coarse_valid_count(tuple(s.band for s in m.samples))
    # As downscale's --cell-mean auto: coarse data with nodata cells are a land-only
    # product, whose values are means over where the aux has data (geosr.inference.run).
    src.mean_over_aux = bool((count < len(m.samples)).any())
    log.info("%scoarse data %s: a network pixel where an aux layer is nodata is conserved %s",
             "" if single else f"{src.path}: ",
             "with nodata cells" if src.mean_over_aux else "with data in every cell",
             "apart (--cell-mean aux)" if src.mean_over_aux else "with its cell (--cell-mean cell)")
    val_samples = tuple(cfg.val_samples)
    if val_samples and not single:
        ids = {s.id for s in m.samples}
        val_samples = tuple(v for v in val_samples if v in ids)
    if cfg.val_samples and not val_samples:  # none of the ids is in this dataset
        bands = tuple(s.band for s in m.samples)
        w = m.coarse_grid.width
        src.split = Split(SplitKind.samples, bands, (), (0, w), (0, w))
    else:
        src.split = make_split(m, val_samples=val_samples, val_fraction=cfg.val_fraction,
                               val_block=cfg.val_block, coarse_valid=count > 0)
    # every network records what its training scenes spanned (the domain-shift check of
    # downscale); a scene-adaptive one also takes them as input
    src.layers = aux_coarse_means(reader, specs, m.factor)  # one pass over the aux
    src.scenes = training_scenes(reader, tuple(s.band for s in m.samples), specs, m.factor,
                                 train_std=float(norm["coarse"]["std"]), layers=src.layers,
                                 aux_scene=aux_scene)


def _batch(sources: list[Source], draws, tforms, model, specs, norm, f: int, device,
           scene_on: bool, rng: np.random.Generator):
    """One training batch from the ``draws`` of :func:`~geosr.training.sources.draw`:
    ``(xc, xa, scene_gain, mean, std, target, fine_mask)`` as tensors on ``device``."""
    import torch

    parts, k0 = [], 0
    for i, picks in draws:
        src = sources[i]
        tf = tforms[k0:k0 + len(picks)] if tforms is not None else None
        k0 += len(picks)
        batch = read_batch(src.reader, src.plan, picks, f, transforms=tf)
        aux = fill_aux_cells(batch.aux, specs, f) if specs else None
        vm = _valid_mask(model, batch.aux, specs, device, src.mean_over_aux)
        bands = [int(src.plan.starts[k][0]) for k in picks]
        scenes = [src.scenes[b] for b in bands] if scene_on else None
        if src.augmenter is not None:
            scenes = src.augmenter(batch.coarse, batch.target, aux, bands, rng)
        enc = encode_batch(torch.from_numpy(fill_nearest(batch.coarse))[:, None].to(device),
                           torch.from_numpy(aux).to(device) if specs else None, norm, specs,
                           scenes)
        parts.append((*enc, torch.from_numpy(batch.target)[:, None].to(device), vm))
    if len(parts) == 1:
        return parts[0]

    def cat(j):
        xs = [p[j] for p in parts]
        return None if xs[0] is None else torch.cat(xs)

    masks = [p[6] for p in parts]
    vm = None
    if any(m is not None for m in masks):  # a dataset without aux nodata: every pixel
        vm = torch.cat([m if m is not None else torch.ones_like(p[5], dtype=torch.bool)
                        for m, p in zip(masks, parts, strict=True)])
    return (*(cat(j) for j in range(6)), vm)


def _validate_sources(model, sources: list[Source], specs, norm, device, *, baseline: bool,
                      scene: bool) -> tuple[dict, dict | None]:
    """:func:`validate` pooled over every dataset's held-out pixels; with several datasets
    the metrics also carry each one's RMSE (``rmse_by_dataset``, by folder name)."""
    acc, base = _Acc(), _Acc()
    by_dataset = {}
    for s in sources:
        a, b = _Acc(), _Acc()
        validate(model, s.reader, s.manifest, s.split, specs, norm, device, baseline=baseline,
                 scenes=s.scenes if scene else None, mean_over_aux=s.mean_over_aux,
                 into=(a, b))
        acc.merge(a)
        base.merge(b)
        by_dataset[_source_name(s, sources)] = a.result()["rmse"]
    metrics = acc.result()
    if len(sources) > 1:
        metrics["rmse_by_dataset"] = by_dataset
    return metrics, (base.result() if baseline else None)


def _source_name(src: Source, sources: list[Source]) -> str:
    """A dataset's folder name, or its path where two folders share a name."""
    names = [s.path.name for s in sources]
    return src.path.name if names.count(src.path.name) == 1 else str(src.path)


def _describe(sources: list[Source]) -> str:
    if len(sources) == 1:
        return sources[0].split.describe(sources[0].manifest)
    return f"{len(sources)} datasets: " + "; ".join(
        f"{s.path.name}: {s.split.describe(s.manifest)}" for s in sources)


def _train(cfg: TrainConfig, sources: list[Source], specs, norm, net_cfg,
           device, group: _Group, paths, t_start: float, progress: Progress | None
           ) -> TrainResult:
    import torch

    from geosr.nn import Discriminator, Generator
    from geosr.nn.spread import gaussian_crps

    out, ckpt_path, csv_path, json_path = paths
    dist = cfg.dist
    notify = progress if (progress is not None and dist.is_main) else (lambda ev: None)
    manifest = sources[0].manifest
    single = len(sources) == 1
    for src in sources:
        _prepare_source(cfg, src, specs, norm, single, bool(net_cfg.scene_aux))
    if cfg.val_samples and not single:
        known = {s.id for src in sources for s in src.manifest.samples}
        unknown = [v for v in cfg.val_samples if v not in known]
        if unknown:
            raise InputError(f"--val-samples {unknown[0]!r} is not a sample of any of the "
                             f"{len(sources)} datasets; expected sample ids from their manifests")
    masks = []
    for src in sources:
        train_count = src.reader.coarse_valid_count(src.split.train_bands)
        valid = train_count * 2 >= max(1, len(src.split.train_bands))
        masks.append(valid if valid.any() else train_count > 0)
    # one patch size for all datasets: a batch is one tensor
    patch = min(_patch_size(cfg, src.split, mask.shape[0], manifest.factor)
                for src, mask in zip(sources, masks, strict=True))
    for src, mask in zip(sources, masks, strict=True):
        src.plan = plan_patches(mask, src.split, patch)
    if sum(_count_val_targets(s.reader, s.manifest, s.split) for s in sources) == 0:
        raise InputError(f"{cfg.dataset}: the validation data ({_describe(sources)}) "
                         "hold no valid target cells; expected another --val-samples, "
                         "--val-fraction or --val-block")
    mean_over_aux = any(s.mean_over_aux for s in sources)
    scene_on = bool(net_cfg.scene)
    if cfg.slope_augment and (not scene_on or net_cfg.positive):
        log.warning("--slope-augment %g: ignored; it needs a scene-adaptive network that is "
                    "not non-negative (--scene, not a rain field)", cfg.slope_augment)
    elif cfg.slope_augment:
        from geosr.training.slopes import SlopeAugmenter, band_moments

        for src in sources:
            src.augmenter = SlopeAugmenter(
                cfg.slope_augment, src.scenes,
                band_moments(src.reader, src.split.train_bands, src.layers), specs,
                train_std=float(norm["coarse"]["std"]))
    augmenting = any(s.augmenter is not None for s in sources)
    steps = cfg.steps_per_epoch or min(MAX_STEPS_PER_EPOCH, max(
        MIN_STEPS_PER_EPOCH, math.ceil(sum(s.plan.patches_per_pass() for s in sources)
                                       / cfg.batch_size)))
    steps = max(1, math.ceil(steps / dist.world_size))
    total_steps = steps * cfg.epochs
    fingerprint = _fingerprint(cfg, manifest, specs, net_cfg, sources[0].split, steps,
                               more=[(s.manifest, s.split) for s in sources[1:]])

    torch.manual_seed(cfg.seed)
    model = Generator(net_cfg).to(device)
    disc = Discriminator(in_channels=1).to(device) if cfg.gan else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup))
    d_opt = (torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999),
                               weight_decay=cfg.weight_decay) if disc is not None else None)
    use_amp = bool(cfg.amp and device.type == "cuda")
    amp_dtype = (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype is torch.float16)

    history: list[dict] = []
    best_state: dict | None = None
    best: dict | None = None
    best_epoch: int | None = None
    baseline: dict | None = None
    start_epoch = 0
    elapsed_before = 0.0
    if cfg.resume is not None:
        ck = _load_checkpoint(Path(cfg.resume), fingerprint)
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            if disc is not None:
                disc.load_state_dict(ck["disc"])
                d_opt.load_state_dict(ck["d_opt"])
            if "scaler" in ck and scaler.is_enabled():
                scaler.load_state_dict(ck["scaler"])
            if "rng_torch" in ck:
                torch.set_rng_state(ck["rng_torch"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise BundleError(f"--resume {cfg.resume}: checkpoint does not fit this model "
                              f"({str(e).splitlines()[0][:160]}); expected one written by the "
                              "same command") from e
        meta = ck["meta"]
        start_epoch = int(meta["epoch"])
        history = list(meta.get("history", []))
        best_state = ck["best"]
        best = meta.get("best")
        best_epoch = meta.get("best_epoch")
        baseline = meta.get("baseline")
        elapsed_before = float(meta.get("seconds", 0.0))
        log.info("resuming %s at epoch %d of %d", cfg.resume, start_epoch + 1, cfg.epochs)

    ddp_model = model
    if group.active:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if disc is not None:
            disc = DistributedDataParallel(
                disc, device_ids=[device.index] if device.type == "cuda" else None)

    notify(TrainEvent("start", start_epoch, cfg.epochs, 0, steps, message=(
        f"training on {device} | {_describe(sources)} | "
        f"{sum(len(s.plan.starts) for s in sources)} patch "
        f"positions of {patch}x{patch} coarse cells, {steps} steps/epoch of "
        f"{cfg.batch_size} | aux: {', '.join(channel_layout(specs)) or 'none'}"),
        units=manifest.units))

    t_loop = time.perf_counter()
    deadline = t_loop + cfg.max_minutes * 60 if cfg.max_minutes else None
    stopped = "epochs"
    bce = torch.nn.BCEWithLogitsLoss()
    f = manifest.factor
    calibration: dict = {}

    def summary(epochs_done: int) -> dict:
        return {
            "dataset": str(cfg.dataset), "variable": manifest.variable, "units": manifest.units,
            "long_name": manifest.long_name,
            "split": sources[0].split.to_dict(manifest),
            **({} if single else {
                "datasets": [str(s.path) for s in sources],
                "splits": [s.split.to_dict(s.manifest) for s in sources]}),
            "epochs": epochs_done, "epochs_planned": cfg.epochs,
            "best_epoch": best_epoch, "val": best,
            "val_rmse_bilinear": baseline.get("rmse") if baseline else None,
            "seconds": round(elapsed_before + time.perf_counter() - t_loop, 2),
            "seed": cfg.seed, "loss": Loss(cfg.loss).value, "gan": cfg.gan,
            "conserve": cfg.conserve, "device": str(device), "patch": patch,
            "batch_size": cfg.batch_size, "steps_per_epoch": steps, "lr": cfg.lr,
            "augment": cfg.augment,
            "slope_augment": cfg.slope_augment if augmenting else None,
            "world_size": dist.world_size, "stopped": stopped,
            "aux": [s.name for s in specs], "channels": channel_layout(specs),
            "geosr_version": __version__, "probabilistic": cfg.probabilistic,
            "scene": scene_on, "aux_ranges": _aux_ranges([s.manifest for s in sources], specs),
            "cell_mean": "aux" if mean_over_aux else "cell",
            "scene_ranges": scene_ranges({(i, b): src.scenes[b] for i, src in enumerate(sources)
                                          for b in src.split.train_bands}, specs),
            **({"spread_calibration": calibration} if calibration else {}),
        }

    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch, dist.rank])
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + dist.rank)
        model.train()
        if disc is not None:
            disc.train()
        loss_sum, d_sum, done = 0.0, 0.0, 0
        stop = False
        for step in range(steps):
            draws = draw(rng, sources, cfg.batch_size)
            tforms = rng.integers(0, 8, size=cfg.batch_size) if cfg.augment else None
            xc, xa, sg, mu, sd, tgt, vm = _batch(sources, draws, tforms, model, specs, norm,
                                                 f, device, scene_on, rng)
            mask = torch.isfinite(tgt)
            tgt = torch.nan_to_num((tgt - mu) / sd, nan=0.0)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                pred = ddp_model(xc, xa, scene_gain=sg, fine_mask=vm)
            pred = pred.float()
            spread = None
            if cfg.probabilistic:  # the mean learns from recon_loss alone, the spread from CRPS
                pred, spread = pred[:, :1], pred[:, 1:]
            loss = recon_loss(pred, tgt, mask, Loss(cfg.loss), cfg.grad_weight)
            if spread is not None:
                loss = loss + gaussian_crps(pred.detach(), spread, tgt, mask)
            d_loss_val = 0.0
            if disc is not None:
                # The discriminator sees the same mask on both sides, so nodata tells it nothing.
                real = torch.where(mask, tgt, torch.zeros_like(tgt))
                fake = torch.where(mask, pred, torch.zeros_like(pred))
                d_opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    lr_real, lr_fake = disc(real), disc(fake.detach())
                d_loss = (bce(lr_real.float(), torch.ones_like(lr_real, dtype=torch.float32))
                          + bce(lr_fake.float(), torch.zeros_like(lr_fake, dtype=torch.float32)))
                scaler.scale(d_loss).backward()
                scaler.step(d_opt)
                d_loss_val = float(d_loss.detach())
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    g_logits = disc(fake)
                adv = bce(g_logits.float(), torch.ones_like(g_logits, dtype=torch.float32))
                g_loss = cfg.gan_recon_weight * loss + cfg.gan_adv_weight * adv
            else:
                g_loss = loss
            opt.zero_grad(set_to_none=True)
            scaler.scale(g_loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            if not math.isfinite(float(loss.detach())):
                raise ProcessingError(f"training diverged at epoch {epoch + 1} step {step + 1} "
                                      "(loss is not finite); try a smaller --lr")
            loss_sum += float(loss.detach())
            d_sum += d_loss_val
            done += 1
            notify(TrainEvent("step", epoch + 1, cfg.epochs, done, steps, loss_sum / done))
            if deadline is not None:
                stop = group.flag(time.perf_counter() > deadline)
                if stop and step + 1 < steps:
                    break
        partial = done < steps
        train_loss = group.mean(loss_sum / max(done, 1))
        record: dict = {"epoch": epoch + 1, "train_loss": train_loss,
                        "lr": float(opt.param_groups[0]["lr"]),
                        "d_loss": d_sum / max(done, 1) if disc is not None else None,
                        "partial": partial}
        if dist.is_main:
            metrics, base = _validate_sources(model, sources, specs, norm, device,
                                              baseline=baseline is None, scene=scene_on)
            if base is not None:
                baseline = base
            record.update(val_rmse=metrics["rmse"], val_mae=metrics["mae"],
                          val_bias=metrics["bias"], val_r=metrics["r"])
            if "rmse_by_dataset" in metrics:
                record["val_rmse_by_dataset"] = metrics["rmse_by_dataset"]
            improved = metrics["rmse"] is not None and (best is None or best.get("rmse") is None
                                                        or metrics["rmse"] < best["rmse"])
            if improved:
                best, best_epoch = metrics, epoch + 1
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in
                                            model.state_dict().items()})
            record["best"] = bool(improved)
            record["seconds"] = time.perf_counter() - t_epoch
            history.append(record)
            if not partial:
                state = {"model": model.state_dict(), "best": best_state,
                         "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "rng_torch": torch.get_rng_state()}
                if disc is not None:
                    state["disc"] = (disc.module if group.active else disc).state_dict()
                    state["d_opt"] = d_opt.state_dict()
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                _write_checkpoint(ckpt_path, state, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
                    "best": best, "best_epoch": best_epoch, "baseline": baseline,
                    "seconds": elapsed_before + time.perf_counter() - t_loop,
                    "geosr_version": __version__})
            _write_logs(csv_path, json_path, history, summary(epoch + 1 - int(partial)))
            notify(TrainEvent("epoch", epoch + 1, cfg.epochs, done, steps, train_loss,
                              record=record))
        if stop:
            stopped = "max-minutes"
            log.info("--max-minutes %g reached after epoch %d%s", cfg.max_minutes, epoch + 1,
                     " (partial)" if partial else "")
            break

    epochs_done = sum(1 for h in history if not h.get("partial"))
    bundle = None
    if dist.is_main:
        if best_state is None:
            best_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if cfg.probabilistic:
            model.load_state_dict(best_state)
            calibration = spread_calibration(
                model, [(s.reader, s.manifest, s.split, s.scenes if scene_on else None,
                         s.mean_over_aux) for s in sources], specs, norm, device)
            best_state = dict(best_state)
            best_state["spread_head.scale"] = best_state["spread_head.scale"] * calibration["scale"]
            log.info("spread calibrated on the validation data: x%.3f (90%% interval coverage "
                     "%s -> %s)", calibration["scale"], calibration["coverage_raw"],
                     calibration["coverage"])
        final_summary = summary(epochs_done)
        _write_logs(csv_path, json_path, history, final_summary)
        bundle = save_bundle(out, overwrite=cfg.overwrite, config=net_cfg, aux=specs,
                             factor=manifest.factor, res_m=manifest.res_m,
                             variable=manifest.variable, units=manifest.units, norm=norm,
                             training=final_summary, state_dict=best_state,
                             coarse_stats=_coarse_stats([s.manifest for s in sources]),
                             valid_range=manifest.valid_range)
    return TrainResult(out=out, bundle=bundle, history=history, best_epoch=best_epoch,
                       best=best, seconds=time.perf_counter() - t_start, stopped=stopped,
                       checkpoint=ckpt_path, log_csv=csv_path, log_json=json_path,
                       split=_describe(sources),
                       baseline_rmse=baseline.get("rmse") if baseline else None)
