"""Messages on stderr: one line per problem, printed once, through the progress bars'
console.

Log records (geosr's, rasterio's) and Python warnings (rasterio's
``NotGeoreferencedWarning``, numpy's ...) all end up as ``geosr: warning: ...`` lines.
They are printed through the rich :data:`console` that the progress bars draw on, so a
message that arrives mid-run is printed above the bar instead of through it, and a
message repeated word for word (the same warning for each of 31 bands) is printed once.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from rich.console import Console

console = Console(stderr=True)
"""stderr, shared by the log handler and the progress bars."""

LOGGERS = ("geosr", "rasterio")
"""Loggers whose records the CLI prints; rasterio's carry GDAL's warnings."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ConsoleHandler(logging.Handler):
    """Prints ``geosr: LEVEL: message`` through :data:`console`, each distinct line once.

    A handler, not a filter on the loggers, so that the same message logged by geosr and
    by rasterio is still printed once.
    """

    def __init__(self, level: int = logging.NOTSET, *, out: Console | None = None) -> None:
        super().__init__(level)
        self.out = out
        self.repeats: dict[str, int] = {}

    def format(self, record: logging.LogRecord) -> str:
        return f"geosr: {record.levelname.lower()}: {_one_line(record.getMessage())}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            seen = self.repeats.get(line, 0)
            self.repeats[line] = seen + 1
            if seen:
                return
            (self.out or console).print(line, markup=False, highlight=False, emoji=False,
                                        soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_warnings_log = logging.getLogger("geosr.warnings")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: the message as one log line, without the
    file, line number and source line Python prints (shown with ``--debug``)."""
    where = f" ({category.__name__} at {filename}:{lineno})"
    _warnings_log.warning("%s%s", _one_line(str(message)),
                          where if _warnings_log.isEnabledFor(logging.DEBUG) else "")


def install(level: int) -> ConsoleHandler:
    """One :class:`ConsoleHandler` on :data:`LOGGERS` at ``level``, replacing earlier ones.

    rasterio's logger keeps its own level (warnings only, by default), so ``--debug``
    does not bring its debug chatter.
    """
    handler = ConsoleHandler(level)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if name == "geosr" or isinstance(h, ConsoleHandler):
                logger.removeHandler(h)
        logger.addHandler(handler)
    geosr_log = logging.getLogger("geosr")
    geosr_log.propagate = False
    geosr_log.setLevel(level)
    return handler


@contextlib.contextmanager
def capture_warnings() -> Iterator[None]:
    """Python warnings are logged by :func:`show_warning` inside; the previous
    ``warnings.showwarning`` and filters come back on exit."""
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        yield
