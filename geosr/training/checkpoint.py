"""Training checkpoints (resumable, atomic, refused when the run they came from
differs) and the per-epoch logs."""


from __future__ import annotations

import csv
import io as _stdio
import json
import logging
from dataclasses import asdict
from pathlib import Path

from geosr.dataset.manifest import Manifest
from geosr.errors import BundleError
from geosr.io.atomic import atomic_path
from geosr.model.bundle import _safe_load
from geosr.training.config import Loss, TrainConfig
from geosr.training.data import (
    Split,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "geosr-checkpoint"


CHECKPOINT_VERSION = 1


def _fingerprint(cfg: TrainConfig, manifest: Manifest, specs, net_cfg, split: Split,
                 steps: int, *, more: list[tuple[Manifest, Split]] = ()) -> dict:
    """What a checkpoint must match to be resumed; ``more``: the further datasets (checked
    first: other datasets change the pooled statistics too, and that is the cause to name)."""
    return {
        **({"datasets": [{"fine_grid": m.fine_grid.to_dict(),
                          "samples": [s.id for s in m.samples], "split": sp.to_dict(m),
                          "coarse": asdict(m.coarse.stats) if m.coarse.stats else None}
                         for m, sp in more]} if more else {}),
        "variable": manifest.variable, "factor": manifest.factor,
        "fine_grid": manifest.fine_grid.to_dict(),
        "samples": [s.id for s in manifest.samples],
        "aux": [s.to_dict() for s in specs], "arch": asdict(net_cfg),
        "split": split.to_dict(manifest), "patch": cfg.patch, "batch_size": cfg.batch_size,
        "steps_per_epoch": steps, "epochs": cfg.epochs, "loss": Loss(cfg.loss).value,
        "grad_weight": cfg.grad_weight, "gan": cfg.gan,
        "gan_recon_weight": cfg.gan_recon_weight, "gan_adv_weight": cfg.gan_adv_weight,
        "seed": cfg.seed, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "warmup": cfg.warmup,
        "augment": cfg.augment, "world_size": cfg.dist.world_size,
        **({"slope_augment": cfg.slope_augment} if cfg.slope_augment else {}),
    }


_OPTION_NAMES = {"steps_per_epoch": "--steps-per-epoch", "batch_size": "--batch-size",
                 "patch": "--patch", "epochs": "--epochs", "loss": "--loss", "seed": "--seed",
                 "gan": "--gan", "aux": "--aux", "split": "the validation split",
                 "arch": "the architecture (--arch/--conserve)", "lr": "--lr",
                 "world_size": "the number of processes", "datasets": "the datasets"}


def _load_checkpoint(path: Path, fingerprint: dict) -> dict:
    try:
        ck = _safe_load(Path(path), what="training checkpoint")
    except BundleError as e:
        raise BundleError(f"--resume {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise BundleError(f"--resume {path}: not a geosr training checkpoint; expected the "
                          "MODEL.ckpt file written by `geosr train`")
    if ck.get("format_version") != CHECKPOINT_VERSION:
        raise BundleError(f"--resume {path}: checkpoint version {ck.get('format_version')!r}; "
                          f"expected {CHECKPOINT_VERSION}")
    try:
        meta = json.loads(ck["meta"])
        old = meta["fingerprint"]
        for key in ("model", "best", "opt", "sched"):
            ck[key]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"--resume {path}: checkpoint is damaged ({type(e).__name__}: {e}); "
                          "expected the MODEL.ckpt file written by `geosr train`") from e
    for key, new in fingerprint.items():
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new, sort_keys=True):
            name = _OPTION_NAMES.get(key, key)
            shown_old = json.dumps(old.get(key))[:80]
            shown_new = json.dumps(new)[:80]
            raise BundleError(f"--resume {path}: was made with {name} = {shown_old} but this "
                              f"run has {shown_new}; expected the options of the interrupted "
                              "run (only --max-minutes, --device and --overwrite may change)")
    ck["meta"] = meta
    return ck


def _write_checkpoint(path: Path, state: dict, meta: dict) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
               "meta": json.dumps(meta, default=str), **state}
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


LOG_FIELDS = ("epoch", "train_loss", "val_rmse", "val_mae", "val_bias", "val_r", "lr",
              "seconds", "d_loss", "best", "partial")


def _write_logs(csv_path: Path, json_path: Path, history: list[dict], summary: dict) -> None:
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_FIELDS})
    with atomic_path(csv_path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(json_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({**summary, "epochs": history}, indent=2, default=str))
