"""Committing bios in groups: one transaction and one JSONL write for the bios that
workers finish at the same moment.

A worker hands its answer to the process's committer and waits for its own result. The
commit thread takes every bio queued so far (up to ``MAX_GROUP``) and commits them in one
database transaction (one round trip, one WAL flush); the append thread takes every group
committed meanwhile, renders the lines from what was committed, appends them with one write
and one fsync, then wakes each worker with its result. The two stages overlap: the next
group commits while the last one's lines are written. Under load (hundreds of workers, the
interpreter's lock busy) this replaces a round trip, a write and an fsync per artist, each a
wait for the lock among all the threads, by one of each per group; when the run is quiet a
group is one bio and costs what it did.

Groups form from the bios already waiting, and under heavy load the commit thread also
gathers: once this process settles more than ``GATHER_ABOVE_RATE`` bios a second, it sleeps
``GATHER_SECONDS`` after taking a group's first bio and then takes every bio that came
meanwhile. At such rates several bios arrive within the wait, so it turns groups of one or
two into groups of several, and the CPU each group costs (a statement, a write, an fsync, a
wake-up per thread) is shared by all of them; a worker's answer waits at most that long
more. One sleep, not a wait that wakes at each arrival: each wake-up of the thread costs
CPU and a turn at the interpreter's lock among the workers (measured with 64 workers at
550-600 answers a second: the commit thread's CPU 0.67-0.72 s per 8,000 bios against
0.77-0.87 s). Below the rate a bio is committed as soon as the thread is free, so a run
whose API answers take seconds (every real one, unless its workers number thousands) never
waits for a group to fill.

What does not change: each artist's line is appended only after its own commit (the whole
group's commit), and a crash loses no committed bio (the next start appends the lines the
file lacks from the database). A crash wastes at most the answers waiting here, and each
belongs to a worker thread that waits for it, so no more than before.

When the group's transaction fails because the server refused a bio (nothing of it was
committed), each bio is committed alone, so one bad bio costs only itself. While the
database is unreachable the group is retried as a whole (see ``BioStore.commit_group``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from ..errors import DatabaseUnavailableError, OutputWriteError
from ..models import CommittedBio, GeneratedBio
from .jsonl import JsonlWriter
from .ledger import Ledger

logger = logging.getLogger(__name__)

#: The most bios in one transaction and one write: bounds one transaction's size when a
#: fast run (batch answers) queues thousands.
MAX_GROUP = 64

#: Bios a second (settled by this process, over about the last ``_RATE_WINDOW`` seconds)
#: above which the commit thread gathers a group for ``GATHER_SECONDS``. Under load a
#: group costs about 0.3 ms of CPU whatever its size, so from a few hundred bios a second
#: on the groups' count is worth cutting; below, a wait would buy nothing. Measured with 64
#: workers whose answers come at once (550-700 a second, 8,000 artists): groups of 1.3 bios
#: on average without gathering, 3.6 with 3 ms of it, 7.2 with 8 ms, and the commit and
#: append threads' CPU per bio 0.30, 0.16 and 0.10 ms. The rate is low enough that a slow
#: machine, where the CPU is scarcest, still gathers, and above what 256 workers whose
#: answers take a second (256 a second) ask for.
GATHER_ABOVE_RATE = 300.0
#: How long the commit thread sleeps after taking a group's first bio while the rate is
#: above (unless the group is full already), before taking the bios that came meanwhile.
GATHER_SECONDS = 0.008
_RATE_WINDOW = 0.5


@dataclass(frozen=True)
class Settled:
    """What became of one bio handed to the committer."""

    #: The bio as committed (None when it was not).
    committed: CommittedBio | None = None
    #: Why it was not committed: ``DatabaseUnavailableError``, a ``psycopg.Error`` for this
    #: bio alone, or an unforeseen error.
    error: Exception | None = None
    #: Committed, but its line could not be appended (the next start restores it).
    append_error: OutputWriteError | None = None


#: A bio, whether it may only be appended as its own (new) commit, and where to reply.
_Request = tuple[GeneratedBio, bool, "queue.SimpleQueue[Settled]"]
#: A committed group on its way to the appender: its requests and what became of each.
_Committed = tuple[list[_Request], list[Settled]]


class Committer:
    """One process's commit thread and append thread (see the module's docstring)."""

    def __init__(
        self, ledger: Ledger, writer: JsonlWriter, render: Callable[[CommittedBio], bytes]
    ) -> None:
        """``render`` turns a committed bio into its encoded JSONL line."""
        self._ledger = ledger
        self._writer = writer
        self._render = render
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._committed: queue.SimpleQueue[_Committed | None] = queue.SimpleQueue()
        self._replies = threading.local()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._commit_loop, name="bio-commit", daemon=True),
            threading.Thread(target=self._append_loop, name="bio-append", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def settle(self, bio: GeneratedBio, *, only_new: bool = False) -> Settled:
        """Commit ``bio`` and append its line; returns once both are done (or failed).

        ``only_new``: when an earlier commit of the artist stands instead (a batch answer
        seen twice), its line is written already and none is appended.
        """
        reply: queue.SimpleQueue[Settled] | None = getattr(self._replies, "queue", None)
        if reply is None:
            reply = self._replies.queue = queue.SimpleQueue()
        request = (bio, only_new, reply)
        if self._closed:  # a worker that outlived the run's end: do it here
            self._settle_here([request])
        else:
            self._inbox.put(request)
        return reply.get()

    def close(self) -> None:
        """Settle what is queued, then stop the threads (workers must be done)."""
        if self._closed:
            return
        self._closed = True  # from now on a late caller settles its bio itself
        self._inbox.put(None)
        for thread in self._threads:
            thread.join()
        # Put by a caller that looked just before the flag was set.
        late = _drain(self._inbox, limit=None)
        self._settle_here([request for request in late if request is not None])

    def _settle_here(self, requests: list[_Request]) -> None:
        if requests:
            self._append_and_reply([(requests, self._commit_group(requests))])

    def _commit_loop(self) -> None:
        rate = ArrivalRate(_RATE_WINDOW)
        while True:
            first = self._inbox.get()
            if first is None:
                break
            taken = time.monotonic()
            group = [first, *_drain(self._inbox, limit=MAX_GROUP - 1)]
            if (
                len(group) < MAX_GROUP
                and group[-1] is not None
                and rate.per_second(taken) > GATHER_ABOVE_RATE
            ):
                time.sleep(GATHER_SECONDS)
                group += _drain(self._inbox, limit=MAX_GROUP - len(group))
            stop = group[-1] is None
            requests = [request for request in group if request is not None]
            rate.add(taken, len(requests))
            self._committed.put((requests, self._commit_group(requests)))
            if stop:
                break
        self._committed.put(None)

    def _append_loop(self) -> None:
        while True:
            first = self._committed.get()
            if first is None:
                return
            # Groups committed while the last write was going on share the next one.
            groups = [first, *_drain(self._committed, limit=None)]
            stop = groups[-1] is None
            self._append_and_reply([group for group in groups if group is not None])
            if stop:
                return

    def _commit_group(self, requests: list[_Request]) -> list[Settled]:
        bios = [bio for bio, _, _ in requests]
        try:
            return self._commit(bios)
        except Exception as exc:  # a bug must fail these artists, not hang their workers
            logger.debug("committing a group failed", exc_info=True)
            return [Settled(error=exc) for _ in bios]

    def _commit(self, bios: Sequence[GeneratedBio]) -> list[Settled]:
        if len(bios) == 1:
            return [self._commit_alone(bios[0])]
        try:
            return [Settled(committed) for committed in self._ledger.commit_group(bios)]
        except DatabaseUnavailableError as exc:
            return [Settled(error=exc) for _ in bios]
        except psycopg.Error:
            # The server refused one of them; nothing was committed. One at a time, so the
            # refusal costs only the bio it concerns.
            return [self._commit_alone(bio) for bio in bios]

    def _commit_alone(self, bio: GeneratedBio) -> Settled:
        try:
            return Settled(self._ledger.commit(bio))
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            return Settled(error=exc)

    def _append_and_reply(self, groups: list[_Committed]) -> None:
        requests = [request for group, _ in groups for request in group]
        results = [result for _, settled in groups for result in settled]
        try:
            results = self._append(requests, results)
        except Exception as exc:  # a bug must fail these artists, not hang their workers
            logger.debug("appending a group failed", exc_info=True)
            results = [Settled(r.committed, error=exc) for r in results]
        for (_, _, reply), result in zip(requests, results, strict=True):
            reply.put(result)

    def _append(self, requests: list[_Request], results: list[Settled]) -> list[Settled]:
        # Not appended: a bio not committed, and an earlier commit that stands for an
        # ``only_new`` bio (its line is in the file already).
        written = [
            r.committed is not None
            and not (only_new and r.committed.response_id != bio.response_id)
            for (bio, only_new, _), r in zip(requests, results, strict=True)
        ]
        lines = [
            self._render(r.committed)
            for r, write in zip(results, written, strict=True)
            if write and r.committed is not None
        ]
        try:
            self._writer.append_lines(lines)
        except OutputWriteError as exc:
            return [
                Settled(r.committed, append_error=exc) if write else r
                for r, write in zip(results, written, strict=True)
            ]
        return results


class ArrivalRate:
    """Events per second, exponentially weighted over about ``window`` seconds: each event
    counts ``1 / window`` when it happens and fades by ``e`` every ``window`` seconds, so a
    steady rate reads as itself and a stop fades out within a few windows."""

    def __init__(self, window: float) -> None:
        """An estimator that has seen nothing yet (reads 0)."""
        self._window = window
        self._rate = 0.0
        self._at = 0.0

    def add(self, now: float, count: int) -> None:
        """Record ``count`` events at monotonic time ``now`` (not before the last call's)."""
        self._rate = self.per_second(now) + count / self._window
        self._at = now

    def per_second(self, now: float) -> float:
        """The rate as of ``now``."""
        return self._rate * math.exp(-(now - self._at) / self._window)


Q = TypeVar("Q")


def _drain(source: queue.SimpleQueue[Q], limit: int | None) -> list[Q]:
    """What ``source`` holds now: up to ``limit`` items, and never past a None (the stop
    mark, kept as the last item)."""
    items: list[Q] = []
    while limit is None or len(items) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        items.append(item)
        if item is None:
            break
    return items
