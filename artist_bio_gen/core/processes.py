"""Several worker processes for one run (``--processes``), seen from the run's process.

Why: one Python process runs one thread at a time (the GIL). With hundreds of workers the
tool's own work per artist (the SDK's parsing, the commit, the line) needs more than one
core, and every artist then waits for the GIL beyond the API's answer. Each worker process
has its own GIL, threads, database pool, API clients and pacer.

Shape: the process the user started (the parent) does everything a run of one process
does (run lock, job decision, checks, the JSONL's repair, the done ids, reading the input,
``--limit``, the given-up filter, the canary, progress, the summary, the final
reconciliation) and hands each artist to a worker process instead of a thread of its own.
The window of the run is unchanged (``process_artists_concurrent`` with this module's
``ProcessPool`` as its executor): at most twice the workers are out at once, the first
artist goes alone, a streak of identical failures stops the run.

Each worker process (``core/child.py``) commits its bios to the one ledger of the job and
appends each line to the one JSONL after its own commit, taking the file's append lock per
write (a torn line left by a killed process is cut by the next writer, and restored from
the ledger by the reconciliation). The parent sends artists in batches over a socket and
gets back outcomes, log records, the requests' counts and systemic errors in batches.

Stopping: a stop of the run (a signal, a systemic error, a budget) is sent to every worker
process, which lets its in-flight artists finish as a single run does. A worker process
that finds its socket closed (the parent died) stops the same way. Worker processes hold
the run lock's descriptor (inherited), so no other run of the job starts until the last of
them is gone. A second signal ends them at once (their JSONL writer frozen first). A worker
process that dies unexpectedly stops the run (exit 5): its in-flight artists are counted as
not started, and what it committed is in the ledger, where the reconciliation and the next
``--resume`` find it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..config import Config
from ..errors import ArtistBioGenError, RunAbortedError
from ..models import ArtistData, Outcome
from .jsonl import JsonlWriter
from .lock import RunLock
from .processor import RunControl
from .throttle import RequestCounts

logger = logging.getLogger(__name__)

#: ``--processes auto``: one worker process per this many workers (W=1024 -> 4 processes).
AUTO_WORKERS_PER_PROCESS = 256
#: ``--processes auto``: several processes only on a machine with at least this many CPUs,
#: and at most one per two CPUs. The run shares the machine with its database (and, in the
#: bench, with the stand-in API): on 2 CPUs two worker processes measured no faster than
#: one (W=256, L=1 s: 214-230 vs 209-228 artists/s; W=1024, L=4 s: 220 vs 211) for twice
#: the memory (each process holds the SDK and its libraries: about 65 MB before any work).
AUTO_MIN_CPUS = 4
#: ``--processes auto``: fewer artists to do than this run in one process (starting the
#: worker processes costs about a second, and a small run does not need them).
AUTO_MIN_ARTISTS = 2000
#: How often the parent's sender looks at the stop flag while it has nothing to send.
STOP_POLL = 0.1
#: Seconds a worker process gets to close (pools, files) once told the run is over.
CLOSE_TIMEOUT = 60.0


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_processes(config: Config, to_do: int | None, cpus: int | None = None) -> int:
    """How many worker processes the run uses (1: none, the run's own threads work).

    Several processes need an online job with a database (the ledger is the shared record;
    ``config.py`` refuses an explicit ``--processes`` above 1 otherwise). ``auto`` (None)
    keeps small runs and machines with fewer than ``AUTO_MIN_CPUS`` CPUs in one process, and
    otherwise gives each process about ``AUTO_WORKERS_PER_PROCESS`` workers, at most one
    process per two CPUs.
    """
    if config.mode != "online" or config.db is None:
        return 1
    if config.processes is not None:
        return max(1, min(config.processes, config.max_workers))
    if to_do is not None and to_do < AUTO_MIN_ARTISTS:
        return 1
    cpus = cpus or available_cpus()
    if cpus < AUTO_MIN_CPUS:
        return 1
    wanted = math.ceil(config.max_workers / AUTO_WORKERS_PER_PROCESS)
    return max(1, min(wanted, cpus // 2))


def split_workers(workers: int, count: int) -> list[int]:
    """``workers`` threads shared out over ``count`` processes as evenly as possible."""
    return [workers // count + (index < workers % count) for index in range(count)]


@dataclass(frozen=True)
class ChildSpec:
    """What a worker process is told when it starts (sent pickled over its socket)."""

    config: Config
    job_id: str
    index: int
    count: int
    workers: int
    #: Failed attempts recorded per artist before this run (for the attempt numbers).
    previous_attempts: Mapping[str, int]
    #: Send each committed bio's text back (``--print-bios``); otherwise it is dropped.
    keep_text: bool = False


@dataclass(frozen=True)
class ChildEnd:
    """A worker process's last word: what its JSONL writer appended, its requests."""

    appended_lines: int
    appended_bytes: int
    requests: RequestCounts


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    conn: Connection
    #: Sent (or about to be sent) and not answered: seq -> (future, artist).
    pending: dict[int, tuple[Future[Outcome], ArtistData]] = field(default_factory=dict)
    #: Submitted, not sent yet.
    outbox: list[tuple[int, ArtistData]] = field(default_factory=list)
    requests: RequestCounts = field(default_factory=RequestCounts)
    end: ChildEnd | None = None
    alive: bool = True
    receiver: threading.Thread | None = None


class ProcessPool(Executor):
    """An ``Executor`` whose tasks run in worker processes (see the module docstring).

    Only ``process_artist`` tasks are supported: the worker process has its own pipeline,
    so of a task's arguments only the artist is sent.
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        control: RunControl,
        *,
        lock_fd: int,
        requests: RequestCounts,
    ) -> None:
        """``requests`` is kept the sum of the worker processes' request counts."""
        self._specs = specs
        self._control = control
        self._lock_fd = lock_fd
        self._requests = requests
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._seq = itertools.count(1)
        self._closing = False
        self._stop_sent = False
        self._killing = False
        self._sender: threading.Thread | None = None

    # -- starting ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes (they connect to the database and get ready while the
        first artists are already on their way)."""
        for spec in self._specs:
            self._children.append(self._spawn(spec))
        for child in self._children:
            child.receiver = threading.Thread(
                target=self._receive, args=(child,), name=f"proc-{child.index}-recv", daemon=True
            )
            child.receiver.start()
        self._sender = threading.Thread(target=self._send_loop, name="proc-send", daemon=True)
        self._sender.start()
        self._control.on_emergency(self.kill)
        logger.info(
            "%d worker processes (%s workers), pids %s",
            len(self._children),
            "+".join(str(spec.workers) for spec in self._specs),
            ", ".join(str(child.process.pid) for child in self._children),
        )

    def _spawn(self, spec: ChildSpec) -> _Child:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "artist_bio_gen.core.child", str(theirs.fileno())],
                # The run lock's descriptor: the job stays locked while any of them lives.
                pass_fds=(theirs.fileno(), self._lock_fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Their own process group: a Ctrl-C at the terminal reaches the parent only,
                # which stops them in order (a second one, at once).
                process_group=0,
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send(("start", spec))
        return _Child(spec.index, process, conn)

    # -- the Executor interface ----------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue the artist (the last argument) for the least busy worker process."""
        artist = args[-1]
        future: Future[Outcome] = Future()
        with self._lock:
            alive = [child for child in self._children if child.alive]
            if not alive:
                future.set_result(_not_started(artist))
                return future
            child = min(alive, key=lambda c: len(c.pending))
            seq = next(self._seq)
            child.pending[seq] = (future, artist)
            child.outbox.append((seq, artist))
            self._wake.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel what was not sent yet (when ``cancel_futures``); the worker processes
        keep running until ``finish``."""
        if not cancel_futures:
            return
        with self._lock:
            for child in self._children:
                for seq, _ in child.outbox:
                    future, _ = child.pending.pop(seq)
                    future.cancel()
                child.outbox.clear()

    # -- sending -------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._has_work():
                    self._wake.wait(STOP_POLL)
                batches = [(child, self._claim(child)) for child in self._children if child.outbox]
                stop = self._control.stopping and not self._stop_sent
                closing = self._closing and not any(c.outbox for c in self._children)
            for child, items in batches:
                self._send(child, ("artists", items))
            if stop:
                self._stop_sent = True
                self._send_all(("stop",))
            if closing:
                self._send_all(("end",))
                return

    def _send_all(self, message: tuple[Any, ...]) -> None:
        for child in self._children:
            self._send(child, message)

    def _has_work(self) -> bool:
        return (
            self._closing
            or any(child.outbox for child in self._children)
            or (self._control.stopping and not self._stop_sent)
        )

    def _claim(self, child: _Child) -> list[tuple[int, ArtistData]]:
        """Take the child's outbox; a future cancelled meanwhile is not sent."""
        items, child.outbox = child.outbox, []
        sent = []
        for seq, artist in items:
            entry = child.pending.get(seq)
            if entry is not None and entry[0].set_running_or_notify_cancel():
                sent.append((seq, artist))
            else:
                child.pending.pop(seq, None)
        return sent

    def _send(self, child: _Child, message: tuple[Any, ...]) -> None:
        # A child that is gone cannot be sent to; its receiver settles what it had.
        with contextlib.suppress(OSError):
            child.conn.send(message)

    # -- receiving -----------------------------------------------------------------------

    def _receive(self, child: _Child) -> None:
        try:
            while True:
                message = child.conn.recv()
                if message[0] == "events":
                    self._events(child, message[1], message[2])
                elif message[0] == "done":
                    child.end = message[1]
                    child.requests = child.end.requests
                    self._add_up_requests()
        except (EOFError, OSError):
            pass
        self._gone(child)

    def _events(
        self, child: _Child, events: list[tuple[Any, ...]], requests: RequestCounts
    ) -> None:
        for event in events:
            kind = event[0]
            if kind == "outcome":
                with self._lock:
                    entry = child.pending.pop(event[1], None)
                if entry is not None:
                    entry[0].set_result(event[2])
            elif kind == "log":
                logging.getLogger(event[2]).log(event[1], "%s", event[3])
            elif kind == "error":
                self._control.abort(event[1])
        child.requests = requests
        self._add_up_requests()

    def _add_up_requests(self) -> None:
        # Under the lock: two receivers adding up at once could leave an older sum last.
        with self._lock:
            for name in (f.name for f in dataclasses.fields(RequestCounts)):
                total = sum(getattr(child.requests, name) for child in self._children)
                setattr(self._requests, name, total)

    def _gone(self, child: _Child) -> None:
        """The child's socket closed: settle what it still had; an unexpected end stops
        the run."""
        with self._lock:
            child.alive = False
            lost, child.pending, child.outbox = child.pending, {}, []
        for future, artist in lost.values():
            with contextlib.suppress(Exception):  # cancelled meanwhile
                future.set_result(_not_started(artist))
        if child.end is not None or self._killing:
            return
        code = child.process.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        self._control.abort(
            RunAbortedError(
                f"worker process {child.index} (pid {child.process.pid}) ended unexpectedly "
                f"({how}) with {len(lost)} artists in flight; what it committed is kept. "
                "Run again with --resume."
            )
        )

    # -- ending --------------------------------------------------------------------------

    def finish(self, grace: float) -> tuple[int, int] | None:
        """Tell the worker processes the run is over and wait for them to exit.

        Returns the (lines, bytes) they appended to the JSONL in all, or None when one of
        them did not say (it died): the reconciliation then compares the file line by line.
        """
        with self._lock:
            self._closing = True
            self._wake.notify()
        deadline = time.monotonic() + grace + CLOSE_TIMEOUT
        for child in self._children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker process %d did not exit; killing it", child.index)
                child.process.kill()
                child.process.wait()
            if child.receiver is not None:
                child.receiver.join(5.0)
        ends = [child.end for child in self._children]
        if any(end is None for end in ends):
            return None
        return (
            sum(end.appended_lines for end in ends if end is not None),
            sum(end.appended_bytes for end in ends if end is not None),
        )

    def kill(self) -> None:
        """End every worker process at once (a second signal): each freezes its JSONL
        writer and exits."""
        self._killing = True
        for child in self._children:
            with contextlib.suppress(OSError):
                child.process.send_signal(signal.SIGTERM)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(10.0)

    def close(self) -> None:
        """Last resort when the run ends by an exception: no worker process outlives the
        run's resources (the normal end is ``finish``)."""
        if any(child.process.poll() is None for child in self._children) and not self._closing:
            self._control.interrupt()
            self.finish(grace=0.0)


