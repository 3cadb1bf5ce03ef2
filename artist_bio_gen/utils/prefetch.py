"""Iterate a producer's items with the next one made ahead, in a thread of its own.

Why this exists: a resume loads its done ids from the database in chunks, and each chunk
is two steps that can overlap: PostgreSQL reads and packs it (its own process and disk,
while this one only waits on a socket) and this process then adds it to the done set
(Python, holding the GIL). One after the other, the database's time adds to the start of
every resume, most of all when its index is not in memory (a resume long after the run);
with the next chunk asked for while the current one is added, it mostly does not.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

T = TypeVar("T")


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


def prefetched(produce: Callable[[], Iterator[T]], *, name: str) -> Generator[T, None, None]:
    """Yield what ``produce()`` yields, made ahead in a daemon thread named ``name``.

    ``produce`` is called in that thread, so what it opens (a pooled connection) is opened
    and closed there. It runs up to two items ahead: one waiting here and the one it is
    making. An exception it raises is raised here, in place of the item it was making.
    When the caller stops early and closes this generator (``contextlib.closing``: a for
    loop left by an exception does not close it), the producer is told to stop after the
    item in hand, closed, and waited for: nothing it holds outlives the iteration.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def run() -> None:
        items: Iterator[T] | None = None
        try:
            items = produce()  # a plain function (not a generator) may fail right here
            for item in items:
                handoff.put(item)
                if stop.is_set():
                    return
            handoff.put(_END)
        except BaseException as exc:  # handed to the caller, who raises it
            handoff.put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield cast(T, item)  # anything but the two markers is an item
    finally:
        stop.set()
        # At most one more put can follow (the producer checks ``stop`` after each), and
        # emptying the queue makes room for it, so the producer never blocks forever.
        with contextlib.suppress(queue.Empty):
            handoff.get_nowait()
        thread.join()
