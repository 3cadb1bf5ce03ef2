"""Giving freed heap memory back to the operating system during a long run.

Why this exists: every artist allocates and frees response bodies, JSON lines and database
buffers in C ``malloc`` (anything over 512 bytes bypasses Python's own allocator), from 64
or more worker threads and so from many glibc arenas. glibc returns a free region to the
kernel only when it sits at the top of an arena and exceeds its trim threshold; free holes
below a live chunk stay resident. Over tens of thousands of artists these holes add up to
megabytes of resident memory that no object uses, so peak RSS creeps up with the number of
artists although the live data stays flat. ``malloc_trim(0)`` walks every arena and
releases the whole free pages inside them (``madvise``), which stops that creep.

Only glibc has ``malloc_trim``; elsewhere ``release_free_memory`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """``malloc_trim`` of the C library this process uses, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel; True if the platform can (glibc).

    Costs about a millisecond per few tens of MB of heap: call it every few thousand
    artists, not per artist.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class PeriodicRelease:
    """Calls ``release_free_memory`` once every ``every`` calls of ``tick``."""

    def __init__(self, every: int, release: Callable[[], object] | None = None):
        """``release`` defaults to this module's ``release_free_memory`` (looked up at each
        call, so a test can stand in for it)."""
        self._every = max(1, every)
        self._release = release
        self._count = 0

    def tick(self) -> None:
        """Count one event (a settled artist); release at every ``every``-th."""
        self._count += 1
        if self._count % self._every == 0:
            (self._release or release_free_memory)()
