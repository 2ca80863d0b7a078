"""`geosr train`: parse options, call :func:`geosr.train`, render progress and result."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from geosr.cli._app import GeosrCommand, app
from geosr.cli._common import emit_json, say, settings, stderr
from geosr.cli.options import parse_arch
from geosr.device import DeviceChoice
from geosr.errors import InputError
from geosr.training.config import DistConfig, Loss, TrainConfig, TrainEvent
from geosr.training.loop import train

EPILOG = """Examples:

  geosr train ds/ -o t2m.geosr                              (all aux, 30 epochs)

  geosr train ds/ -o t2m_dem.geosr --aux dem --val-samples tasmax1km_b022 tasmax1km_b023

  geosr train ds/ -o t2m.geosr --max-minutes 20 --device cuda

  torchrun --nproc-per-node 4 -m geosr train ds/ -o t2m.geosr   (one process per GPU)

  geosr train ds/ -o t2m.geosr --resume t2m.ckpt           (continue an interrupted run)

Beside MODEL it writes MODEL.ckpt (checkpoint, every epoch) and MODEL.log.csv /
MODEL.log.json (per-epoch loss and validation metrics).
"""


def dist_from_env(env: Mapping[str, str]) -> DistConfig:
    """The process group from torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK, ...)."""
    def geti(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except (TypeError, ValueError) as e:
            raise InputError(f"environment variable {name}={env.get(name)!r} is not an integer; "
                             "expected the value torchrun sets") from e

    world = geti("WORLD_SIZE", 1)
    if world <= 1:
        return DistConfig()
    return DistConfig(rank=geti("RANK", 0), world_size=world, local_rank=geti("LOCAL_RANK", 0),
                      master_addr=str(env.get("MASTER_ADDR", "127.0.0.1")),
                      master_port=geti("MASTER_PORT", 29500))


def _fmt(v, spec: str = ".4g", units: str = "") -> str:
    if v is None:
        return "-"
    return f"{format(v, spec)} {units}" if units else format(v, spec)


@contextlib.contextmanager
def _renderer(ctx: typer.Context, *, enabled: bool) -> Iterator:
    """A TrainEvent callback: a rich bar for the epoch's steps plus one line per epoch."""
    quiet = settings(ctx).quiet
    show_bar = enabled and not quiet and sys.stderr.isatty()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=stderr,
                   transient=True) if show_bar else None
    state: dict = {"task": None, "best": None, "units": ""}

    def line(text: str) -> None:
        if not enabled or quiet:
            return
        if bar is not None:
            bar.console.print(text, highlight=False)
        else:
            say(ctx, text)

    def update(ev: TrainEvent) -> None:
        if ev.kind == "start":
            state["units"] = ev.units
            line(ev.message)
            return
        if ev.kind == "step" and bar is not None:
            desc = f"epoch {ev.epoch}/{ev.epochs}"
            info = f"loss {_fmt(ev.loss)}  best val RMSE {_fmt(state['best'])}"
            if state["task"] is None:
                state["task"] = bar.add_task(desc, total=ev.steps, info=info)
            bar.update(state["task"], description=desc, completed=ev.step, total=ev.steps,
                       info=info)
        elif ev.kind == "epoch" and ev.record is not None:
            r = ev.record
            if r.get("best"):
                state["best"] = r.get("val_rmse")
            mark = " *" if r.get("best") else ""
            part = " (partial)" if r.get("partial") else ""
            line(f"epoch {r['epoch']}/{ev.epochs}{part}: loss {_fmt(r.get('train_loss'))}  "
                 f"val RMSE {_fmt(r.get('val_rmse'), units=state['units'])}  "
                 f"MAE {_fmt(r.get('val_mae'))}  "
                 f"r {_fmt(r.get('val_r'), '.3f')}  {r.get('seconds', 0):.1f} s/epoch{mark}")

    if bar is None:
        yield update
        return
    with bar:
        yield update


