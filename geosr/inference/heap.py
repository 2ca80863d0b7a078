"""The C heap during network inference on a CPU: freed blocks kept for the next layer.

Why: every layer of the network returns a new array of several MB. glibc serves a
block that large with fresh pages from the system (``mmap``) and gives it back when it
is freed, so each layer pays a page fault per 4 KiB and the kernel's zeroing of the
pages. Measured on a 2-core CPU with the shipped ``alps-t2m`` model: a third of the
network's time per tile. :func:`retained_heap` raises glibc's thresholds so that blocks
up to 32 MB (its largest threshold) come from the heap and stay there once freed; the
next tile reuses them, and peak memory does not grow (the same blocks are in use).

Tiles run on worker threads, and glibc gives each thread its own arena, whose heaps
(64 MB at most) hand blocks of a few tens of MB back to the system all the same
(measured: 100 MB of page faults per tile). So new threads share the main arena: one
lock per allocation, negligible for a network's few large blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Iterator

log = logging.getLogger(__name__)

# mallopt parameters and values (glibc's malloc.h and mallopt(3))
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
DEFAULT_THRESHOLD = 128 * 1024
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def _mallopt() -> ctypes._CFuncPtr | None:
    """glibc's ``mallopt``, or None under another C library or system."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt
        return None


@contextlib.contextmanager
def retained_heap(enabled: bool = True) -> Iterator[None]:
    """Keep freed blocks of up to 32 MB in the process while the body runs, and let
    threads started from now on share the main arena (glibc only; elsewhere, or with
    ``enabled`` False, nothing changes).

    Afterwards glibc's default thresholds (128 KiB) are set again, so freed memory goes
    back to the system as before (glibc's own adjustment of the mmap threshold to the
    sizes in use, on until a threshold is set, then stays off). The arena limit stays
    for the rest of the process: glibc fixes it on first use.
    """
    mallopt = _mallopt() if enabled else None
    if mallopt is None:
        yield
        return
    ok = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
          and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(M_ARENA_MAX, 1))
    log.debug("glibc heap: freed blocks retained (%s)", "on" if ok else "mallopt refused")
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
