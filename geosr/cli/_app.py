"""The Typer application: global options, one-line errors, greedy multi-value options.

Error policy (see geosr.errors): input/usage problems exit 2, run-time failures exit 1,
Ctrl-C exits 130 and SIGTERM 143; each prints one line on stderr. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass

import typer
from typer.core import TyperCommand, TyperGroup

from geosr import __version__
from geosr.cli import _log
from geosr.errors import GeosrError

try:  # recent typer releases vendor click as typer._click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - typer with an external click
    from click import exceptions as _cx

# Options that take several values after one flag (``--aux a.tif b.tif``); also repeatable.
MULTI_VALUE_OPTIONS = frozenset({"--aux", "-a", "--target", "-t", "--val-samples", "--fail-above"})


def expand_multi_value(args: list[str], names: frozenset[str] = MULTI_VALUE_OPTIONS) -> list[str]:
    """Rewrite ``--aux a b --x`` as ``--aux a --aux b --x`` so click can parse it.

    Values run until the next token starting with ``-`` (a lone ``-`` counts as a value).
    """
    out: list[str] = []
    current: str | None = None
    pending = False
    for i, tok in enumerate(args):
        if tok == "--":
            out.extend(args[i:])
            return out
        if tok in names:
            current, pending = tok, True
            out.append(tok)
            continue
        if current is not None and (not tok.startswith("-") or tok == "-"):
            if not pending:
                out.append(current)
            out.append(tok)
            pending = False
            continue
        current, pending = None, False
        out.append(tok)
    return out


class GeosrCommand(TyperCommand):
    """A command whose multi-value options accept several values after one flag."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value(list(args)))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _found(e: Exception) -> str:
    """``; found 'x'`` for an option value typer refused without quoting it (its pydantic
    messages say what was expected, not what was given); '' otherwise."""
    errors = getattr(e.__cause__, "errors", None)
    if not callable(errors):
        return ""
    try:
        given = [err["input"] for err in errors() if isinstance(err.get("input"), str)]
    except Exception:  # noqa: BLE001 - a hint only
        return ""
    if not given or repr(given[0]) in e.format_message():
        return ""
    return f"; found {given[0]!r}"


GLOBAL_FLAGS = ("--quiet", "-q", "--verbose", "-v", "--debug")


def _hoist_global_flags(args: list[str]) -> list[str]:
    """Let global flags appear after the command too (``geosr downscale ... --quiet``)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


class _Interrupted(Exception):
    """Ctrl-C carried past typer, which would turn it into a silent exit 130."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM, ``timeout``, ``docker stop``) raised in the main thread, so that it
    unwinds exactly like Ctrl-C: temporary outputs are removed on the way out."""


class _TerminatedExit(Exception):
    """SIGTERM carried past click, which turns any KeyboardInterrupt into Abort."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _stopped_line(where: str, cmd: str, how: str) -> str:
    if cmd == "train":
        return (f"{where}: {how}; no model was written; the checkpoint of the last complete "
                "epoch, if any, is kept beside it for --resume")
    return f"{where}: {how}; no partial output was kept"


class GeosrGroup(TyperGroup):
    """Runs a command and turns every failure into one line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _Terminated as e:
            raise _TerminatedExit() from e
        except KeyboardInterrupt as e:
            raise _Interrupted() from e

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = _hoist_global_flags(list(sys.argv[1:] if args is None else args))
        debug = "--debug" in args or bool(os.environ.get("GEOSR_DEBUG"))
        cmd = next((a for a in args if not a.startswith("-")), "")
        where = f"geosr {cmd}".strip() if cmd in self.commands else "geosr"
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with _log.capture_warnings():
                rv = super().main(args=args, prog_name=prog_name or "geosr",
                                  complete_var=complete_var, standalone_mode=False, **extra)
        except typer.Exit as e:
            code = e.exit_code
        except _cx.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # help was shown; not an error
                code = 0
                if standalone_mode:
                    sys.exit(code)
                return code
            hint = f" (see '{where} --help')" if isinstance(e, _cx.UsageError) else ""
            print(f"{where}: error: {_one_line(e.format_message() + _found(e))}{hint}",
                  file=sys.stderr)
            code = e.exit_code
        except (_Terminated, _TerminatedExit):
            print(_stopped_line(where, cmd, "terminated (SIGTERM)"), file=sys.stderr)
            code = 143
        except (KeyboardInterrupt, _Interrupted, typer.Abort):
            print(_stopped_line(where, cmd, "interrupted"), file=sys.stderr)
            code = 130
        except GeosrError as e:
            if debug:
                traceback.print_exc()
            print(f"{where}: error: {_one_line(str(e))}", file=sys.stderr)
            code = e.exit_code
        except Exception as e:  # noqa: BLE001 - last line of defence for users
            if debug:
                traceback.print_exc()
            print(f"{where}: error: unexpected failure: {type(e).__name__}: {_one_line(str(e))} "
                  "(run with --debug for a traceback)", file=sys.stderr)
            code = 1
        else:
            code = rv if isinstance(rv, int) else 0
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if standalone_mode:
            sys.exit(code)
        return code


@dataclass
class Settings:
    """Global options, available to commands as ``ctx.obj``."""

    quiet: bool = False
    verbose: bool = False
    debug: bool = False


app = typer.Typer(
    cls=GeosrGroup,
    name="geosr",
    help="Downscale coarse geospatial rasters onto a fine grid with a deep network "
         "guided by fine auxiliary rasters (elevation, NDVI, land cover...).\n\n"
         "Data path: prepare -> train -> downscale -> validate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def configure_logging(settings: Settings) -> None:
    if settings.debug:
        level = logging.DEBUG
    elif settings.verbose:
        level = logging.INFO
    elif settings.quiet:
        level = logging.ERROR
    else:
        level = logging.WARNING
    _log.install(level)


def _version(value: bool) -> None:
    if value:
        print(f"geosr {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on what is done."),
    debug: bool = typer.Option(False, "--debug", help="Debug logging and tracebacks on errors."),
) -> None:
    """geosr: deep-learning downscaling of coarse rasters."""
    settings = Settings(quiet=quiet, verbose=verbose, debug=debug)
    ctx.obj = settings
    configure_logging(settings)