@app.command(name="train", cls=GeosrCommand, epilog=EPILOG, no_args_is_help=True)
def train_cmd(
    ctx: typer.Context,
    datasets: list[Path] = typer.Argument(
        ..., metavar="PREPARED_DIR...",
        help="Prepared dataset(s) with a target (`geosr prepare`); several (other regions, "
             "periods) train one model together: same factor, resolution, units and aux."),
    out: Path = typer.Option(..., "--out", "-o", metavar="MODEL",
                             help="Model bundle to write (e.g. t2m.geosr)."),
    aux: list[str] = typer.Option(None, "--aux", "-a", metavar="NAME...",
                                  help="Aux layers to use, by name (default: all of the "
                                       "dataset's); several after one flag."),
    no_aux: bool = typer.Option(False, "--no-aux", help="Use no aux layer (the coarse field "
                                "alone; the baseline of an aux ablation)."),
    epochs: int = typer.Option(30, "--epochs", help="Number of epochs."),
    max_minutes: float = typer.Option(None, "--max-minutes",
                                      help="Stop cleanly after this many minutes, keeping the "
                                           "best model so far."),
    batch_size: int = typer.Option(16, "--batch-size", help="Patches per step (per process)."),
    patch: int = typer.Option(None, "--patch", metavar="COARSE_CELLS",
                              help="Patch size in coarse cells (default 6, or less when the "
                                   "training area is smaller)."),
    val_samples: list[str] = typer.Option(None, "--val-samples", metavar="ID...",
                                          help="Sample ids held out for validation."),
    val_fraction: float = typer.Option(None, "--val-fraction", metavar="F",
                                       help="Hold out the latest fraction F of the samples "
                                            "(default 0.2 with several samples)."),
    val_block: float = typer.Option(None, "--val-block", metavar="F",
                                    help="Hold out the eastern fraction F of the area, all "
                                         "samples (default 0.25 with a single sample)."),
    loss: Loss = typer.Option(None, "--loss", help="Reconstruction loss (default: l1+grad for "
                              "a non-negative field such as rain, else l1)."),
    gan: bool = typer.Option(False, "--gan", help="Adversarial training with a patch "
                             "discriminator."),
    gan_weight: float = typer.Option(5.0, "--gan-weight",
                                     help="With --gan: weight of the reconstruction loss "
                                          "beside the adversarial term."),
    conserve: bool = typer.Option(True, "--conserve/--no-conserve",
                                  help="Hard conservation: fine means equal each coarse cell."),
    probabilistic: bool = typer.Option(
        False, "--probabilistic", help="Also predict a per-pixel spread (Gaussian, CRPS loss, "
        "calibrated on the validation data): enables downscale --quantiles and --members."),
    seed: int = typer.Option(0, "--seed", help="Random seed (initialisation and patches)."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto.value, "--device",
                                        case_sensitive=False, help="Compute device."),
    resume: Path = typer.Option(None, "--resume", metavar="CKPT",
                                help="Continue from a checkpoint (MODEL.ckpt)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing model, checkpoint and logs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up then "
                             "cosine decay)."),
    steps_per_epoch: int = typer.Option(None, "--steps-per-epoch",
                                        help="Steps per epoch (default: about one pass over "
                                             "the training cells, at least 8)."),
    augment: bool = typer.Option(None, "--augment/--no-augment",
                                 help="Random flips/rotations of patches (isotropic fields; "
                                      "default: on for a non-negative field such as rain)."),
    scene: bool = typer.Option(None, "--scene/--no-scene",
                               help="Scene-adaptive network: standardise each date (and its "
                                    "aux) with its own mean and spread and start from its own "
                                    "sharpening fit, so "
                                    "the model carries over to other periods and regions "
                                    "(default: on, except for precipitation)."),
    slope_augment: float = typer.Option(
        None, "--slope-augment", metavar="S",
        help="Scene-adaptive network: give each training patch a random extra dependence "
             "on each continuous aux layer (up to S times the date's spread per layer "
             "spread), so the model follows the slopes of scenes unlike its training "
             "dates, e.g. other regions or scales: 2 (default: off; 0: off)."),
    arch: list[str] = typer.Option(None, "--arch", metavar="KEY=VALUE",
                                   help="Architecture override, e.g. fine_width=32 (repeatable)."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch (default: "
                                "torch's choice; 1 is often fastest on a busy machine)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Train the downscaling network on prepared datasets and write a model bundle."""
    if no_aux and aux:
        raise InputError(f"--no-aux cannot be combined with --aux {' '.join(aux)}; expected one")
    cfg = TrainConfig(
        dataset=datasets[0], more_datasets=tuple(datasets[1:]), out=out,
        aux=() if no_aux else (tuple(aux) if aux else None),
        epochs=epochs,
        max_minutes=max_minutes, batch_size=batch_size, patch=patch,
        val_samples=tuple(val_samples or ()), val_fraction=val_fraction, val_block=val_block,
        loss=loss, gan=gan, gan_recon_weight=gan_weight, conserve=conserve,
        probabilistic=probabilistic, seed=seed, device=device.value, resume=resume,
        overwrite=overwrite, lr=lr,
        steps_per_epoch=steps_per_epoch, augment=augment, scene=scene,
        slope_augment=slope_augment, arch=parse_arch(arch or ()),
        threads=threads,
        dist=dist_from_env(os.environ),
    )
    with _renderer(ctx, enabled=not json_out) as progress:
        result = train(cfg, progress=progress)
    if cfg.dist.rank != 0:
        return
    if json_out:
        emit_json(result.to_dict())
        return
    d = result.to_dict()
    units = d["units"]
    val = result.best or {}
    base = result.baseline_rmse
    per = val.get("rmse_by_dataset")
    per = (" (" + ", ".join(f"{k} {_fmt(v, units=units)}" for k, v in per.items()) + ")"
           if per else "")
    say(ctx, f"wrote {out} (best epoch {result.best_epoch}, val RMSE "
             f"{_fmt(val.get('rmse'), units=units)}{per}, bilinear {_fmt(base, units=units)}; "
             f"{d['epochs']} epoch(s), "
             f"{result.seconds:.0f} s, stopped by {result.stopped}); log {result.log_csv}")
