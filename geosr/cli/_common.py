"""Helpers shared by the command modules: settings, progress bars, JSON output."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from geosr.cli._app import Settings
from geosr.cli._log import console as stderr

stdout = Console()


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings()


class PixelsColumn(ProgressColumn):
    """Output pixels done and in all, in Mpx (for stages that count output pixels)."""

    def render(self, task: Task) -> Text:
        total = f"{task.total / 1e6:.1f}" if task.total is not None else "?"
        return Text(f"{task.completed / 1e6:.1f}/{total} Mpx", style="progress.download")


class PixelRateColumn(ProgressColumn):
    """Output pixels per second, in Mpx/s (rich's speed estimate: the recent rate)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = f"{speed / 1e6:.2f}" if speed is not None else "--"
        return Text(f"{shown} Mpx/s", style="progress.data.speed")


def make_progress(*, pixels: bool = False, console: Console | None = None,
                  **kw) -> Progress:
    """The rich progress bar of the CLI, on the stderr console that log lines also use
    (so a warning mid-run prints above the bar). ``pixels``: stages count output pixels
    (``downscale``): Mpx done and Mpx/s instead of steps."""
    counts = (PixelsColumn(), PixelRateColumn()) if pixels else (MofNCompleteColumn(),)
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts,
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console or stderr,
                    transient=True, **kw)


@contextlib.contextmanager
def progress_bar(
    ctx: typer.Context, *, enabled: bool = True, pixels: bool = False
) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing a rich bar on a terminal.

    Silent with ``--quiet``, ``--json`` (``enabled=False``) or when stderr is not a terminal.
    ``pixels``: ``done``/``total`` are output pixels (see :func:`make_progress`).
    """
    s = settings(ctx)
    if s.quiet or not enabled or not sys.stderr.isatty():
        yield lambda stage, done, total: None
        return
    bar = make_progress(pixels=pixels)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


def emit_json(obj: dict) -> None:
    """Print a machine-readable summary on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def say(ctx: typer.Context, text: str) -> None:
    """A human line on stdout, unless ``--quiet``."""
    if not settings(ctx).quiet:
        stdout.print(text, highlight=False)
