"""Budgets: the daily request limit (real PostgreSQL, or a file) and the cost cap.

Every usage store test runs against both stores (``DatabaseUsage`` on the test's database,
``FileUsage`` in the test's directory) through ``open_usage``, which opens the job's counts
the way a new run would: a new object (a new pool for the database), reading what is there.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from artist_bio_gen.core.budget import (
    CostBudget,
    DailyBudget,
    DatabaseUsage,
    FileUsage,
    UsageStore,
    utc_today,
)
from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.schema import ensure_ledger
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.errors import ConfigError
from artist_bio_gen.jobfiles import JobPaths
from artist_bio_gen.models import DatabaseConfig

from .support.database import TestDatabase

DAY = date(2025, 8, 14)
NEXT_DAY = DAY + timedelta(days=1)

OpenUsage = Callable[[], UsageStore]


class Clock:
    """An injectable UTC day."""

    def __init__(self, day: date = DAY) -> None:
        self.day = day

    def __call__(self) -> date:
        return self.day


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def pools(database: TestDatabase) -> Iterator[list[ConnectionPool]]:
    """Pools opened by the test (closed at its end); the first one migrated the ledger."""
    opened: list[ConnectionPool] = []
    yield opened
    for pool in opened:
        pool.close()


def _database_store(database: TestDatabase, pools: list[ConnectionPool]) -> BioStore:
    config = DatabaseConfig(url=database.url, pool_size=4, retry_seconds=5)
    pool = create_db_connection_pool(config)
    pools.append(pool)
    ensure_ledger(pool, describe_database(config.url))
    return BioStore(pool, config)


@pytest.fixture(params=["database", "file"])
def open_usage(request: pytest.FixtureRequest, tmp_path: Path, job_id: str) -> Iterator[OpenUsage]:
    """Opens the job's counts as a new run would (each call: a new store object)."""
    if request.param == "database":
        database: TestDatabase = request.getfixturevalue("database")
        pools: list[ConnectionPool] = request.getfixturevalue("pools")
        yield lambda: DatabaseUsage(_database_store(database, pools), job_id)
    else:
        path = JobPaths(tmp_path / "out.jsonl").usage
        yield lambda: FileUsage(path, job_id)


# --- the stores ----------------------------------------------------------------------------


def test_reserve_never_grants_past_the_limit(open_usage: OpenUsage) -> None:
    usage = open_usage()
    assert usage.used(DAY) == 0
    assert [usage.reserve(DAY, 16, 40) for _ in range(5)] == [16, 16, 8, 0, 0]
    assert usage.used(DAY) == 40
    assert usage.reserve(DAY, 0, 40) == 0
    # A lower limit on a later run (--daily-limit changed): nothing more, nothing negative.
    assert usage.reserve(DAY, 5, 30) == 0
    assert usage.used(DAY) == 40
    # A first reservation larger than the limit gets the limit.
    assert usage.reserve(NEXT_DAY, 100, 7) == 7
    assert usage.used(NEXT_DAY) == 7


def test_release_gives_back_and_never_below_zero(open_usage: OpenUsage) -> None:
    usage = open_usage()
    assert usage.reserve(DAY, 16, 40) == 16
    usage.release(DAY, 10)
    assert usage.used(DAY) == 6
    assert usage.reserve(DAY, 40, 40) == 34
    usage.release(DAY, 1000)
    assert usage.used(DAY) == 0
    usage.release(NEXT_DAY, 5)  # nothing reserved that day: nothing to give back
    assert usage.used(NEXT_DAY) == 0


def test_the_counts_survive_a_reopen_and_days_are_separate(open_usage: OpenUsage) -> None:
    first = open_usage()
    assert first.reserve(DAY, 16, 100) == 16
    second = open_usage()  # the next run, the same day
    assert second.used(DAY) == 16
    assert second.reserve(DAY, 100, 100) == 84
    assert second.used(NEXT_DAY) == 0  # the next day starts at 0
    assert second.reserve(NEXT_DAY, 16, 100) == 16


