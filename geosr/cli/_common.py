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
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from geosr.cli._app import Settings

stderr = Console(stderr=True)
stdout = Console()


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings()


@contextlib.contextmanager
def progress_bar(
    ctx: typer.Context, *, enabled: bool = True
) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing a rich bar on a terminal.

    Silent with ``--quiet``, ``--json`` (``enabled=False``) or when stderr is not a terminal.
    """
    s = settings(ctx)
    if s.quiet or not enabled or not sys.stderr.isatty():
        yield lambda stage, done, total: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True)
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
