"""Console logging and the structured transaction log.

Console: human lines on stderr (stdout stays free for the final summary and what a user
asks for: dry-run payloads, ``--print-bios``). A filter scrubs the API key and the database
password out of every message, as a second line of defence behind the modules' own care: no
secret reaches any output.

Transaction log: one JSON object per line, per commit and per failure, appended to a file
beside the output (``TransactionLog``). It is an audit trail for automation (what was
committed when, by which job, which response, how many tokens); the database ledger remains
the source of truth.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from ..models import Outcome

logger = logging.getLogger(__name__)

PACKAGE_LOGGER = "artist_bio_gen"


class RedactingFilter(logging.Filter):
    """Replace every secret in a record's rendered message with ``***``."""

    def __init__(self, secrets: Iterable[str | None]):
        super().__init__()
        # Short strings would mangle ordinary words; real keys and passwords are longer.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        for secret in self._secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


def setup_logging(
    verbose: bool = False, secrets: Iterable[str | None] = (), quiet: bool = False
) -> None:
    """Send log records to stderr (the package at DEBUG with ``verbose``, WARNING with
    ``quiet``, else INFO).

    The handler sits on the root logger so that warnings of the libraries (the connection
    pool, the SDK) are formatted and scrubbed the same way as ours.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_artist_bio_gen", False)]:
        root.removeHandler(old)
    # A tag on the handler, so that a later setup_logging finds and replaces it (Handler has
    # no such attribute: setting one on the instance is the point).
    handler._artist_bio_gen = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)
    # The HTTP stack logs every request at INFO/DEBUG and the pool logs every failed
    # reconnect; our own messages say what matters, so theirs are for --verbose only.
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False)
_EVENTS = {"committed": "commit", "skipped": "skip"}


class TransactionLog:
    """Writes the per-commit / per-failure JSON lines for one job; thread-safe.

    Lines go straight to an ``O_APPEND`` descriptor, not through ``logging``: a log record,
    a formatter and a handler lock per line cost a worker more CPU than the line itself.
    Workers finishing together share one write: a worker queues its line, and whoever
    holds the write lock writes every line queued so far (one system call, so one wait for
    the GIL, for all of them); the others return at once. Lines are not fsynced (the ledger
    is the record); each reaches the file moments after its outcome, all of them by
    ``close``.
    """

    def __init__(self, path: Path | None, job_id: str):
        """Append to ``path`` (created if missing); None writes nothing."""
        self._job_id = job_id
        self._path = path
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        #: Lines not yet written (``deque`` appends and pops are atomic across threads).
        self._queued: deque[bytes] = deque()
        self._write_lock = threading.Lock()
        self._failed = False
        #: (second, its formatted prefix): strftime once per second, not once per line.
        self._stamp: tuple[int, str] = (-1, "")

    def outcome(self, outcome: Outcome, attempt: int = 1) -> None:
        """Log a commit, a skip or a failure (not-started artists are not transactions)."""
        if outcome.status == "not_started" or self._fd is None:
            return
        event = {
            "event": _EVENTS.get(outcome.status, "failure"),
            "job_id": self._job_id,
            "artist_id": outcome.artist_id,
            "response_id": outcome.response_id,
            "status": outcome.db_status if outcome.status == "committed" else outcome.code,
            "attempt": attempt,
            "duration_ms": round(outcome.duration * 1000, 1),
            "input_tokens": outcome.tokens.input_tokens,
            "output_tokens": outcome.tokens.output_tokens,
            "total_tokens": outcome.tokens.total_tokens,
            "model": outcome.model,
            "cost_usd": outcome.cost_usd,
        }
        if outcome.status != "committed":
            event["reason"] = outcome.reason
        event["ts"] = self._timestamp(time.time())
        self._queued.append((_JSON.encode(event) + "\n").encode("utf-8"))
        self._write_queued()

    def _timestamp(self, now: float) -> str:
        """``2024-01-02T03:04:05.678Z`` (UTC, milliseconds)."""
        second = int(now)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._stamp = stamp  # one tuple: a reader never sees a second with another prefix
        return f"{stamp[1]}.{int((now - second) * 1000):03d}Z"

    def _write_queued(self) -> None:
        # A line queued while another thread writes is left to it: the writer looks at the
        # queue again after it lets go of the lock, so no line is left behind.
        while self._queued and self._write_lock.acquire(blocking=False):
            try:
                self._write_batch()
            finally:
                self._write_lock.release()

    def _write_batch(self) -> None:
        """Write every queued line (the write lock held)."""
        lines = []
        while self._queued:
            lines.append(self._queued.popleft())
        if self._fd is None or self._failed:
            return
        data = b"".join(lines)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            # An audit trail, not the record: a full disk stops the run through the JSONL.
            self._failed = True
            logger.warning(
                "cannot write the transaction log %s (%s); no more lines", self._path, exc
            )

    def close(self) -> None:
        """Write what is queued and close the file (idempotent)."""
        with self._write_lock:
            self._write_batch()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> TransactionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