def test_other_jobs_have_their_own_counts(
    open_usage: OpenUsage, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    usage = open_usage()
    assert usage.reserve(DAY, 10, 10) == 10
    other_job = str(uuid.uuid4())
    if isinstance(usage, FileUsage):
        # The same output reused by a new job (--overwrite): the old job's file counts nothing.
        other: UsageStore = FileUsage(JobPaths(tmp_path / "out.jsonl").usage, other_job)
    else:
        database: TestDatabase = request.getfixturevalue("database")
        other = DatabaseUsage(
            _database_store(database, request.getfixturevalue("pools")), other_job
        )
    assert other.used(DAY) == 0
    assert other.reserve(DAY, 10, 10) == 10


def test_concurrent_reserves_never_exceed_the_limit(
    database: TestDatabase, pools: list[ConnectionPool], job_id: str
) -> None:
    """8 threads on two pools (as two processes would) reserve odd amounts until nothing is
    left: together they get exactly the limit."""
    stores = [DatabaseUsage(_database_store(database, pools), job_id) for _ in range(2)]
    limit = 500
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        rng = random.Random(index)
        usage = stores[index % 2]
        start.wait()
        try:
            while (got := usage.reserve(DAY, rng.randint(1, 7), limit)) > 0:
                with lock:
                    granted.append(got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sum(granted) == limit
    assert stores[0].used(DAY) == limit
    with database.connect() as conn:
        rows = conn.execute("SELECT job_id::text, day, requests FROM artist_bio_usage").fetchall()
    assert rows == [(job_id, DAY, limit)]


def test_a_database_reservation_is_one_statement_while_it_fits(
    database: TestDatabase,
    pools: list[ConnectionPool],
    job_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usage = DatabaseUsage(_database_store(database, pools), job_id)
    real_execute = psycopg.Connection.execute
    statements: list[str] = []

    def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        if "artist_bio_usage" in str(query):
            statements.append(str(query))
        return real_execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    assert usage.reserve(DAY, 16, 40) == 16  # inserts the day's row
    assert usage.reserve(DAY, 16, 40) == 16  # updates it
    assert len(statements) == 2
    assert usage.reserve(DAY, 16, 40) == 8  # the rest: read the count, ask again
    assert usage.reserve(DAY, 16, 40) == 0
    assert len(statements) == 2 + 3 + 2


def test_a_database_release_is_not_retried_and_an_outage_keeps_the_requests_counted(
    database: TestDatabase,
    pools: list[ConnectionPool],
    job_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release whose outcome is unknown must not be repeated: the count would come out
    low. When the database is away it stays counted, which only costs budget."""
    store = _database_store(database, pools)
    usage = DatabaseUsage(store, job_id)
    assert usage.reserve(DAY, 16, 40) == 16
    attempts: list[int] = []

    def unreachable(*args: object, **kwargs: object) -> None:
        attempts.append(1)
        raise psycopg.OperationalError("server closed the connection (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(store._pool, "connection", unreachable)
        usage.release(DAY, 10)  # no exception
    assert attempts == [1]
    assert usage.used(DAY) == 16


def test_a_file_is_replaced_whole_or_not_at_all(
    tmp_path: Path, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = JobPaths(tmp_path / "out.jsonl").usage
    assert path.name == "out.usage.json"
    usage = FileUsage(path, job_id)
    assert usage.reserve(DAY, 16, 40) == 16
    before = path.read_bytes()
    assert json.loads(before) == {"format": 1, "job_id": job_id, "days": {"2025-08-14": 16}}

    def crash(*args: object) -> None:
        raise OSError("no space left on device (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError):
            usage.reserve(DAY, 16, 40)  # nothing granted: the write failed
        usage.release(DAY, 16)  # a failed release keeps them counted (a warning)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.usage.json"]  # no temp left
    assert FileUsage(path, job_id).used(DAY) == 16


def test_a_file_keeps_the_last_week_only(tmp_path: Path, job_id: str) -> None:
    path = tmp_path / "out.usage.json"
    usage = FileUsage(path, job_id)
    for offset in range(12):
        usage.reserve(DAY + timedelta(days=offset), 1, 5)
    days = json.loads(path.read_text())["days"]
    assert sorted(days) == [(DAY + timedelta(days=o)).isoformat() for o in range(4, 12)]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format": 2, "job_id": "x", "days": {}}',
        '{"format": 1, "job_id": "JOB", "days": {"yesterday": 3}}',
    ],
    ids=["torn", "not-an-object", "newer-format", "bad-day"],
)
def test_a_damaged_file_is_refused_with_the_fix(tmp_path: Path, job_id: str, content: str) -> None:
    path = tmp_path / "out.usage.json"
    path.write_text(content.replace("JOB", job_id))
    with pytest.raises(ConfigError, match="delete it to count today's requests from zero"):
        FileUsage(path, job_id)


# --- the run's view: DailyBudget -----------------------------------------------------------


def _take_in_threads(budget: DailyBudget, takes: int, threads: int = 8) -> int:
    """``takes`` calls of ``take`` spread over ``threads`` threads; how many were True."""
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def run(count: int) -> None:
        start.wait()
        mine = [budget.take() for _ in range(count)]
        with lock:
            results.extend(mine)

    share = [takes // threads + (1 if i < takes % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=run, args=(n,)) for n in share]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(results) == takes
    return sum(results)


def test_a_daily_limit_of_40_allows_exactly_40_and_again_the_next_day(
    open_usage: OpenUsage,
) -> None:
    clock = Clock()
    usage = open_usage()
    budget = DailyBudget(usage, 40, today=clock)
    assert _take_in_threads(budget, 120) == 40
    assert budget.used_today() == 40 and usage.used(DAY) == 40
    assert budget.take() is False
    clock.day = NEXT_DAY
    assert budget.take() is True
    assert _take_in_threads(budget, 120) == 39
    assert budget.taken == 80
    budget.close()
    assert usage.used(DAY) == 40 and usage.used(NEXT_DAY) == 40


def test_runs_of_the_same_day_share_the_limit(open_usage: OpenUsage) -> None:
    clock = Clock()
    first = DailyBudget(open_usage(), 40, today=clock)
    assert sum(first.take() for _ in range(10)) == 10
    first.close()  # gives back 6 of the 16 reserved
    second = DailyBudget(open_usage(), 40, today=clock)
    assert second.used_today() == 10
    assert sum(second.take() for _ in range(100)) == 30
    second.close()
    assert DailyBudget(open_usage(), 40, today=clock).used_today() == 40


def test_a_crash_loses_the_reservation_and_never_passes_the_limit(open_usage: OpenUsage) -> None:
    """No close (a kill -9): the unused part of the block stays counted."""
    clock = Clock()
    crashed = DailyBudget(open_usage(), 40, today=clock, block=16)
    assert sum(crashed.take() for _ in range(5)) == 5  # 16 reserved, 11 unused
    del crashed
    after = DailyBudget(open_usage(), 40, today=clock, block=16)
    assert after.used_today() == 16
    assert sum(after.take() for _ in range(100)) == 24
    assert 5 + 24 <= 40
    after.close()
    clock.day = NEXT_DAY
    assert DailyBudget(open_usage(), 40, today=clock).used_today() == 0


def test_a_block_reserved_for_yesterday_is_not_used_today(open_usage: OpenUsage) -> None:
    clock = Clock()
    usage = open_usage()
    budget = DailyBudget(usage, 40, today=clock, block=16)
    assert sum(budget.take() for _ in range(3)) == 3
    assert usage.used(DAY) == 16
    clock.day = NEXT_DAY
    assert budget.take() is True
    assert usage.used(DAY) == 3  # the 13 left were given back to their day
    assert usage.used(NEXT_DAY) == 16  # a new block for the new day
    assert budget.used_today() == 1
    budget.close()
    budget.close()  # idempotent
    assert usage.used(NEXT_DAY) == 1


class _CountingUsage:
    """A store in memory that counts the calls."""

    def __init__(self) -> None:
        self.counts: dict[date, int] = {}
        self.calls = 0

    def reserve(self, day: date, wanted: int, limit: int) -> int:
        self.calls += 1
        granted = max(0, min(wanted, limit - self.counts.get(day, 0)))
        self.counts[day] = self.counts.get(day, 0) + granted
        return granted

    def release(self, day: date, unused: int) -> None:
        self.calls += 1
        self.counts[day] = max(0, self.counts.get(day, 0) - unused)

    def used(self, day: date) -> int:
        self.calls += 1
        return self.counts.get(day, 0)


def test_one_store_call_per_block_and_none_once_spent_or_without_limit() -> None:
    usage = _CountingUsage()
    budget = DailyBudget(usage, 1000, today=Clock(), block=16)
    assert all(budget.take() for _ in range(160))
    assert usage.calls == 10
    spent = DailyBudget(usage, 160, today=Clock(), block=16)
    assert spent.take() is False
    calls = usage.calls
    assert not any(spent.take() for _ in range(100))
    assert usage.calls == calls  # spent for the day: asked once, not per take

    unlimited = _CountingUsage()
    free = DailyBudget(unlimited, None, today=Clock())
    assert all(free.take() for _ in range(1000))
    assert free.used_today() == 1000 and free.limit is None
    free.close()
    assert unlimited.calls == 0


def test_a_block_must_hold_a_request() -> None:
    with pytest.raises(ValueError, match="block"):
        DailyBudget(_CountingUsage(), 10, block=0)


def test_utc_today_is_a_date() -> None:
    assert isinstance(utc_today(), date)


# --- CostBudget ----------------------------------------------------------------------------


def test_the_cost_cap_holds_under_8_threads() -> None:
    budget = CostBudget(2.5)
    actuals: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(8)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        refused = 0
        start.wait()
        while refused < 20:
            expected = round(rng.uniform(0.001, 0.05), 9)
            if not budget.reserve(expected):
                refused += 1
                continue
            if budget.spent + budget.in_flight > 2.5 + 1e-12:
                errors.append(f"{budget.spent} + {budget.in_flight} passed the cap")
            actual = None if rng.random() < 0.1 else round(rng.uniform(0, expected), 9)
            budget.settle(expected, actual)
            if actual is not None:
                with lock:
                    actuals.append(actual)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert budget.in_flight == 0
    assert budget.spent <= 2.5
    assert budget.spent > 2.4  # it went close to the cap, not stopped early
    assert Decimal(repr(budget.spent)) == sum((Decimal(repr(a)) for a in actuals), Decimal(0))


def test_reservations_count_until_settled() -> None:
    budget = CostBudget(1.0)
    assert budget.max_cost == 1.0
    assert budget.reserve(0.4) and budget.reserve(0.4)
    assert not budget.reserve(0.3)  # 0.8 in flight + 0.3
    assert budget.reserve(0.2)  # exactly the cap is allowed
    budget.settle(0.4, 0.1)
    budget.settle(0.4, None)  # not billed
    budget.settle(0.2, 0.2)
    assert budget.in_flight == 0  # reserve and settle of the same amounts cancel exactly
    assert budget.spent == 0.3
    assert budget.reserve(0.7) and not budget.reserve(0.000000001)
    with pytest.raises(RuntimeError, match="never reserved"):
        budget.settle(0.8, 0.8)


def test_without_a_cap_everything_is_allowed_and_still_added_up() -> None:
    budget = CostBudget(None)
    assert budget.max_cost is None
    for _ in range(10):
        assert budget.reserve(0.1)
        budget.settle(0.1, 0.1)
    assert budget.spent == 1.0  # 10 x 0.1, exactly
    assert budget.in_flight == 0


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")], ids=repr)
def test_amounts_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(ValueError):
        CostBudget(bad)
    with pytest.raises(ValueError):
        CostBudget(1.0).reserve(bad)


def test_a_throttled_request_costs_the_daily_count_no_query_of_its_own(
    database: TestDatabase,
    pools: list[ConnectionPool],
    job_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --daily-limit on a database, 40 requests reserve 3 blocks of 16: 3 statements,
    not one more per request (the limit's message, which reads the count, is only built
    when the limit is reached)."""
    from artist_bio_gen.api.limiter import LimiterSettings, RateLimiter
    from artist_bio_gen.api.ratelimit import parse_rate_limit_headers
    from artist_bio_gen.core.throttle import Throttle
    from artist_bio_gen.models import TokenUsage

    usage = DatabaseUsage(_database_store(database, pools), job_id)
    throttle = Throttle(
        RateLimiter(LimiterSettings()),
        DailyBudget(usage, 1000, today=Clock()),
        CostBudget(None),
        price=None,
        stopping=lambda: False,
    )
    real_execute = psycopg.Connection.execute
    statements: list[str] = []

    def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        if "artist_bio_usage" in str(query):
            statements.append(str(query))
        return real_execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    for _ in range(40):
        ticket = throttle.before_request()
        throttle.answered(ticket, parse_rate_limit_headers({}), TokenUsage(1, 2, 3), 0.0, "m")
    assert len(statements) == 3
    assert usage.used(DAY) == 48 and throttle.counts.requests == 40
