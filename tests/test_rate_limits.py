"""Rate limits, 429 storms, budgets and cost: whole runs against a fake that enforces limits.

The fake OpenAI server enforces per-minute limits the way OpenAI does (``FakeOpenAI.enforce``:
a bucket refilled continuously over a short window, truthful ``x-ratelimit-*`` headers, 429
past it), so these tests exercise the run's real pacing, not a scripted header. Runs go
in-process (``main(argv)``, or ``run_job`` where a clock must be moved); every test has a
timeout, so a hang fails instead of stalling the suite.
"""

from __future__ import annotations

import json
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.cli.main import create_argument_parser, exit_code_for
from artist_bio_gen.config import resolve_config
from artist_bio_gen.core.processor import RunControl
from artist_bio_gen.core.runner import RunResult, run_job

from .support.checks import assert_mirror, read_jsonl
from .support.cli import TEST_API_KEY, Job, MakeJob, summary_figure, summary_table
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI, tokens_for

PROMPT = ["--prompt-id", "pmpt_limits"]


def _failures(job: Job) -> list[dict]:
    path = job.dir / "out.failures.jsonl"
    return read_jsonl(path) if path.exists() else []


def _paid(fake: FakeOpenAI, job: Job) -> dict[str, int]:
    return {a.name: fake.succeeded(a.name) for a in job.artists}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("limit", "retry_after"),
    [("rpm", "seconds"), ("tpm", None)],
    ids=["rpm-with-retry-after", "tpm-without-retry-after"],
)
def test_an_enforced_limit_is_kept_and_nobody_fails(
    make_job: MakeJob, fake_openai: FakeOpenAI, limit: str, retry_after: str | None
) -> None:
    """600 requests (or the tokens of 600 answers) per minute, enforced over 1 s windows,
    with 24 workers and 200 artists: every artist is committed by the first run, at most
    10% of the requests got a 429, nobody failed or was given up."""
    job = make_job(200, seed=701)
    if limit == "rpm":
        fake_openai.enforce(rpm=600, window=1.0, retry_after=retry_after)
    else:
        per_answer = max(tokens_for(a.name) for a in job.artists)
        fake_openai.enforce(tpm=600 * per_answer, window=1.0, retry_after=retry_after)

    result = job.run(*job.input_args(*PROMPT, "--max-workers", "24"))

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert len(assert_mirror(job.out, job.database)) == len(job.artists)  # type: ignore[arg-type]
    assert _failures(job) == []
    assert fake_openai.rate_limited <= 0.10 * fake_openai.total_requests, (
        fake_openai.rate_limited,
        fake_openai.total_requests,
    )
    assert _paid(fake_openai, job) == {a.name: 1 for a in job.artists}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_storm_of_429s_and_faults_costs_no_artist_an_attempt(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    """30% of the requests get a 429 with retry-after 1 s, 10% a 500, a malformed body or a
    dropped connection: every artist is committed by the first run or its first --resume,
    no failure record is a 429, and no artist was paid twice."""
    job = make_job(60, seed=702)
    fake_openai.reseed(702)
    fake_openai.add_rule("rate_limit", fraction=0.3, retry_after=1)
    fake_openai.add_rule("server_error", fraction=0.04)
    fake_openai.add_rule("malformed", fraction=0.03)
    fake_openai.add_rule("drop", fraction=0.03)
    args = ("--max-workers", "8", "--max-retries", "3", "--request-timeout", "10")

    first = job.run(*job.input_args(*PROMPT, *args))
    assert first.code in (exit_codes.EXIT_SUCCESS, exit_codes.EXIT_API_FAILURES), first.stderr
    if first.code == exit_codes.EXIT_API_FAILURES:
        second = job.run("--resume", *args)
        assert second.code in (exit_codes.EXIT_SUCCESS, exit_codes.EXIT_API_FAILURES)

    committed = assert_mirror(job.out, job.database)  # type: ignore[arg-type]
    assert len(committed) == len(job.artists)
    assert fake_openai.rate_limited > 0
    codes = {f["code"] for f in _failures(job)}
    assert codes <= {"server_error", "bad_response", "connection_error"}, codes
    assert all(f["attempt"] == 1 for f in _failures(job))  # nobody failed twice
    assert all(paid <= 1 for paid in _paid(fake_openai, job).values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("unauthorized", exit_codes.EXIT_CONFIG_ERROR),
        ("insufficient_quota", exit_codes.EXIT_RUN_ABORTED),
    ],
)
def test_a_systemic_answer_stops_the_run_within_seconds(
    make_job: MakeJob, fake_openai: FakeOpenAI, fault: str, code: int
) -> None:
    """Every request answered 401 (or insufficient_quota): the run exits with the stop code
    within 10 s after at most workers + 2 requests, and nothing is in the JSONL."""
    workers = 16
    job = make_job(100, seed=703)
    fake_openai.add_rule(fault)

    started = time.monotonic()
    result = job.run(*job.input_args(*PROMPT, "--max-workers", str(workers)))
    elapsed = time.monotonic() - started

    assert result.code == code, result.stderr
    assert elapsed < 10.0, f"the stop took {elapsed:.1f} s"
    assert fake_openai.total_requests <= workers + 2
    assert not job.out.exists() or job.out.read_bytes() == b""
    assert _failures(job) == []


