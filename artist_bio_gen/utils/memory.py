"""Giving freed heap memory back to the operating system during a long run.

Why this exists: every artist allocates and frees response bodies, JSON lines and database
buffers in C ``malloc`` (anything over 512 bytes bypasses Python's own allocator), from 64
or more worker threads and so from many glibc arenas. glibc returns a free region to the
kernel only when it sits at the top of an arena and exceeds its trim threshold; free holes
below a live chunk stay resident. Over tens of thousands of artists these holes add up to
megabytes of resident memory that no object uses, so peak RSS creeps up with the number of
artists although the live data stays flat. ``malloc_trim(0)`` walks every arena and
releases the whole free pages inside them (``madvise``), which stops that creep.

A second source of creep is the HTTP stack's receive buffer: every response is read with
``recv(65536)``, which allocates 64 KiB in the reading thread's arena and shrinks it to the
few KiB that came. How many of those buffers are alive at once in one arena is random, and
its high-water mark (the arena's size) keeps rising, slowly, for the whole run.
``keep_large_buffers_off_heap`` fixes glibc's mmap threshold at 64 KiB: a request that
large which finds no free room in its arena is served with ``mmap`` instead of growing the
arena, and goes back to the kernel when freed, leaving no hole behind.
(Measured over 50,000 artists with 64 workers: the growth of peak RSS after the first 2,000
went from 3.6-4.1 MB to 3.0-3.1 MB, for no measurable CPU.)

A third is glibc's per-thread cache (tcache): each thread keeps up to seven freed chunks of
every small size for itself, for its next allocation of that size. With 64 or more worker
threads allocating chunks of many sizes (names, answers and lines of every length), those
caches fill slowly, size by size, over the whole run, with chunks no other thread can use,
and the arenas grow to make up for them. The tunable ``glibc.malloc.tcache_count=0`` turns
the caches off; glibc reads tunables from the environment only when a process starts, so
the ``artist-bio-gen`` command re-executes itself once with it (``entry.py``). (Measured over
50,000 artists with 64 workers, against 2,000: peak RSS growth +3.0% to +3.2% in four runs
with the caches off, +4.2% to +4.5% with them on, and 1 to 2 MB less RSS throughout; no CPU
cost measurable at 700 artists a second.)

Only glibc has ``malloc_trim``, ``mallopt`` and tunables; elsewhere these do nothing.

Python's own cycle collector is tuned here too (``collect_young_objects_less_often``): not
memory given back, but the CPU that looking for garbage costs when many threads each hold
the live objects of a request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


#: ``mallopt`` parameter number of the mmap threshold (glibc's ``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3
#: Requests at least this large that find no room in their arena get an ``mmap`` of their
#: own: the HTTP stack's 64 KiB receive buffer is just above it (the bytes object adds its
#: header), a JSONL line is far below.
LARGE_BUFFER = 64 * 1024


def _load_libc() -> ctypes.CDLL | None:
    """The C library this process uses, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _libc_function(
    libc: ctypes.CDLL | None, name: str, *argtypes: type
) -> Callable[..., int] | None:
    """A function of glibc, or None where this process does not use glibc."""
    function = getattr(libc, name, None)  # musl, macOS, Windows: no such function
    if function is None:
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_LIBC = _load_libc()  # looked up once: find_library runs ldconfig
_MALLOC_TRIM = _libc_function(_LIBC, "malloc_trim", ctypes.c_size_t)
_MALLOPT = _libc_function(_LIBC, "mallopt", ctypes.c_int, ctypes.c_int)


def keep_large_buffers_off_heap() -> bool:
    """Fix glibc's mmap threshold at ``LARGE_BUFFER`` for the rest of the process: such an
    allocation that finds no room in its arena is mmapped rather than growing the arena.
    True if the platform can.

    Called when a run's worker threads start. Fixing the threshold also turns off glibc's
    own adjustment of it, which would otherwise raise it past 64 KiB after the first such
    buffer is freed.
    """
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, LARGE_BUFFER))


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


#: New container objects (net of those freed) after which CPython collects its youngest
#: generation; its default is 700.
YOUNG_COLLECTION_THRESHOLD = 10_000


def collect_young_objects_less_often() -> None:
    """Raise the youngest generation's collection threshold to ``YOUNG_COLLECTION_THRESHOLD``
    (never lower it) for the rest of the process.

    Why: each worker thread holds the live objects of its request (headers, frames,
    generators, the SDK's state), 4,000 to 9,000 young objects at any moment with 64
    workers, and every collection of the youngest generation walks them all, to free
    nothing of them. At the default threshold that is about 40 collections a second at 700
    answers a second (measured, 8,000 artists at L=0, 64 workers, the whole run: 290-410
    young collections costing 0.12-0.2 s of CPU, and with the older collections they
    trigger 0.26-0.31 s, against 0.02 s in a loop of bare SDK calls); at 10,000 it was
    0.02-0.04 s in all. Called when a pool of worker threads starts. The cost: garbage held in
    reference cycles waits longer to be freed, bounded by the threshold whatever the
    run's size.
    """
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_COLLECTION_THRESHOLD:  # 0: collection is off; leave it so
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
