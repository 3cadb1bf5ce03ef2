"""A worker process of a run with several processes (``core/processes.py``).

Started by the run's process as ``python -m artist_bio_gen.core.child FD`` with FD one end of
a socket pair. It receives a ``ChildSpec``, builds its own pipeline (database pool, JSONL
writer taking the append lock per write, failures file, transaction log, pacer with its
share of the limits, API clients), then runs each artist it is sent through
``process_artist`` on its own threads, exactly as a run of one process does, and sends the
outcomes back in batches with its log records, its request counts and any systemic error.

It stops taking artists when told to stop, or when the socket closes (the parent died),
and then gives its in-flight artists the run's grace period before it exits. SIGTERM or
SIGINT (the parent forwarding a second signal) ends it at once, its writer frozen first so
no line is cut.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from .. import exit_codes
from ..errors import ArtistBioGenError
from ..jobfiles import JobPaths
from ..models import ArtistData
from ..utils.logging import RedactingFilter, setup_logging
from ..utils.memory import PeriodicRelease
from .assembly import assemble_pipeline, closing, open_clients, open_ledger, open_throttle
from .budget import utc_today
from .jsonl import JsonlWriter
from .processes import ChildEnd, ChildSpec, picklable_error
from .processor import RELEASE_EVERY, Pipeline, RunControl, process_artist, thread_pool
from .throttle import RequestCounts, Throttle

logger = logging.getLogger(__name__)


class _Outbox:
    """Events for the parent, sent in batches by one thread (each send is one wait for the
    GIL and one system call, shared by every event that came meanwhile)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._events: deque[tuple[Any, ...]] = deque()
        self._ready = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self.broken = False
        self.requests: RequestCounts = RequestCounts()
        self._thread = threading.Thread(target=self._loop, name="child-send", daemon=True)
        self._thread.start()

    def put(self, event: tuple[Any, ...]) -> None:
        self._idle.clear()
        self._events.append(event)
        self._ready.set()

    def _loop(self) -> None:
        while not self._closed or self._events:
            self._ready.wait(0.5)
            self._ready.clear()
            self._flush()

    def _flush(self) -> None:
        events = []
        while self._events:
            events.append(self._events.popleft())
        if events and not self.broken:
            try:
                self._conn.send(("events", events, replace(self.requests)))
            except OSError:
                self.broken = True  # the parent is gone: what is left goes to stderr
        if self.broken:
            for event in events:
                if event[0] == "log":
                    print(event[3], file=sys.stderr)
        if not self._events:
            self._idle.set()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything put so far was sent."""
        self._ready.set()
        self._idle.wait(timeout)

    def send_final(self, message: tuple[Any, ...]) -> None:
        """Send ``message`` after every event, and stop the sending thread."""
        self._closed = True
        self._ready.set()
        self._thread.join(10.0)
        if not self.broken:
            with contextlib.suppress(OSError):
                self._conn.send(message)


class _ForwardingHandler(logging.Handler):
    """Log records go to the parent, which shows them with its own (a bar is not torn).

    The text is scrubbed of the secrets here, traceback included: when the parent is gone
    it is printed to stderr as it is.
    """

    def __init__(self, outbox: _Outbox, index: int, redact: RedactingFilter) -> None:
        super().__init__()
        self._outbox = outbox
        self._prefix = f"[process {index}] "
        self._redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        text = logging.makeLogRecord({"msg": message})
        self._redact.filter(text)
        self._outbox.put(("log", record.levelno, record.name, self._prefix + text.getMessage()))


def _forward_logging(outbox: _Outbox, spec: ChildSpec) -> None:
    config = spec.config
    setup_logging(config.verbose, secrets=config.secrets, quiet=config.report.quiet)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ForwardingHandler(outbox, spec.index, RedactingFilter(config.secrets)))


class _Worker:
    """The worker process's threads and what they have in flight."""

    def __init__(
        self, spec: ChildSpec, pipeline: Pipeline, control: RunControl, outbox: _Outbox
    ) -> None:
        self._spec = spec
        self._pipeline, self._executor = thread_pool(pipeline, spec.workers, control)
        self._control = control
        self._outbox = outbox
        self._active = 0
        self._settled = threading.Condition()
        self.stopped_at: float | None = None
        # As the run's feeder does: freed heap pages go back now and then (utils/memory.py).
        self._release = PeriodicRelease(RELEASE_EVERY)

    def submit(self, seq: int, artist: ArtistData) -> None:
        with self._settled:
            self._active += 1
        self._executor.submit(self._run, seq, artist)

    def _run(self, seq: int, artist: ArtistData) -> None:
        try:
            outcome = process_artist(self._pipeline, self._control, artist)
            if not self._spec.keep_text:
                outcome = replace(outcome, text=None)
            self._outbox.put(("outcome", seq, outcome))
            self._release.tick()
        finally:
            with self._settled:
                self._active -= 1
                if self._active == 0:
                    self._settled.notify_all()

    def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        self._control.interrupt()

    def wait(self) -> bool:
        """Wait for the in-flight artists (up to the grace period once stopped); True when
        none is left."""
        grace = self._spec.config.shutdown_grace
        with self._settled:
            while self._active:
                if self.stopped_at is None:
                    self._settled.wait(1.0)
                    continue
                left = self.stopped_at + grace - time.monotonic()
                if left <= 0:
                    return False
                self._settled.wait(min(left, 1.0))
        self._executor.shutdown(wait=True)
        return True


