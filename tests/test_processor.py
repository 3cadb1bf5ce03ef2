"""``process_artists_concurrent`` in-process: its own policy, counted where money is spent.

The real SDK talks HTTP to the fake server (a thread of this process), bios are committed
to a real PostgreSQL through a real ``BioStore`` (or a ``JsonlOnlyLedger``), lines go
through a real ``JsonlWriter`` and failures through a real ``FailureLog``. What is checked
is the processor's policy: the canary, the window of 2 x workers, the failure streak, the
systemic stops and the shutdown grace. The fake counts every request it gets, so "how many
requests did this cost" is counted where the money would be spent.

To know exactly which artists are in flight, several tests call ``fake.hold()`` from
``on_outcome`` when the canary's outcome arrives: ``on_outcome`` runs in the feeding thread
before the window opens, so every later request is parked at the fake until ``release()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.api.client import create_client_pool
from artist_bio_gen.api.request import PromptSettings
from artist_bio_gen.core import processor as processor_module
from artist_bio_gen.core.failures import FailureLog
from artist_bio_gen.core.jsonl import JsonlWriter
from artist_bio_gen.core.ledger import DatabaseLedger, JsonlOnlyLedger, Ledger
from artist_bio_gen.core.processor import (
    OutcomeCallback,
    Pipeline,
    RunControl,
    Tally,
    process_artists_concurrent,
)
from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.schema import ensure_ledger, inspect_target_table
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.errors import (
    ArtistBioGenError,
    ConfigError,
    QuotaExhaustedError,
    RunAbortedError,
)
from artist_bio_gen.failure_codes import counts_towards_cap, stops_run
from artist_bio_gen.models import ArtistData, DatabaseConfig, JobRef, Outcome
from artist_bio_gen.utils import memory
from artist_bio_gen.utils.logging import TransactionLog

from .support.checks import assert_mirror, read_jsonl
from .support.cli import TEST_API_KEY
from .support.data import make_artists
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

PROMPT = PromptSettings(prompt_id="pmpt_inproc")
#: Every request ends by itself within this, so no worker can outlive its test for long.
REQUEST_TIMEOUT = 15.0
#: Generous bound for anything that should take a fraction of a second (2 shared cores).
PATIENCE = 30.0
#: The executor's worker threads are named ``artist_<n>`` (``thread_name_prefix``).
WORKER_PREFIX = "artist_"
#: The thread a ``Background`` call runs in.
BACKGROUND_NAME = "test-run"


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t.is_alive()]


def _wait_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@dataclass
class Run:
    """One ``process_artists_concurrent`` call: its pipeline, its files, what it reported."""

    pipeline: Pipeline
    control: RunControl
    output: Path
    failures: Path
    #: Every outcome in the order ``on_outcome`` saw them (the feeding thread's order).
    outcomes: list[Outcome] = field(default_factory=list)
    #: ``control.error`` as it was when each outcome was reported.
    errors_seen: list[ArtistBioGenError | None] = field(default_factory=list)

    def go(
        self,
        artists: Iterable[ArtistData],
        *,
        workers: int,
        on_outcome: OutcomeCallback | None = None,
        grace: float = PATIENCE,
        streak: int | None = None,
    ) -> Tally:
        def collect(outcome: Outcome, tally: Tally) -> None:
            self.outcomes.append(outcome)
            self.errors_seen.append(self.control.error)
            if on_outcome is not None:
                on_outcome(outcome, tally)

        return process_artists_concurrent(
            artists,
            self.pipeline,
            self.control,
            max_workers=workers,
            on_outcome=collect,
            shutdown_grace=grace,
            failure_streak_limit=streak,
        )

    def outcome_of(self, artist: ArtistData) -> Outcome:
        (outcome,) = [o for o in self.outcomes if o.artist_id == artist.artist_id]
        return outcome

    def failure_lines(self) -> list[dict]:
        return read_jsonl(self.failures) if self.failures.exists() else []


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI) -> Iterator[MakeRun]:
    """Builds a ``Run`` over the real parts (the test's database unless ``db=False``); on
    teardown lets every worker finish before anything they use is closed or dropped."""
    stack = contextlib.ExitStack()

    def build(workers: int, *, db: bool = True, skip_existing: bool = False) -> Run:
        job_id = str(uuid.uuid4())
        output = tmp_path / "out.jsonl"
        failures = tmp_path / "out.failures.jsonl"
        pipeline = Pipeline(
            settings=PROMPT,
            client=stack.enter_context(
                # Sized as a run sizes it (``core/assembly.open_clients``): a connection
                # for every thread of the pool, so only the API slots bound the requests.
                create_client_pool(
                    TEST_API_KEY,
                    fake_openai.base_url,
                    workers=workers,
                    threads=processor_module.pool_threads(workers),
                    timeout=REQUEST_TIMEOUT,
                    max_retries=0,
                )
            ),
            ledger=_ledger(stack, database if db else None, job_id, output, skip_existing),
            writer=stack.enter_context(JsonlWriter(output)),
            failures=stack.enter_context(FailureLog(failures, job_id)),
            txlog=_closing(stack, TransactionLog(tmp_path / "out.transactions.jsonl", job_id)),
            skip_existing=skip_existing,
            api_key=TEST_API_KEY,
        )
        return Run(pipeline, RunControl(), output, failures)

    yield build
    # Abandoned workers still use the writer, the pool and the clients: let them finish
    # (held requests are answered, hung ones time out) before anything is closed.
    fake_openai.release()
    for thread in [t for t in threading.enumerate() if t.name == BACKGROUND_NAME]:
        thread.join(timeout=REQUEST_TIMEOUT + PATIENCE)
    for thread in _worker_threads():
        thread.join(timeout=REQUEST_TIMEOUT + PATIENCE)
    stuck = _worker_threads()
    stack.close()
    assert not stuck, f"worker threads outlived the test: {stuck}"


def _closing(stack: contextlib.ExitStack, resource: TransactionLog) -> TransactionLog:
    stack.callback(resource.close)
    return resource


def _ledger(
    stack: contextlib.ExitStack,
    database: TestDatabase | None,
    job_id: str,
    output: Path,
    skip_existing: bool,
) -> Ledger:
    if database is None:
        return JsonlOnlyLedger(output)
    config = DatabaseConfig(url=database.url, pool_size=10, retry_seconds=5)
    pool = create_db_connection_pool(config)
    stack.callback(pool.close)
    where = describe_database(config.url)
    ensure_ledger(pool, where)
    store = BioStore(pool, config, inspect_target_table(pool, "artists", where))
    return DatabaseLedger(
        store, JobRef(job_id, PROMPT.prompt_id, None, None), keep_existing=skip_existing
    )


class CountingInput:
    """The input as a generator that notes, at each pull, how far it runs ahead of the
    outcomes reported so far (both happen in the feeding thread, so no race)."""

    def __init__(self, artists: list[ArtistData], outcomes: list[Outcome]):
        self._artists = artists
        self._outcomes = outcomes
        self.pulled = 0
        self.leads: list[int] = []

    def __iter__(self) -> Iterator[ArtistData]:
        for artist in self._artists:
            self.pulled += 1
            self.leads.append(self.pulled - len(self._outcomes))
            yield artist


class Background:
    """A call in a thread of its own, so the test can act while it runs."""

    def __init__(self, call: Callable[[], Tally]):
        self._call = call
        self._value: Tally | None = None
        self._error: BaseException | None = None
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, name=BACKGROUND_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:
            self._error = exc
        finally:
            self.finished_at = time.monotonic()

    def result(self, timeout: float = PATIENCE) -> Tally:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the run did not return within {timeout} s"
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _hold_after_canary(fake: FakeOpenAI, run: Run) -> OutcomeCallback:
    """An ``on_outcome`` that parks every request after the canary at the fake."""

    def hold(outcome: Outcome, tally: Tally) -> None:
        if len(run.outcomes) == 1:
            fake.hold()

    return hold


# -- the canary -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_a_bad_key_costs_one_request_whatever_the_workers(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI, workers: int
) -> None:
    """The first artist runs alone: a rejected key stops the run after one request, and
    nothing is recorded against any artist (the key is not their fault)."""
    artists = make_artists(40, seed=401)
    database.seed(artists)
    fake_openai.add_rule("unauthorized")
    run = make_run(workers)

    tally = run.go(artists, workers=workers)

    assert fake_openai.total_requests == 1
    assert isinstance(run.control.error, ConfigError)
    assert run.control.error.exit_code == exit_codes.EXIT_CONFIG_ERROR
    assert [(o.status, o.code) for o in run.outcomes] == [("failed", "auth")]
    assert tally.committed == tally.not_started == 0
    assert run.failure_lines() == []
    assert database.ledger() == []
    assert set(database.bios().values()) == {None}
    assert run.output.read_bytes() == b""


def test_after_a_good_canary_the_window_fills(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """No second request before the canary's outcome is in; after it, all workers at once."""
    workers = 4
    artists = make_artists(1 + 3 * workers, seed=402)
    database.seed(artists)
    fake_openai.latency = 0.2
    run = make_run(workers)
    reported_at: list[float] = []

    tally = run.go(
        artists, workers=workers, on_outcome=lambda o, t: reported_at.append(time.monotonic())
    )

    arrivals = sorted(record.at for record in fake_openai.requests)
    assert arrivals[1] >= reported_at[0], "a second request went out before the canary ended"
    assert fake_openai.concurrent_max == workers
    assert tally.committed == len(artists) and run.control.error is None
    assert len(assert_mirror(run.output, database)) == len(artists)


# -- the window -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [3, 24], ids=["woken-per-artist", "woken-per-3"])
def test_the_window_bounds_requests_in_flight_and_input_read_ahead(
    make_run: MakeRun, fake_openai: FakeOpenAI, workers: int
) -> None:
    """With slow answers: never more than W requests at the fake, and the input is read at
    most 2 x W (submitted) + 1 (in the feeder's hand, waiting for a slot) ahead of the
    outcomes. The lead reaches that bound exactly: the window is 2 x W, not less. With 24
    workers the feeder is woken per 3 finished artists: the bound and the count hold."""
    artists = make_artists(8 * workers, seed=403)
    fake_openai.latency = 0.1
    run = make_run(workers, db=False)  # a JsonlOnlyLedger this time
    source = CountingInput(artists, run.outcomes)

    tally = run.go(source, workers=workers)

    assert fake_openai.concurrent_max == workers
    assert max(source.leads) == 2 * workers + 1, source.leads
    assert tally.committed == len(artists) and source.pulled == len(artists)
    assert {a.name: fake_openai.calls(a.name) for a in artists} == {a.name: 1 for a in artists}
    records = read_jsonl(run.output)
    assert sorted(r["artist_id"] for r in records) == sorted(a.artist_id for a in artists)
    assert {r["db_status"] for r in records} == {"null"}


def test_an_answer_waiting_for_its_commit_leaves_its_api_slot_to_the_next_artist(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Commits stall (the user's table is locked): each thread holding an answer waits in
    its commit without its API slot, so the pool's extra threads (``commit_threads``) keep
    requests going until every thread holds an answer; never more than W requests at once,
    and once the table is free every answer is committed and appended."""
    workers = 16
    threads = processor_module.pool_threads(workers)
    assert threads > workers
    artists = make_artists(4 * workers, seed=411)
    database.seed(artists)
    fake_openai.latency = 0.05
    run = make_run(workers)

    def answers_held() -> int:
        # Answered by the fake but not committed: their threads wait in the commit.
        return fake_openai.total_requests - fake_openai.in_flight - len(database.ledger())

    with database.connect() as blocker:
        job = Background(lambda: run.go(artists, workers=workers))
        assert _wait_until(lambda: len(run.outcomes) >= 1)  # the canary is committed
        with blocker.transaction():
            blocker.execute("LOCK TABLE artists IN ACCESS EXCLUSIVE MODE")
            assert _wait_until(lambda: answers_held() == threads), answers_held()
            time.sleep(0.3)  # no thread is left to send another request
            assert answers_held() == threads and fake_openai.in_flight == 0
    tally = job.result()

    assert fake_openai.concurrent_max == workers
    assert tally.committed == len(artists) == fake_openai.total_requests
    assert len(assert_mirror(run.output, database)) == len(artists)


def test_a_stop_wakes_the_threads_waiting_for_an_api_slot(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Every API slot is held by a request the fake holds; the pool's extra thread waits
    for a slot with its artist. An interrupt wakes it at once: its artist is not started
    (no request), and only the W artists inside a request are abandoned after the grace."""
    workers, grace = 8, 0.3
    extra = processor_module.commit_threads(workers)
    assert extra >= 1
    artists = make_artists(1 + 2 * workers, seed=412)
    database.seed(artists)
    run = make_run(workers)
    job = Background(
        lambda: run.go(
            artists, workers=workers, on_outcome=_hold_after_canary(fake_openai, run), grace=grace
        )
    )
    assert fake_openai.wait_for_requests(1 + workers, timeout=PATIENCE)
    assert _wait_until(lambda: len(_worker_threads()) == workers + extra)
    time.sleep(0.2)  # the extra thread is waiting for a slot by now
    run.control.interrupt()
    tally = job.result()
    requests = fake_openai.total_requests
    fake_openai.release()

    assert requests == 1 + workers  # the waiting artist made no request
    assert tally.abandoned == workers
    assert tally.committed == 1 and tally.not_started == len(artists) - 1 - workers


def test_the_feeder_releases_free_memory_every_release_every_outcomes(
    make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder hands the heap's free pages back once per ``RELEASE_EVERY`` outcomes (see
    ``utils/memory.py``), so RSS does not creep up with the number of artists."""
    calls: list[int] = []
    monkeypatch.setattr(processor_module, "RELEASE_EVERY", 4)
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    run = make_run(3, db=False)

    tally = run.go(make_artists(18, seed=901), workers=3)

    assert tally.committed == 18
    assert len(calls) == 18 // 4


# -- the failure streak -----------------------------------------------------------------------


def test_a_streak_of_identical_failures_stops_the_run_at_the_limit(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Everyone gets ``bad_request``: the run stops with RunAbortedError on exactly the
    limit-th failure, within one window of requests; queued artists are not requested."""
    workers, limit = 2, 5
    artists = make_artists(40, seed=404)
    database.seed(artists)
    fake_openai.add_rule("bad_request")
    run = make_run(workers)

    tally = run.go(artists, workers=workers, streak=limit)

    assert isinstance(run.control.error, RunAbortedError)
    assert "in a row failed with 'bad_request'" in str(run.control.error)
    first_seen_stopped = next(i for i, e in enumerate(run.errors_seen) if e is not None)
    assert first_seen_stopped == limit - 1, "the run must stop on the limit-th failure"
    assert limit <= fake_openai.total_requests <= limit + 2 * workers
    failed = [o for o in run.outcomes if o.status == "failed"]
    assert {o.code for o in failed} == {"bad_request"}
    assert len(failed) == tally.failed == fake_openai.total_requests
    for outcome in run.outcomes:
        if outcome.status == "not_started":
            assert fake_openai.calls(outcome.artist_name) == 0
    assert sorted(f["artist_id"] for f in run.failure_lines()) == sorted(
        o.artist_id for o in failed
    )
    assert database.ledger() == []


@pytest.mark.parametrize("breaker", ["ok", "empty"], ids=["by-a-success", "by-another-code"])
def test_a_broken_streak_does_not_stop_the_run(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI, breaker: str
) -> None:
    """Runs of limit - 1 ``bad_request`` separated by a success (or by another failure
    code) never make a streak. One worker, so outcomes come in input order."""
    limit = 3
    artists = make_artists(4 * limit, seed=405)
    database.seed(artists)
    breakers = artists[limit - 1 :: limit]
    for artist in breakers:
        fake_openai.add_rule(breaker, name=artist.name)
    fake_openai.add_rule("bad_request")
    run = make_run(1)

    tally = run.go(artists, workers=1, streak=limit)

    assert run.control.error is None
    assert fake_openai.total_requests == len(artists)
    assert [o.artist_id for o in run.outcomes] == [a.artist_id for a in artists]
    assert tally.failed == len(artists) - (len(breakers) if breaker == "ok" else 0)
    assert tally.not_started == 0


# -- systemic stops ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "error", "exit_code"),
    [
        ("insufficient_quota", "insufficient_quota", QuotaExhaustedError, 5),
        ("not_found", "not_found", ConfigError, 3),
        ("forbidden", "forbidden", ConfigError, 3),
    ],
)
def test_a_systemic_failure_stops_the_run(
    make_run: MakeRun,
    database: TestDatabase,
    fake_openai: FakeOpenAI,
    fault: str,
    code: str,
    error: type[ArtistBioGenError],
    exit_code: int,
) -> None:
    """The canary fails for itself (``bad_request``), so the window opens; the W artists
    then in flight get the systemic fault. The run stops with that fault's error; the W
    queued artists come back ``not_started`` without a request; the failures file holds
    exactly the artists whose code counts towards the cap (the canary), not the others.

    (No per-artist failure among the W in flight: its worker could finish before any stop
    and take a queued artist, which would then be requested.)"""
    workers = 3
    artists = make_artists(30, seed=406)
    database.seed(artists)
    canary, in_flight = artists[0], artists[1 : 1 + workers]
    queued = artists[1 + workers : 1 + 2 * workers]
    fake_openai.add_rule("bad_request", name=canary.name)
    fake_openai.add_rule(fault)
    run = make_run(workers)
    source = CountingInput(artists, run.outcomes)

    job = Background(
        lambda: run.go(source, workers=workers, on_outcome=_hold_after_canary(fake_openai, run))
    )
    try:
        assert fake_openai.wait_for_requests(1 + workers, timeout=PATIENCE)
        # The window is full: 2 x W submitted after the canary, one more in the feeder's hand.
        assert _wait_until(lambda: source.pulled == 2 + 2 * workers), source.pulled
    finally:
        fake_openai.release()
    tally = job.result()

    assert isinstance(run.control.error, error)
    assert run.control.error.exit_code == exit_code
    assert fake_openai.total_requests == 1 + workers
    assert source.pulled == 2 + 2 * workers, "nothing is read after the stop"
    assert stops_run(code) and not counts_towards_cap(code)
    assert run.outcome_of(canary).code == "bad_request"
    assert [run.outcome_of(a).code for a in in_flight] == [code] * workers
    assert [run.outcome_of(a).status for a in queued] == ["not_started"] * workers
    assert [fake_openai.calls(a.name) for a in queued] == [0] * workers
    assert tally.not_started == workers
    recorded = {o.artist_id for o in run.outcomes if counts_towards_cap(o.code)}
    assert recorded == {canary.artist_id}
    assert sorted(f["artist_id"] for f in run.failure_lines()) == sorted(recorded)
    assert all(f["attempt"] == 1 for f in run.failure_lines())
    assert database.ledger() == []


# -- abandoned workers ------------------------------------------------------------------------


def test_an_interrupt_abandons_held_workers_after_the_grace(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """W requests parked at the fake, interrupt from another thread, grace 0.5 s: the call
    returns after about the grace with ``abandoned`` = W. Released afterwards, the workers
    commit and append whole lines: the JSONL still mirrors the ledger."""
    workers, grace = 3, 0.5
    artists = make_artists(1 + workers, seed=407)  # after the canary, W in flight, none queued
    database.seed(artists)
    run = make_run(workers)

    job = Background(
        lambda: run.go(
            artists,
            workers=workers,
            on_outcome=_hold_after_canary(fake_openai, run),
            grace=grace,
        )
    )
    assert fake_openai.wait_for_requests(1 + workers, timeout=PATIENCE)
    interrupted_at = time.monotonic()
    run.control.interrupt()
    tally = job.result()

    took = job.finished_at - interrupted_at
    assert grace - 0.05 <= took < grace + 5.0, f"returned {took:.2f} s after the interrupt"
    assert tally.abandoned == workers == fake_openai.in_flight
    assert tally.committed == 1 and tally.not_started == 0
    assert run.control.interrupted and run.control.error is None
    left = _worker_threads()
    assert len(left) == workers

    fake_openai.release()
    for thread in left:
        thread.join(timeout=PATIENCE)
    assert not _worker_threads(), "released workers must finish"
    assert len(assert_mirror(run.output, database)) == 1 + workers


def test_an_interrupt_from_on_outcome_leaves_slow_workers_behind(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """The interrupt comes from ``on_outcome`` (a fast artist's outcome) while two others
    answer only after 3 s: the call returns after the 0.3 s grace with those two abandoned;
    they finish later on their own, committing and appending whole lines."""
    workers, grace, slow_seconds = 3, 0.3, 3.0
    artists = make_artists(1 + workers, seed=408)
    database.seed(artists)
    slow, fast = artists[1:workers], artists[workers]
    for artist in slow:
        fake_openai.add_rule("hang", name=artist.name, delay=slow_seconds)
    run = make_run(workers)

    def stop_on_fast(outcome: Outcome, tally: Tally) -> None:
        if outcome.artist_id == fast.artist_id:
            run.control.interrupt()

    started = time.monotonic()
    tally = run.go(artists, workers=workers, on_outcome=stop_on_fast, grace=grace)
    took = time.monotonic() - started

    assert took < slow_seconds, "the run waited for the slow workers past the grace"
    assert tally.abandoned == len(slow) == fake_openai.in_flight
    assert tally.committed == 2  # the canary and the fast one
    # The fast artist's thread leaves the shut-down executor; the slow ones are still busy.
    assert _wait_until(lambda: len(_worker_threads()) == len(slow))
    for thread in _worker_threads():
        thread.join(timeout=PATIENCE)
    assert not _worker_threads()
    records = assert_mirror(run.output, database)
    assert sorted(r["artist_id"] for r in records) == sorted(a.artist_id for a in artists)


# -- behaviours that look wrong ---------------------------------------------------------------


def test_abandoned_counts_only_the_artists_still_running(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """When the grace period runs out, only the W artists inside an API call are abandoned;
    the queued ones of the window are cancelled without a request (not started)."""
    workers, grace = 2, 0.2
    artists = make_artists(2 + 2 * workers, seed=409)
    database.seed(artists)
    queued = artists[1 + workers : 1 + 2 * workers]
    run = make_run(workers)
    source = CountingInput(artists, run.outcomes)

    job = Background(
        lambda: run.go(
            source, workers=workers, on_outcome=_hold_after_canary(fake_openai, run), grace=grace
        )
    )
    assert fake_openai.wait_for_requests(1 + workers, timeout=PATIENCE)
    assert _wait_until(lambda: source.pulled == 2 + 2 * workers)
    run.control.interrupt()
    tally = job.result()
    running = fake_openai.in_flight
    fake_openai.release()
    for thread in _worker_threads():
        thread.join(timeout=PATIENCE)

    assert running == workers
    assert [fake_openai.calls(a.name) for a in queued] == [0] * workers  # cancelled, never run
    assert tally.abandoned == running


def test_a_skipped_first_artist_is_no_canary(
    make_run: MakeRun, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A first artist skipped by --skip-existing made no request, so it shows nothing about
    the key: the next artist is still the canary, and a bad key costs one request."""
    workers = 4
    artists = make_artists(20, seed=410)
    database.seed(artists[:1], bio="A curated bio.")
    database.seed(artists[1:])
    fake_openai.add_rule("unauthorized")
    run = make_run(workers, skip_existing=True)

    job = Background(
        lambda: run.go(artists, workers=workers, on_outcome=_hold_after_canary(fake_openai, run))
    )
    try:
        # Parked at the fake, the requests that follow the skip can be counted before any
        # of them is answered (one if the canary goes on, W if the window opened).
        fake_openai.wait_for_requests(2, timeout=2.0)
    finally:
        fake_openai.release()
    job.result()

    assert run.outcomes[0].status == "skipped"
    assert isinstance(run.control.error, ConfigError)
    assert fake_openai.total_requests == 1