class _Clock:
    """A UTC day the test can move (``run_job(today=...)``)."""

    def __init__(self) -> None:
        self.day = date(2026, 12, 2)

    def __call__(self) -> date:
        return self.day


def _run(job: Job, *args: str, today: _Clock, new: bool = False) -> RunResult:
    start = [*job.input_args(*PROMPT)] if new else ["--resume"]
    argv = [*start, "--max-workers", "4", "--max-retries", "0", *args]
    env = {"OPENAI_API_KEY": TEST_API_KEY, "OPENAI_BASE_URL": job.fake.base_url}
    if job.database is not None:
        env["DATABASE_URL"] = job.database.url
    config = resolve_config(create_argument_parser().parse_args(argv), env)
    return run_job(config, RunControl(), today=today)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_database", [True, False], ids=["database", "jsonl-only"])
def test_the_daily_limit_is_shared_by_the_runs_of_a_day(
    make_job: MakeJob, fake_openai: FakeOpenAI, with_database: bool
) -> None:
    """--daily-limit 40 over 120 artists: at most 40 requests and a clean budget exit; a
    second run the same UTC day makes no request; the next day it continues."""
    job = make_job(120, seed=704, database=with_database)
    clock = _Clock()

    first = _run(job, "--daily-limit", "40", today=clock, new=True)
    assert exit_code_for(first) == exit_codes.EXIT_LIMIT_REACHED, first
    assert "--daily-limit" in str(first.error)
    assert fake_openai.total_requests <= 40
    assert first.stats.committed == fake_openai.total_requests  # every request was a bio

    again = _run(job, "--daily-limit", "40", today=clock)
    assert exit_code_for(again) == exit_codes.EXIT_LIMIT_REACHED
    assert fake_openai.total_requests == first.stats.committed  # nothing sent today

    clock.day += timedelta(days=1)
    tomorrow = _run(job, "--daily-limit", "40", today=clock)
    assert exit_code_for(tomorrow) == exit_codes.EXIT_LIMIT_REACHED
    assert fake_openai.total_requests <= 80
    assert tomorrow.stats.committed > 0
    lines = read_jsonl(job.out)
    assert len(lines) == first.stats.committed + tomorrow.stats.committed
    assert len({line["artist_id"] for line in lines}) == len(lines)