def _pipeline(
    spec: ChildSpec, control: RunControl, stack: contextlib.ExitStack
) -> tuple[Pipeline, Throttle, JsonlWriter]:
    config, job_id = spec.config, spec.job_id
    paths = JobPaths(config.output_path)
    ledger = open_ledger(config, paths.output, job_id, stack, prepare=False)
    writer = closing(stack, JsonlWriter(paths.output, fsync_interval=config.fsync_interval))
    share = 1.0 / spec.count
    throttle = closing(
        stack, open_throttle(config, ledger.usage(job_id), control, utc_today, share=share)
    )
    pipeline = assemble_pipeline(
        config,
        job_id,
        stack,
        ledger=ledger,
        writer=writer,
        throttle=throttle,
        clients=open_clients(config, spec.workers),
        previous_attempts=spec.previous_attempts,
    )
    return pipeline, throttle, writer


def _serve(conn: Connection, worker: _Worker) -> None:
    """Take artists until the run is over, or stopped, or the parent is gone."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            logger.warning("the run's main process is gone; finishing the artists in flight")
            worker.stop()
            return
        if message[0] == "artists":
            for seq, artist in message[1]:
                worker.submit(seq, artist)
        elif message[0] == "stop":
            worker.stop()
        elif message[0] == "end":
            return


def _emergency(control: RunControl) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        control.run_emergency_hooks()
        os._exit(exit_codes.EXIT_INTERRUPTED)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_child(conn: Connection) -> int:
    """The worker process's life; returns its exit status."""
    try:
        _, spec = conn.recv()
    except (EOFError, OSError):
        return exit_codes.EXIT_INTERRUPTED  # the run's process died before it said anything
    outbox = _Outbox(conn)
    _forward_logging(outbox, spec)
    # A systemic error is the parent's to log and act on.
    control = RunControl(on_error=lambda error: outbox.put(("error", picklable_error(error))))
    _emergency(control)
    try:
        with contextlib.ExitStack() as stack:
            pipeline, throttle, writer = _pipeline(spec, control, stack)
            control.on_emergency(writer.freeze)
            outbox.requests = throttle.counts
            worker = _Worker(spec, pipeline, control, outbox)
            _serve(conn, worker)
            if not worker.wait():
                # Workers stuck past the grace period: leave now (nothing closed under them).
                writer.freeze()
                outbox.drain()
                os._exit(exit_codes.EXIT_INTERRUPTED)
            outbox.drain()
            end = ChildEnd(writer.appended_lines, writer.appended_bytes, replace(throttle.counts))
        outbox.send_final(("done", end))
    except ArtistBioGenError as exc:
        control.abort(exc)
        outbox.send_final(("failed",))
        return exc.exit_code
    return exit_codes.EXIT_SUCCESS


def main(argv: list[str]) -> int:
    """``python -m artist_bio_gen.core.child FD``."""
    conn = Connection(int(argv[0]))
    try:
        return run_child(conn)
    except Exception:
        traceback.print_exc()
        return exit_codes.EXIT_UNEXPECTED_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
