"""The transaction log: whole JSON lines from many threads, one per outcome, none lost."""

from __future__ import annotations

import calendar
import json
import re
import threading
import time
from pathlib import Path

import pytest

from artist_bio_gen.models import Outcome, TokenUsage
from artist_bio_gen.utils.logging import TransactionLog

JOB = "3f1c2d7e-0000-4000-8000-000000000001"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _committed(index: int) -> Outcome:
    return Outcome(
        f"00000000-0000-4000-8000-{index:012d}",
        f"Artist {index} Ünïcode",
        "committed",
        response_id=f"resp_{index}",
        db_status="updated",
        tokens=TokenUsage(10, 20, 30),
        cost_usd=0.0001,
        model="gpt-4.1-mini",
        duration=0.5,
    )


def test_threads_write_every_line_whole_and_once(tmp_path: Path) -> None:
    """16 threads x 500 outcomes: lines that share a write stay whole, none is left queued."""
    path = tmp_path / "tx.jsonl"
    log = TransactionLog(path, JOB)
    start = threading.Barrier(16)

    def worker(thread: int) -> None:
        start.wait()
        for i in range(500):
            log.outcome(_committed(thread * 1000 + i), attempt=2)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written_before_close = path.read_text(encoding="utf-8").count("\n")
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]  # every line parses: none torn or spliced
    assert written_before_close == len(events) == 16 * 500
    assert sorted(e["response_id"] for e in events) == sorted(
        f"resp_{t * 1000 + i}" for t in range(16) for i in range(500)
    )
    first = events[0]
    assert list(first) == [
        "event",
        "job_id",
        "artist_id",
        "response_id",
        "status",
        "attempt",
        "duration_ms",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "model",
        "cost_usd",
        "ts",
    ]
    assert first["event"] == "commit" and first["status"] == "updated" and first["attempt"] == 2
    assert "Ünïcode" not in lines[0]  # the name is not logged; ids only
    assert first["duration_ms"] == 500.0 and first["job_id"] == JOB
    assert TS.match(first["ts"])


def test_a_failure_carries_its_reason_and_a_current_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "tx.jsonl"
    before = time.time()
    with TransactionLog(path, JOB) as log:
        log.outcome(Outcome("a", "A", "failed", "server_error", "HTTP 503: “busy”"))
        log.outcome(Outcome("b", "B", "skipped", "has_bio", "the artist already has a bio"))
        log.outcome(Outcome("c", "C", "not_started"))  # not a transaction
    failure, skip = (json.loads(line) for line in path.read_text("utf-8").splitlines())
    assert failure["event"] == "failure" and failure["status"] == "server_error"
    assert failure["reason"] == "HTTP 503: “busy”"
    assert skip["event"] == "skip" and skip["status"] == "has_bio"
    stamp = calendar.timegm(time.strptime(failure["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 1 <= stamp + int(failure["ts"][20:23]) / 1000 <= time.time() + 1


def test_an_unwritable_log_costs_a_warning_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    import artist_bio_gen.utils.logging as logging_module

    path = tmp_path / "tx.jsonl"
    log = TransactionLog(path, JOB)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logging_module.os, "write", full)
    log.outcome(_committed(1))  # no exception reaches the worker
    log.outcome(_committed(2))
    monkeypatch.undo()
    log.close()
    assert path.read_text() == ""
    warnings = [r for r in caplog.records if "cannot write the transaction log" in r.message]
    assert len(warnings) == 1  # said once, not once per line