@pytest.mark.timeout(60)
def test_max_cost_stops_before_the_budget_is_passed(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """With known prices, --max-cost stops the run (exit 7) before the ledger's spend passes
    it, with most of the budget used; --resume with a higher budget finishes the job."""
    job = make_job(150, seed=705)
    prices = ("--price-input", "2", "--price-output", "8")
    per_bio = max((50 * 2 + (tokens_for(a.name) - 50) * 8) / 1_000_000 for a in job.artists)
    # The fake's bios are short: the first request's guess (1,000 + 1,000 tokens) is worth
    # about 65 of them, so the budget leaves room for that, and not for all 150 artists.
    budget = 100 * per_bio

    result = job.run(*job.input_args(*PROMPT, *prices, "--max-cost", f"{budget:.9f}"))

    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    assert "--max-cost" in result.stderr
    spent = sum(Decimal(str(row["cost_usd"])) for row in database.ledger())
    assert 0 < spent <= Decimal(f"{budget:.9f}")
    assert len(database.ledger()) >= 60  # most of the budget was used, not refused at once

    rest = job.run("--resume", *prices, "--max-cost", "100")
    assert rest.code == exit_codes.EXIT_SUCCESS, rest.stderr
    assert len(assert_mirror(job.out, database)) == len(job.artists)


@pytest.mark.timeout(60)
def test_limit_stops_at_its_count_and_resume_continues(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """--limit 7 over 20 artists: exactly 7 requests and bios, exit 7; the next --resume
    (without a limit) does the other 13."""
    job = make_job(20, seed=706)

    result = job.run(*job.input_args(*PROMPT, "--limit", "7"))

    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    assert "--limit 7" in result.stderr
    assert fake_openai.total_requests == 7
    assert len(assert_mirror(job.out, database)) == 7

    rest = job.run("--resume")
    assert rest.code == exit_codes.EXIT_SUCCESS, rest.stderr
    assert fake_openai.total_requests == 20
    assert len(assert_mirror(job.out, database)) == 20


@pytest.mark.timeout(60)
def test_a_limit_that_is_not_reached_exits_zero(make_job: MakeJob, fake_openai: FakeOpenAI) -> None:
    """--limit larger than what is left: the run simply finishes (exit 0)."""
    job = make_job(5, seed=707)
    result = job.run(*job.input_args(*PROMPT, "--limit", "5"))
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert fake_openai.total_requests == 5


@pytest.mark.timeout(60)
def test_flex_unavailable_is_retried_never_a_failure_and_half_price(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """--service-tier flex: every request says so; "Resource Unavailable" answers go back
    through the limiter (no failure, no attempt); the ledger records tier, model and a cost
    at half the standard price."""
    job = make_job(6, seed=708)
    fake_openai.add_rule("flex_unavailable", times=4)
    prices = ("--price-input", "2", "--price-output", "8")

    result = job.run(*job.input_args(*PROMPT, *prices, "--service-tier", "flex"))

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert {record.service_tier for record in fake_openai.requests} == {"flex"}
    assert _failures(job) == []
    rows = database.ledger()
    assert len(rows) == 6
    for row in rows:
        assert row["service_tier"] == "flex"
        assert row["response_model"]
        full = (row["input_tokens"] * 2 + row["output_tokens"] * 8) / 1_000_000
        assert Decimal(str(row["cost_usd"])) == pytest.approx(Decimal(str(full / 2)))


@pytest.mark.timeout(60)
def test_costs_are_in_the_transaction_log_and_the_summary(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """Every commit event carries the model and the cost; the summary shows the run's
    requests and spend, which equal the ledger's, and the job's totals over all its runs."""
    job = make_job(8, seed=709)
    prices = ("--price-input", "1", "--price-output", "1")
    result = job.run(*job.input_args(*PROMPT, *prices, "--limit", "5"))

    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    events = [
        json.loads(line)
        for line in Path(job.dir / "out.transactions.jsonl").read_text().splitlines()
    ]
    ledger = {row["artist_id"]: row for row in database.ledger()}
    assert len(events) == len(ledger) == 5
    for event in events:
        row = ledger[event["artist_id"]]
        assert event["model"] == row["response_model"]
        assert Decimal(str(event["cost_usd"])) == Decimal(str(row["cost_usd"]))
    total = sum(Decimal(str(row["cost_usd"])) for row in ledger.values())
    table = summary_table(result.stdout)
    assert (table["requests"][0], table["429s"][0], table["retries"][0]) == ("5", "0", "0")
    assert table["cost"][0] == f"${float(total):,.4f}"
    assert table["job so far"] == ("5 bios", f"${float(total):,.4f}")

    rest = job.run("--resume", *prices)
    assert rest.code == exit_codes.EXIT_SUCCESS, rest.stderr
    assert summary_figure(rest, "requests") == "3"
    job_total = sum(Decimal(str(row["cost_usd"])) for row in database.ledger())
    assert summary_table(rest.stdout)["job so far"] == ("8 bios", f"${float(job_total):,.4f}")


@pytest.mark.timeout(60)
def test_a_wait_longer_than_pause_duration_ends_the_run_resumably(
    make_job: MakeJob, fake_openai: FakeOpenAI, database: TestDatabase
) -> None:
    """A 429 asking to wait 2 minutes with --pause-duration 0.01 h (36 s): the run ends at
    once with exit 7, no artist failed; a --resume once the limit is gone finishes the job."""
    job = make_job(6, seed=710)
    fake_openai.add_rule("rate_limit", times=1, retry_after=120)

    started = time.monotonic()
    result = job.run(*job.input_args(*PROMPT, "--pause-duration", "0.01"))

    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    assert time.monotonic() - started < 20
    assert "--pause-duration" in result.stderr
    assert _failures(job) == []
    rest = job.run("--resume")
    assert rest.code == exit_codes.EXIT_SUCCESS, rest.stderr
    assert len(assert_mirror(job.out, database)) == 6


@pytest.mark.timeout(60)
def test_the_caps_pace_requests_even_without_header_learning(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    """--quota-monitoring false --rpm 120: the caps still apply (2 at once, then 2 per
    second), and --quota-log-interval 4 logs the limiter's view every 4 requests."""
    job = make_job(10, seed=711)
    args = ("--quota-monitoring", "false", "--rpm", "120", "--quota-log-interval", "4")

    result = job.run(*job.input_args(*PROMPT, "--max-workers", "8", *args))

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    arrivals = sorted(record.at for record in fake_openai.requests)
    assert len(arrivals) == 10
    # 2 may go at once, then one every 0.5 s: the 10th no sooner than 4 s after the first.
    assert arrivals[-1] - arrivals[0] >= 3.8, arrivals
    assert result.stderr.count("quota: ") == 2  # after requests 4 and 8


@pytest.mark.timeout(60)
def test_a_server_that_only_says_429_cannot_hold_the_run_forever(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    """Every request answered 429 with retry-after 1 s and --pause-duration 0.001 h (3.6 s):
    each pause is short, but after 3.6 s of nothing but 429s the run ends with exit 7,
    nobody failed."""
    job = make_job(4, seed=712)
    fake_openai.add_rule("rate_limit", retry_after=1)

    started = time.monotonic()
    result = job.run(*job.input_args(*PROMPT, "--pause-duration", "0.001"))

    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    assert "nothing but 429s" in result.stderr
    assert time.monotonic() - started < 30
    assert _failures(job) == []
