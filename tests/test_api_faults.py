"""What each kind of API failure does to a run (fake server over HTTP, real PostgreSQL).

The CLI runs in-process (``main(argv)``).
"""

from __future__ import annotations

import json
from pathlib import Path

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror, read_jsonl
from .support.cli import CliResult, Job, MakeJob, summary_figure
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

FAST = ["--max-retries", "0", "--request-timeout", "2"]


def _run(job: Job, *extra: str) -> CliResult:
    return job.run(*job.input_args("--prompt-id", "pmpt_x", "--max-workers", "4", *extra))


def _failures(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out.failures.jsonl"
    return read_jsonl(path) if path.exists() else []


def test_bad_key_stops_after_one_request(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add_rule("unauthorized")
    result = _run(make_job(50, seed=20))
    assert result.code == exit_codes.EXIT_CONFIG_ERROR
    assert "The API rejected the key" in result.stderr and "Traceback" not in result.stderr
    assert fake_openai.total_requests == 1  # the canary: one request, not one per worker
    assert _failures(tmp_path) == []  # not the artists' fault: they stay to do


def test_unknown_prompt_stops_the_run(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add_rule("not_found")
    result = _run(make_job(20, seed=21))
    assert result.code == exit_codes.EXIT_CONFIG_ERROR
    assert "does not know prompt 'pmpt_x'" in result.stderr
    assert fake_openai.total_requests == 1


def test_exhausted_quota_stops_the_run(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(40, seed=22)
    fake_openai.add_rule("ok", times=5)
    fake_openai.add_rule("insufficient_quota")
    result = _run(job, *FAST)
    assert result.code == exit_codes.EXIT_RUN_ABORTED
    assert "no quota left" in result.stderr
    assert fake_openai.total_requests <= 5 + 2 * 4  # stops within one window
    records = assert_mirror(tmp_path / "out.jsonl", database)
    assert len(records) == 5


def test_one_bad_artist_does_not_stop_the_others(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(30, seed=23)
    artists = job.artists
    fake_openai.add_rule("bad_request", name=artists[7].name)
    fake_openai.add_rule("empty", name=artists[12].name)
    result = _run(job, *FAST)
    assert result.code == exit_codes.EXIT_API_FAILURES
    records = assert_mirror(tmp_path / "out.jsonl", database)
    assert len(records) == 28
    failures = {f["artist_id"]: f for f in _failures(tmp_path)}
    assert failures[artists[7].artist_id]["code"] == "bad_request"
    assert failures[artists[12].artist_id]["code"] == "empty_response"
    assert all(f["attempt"] == 1 and f["reason"] for f in failures.values())
    assert summary_figure(result, "failed") == "2"


def test_rate_limit_with_retry_after_is_retried(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(6, seed=24)
    artists = job.artists
    fake_openai.add_rule("rate_limit", name=artists[3].name, times=2, retry_after=0.2)
    result = _run(job, "--max-retries", "3")
    assert result.code == 0, result.stderr
    assert fake_openai.calls(artists[3].name) == 3
    assert len(assert_mirror(tmp_path / "out.jsonl", database)) == 6


def test_server_errors_hangs_garbage_and_drops_fail_only_their_artist(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(12, seed=25)
    artists = job.artists
    faults = {1: "server_error", 2: "hang", 3: "malformed", 4: "drop"}
    for index, fault in faults.items():
        fake_openai.add_rule(fault, name=artists[index].name, delay=30)
    result = _run(job, *FAST)
    assert result.code == exit_codes.EXIT_API_FAILURES, result.stderr
    codes = {f["artist_id"]: f["code"] for f in _failures(tmp_path)}
    assert codes == {
        artists[1].artist_id: "server_error",
        artists[2].artist_id: "timeout",
        artists[3].artist_id: "bad_response",
        artists[4].artist_id: "connection_error",
    }
    assert len(assert_mirror(tmp_path / "out.jsonl", database)) == 8


def test_a_streak_of_identical_failures_stops_the_run(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add_rule("bad_request")
    result = _run(make_job(200, seed=26), *FAST)
    assert result.code == exit_codes.EXIT_RUN_ABORTED
    assert "in a row failed with 'bad_request'" in result.stderr
    assert fake_openai.total_requests < 60


def test_transaction_log_has_one_line_per_commit_and_failure(
    tmp_path: Path, make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(10, seed=27)
    artists = job.artists
    fake_openai.add_rule("bad_request", name=artists[0].name)
    result = _run(job, *FAST)
    assert result.code == exit_codes.EXIT_API_FAILURES
    events = [
        json.loads(line) for line in (tmp_path / "out.transactions.jsonl").read_text().splitlines()
    ]
    assert sorted(e["event"] for e in events) == ["commit"] * 9 + ["failure"]
    ledger = {row["artist_id"]: row for row in database.ledger()}
    for event in events:
        assert event["job_id"] == str(next(iter(ledger.values()))["job_id"])
        assert event["ts"].endswith("Z") and event["attempt"] == 1
        if event["event"] == "commit":
            assert event["response_id"] == ledger[event["artist_id"]]["response_id"]
            assert event["status"] == "updated" and event["total_tokens"] > 0
        else:
            assert event["status"] == "bad_request" and event["artist_id"] == artists[0].artist_id
