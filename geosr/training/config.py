"""Options and results of ``train``."""


from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from geosr.model.bundle import Bundle

log = logging.getLogger(__name__)

DEFAULT_PATCH = 6
MIN_STEPS_PER_EPOCH = 8
"""Tiny datasets still get this many steps per epoch, so a default run makes ~240 updates."""


MAX_STEPS_PER_EPOCH = 500


class Loss(str, Enum):
    """Reconstruction losses (``--loss``)."""

    l1 = "l1"
    mse = "mse"
    l1_grad = "l1+grad"


@dataclass(frozen=True)
class DistConfig:
    """Process group of a distributed run (the CLI fills it from torchrun's variables).

    Attributes:
        rank: this process's rank.
        world_size: number of processes; 1 = not distributed.
        local_rank: GPU index on this node.
        master_addr: address of rank 0.
        master_port: port of rank 0.
        backend: ``nccl`` / ``gloo``; None = nccl on CUDA, else gloo.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``geosr train``.

    Attributes:
        dataset: prepared dataset folder (with a target layer).
        more_datasets: further prepared datasets trained on together with ``dataset``
            (other regions, periods or grids): the same factor, resolution, units and
            aux layers; each is split for validation on its own, and every batch draws
            its patches from the datasets in equal shares (:mod:`geosr.training.sources`).
        out: model bundle to write (``.geosr``); the checkpoint and logs go beside it.
        aux: aux layers to use, in channel order; None = all of the dataset's.
        epochs: number of epochs.
        max_minutes: stop cleanly after this many minutes of training (this process).
        batch_size: patches per step (per process).
        patch: patch size in coarse cells; None: :data:`DEFAULT_PATCH`, or less when the
            training area is smaller.
        val_samples: sample ids held out for validation.
        val_fraction: hold out this fraction of samples (latest dates).
        val_block: hold out this fraction of the valid area as an eastern block.
        loss: reconstruction loss; None: ``l1+grad`` for a non-negative (rain) network
            (it measured a lower RMSE on daily rain; README), else ``l1``.
        grad_weight: weight of the gradient term of ``l1+grad``.
        gan: adversarial training with a patch discriminator.
        gan_recon_weight: weight of the reconstruction loss in the generator loss.
        gan_adv_weight: weight of the adversarial term in the generator loss.
        conserve: hard conservation layer (fine means equal the coarse cell).
        probabilistic: the network also predicts a per-pixel spread (a Gaussian around the
            conserved best estimate), trained with the CRPS and calibrated on the
            validation data (:mod:`geosr.training.spread`).
        seed: seed of initialisation and patch sampling.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: checkpoint to continue from.
        overwrite: replace an existing model, checkpoint and logs.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: fraction of the steps with a linear warm-up.
        steps_per_epoch: None = about one pass over the training cells.
        augment: random flips/rotations of patches (for isotropic fields only); None: on
            for a non-negative (rain) network, off otherwise.
        scene: a scene-adaptive network (:mod:`geosr.model.scene`): each sample is
            standardised with its own band's coarse mean and std and given that band's
            sharpening slopes, so the model carries over to other periods, variables
            and regions. Off: one fixed standardisation (the training data's). None
            (default): on, except for precipitation (by units or variable name), where the
            fixed network measured better (HadUK daily rain, 8 km -> 1 km: RMSE 0.485
            fixed against 0.529 scene-adaptive).
        slope_augment: scale ``s`` of the slope augmentation of a scene-adaptive network
            (:mod:`geosr.training.slopes`): each training sample gets a random extra
            dependence on each continuous aux layer, up to ``s`` times the band's spread
            per layer spread, and the matching scene. 0: off. None (default): off.
        arch: overrides of :class:`geosr.nn.NetConfig` fields, as (name, value) pairs.
        cache_mb: read the dataset into memory when it fits in this many MB.
        amp: mixed precision on CUDA (bf16 where supported, else fp16).
        threads: CPU threads for torch (None = torch's default). One thread is often
            fastest for small patches, and on a machine shared with other jobs.
        dist: distributed process group.
    """

    dataset: Path
    out: Path
    more_datasets: tuple[Path, ...] = ()
    aux: tuple[str, ...] | None = None
    epochs: int = 30
    max_minutes: float | None = None
    batch_size: int = 16
    patch: int | None = None
    val_samples: tuple[str, ...] = ()
    val_fraction: float | None = None
    val_block: float | None = None
    loss: Loss | None = None
    grad_weight: float = 1.0
    gan: bool = False
    gan_recon_weight: float = 5.0
    gan_adv_weight: float = 1.0
    conserve: bool = True
    probabilistic: bool = False
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None
    overwrite: bool = False
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    steps_per_epoch: int | None = None
    augment: bool | None = None
    scene: bool | None = None
    slope_augment: float | None = None
    arch: tuple[tuple[str, Any], ...] = ()
    cache_mb: float = 256.0
    amp: bool = True
    threads: int | None = None
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def datasets(self) -> tuple[Path, ...]:
        """Every training dataset, ``dataset`` first."""
        return (Path(self.dataset), *(Path(d) for d in self.more_datasets))


@dataclass(frozen=True)
class TrainEvent:
    """What the progress callback receives.

    Attributes:
        kind: ``start`` (once), ``step`` (after each step), ``epoch`` (after validation).
        epoch: 1-based epoch.
        epochs: planned epochs.
        step: steps done in this epoch.
        steps: steps per epoch (this process).
        loss: running mean training loss of the epoch (standardised units).
        record: the epoch's log row (``epoch`` events).
        message: a human line (``start`` events).
        units: units of the validation metrics (``start`` events).
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    record: dict | None = None
    message: str = ""
    units: str = ""


Progress = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """What ``train`` made."""

    out: Path
    bundle: Bundle | None
    history: list[dict]
    best_epoch: int | None
    best: dict | None
    seconds: float
    stopped: str
    checkpoint: Path
    log_csv: Path
    log_json: Path
    split: str
    baseline_rmse: float | None

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "sha256": self.bundle.sha256 if self.bundle else None,
            "best_epoch": self.best_epoch, "val": self.best, "seconds": round(self.seconds, 2),
            "epochs": len([h for h in self.history if not h.get("partial")]),
            "stopped": self.stopped, "checkpoint": str(self.checkpoint),
            "log_csv": str(self.log_csv), "log_json": str(self.log_json), "split": self.split,
            "val_rmse_bilinear": self.baseline_rmse,
            "units": self.bundle.units if self.bundle else "",
        }


def side_paths(out: Path) -> tuple[Path, Path, Path]:
    """Checkpoint, CSV log and JSON log paths beside the model ``out``."""
    out = Path(out)
    return out.with_suffix(".ckpt"), out.with_suffix(".log.csv"), out.with_suffix(".log.json")