def _not_started(artist: ArtistData) -> Outcome:
    return Outcome(artist.artist_id, artist.name, "not_started")


def picklable_error(error: ArtistBioGenError) -> ArtistBioGenError:
    """``error``, or a ``RunAbortedError`` with its message when it cannot cross a socket."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RunAbortedError(str(error))
    return error


class WorkerProcesses:
    """Starts a run's worker processes once the artists to do are known, and ends them.

    Called by the run with the count of artists to do; returns the ``ProcessPool`` to run
    them with, or None when the run stays in one process (``choose_processes``).
    """

    def __init__(
        self,
        config: Config,
        job_id: str,
        control: RunControl,
        *,
        writer: JsonlWriter,
        lock: RunLock,
        previous_attempts: Mapping[str, int],
        requests: RequestCounts,
    ) -> None:
        self._config = config
        self._job_id = job_id
        self._control = control
        self._writer = writer
        self._lock = lock
        self._previous_attempts = previous_attempts
        self._requests = requests
        self.pool: ProcessPool | None = None

    def __call__(self, to_do: int | None) -> ProcessPool | None:
        config = self._config
        count = choose_processes(config, to_do)
        if count == 1:
            return None
        lock_fd = self._lock.fileno()
        if lock_fd is None:
            logger.warning("cannot hand the run lock to worker processes; using one process")
            return None
        # From now on the worker processes append too: each write takes the append lock.
        self._writer.release_hold()
        specs = [
            ChildSpec(
                config,
                self._job_id,
                index,
                count,
                workers,
                self._previous_attempts,
                keep_text=config.report.print_bios,
            )
            for index, workers in enumerate(split_workers(config.max_workers, count))
        ]
        self.pool = ProcessPool(specs, self._control, lock_fd=lock_fd, requests=self._requests)
        self.pool.start()
        return self.pool

    def appended(self, own: tuple[int, int]) -> tuple[int, int] | None:
        """Wait for the worker processes to exit; (lines, bytes) appended to the JSONL by
        the run in all (``own``: this process's writer), None when not known."""
        if self.pool is None:
            return own
        theirs = self.pool.finish(self._config.shutdown_grace)
        if theirs is None:
            return None
        return own[0] + theirs[0], own[1] + theirs[1]

    def close(self) -> None:
        """Make sure no worker process outlives the run (an exception ended it)."""
        if self.pool is not None:
            self.pool.close()
