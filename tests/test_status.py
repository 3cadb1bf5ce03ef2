"""``artist-bio-gen status``: a job shown without running it, in every state it can be in.

Each test makes a real job (real PostgreSQL, the fake OpenAI server), brings it into one
state (finished, failed, half-done, running under another process, its database
unreachable, its JSONL ahead of the database, a batch job) and checks what ``status``
prints, its ``--json`` object (compared whole) and its exit code. ``status`` runs in-process
except where a real other process is the point (the run holding the lock).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.core import lock as lock_module

from .support.cli import CliResult, Job, MakeJob
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

MODEL = "gpt-4.1-mini"


def status(job: Job, *extra: str, env: dict[str, str | None] | None = None) -> CliResult:
    return job.run("status", *extra, env=env)


def status_json(job: Job, *extra: str, code: int = exit_codes.EXIT_SUCCESS) -> dict[str, Any]:
    result = status(job, "--json", *extra)
    assert result.code == code, result.stderr
    data = json.loads(result.stdout)  # stdout holds the one object and nothing else
    assert isinstance(data, dict)
    return data


def without_last_run(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its last run replaced as ``expected`` has it (compared apart)."""
    return data | {"last_run": "compared apart"}


def manifest(job: Job, name: str = "out") -> dict[str, Any]:
    return json.loads((job.dir / f"{name}.job.json").read_text(encoding="utf-8"))


def database_name(db: TestDatabase) -> str:
    """What the job records as its database: user@host:port/dbname."""
    from artist_bio_gen.database.connection import describe_database

    return describe_database(db.url)


def ledger_spend(db: TestDatabase) -> tuple[float, int, int]:
    """(cost, unpriced bios, tokens) summed by the test's own SQL."""
    with db.connect() as conn:
        cost, unpriced, tokens = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL), "
            "coalesce(sum(total_tokens), 0) FROM artist_bio_ledger"
        ).fetchone()
    return float(Decimal(cost)), int(unpriced), int(tokens)


