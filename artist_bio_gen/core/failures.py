"""The failures file: one JSON line per failed attempt, beside the output.

The main JSONL holds committed bios only; a failed artist is recorded here instead, with a
stable ``code`` and a human ``reason``, so that it can be inspected, counted and retried
(``--resume`` retries it, up to ``--max-attempts`` attempts across runs). Only the codes
that count towards that cap are recorded (``failure_codes``): a failure that stops the run
is not the artist's fault. Lines are appended
through the same whole-line, fsynced path as the output.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

from ..failure_codes import counts_towards_cap
from .jsonl import JsonlWriter, iter_records

logger = logging.getLogger(__name__)


class FailureLog:
    """Appends failure records for one job; opened lazily so a clean run leaves no file."""

    def __init__(self, path: Path, job_id: str):
        self.path = path
        self._job_id = job_id
        self._writer: JsonlWriter | None = None
        self._open_lock = threading.Lock()

    def record(
        self,
        artist_id: str,
        artist_name: str,
        code: str,
        reason: str,
        attempt: int,
        *,
        batch_id: str | None = None,
    ) -> None:
        """Append one failed attempt (``batch_id``: the batch whose answer it was)."""
        line: dict[str, object] = {
            "artist_id": artist_id,
            "artist_name": artist_name,
            "code": code,
            "reason": reason,
            "attempt": attempt,
            "job_id": self._job_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if batch_id is not None:
            line["batch_id"] = batch_id
        self._open().append_line((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))

    def _open(self) -> JsonlWriter:
        with self._open_lock:
            if self._writer is None:
                self._writer = JsonlWriter(self.path)
            return self._writer

    def close(self) -> None:
        """Close the file if it was opened."""
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> FailureLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_attempts(path: Path, job_id: str) -> Counter[str]:
    """Failed attempts per artist id recorded for ``job_id`` (empty when there is no file).

    Only codes that count towards the cap are counted: a record an older version wrote for
    a failure that is no longer held against the artist (a 429) does not bring it closer
    to being given up.
    """
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for record in iter_records(path):
        if record.get("job_id") != job_id or "artist_id" not in record:
            continue
        if counts_towards_cap(str(record.get("code"))):
            counts[str(record["artist_id"])] += 1
    return counts


def batch_failures(path: Path, job_id: str) -> set[tuple[str, str]]:
    """(artist id, batch id) of every failure recorded from a batch's answer for ``job_id``:
    collecting that batch again (after a crash) must not count the same failure twice."""
    found: set[tuple[str, str]] = set()
    if not path.exists():
        return found
    for record in iter_records(path):
        if record.get("job_id") == job_id and record.get("batch_id") and "artist_id" in record:
            found.add((str(record["artist_id"]), str(record["batch_id"])))
    return found
