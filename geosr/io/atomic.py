"""Atomic outputs: work under a temporary name beside the final one, move into place
only when complete, so an interrupted run never leaves a half-written output under
the final name."""


from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from geosr.errors import (
    GeosrError,
    InputError,
    OutputExistsError,
    ProcessingError,
)

log = logging.getLogger(__name__)

TMP_TAG = ".geosr-tmp"
"""Marker in the names of temporary outputs; such files are never final results."""


def _check_parent(final: Path) -> None:
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{final}: output folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputError(f"{final}: {parent} is not a folder; expected an output folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{final}: output folder {parent} is not writable; choose another")


def _raise_naming_final(e: ProcessingError, tmp: Path, final: Path) -> None:
    """Re-raise ``e`` naming the user's output, not the temporary one (or its siblings,
    any name starting with ``tmp``) that is gone now."""
    names_tmp = re.compile(re.escape(str(tmp)) + r"[^\s:;,()]*")
    if not names_tmp.search(str(e)):
        raise e
    raise ProcessingError(f"{names_tmp.sub(str(final), str(e))}; nothing was left under "
                          "that name") from e


def check_output_file(final: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any work) when ``final`` cannot or must not be written."""
    final = Path(final)
    _check_parent(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final}: already exists; pass --overwrite to replace it")
    if final.is_dir():
        raise InputError(f"{final}: is a folder; expected a file name for the output")
    return final


def _same(a: Path, b: Path) -> bool:
    """Same file, through any path or link (by inode when both exist)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(final: str | os.PathLike, inputs: list[tuple[str, str]], *, option: str,
                    inside: bool = False) -> None:
    """Refuse an output that is one of the run's inputs (exit 2, whatever ``--overwrite``).

    Args:
        final: the output file or folder.
        inputs: ``(what, path)`` of each of the run's inputs (GDAL names such as
            ``NETCDF:"f.nc":v`` count as their file).
        option: how messages name the output (``-o``, ``--json``...).
        inside: ``final`` is a folder that replaces what it holds: an input inside it
            counts too.
    """
    from geosr.io.read import container_file

    out = Path(final)
    for what, path in inputs:
        src = Path(container_file(path))
        hit = _same(out, src) or (inside and out.exists() and out.is_dir()
                                  and os.path.realpath(src).startswith(
                                      os.path.realpath(out) + os.sep))
        if hit:
            raise InputError(f"{option} {final}: is {'or holds ' if inside else ''}the input "
                             f"{what} {path}; expected an output that is none of the run's "
                             "inputs (writing it would destroy the input)")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only on success.

    The temporary name starts with a dot and contains ``.geosr-tmp`` so that listings
    and globs for ``*.tif`` do not pick it up; it is removed on any failure, including
    KeyboardInterrupt.
    """
    final = check_output_file(final, overwrite=overwrite)
    tmp = final.with_name(f".{final.stem}{TMP_TAG}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        if final.exists() and not overwrite:
            raise OutputExistsError(
                f"{final}: appeared while working; pass --overwrite to replace it"
            )
        os.replace(tmp, final)
    except ProcessingError as e:
        _raise_naming_final(e, tmp.with_suffix(""), final)
    except OSError as e:
        if isinstance(e, GeosrError):
            raise
        raise ProcessingError(f"{final}: writing failed ({e.strerror or e}); nothing was left "
                              "under that name") from e
    finally:
        for p in (tmp, Path(str(tmp) + ".aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def check_output_dir(final: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any work) when folder ``final`` cannot or must not be written."""
    final = Path(final)
    _check_parent(final)
    if final.exists():
        if not final.is_dir():
            raise InputError(f"{final}: exists and is not a folder; expected a folder name")
        if any(final.iterdir()) and not overwrite:
            raise OutputExistsError(f"{final}: folder exists and is not empty; pass --overwrite "
                                    "to replace it")
    return final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; move it into place only on success.

    An existing empty ``final`` is replaced; a non-empty one only with ``overwrite``.
    """
    final = check_output_dir(final, overwrite=overwrite)
    # os.mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700, and the dataset
    # would keep that mode; mkdir follows the umask like any folder the user makes.
    tmp = final.with_name(f".{final.name}{TMP_TAG}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise ProcessingError(f"{final}: cannot create a folder beside it ({e.strerror or e}); "
                              "nothing was written") from e
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except ProcessingError as e:
        _raise_naming_final(e, tmp, final)
    except OSError as e:
        if isinstance(e, GeosrError):
            raise
        raise ProcessingError(f"{final}: writing failed ({e.strerror or e}); nothing was left "
                              "under that name") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