def expected(job: Job, **changes: Any) -> dict[str, Any]:
    """The --json object of the job's finished, consistent state, with ``changes``."""
    recorded = manifest(job)
    db = job.database
    assert db is not None
    cost, unpriced, tokens = ledger_spend(db)
    data: dict[str, Any] = {
        "output": "out.jsonl",
        "job_id": recorded["job_id"],
        "created_at": recorded["created_at"],
        "mode": "online",
        "input": str(job.csv.resolve()),
        "prompt_id": None,
        "prompt_version": None,
        "model": MODEL,
        "database": {
            "name": database_name(db),
            "table": "artists",
            "reachable": True,
            "error": None,
        },
        "counts": {
            "done": len(job.artists),
            "failed": 0,
            "given_up": 0,
            "remaining": 0,
            "input_artists": len(job.artists),
            "bad_lines": 0,
            "input_error": None,
        },
        "spend": {
            "cost_usd": round(cost, 9),
            "unpriced": unpriced,
            "total_tokens": tokens,
            "source": "ledger",
        },
        "running": {"held": False, "pid": None},
        "last_run": "compared apart",
        "check": {
            "consistent": True,
            "lines": 0,
            "rows": 0,
            "full_scan": False,
            "missing_in_jsonl": 0,
            "missing_in_database": 0,
            "missing_in_database_ids": [],
        },
        "torn_tail_bytes": 0,
        "batches": None,
        "exit_code": 0,
        "meaning": "consistent",
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def last_run(data: dict[str, Any]) -> dict[str, Any]:
    """The --json object's last run without its clock readings (checked for form here)."""
    record = dict(data["last_run"])
    assert _TIME.match(record.pop("started_at"))
    ended = record.pop("ended_at")
    elapsed = record.pop("elapsed_seconds")
    if record["state"] == "ended":
        assert _TIME.match(ended) and elapsed >= 0
    else:
        assert ended is None and elapsed is None
    return record


def ended_run(job: Job, code: int, **figures: Any) -> dict[str, Any]:
    """The last run of ``job`` as recorded by this (in-process) test run, ending in ``code``."""
    record = {
        "job_id": manifest(job)["job_id"],
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": "run",
        "exit_code": code,
        "outcome": exit_codes.meaning(code),
        "committed": None,
        "failed": None,
        "skipped": None,
        "requests": None,
        "cost_usd": None,
        "error": None,
        "state": "ended",
    }
    return record | figures


def run(job: Job, *extra: str, code: int = exit_codes.EXIT_SUCCESS) -> CliResult:
    result = job.run(*job.input_args("--model", MODEL, *extra))
    assert result.code == code, result.stderr
    return result


# -- the five states --------------------------------------------------------------------------


def test_a_finished_job(make_job: MakeJob) -> None:
    job = make_job(12, seed=901)
    run(job)
    data = status_json(job)
    assert without_last_run(data) == expected(job)
    cost, _, tokens = ledger_spend(job.database)  # type: ignore[arg-type]
    assert cost > 0 and tokens > 0, "the figures compared are not empty"
    assert last_run(data) == ended_run(
        job, 0, committed=12, failed=0, skipped=0, requests=12, cost_usd=round(cost, 9)
    )

    text = status(job)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "status of out.jsonl"
    assert "  done              12 of 12 input artists" in lines
    assert "  remaining         0 (not yet committed, failed included)" in lines
    assert "  running now       no" in lines
    assert (
        f"  last outcome      exit 0 (done): 12 committed, 0 failed, 12 requests, ${cost:,.4f}"
        in (lines)
    )
    assert f"  spend             ${cost:,.4f}, {tokens:,} tokens (from the ledger)" in lines
    assert lines[-1] == "  result            consistent (exit 0)"
    assert text.stderr == ""


def test_a_failed_job_counts_failed_and_given_up_artists(make_job: MakeJob) -> None:
    job = make_job(12, seed=902)
    bad = job.artists[3]
    job.fake.add_rule("bad_request", name=bad.name)
    run(job, code=exit_codes.EXIT_API_FAILURES)

    data = status_json(job)
    assert without_last_run(data) == expected(
        job, counts={"done": 11, "failed": 1, "remaining": 1}
    ), "failed once: the next --resume retries it"
    assert last_run(data) == ended_run(
        job,
        exit_codes.EXIT_API_FAILURES,
        committed=11,
        failed=1,
        skipped=0,
        requests=12,
        cost_usd=expected(job)["spend"]["cost_usd"],
    )
    given_up = status_json(job, "--max-attempts", "1")
    assert (
        given_up["counts"]
        == expected(job, counts={"done": 11, "given_up": 1, "remaining": 1})["counts"]
    )
    text = status(job).stdout
    assert "  failed            1 (the next --resume retries them)" in text


def test_a_half_done_job_shows_what_remains_and_the_bios_the_next_run_appends(
    make_job: MakeJob,
) -> None:
    job = make_job(12, seed=903)
    run(job, "--limit", "5", code=exit_codes.EXIT_LIMIT_REACHED)
    data = status_json(job)
    assert without_last_run(data) == expected(job, counts={"done": 5, "remaining": 7})
    assert last_run(data) == ended_run(
        job,
        exit_codes.EXIT_LIMIT_REACHED,
        committed=5,
        failed=0,
        skipped=0,
        requests=5,
        cost_usd=expected(job)["spend"]["cost_usd"],
        error="--limit 5 reached: this run started 5 artists and more are left; run again "
        "with --resume to continue.",
    )

    # A crash between a commit and its line: the ledger has a bio the JSONL lacks. That is
    # what a run repairs at its start, so status says so and still exits 0.
    lines = job.out.read_bytes().splitlines(keepends=True)
    job.out.write_bytes(b"".join(lines[:-1]))
    data = status_json(job)
    assert data["check"] == {
        "consistent": True,
        "lines": 4,
        "rows": 5,
        "full_scan": True,
        "missing_in_jsonl": 1,
        "missing_in_database": 0,
        "missing_in_database_ids": [],
    }
    assert data["counts"]["done"] == 5, "done is what the database committed"
    assert "1 committed bios not in the JSONL yet" in status(job).stdout


def test_a_job_whose_database_is_unreachable_shows_what_its_files_know(
    make_job: MakeJob,
) -> None:
    job = make_job(12, seed=904)
    run(job, "--limit", "8", code=exit_codes.EXIT_LIMIT_REACHED)
    # The job's server goes away: its recorded address now points at a port nobody serves.
    port = _closed_port()
    db = job.database
    assert db is not None
    gone_url = db.url.replace(":5432/", f":{port}/")
    assert gone_url != db.url
    recorded = manifest(job)
    recorded["settings"]["database"] = database_name(TestDatabase(gone_url))
    (job.dir / "out.job.json").write_text(json.dumps(recorded), encoding="utf-8")

    result = status(job, "--json", env={"DATABASE_URL": gone_url})
    assert result.code == exit_codes.EXIT_CONFIG_ERROR, result.stderr
    data = json.loads(result.stdout)
    error = data["database"].pop("error")
    assert error.startswith("The database was not read: Cannot connect to PostgreSQL at ")
    password = "abg_test_pw"
    assert password not in result.stdout + result.stderr
    tokens = sum(
        json.loads(line)["total_tokens"]
        for line in (job.dir / "out.transactions.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "commit"
    )
    assert without_last_run(data) == expected(
        job,
        database={"name": recorded["settings"]["database"], "reachable": False},
        counts={"done": 8, "remaining": 4},
        spend={"total_tokens": tokens, "source": "transaction log"},
        check=None,
        exit_code=3,
        meaning="the database could not be read",
    ) | {"database": data["database"]}
    assert data["spend"]["cost_usd"] == expected(job)["spend"]["cost_usd"]

    text = status(job, env={"DATABASE_URL": gone_url})
    database_line = next(line for line in text.stdout.splitlines() if line.startswith("  database"))
    assert "NOT READ" in database_line and "come from the job's files" in database_line
    assert "  done              8 of 12 input artists" in text.stdout

    # No URL at all: the same, and it says how to give one.
    no_url = status(job, env={"DATABASE_URL": None})
    assert no_url.code == exit_codes.EXIT_CONFIG_ERROR
    assert "No database URL is configured" in no_url.stdout


@pytest.mark.timeout(120)
def test_a_running_job_shows_the_pid_holding_the_lock_then_how_it_was_interrupted(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    job = make_job(20, seed=905)
    fake_openai.add_rule("ok", times=4)
    fake_openai.add_rule("hang", delay=60)
    args = job.input_args("--model", MODEL, "--max-workers", "2", "--shutdown-grace", "1")
    proc = job.start_process(*args)
    try:
        _wait_for_lines(job.out, 4, proc)
        data = status_json(job)
        # Four bios committed since the run's start checkpoint, two artists hanging.
        assert without_last_run(data) == expected(
            job,
            counts={"done": 4, "remaining": 16},
            running={"held": True, "pid": proc.pid},
            check={"lines": 4, "rows": 4},
        )
        running = last_run(data)
        assert running["state"] == "running" and running["pid"] == proc.pid
        assert running["exit_code"] is None
        text = status(job).stdout
        assert f"yes, pid {proc.pid} holds the run lock" in text
        assert f"still running (pid {proc.pid})" in text
        # A run refused by the lock (cron overlap) leaves the running run's record alone, and
        # status took nothing from the run: the lock is still held by the same process.
        assert job.run("--resume").code == exit_codes.EXIT_LOCKED
        again = status_json(job)
        assert again["running"] == {"held": True, "pid": proc.pid}
        assert last_run(again) == running
        # Without the kernel's lock table (not Linux), the lock is tried and let go at once.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(lock_module, "PROC_LOCKS", job.dir / "no-such-table")
            assert status_json(job)["running"] == {"held": True, "pid": proc.pid}
        proc.send_signal(signal.SIGINT)  # the workers hang: the grace runs out, exit 130
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == exit_codes.EXIT_INTERRUPTED
    data = status_json(job)
    assert data["running"] == {"held": False, "pid": None}
    record = last_run(data)
    assert record["state"] == "ended" and record["pid"] == proc.pid
    assert record["exit_code"] == exit_codes.EXIT_INTERRUPTED
    assert record["outcome"] == "interrupted; --resume continues"
    assert record["committed"] == 4


@pytest.mark.timeout(120)
def test_a_killed_run_is_shown_as_one_that_never_recorded_its_end(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    job = make_job(10, seed=910)
    fake_openai.add_rule("ok", times=2)
    fake_openai.add_rule("hang", delay=60)
    proc = job.start_process(*job.input_args("--model", MODEL, "--max-workers", "1"))
    try:
        _wait_for_lines(job.out, 2, proc)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    data = status_json(job)
    record = last_run(data)
    assert record["state"] == "killed" and record["pid"] == proc.pid
    assert record["exit_code"] is None
    assert data["running"] == {"held": False, "pid": None}
    assert "never recorded its end: killed or the machine stopped" in status(job).stdout
    assert data["counts"]["done"] == 2


def test_configuration_errors_of_a_started_job_are_its_last_run(make_job: MakeJob) -> None:
    job = make_job(6, seed=911)
    run(job)
    db = job.database
    assert db is not None

    # Refused before the run started: cron's environment lost DATABASE_URL.
    refused = job.run("--resume", env={"DATABASE_URL": None})
    assert refused.code == exit_codes.EXIT_CONFIG_ERROR
    record = last_run(status_json(job, "--db-url", db.url))
    assert record == ended_run(
        job,
        exit_codes.EXIT_CONFIG_ERROR,
        error=f"This job writes to the database {database_name(db)}, but no database URL is "
        "configured now; set DATABASE_URL or pass --db-url to resume it.",
    )

    # Refused by the run's own checks, after it took the job: the table is gone.
    db.execute("ALTER TABLE artists RENAME TO artists_gone")
    failed = job.run("--resume")
    assert failed.code == exit_codes.EXIT_CONFIG_ERROR, failed.stderr
    record = last_run(status_json(job))
    assert record["exit_code"] == exit_codes.EXIT_CONFIG_ERROR
    assert record["committed"] is None
    assert record["error"] is not None and "artists" in record["error"]
    assert record["error"] in failed.stderr
    text = status(job).stdout
    assert "  last outcome      exit 3 (configuration error (key, prompt, database, table))" in text
    assert f"  last error        {record['error']}" in text


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- consistency ------------------------------------------------------------------------------


def test_a_jsonl_line_the_database_lacks_exits_6(make_job: MakeJob) -> None:
    job = make_job(12, seed=906)
    run(job)
    line = json.loads(job.out.read_bytes().splitlines()[0])
    stranger = str(uuid.UUID(int=uuid.uuid4().int))
    line["artist_id"] = stranger
    with open(job.out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")

    data = status_json(job, code=exit_codes.EXIT_OUT_OF_SYNC)
    assert data["check"] == {
        "consistent": False,
        "lines": 1,
        "rows": 0,
        "full_scan": False,
        "missing_in_jsonl": 0,
        "missing_in_database": 1,
        "missing_in_database_ids": [stranger],
    }
    assert data["exit_code"] == 6
    assert data["meaning"] == "the JSONL holds bios the database does not"
    text = status(job)
    assert text.code == exit_codes.EXIT_OUT_OF_SYNC
    assert f"DIFFERENT: the JSONL holds 1 bios the database does not (ids: {stranger})" in (
        text.stdout
    )
    # The run agrees: it refuses to go on with the same code.
    assert job.run("--resume").code == exit_codes.EXIT_OUT_OF_SYNC


# -- other jobs -------------------------------------------------------------------------------


def test_a_jsonl_only_job_counts_from_its_files(make_job: MakeJob) -> None:
    job = make_job(6, seed=907, database=False)
    run(job, "--no-db")
    data = status_json(job)
    assert data["database"] == {"name": None, "table": None, "reachable": None, "error": None}
    assert data["counts"]["done"] == 6 and data["counts"]["remaining"] == 0
    assert data["spend"]["source"] == "transaction log"
    assert data["spend"]["total_tokens"] > 0
    assert data["check"] is None and data["exit_code"] == 0


def test_no_job_at_the_output_exits_2(make_job: MakeJob) -> None:
    job = make_job(3, seed=908)
    result = status(job, "--output", "nothing.jsonl")
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, "one sentence, no traceback"
    assert lines[0].endswith(
        "error: There is no job at nothing.jsonl (no nothing.job.json); pass the --output of "
        "a job that was started."
    )


def test_a_missing_input_leaves_remaining_unknown(make_job: MakeJob) -> None:
    job = make_job(5, seed=909)
    run(job)
    job.csv.unlink()
    data = status_json(job)
    assert data["counts"]["remaining"] is None
    assert data["counts"]["input_error"].startswith("Input file")
    assert data["counts"]["done"] == 5


# -- a batch job ------------------------------------------------------------------------------


def test_a_batch_job_lists_its_batches_with_their_state_and_counts(make_job: MakeJob) -> None:
    job = make_job(12, seed=912)
    fake = job.fake
    fake.batches.script(polls=5)  # still in progress at the first --resume
    fake.batches.script()  # completes
    fake.batches.script(outcome="expired", answered=1)  # 1 of 2 answered, 1 sent again
    run(job, "--mode", "batch", "--batch-max-requests", "5")
    ids = [batch.id for batch in fake.batches.batches]
    assert len(ids) == 3

    submitted = status_json(job)
    assert submitted["mode"] == "batch"
    assert [
        (b["chunk"], b["batch_id"], b["state"], b["requests"]) for b in submitted["batches"]
    ] == [
        (1, ids[0], "submitted", 5),
        (2, ids[1], "submitted", 5),
        (3, ids[2], "submitted", 2),
    ]
    assert submitted["counts"]["done"] == 0 and submitted["counts"]["remaining"] == 12

    assert job.run("--resume").code == exit_codes.EXIT_SUCCESS
    new_ids = [batch.id for batch in fake.batches.batches]
    assert len(new_ids) == 4, "the unanswered artist of the expired batch went out again"
    data = status_json(job)
    assert data["batches"] == [
        {
            "chunk": 1,
            "batch_id": ids[0],
            "state": "submitted",
            "status": "in_progress",
            "requests": 5,
            "completed": 0,
            "failed": 0,
            "committed": 0,
            "failures": 0,
            "resubmit": 0,
            "error": None,
        },
        {
            "chunk": 2,
            "batch_id": ids[1],
            "state": "ended",
            "status": "completed",
            "requests": 5,
            "completed": 5,
            "failed": 0,
            "committed": 5,
            "failures": 0,
            "resubmit": 0,
            "error": None,
        },
        {
            "chunk": 3,
            "batch_id": ids[2],
            "state": "ended",
            "status": "expired",
            "requests": 2,
            "completed": 1,
            "failed": 1,
            "committed": 1,
            "failures": 0,
            "resubmit": 1,
            "error": None,
        },
        {
            "chunk": 4,
            "batch_id": new_ids[3],
            "state": "submitted",
            "status": "validating",
            "requests": 1,
            "completed": None,
            "failed": None,
            "committed": 0,
            "failures": 0,
            "resubmit": 0,
            "error": None,
        },
    ]
    assert data["counts"]["done"] == 6 and data["counts"]["remaining"] == 6
    text = status(job).stdout
    assert "  batches           4: 2 open" in text
    assert f"       2 {ids[1]} ended/completed: 5 requests; answered 5, failed 0; committed 5" in (
        text
    )
