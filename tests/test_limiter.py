"""The run-wide rate limiter (api/limiter.py) on a virtual clock: pace, learned limits,
pauses, stopping, the token estimate and fairness (pure: no network, no database).

``FakeClock`` is a small discrete-event simulation: its ``sleep`` never waits for real.
With one thread, a sleep moves the virtual time forward at once. With several worker
threads, nothing moves until every one of them is asleep; then the one with the earliest
wake-up (the first to fall asleep among equals) runs, alone, until it sleeps again or
ends. Real threads thus run one at a time in an order fixed by the virtual timeline, not
by the OS: the runs are deterministic.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from artist_bio_gen.api.limiter import (
    BACKOFF_FIRST,
    BACKOFF_JITTER,
    BACKOFF_MAX,
    LimiterSettings,
    LimiterStopped,
    LimiterView,
    PauseTooLong,
    RateLimiter,
    SystemClock,
)
from artist_bio_gen.api.ratelimit import (
    UNKNOWN_HEADERS,
    Bucket,
    RateLimitHeaders,
    parse_rate_limit_headers,
)

START = 1000.0
#: A test thread that waits this long in real time for the virtual clock is stuck.
REAL_TIMEOUT = 20.0


class FakeClock:
    """Virtual time for the limiter; thread-safe (see the module docstring)."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._active = 1  # threads that must all be asleep before the time moves
        self._sleepers: list[tuple[float, int, threading.Event]] = []  # a heap by wake-up
        self._order = itertools.count()
        self.sleeps: list[float] = []  # every duration asked for

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        event = threading.Event()
        with self._lock:
            self.sleeps.append(seconds)
            wakeup = self._now + max(seconds, 0.0)
            heapq.heappush(self._sleepers, (wakeup, next(self._order), event))
            self._advance()
        if not event.wait(REAL_TIMEOUT):
            raise RuntimeError("the virtual clock is stuck")

    def _advance(self) -> None:
        """Once every active thread sleeps: jump to the first wake-up, wake that thread."""
        if not self._sleepers or len(self._sleepers) < self._active:
            return
        wakeup, _, event = heapq.heappop(self._sleepers)
        self._now = max(self._now, wakeup)
        event.set()

    def workers(self, count: int) -> None:
        """From now on, ``count`` threads share this clock (each calls ``leave`` at its end)."""
        with self._lock:
            self._active = count

    def leave(self) -> None:
        """A worker thread is done: the others no longer wait for it to sleep."""
        with self._lock:
            self._active -= 1
            self._advance()

    def sleeping(self) -> int:
        with self._lock:
            return len(self._sleepers)


def run_workers(clock: FakeClock, count: int, work: Callable[[int], None]) -> None:
    """Run ``work(index)`` in ``count`` real threads sharing ``clock``; re-raise failures.

    Each thread is started once the ones before it are asleep on the clock (or done), so
    they arrive in the order of their indexes; the time cannot move meanwhile, as the
    threads not started yet are not asleep.
    """
    errors: list[BaseException] = []
    done: list[int] = []

    def body(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.append(index)
            clock.leave()

    clock.workers(count)
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for started, thread in enumerate(threads, 1):
        thread.start()
        deadline = time.monotonic() + REAL_TIMEOUT
        while clock.sleeping() + len(done) < started:
            assert time.monotonic() < deadline, "a thread neither slept nor ended"
            time.sleep(0.0005)
    for thread in threads:
        thread.join(REAL_TIMEOUT)
        assert not thread.is_alive(), "a worker thread hung"
    clock.workers(1)
    if errors:
        raise errors[0]


def limiter(clock: FakeClock, seed: int = 1, **settings: Any) -> RateLimiter:
    """A limiter on ``clock`` with ``settings`` and a seeded random generator."""
    return RateLimiter(LimiterSettings(**settings), clock, random.Random(seed))


def headers(
    requests: tuple[int, int] | None = None,
    tokens: tuple[int, int] | None = None,
    requests_reset: float | None = None,
    tokens_reset: float | None = None,
) -> RateLimitHeaders:
    """Headers saying (limit, remaining) for requests and tokens (None: not sent)."""
    return RateLimitHeaders(
        requests=Bucket(*requests, requests_reset) if requests else Bucket(None, None, None),
        tokens=Bucket(*tokens, tokens_reset) if tokens else Bucket(None, None, None),
    )


def times_of(clock: FakeClock, limiter_: RateLimiter, count: int) -> list[float]:
    """Acquire ``count`` times in a row; the virtual time (from START) of each turn."""
    found = []
    for _ in range(count):
        limiter_.acquire()
        found.append(clock.monotonic() - START)
    return found


def most_in_any_window(times: list[float], window: float) -> int:
    """The most turns in any closed interval of ``window`` seconds."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] < at - window - 1e-9:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- client caps ---------------------------------------------------------------------------


def test_a_600_rpm_cap_lets_10_go_at_once_then_exactly_10_per_second() -> None:
    clock = FakeClock()
    times = times_of(clock, limiter(clock, rpm=600), 40)
    assert times[:10] == [0.0] * 10
    assert times[10:] == pytest.approx([0.1 * k for k in range(1, 31)])
    assert max(clock.sleeps) <= 0.2


def test_a_600_rpm_cap_admits_at_most_610_in_a_minute() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600)
    times: list[float] = []
    while not times or times[-1] <= 60.0:
        limiter_.acquire()
        times.append(clock.monotonic() - START)
    within = [t for t in times if t <= 60.0 + 1e-9]
    assert 600 <= len(within) <= 610
    assert most_in_any_window(times, 1.0) <= 20  # one second's burst plus one second's rate


def test_many_threads_together_never_go_faster_than_the_cap() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600)
    times: list[float] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        while clock.monotonic() - START < 10.0:
            limiter_.acquire()
            with lock:
                times.append(clock.monotonic() - START)
            clock.sleep(0.35)  # the request itself

    run_workers(clock, 50, work)
    ordered = sorted(times)
    assert ordered[:10] == [0.0] * 10
    gaps = [b - a for a, b in itertools.pairwise(ordered[10:])]
    assert min(gaps) >= 0.1 - 1e-9  # after the burst, never two within 0.1 s
    assert most_in_any_window(times, 1.0) <= 20
    in_ten_seconds = [t for t in times if t <= 10.0 + 1e-9]
    assert 100 <= len(in_ten_seconds) <= 110  # and the cap is used, not wasted


def test_a_tpm_cap_paces_by_the_token_estimate() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, tpm=6000, initial_tokens=50)  # 100 tokens a second
    assert times_of(clock, limiter_, 4) == pytest.approx([0.0, 0.0, 0.5, 1.0])
    permit = limiter_.acquire()  # at 1.5 s
    limiter_.observe(permit, UNKNOWN_HEADERS, used_tokens=200)  # 150 more than charged
    times = times_of(clock, limiter_, 2)
    # The correction put the bucket 150 tokens in debt, and requests now cost 200, more
    # than it holds (100): each goes when it is full again, 2.5 s and then 2 s later.
    assert times == pytest.approx([1.5 + 2.5, 1.5 + 2.5 + 2.0])


def test_a_request_larger_than_the_bucket_still_goes() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, tpm=600, initial_tokens=1000)  # capacity 10 tokens
    # The first goes on a full bucket and leaves it 990 in debt; the next waits for full.
    assert times_of(clock, limiter_, 3) == pytest.approx([0.0, 100.0, 200.0])


def test_rpm_and_tpm_together_the_stricter_wins() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600, tpm=60_000, initial_tokens=500)  # tokens: 2 a second
    times = times_of(clock, limiter_, 6)
    assert times == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


def test_without_caps_or_limits_nothing_waits() -> None:
    clock = FakeClock()
    times = times_of(clock, limiter(clock), 1000)
    assert times == [0.0] * 1000
    assert clock.sleeps == []


def test_release_and_a_429_give_the_tokens_back_once() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, tpm=6000, initial_tokens=100)  # one request a second
    first = limiter_.acquire()
    limiter_.release(first)
    limiter_.release(first)  # a second report changes nothing
    second = limiter_.acquire()
    assert clock.monotonic() == START  # the released tokens let it go at once
    limiter_.observe(second, UNKNOWN_HEADERS, used_tokens=100)
    limiter_.release(second)  # already reported: no refund
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(1.0)


# --- learned limits ------------------------------------------------------------------------


@dataclass
class FakeAccount:
    """An account's per-minute buckets as the server keeps them, and its headers.

    ``other_rpm`` is another client using the same account. ``counted_at`` says when the
    server takes a request from the bucket and writes the headers: at ``admission`` or at
    ``response`` (then ``remaining`` already includes requests sent after this one).
    """

    clock: FakeClock
    rpm: int = 600
    tpm: int = 10**9
    other_rpm: float = 0.0
    counted_at: str = "admission"
    requests: float = field(init=False)
    tokens: float = field(init=False)
    stamp: float = field(init=False)
    lowest: float = field(init=False)
    rejected: int = 0
    admitted: list[float] = field(default_factory=list)  # when each request was taken
    after: list[float] = field(default_factory=list)  # the requests bucket after each

    def __post_init__(self) -> None:
        self.requests, self.tokens = float(self.rpm), float(self.tpm)
        self.stamp = self.clock.monotonic()
        self.lowest = self.requests

    def _refill(self) -> None:
        now = self.clock.monotonic()
        elapsed, self.stamp = now - self.stamp, now
        net = (self.rpm - self.other_rpm) / 60  # the refill, less what the other client takes
        self.requests = min(self.rpm, self.requests + net * elapsed)
        self.tokens = min(self.tpm, self.tokens + self.tpm / 60 * elapsed)
        self.lowest = min(self.lowest, self.requests)

    def admit(self, tokens: int) -> bool:
        """Take one request; False (a 429) if the bucket cannot cover it."""
        self._refill()
        # The tolerance: the limiter and this account add up refills in different orders.
        if self.requests < 1 - 1e-6 or self.tokens < tokens - 1e-6:
            self.rejected += 1
            return False
        self.requests -= 1
        self.tokens -= tokens
        self.lowest = min(self.lowest, self.requests)
        self.admitted.append(self.clock.monotonic() - START)
        self.after.append(self.requests)
        return True

    def lowest_since(self, since: float) -> float:
        """The lowest the requests bucket was left by a request taken from ``since`` on."""
        return min(a for t, a in zip(self.admitted, self.after, strict=True) if t >= since)

    def headers(self) -> RateLimitHeaders:
        self._refill()
        return headers(
            requests=(self.rpm, max(0, int(self.requests))),
            tokens=(self.tpm, max(0, int(self.tokens))),
        )


def simulate(
    limiter_: RateLimiter,
    account: FakeAccount,
    seconds: float,
    workers: int = 40,
    latency: float = 2.0,
    used_tokens: int = 100,
) -> None:
    """``workers`` threads sending requests to ``account`` for ``seconds`` of virtual time,
    after one request alone (the run's canary, which teaches the limits)."""
    clock = account.clock

    def request() -> None:
        permit = limiter_.acquire()
        admitted = account.admit(permit.tokens)
        said = account.headers() if account.counted_at == "admission" else None
        clock.sleep(latency)
        said = said or account.headers()
        if admitted:
            limiter_.observe(permit, said, used_tokens)
        else:
            limiter_.rate_limited(permit, said, None)

    def work(_: int) -> None:
        while clock.monotonic() - START < seconds:
            request()

    request()
    run_workers(clock, workers, work)


def pace(times: list[float], start: float, end: float) -> float:
    return len([t for t in times if start <= t < end]) / (end - start)


@pytest.mark.parametrize("counted_at", ["admission", "response"])
def test_a_learned_limit_keeps_the_reserve_and_settles_at_the_refill_rate(
    counted_at: str,
) -> None:
    clock = FakeClock()
    # burst_seconds=60: the minute bucket alone, so the reserve is what stops the burst.
    limiter_ = limiter(clock, threshold=0.8, burst_seconds=60)
    account = FakeAccount(clock, rpm=600, counted_at=counted_at)
    simulate(limiter_, account, seconds=120.0, workers=40, latency=1.0)  # 40 a second at most
    assert account.rejected == 0
    assert account.lowest >= 0.2 * 600 - 1e-6  # never under the reserve
    assert account.lowest <= 0.2 * 600 + 10  # but the bucket was used down to it
    assert pace(account.admitted, 60.0, 120.0) == pytest.approx(10.0, rel=0.05)


@pytest.mark.parametrize("counted_at", ["admission", "response"])
def test_a_learned_limit_shared_with_another_client_keeps_the_reserve(counted_at: str) -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, threshold=0.8, burst_seconds=60)
    # Someone else uses 4 a second of the same 600.
    account = FakeAccount(clock, rpm=600, other_rpm=240, counted_at=counted_at)
    simulate(limiter_, account, seconds=120.0, workers=40, latency=1.0)
    assert account.rejected == 0
    # What the other client takes is not known until an answer says so: the newest answer
    # is 1 s old, turns are fixed up to 1 s ahead, and up to 0.2 s goes by before a waiting
    # worker looks again. At 4 a second: 8.8 under the reserve at most, once steady.
    assert account.lowest_since(60.0) >= 0.2 * 600 - 4 * (1 + 1 + 0.2)
    # While the first bursts drain the bucket, that news comes just as late: at least
    # 80% of the reserve is still left.
    assert account.lowest >= 0.2 * 600 * 0.8
    # What the other client leaves: 6 a second.
    assert pace(account.admitted, 60.0, 120.0) == pytest.approx(6.0, rel=0.05)


def test_threshold_1_may_use_the_whole_bucket_but_no_more() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, threshold=1.0, burst_seconds=60)
    account = FakeAccount(clock, rpm=600)
    simulate(limiter_, account, seconds=120.0, workers=40, latency=1.0)
    assert account.rejected == 0
    assert account.lowest < 0.05 * 600
    assert pace(account.admitted, 60.0, 120.0) == pytest.approx(10.0, rel=0.05)


def test_a_learned_limit_is_sent_at_its_short_window_rate_not_all_at_once() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock)  # default: one second's worth at once, like the caps
    account = FakeAccount(clock, rpm=600)
    simulate(limiter_, account, seconds=30.0, workers=100, latency=0.5)
    assert account.rejected == 0
    assert most_in_any_window(account.admitted[1:], 1.0) <= 21
    assert pace(account.admitted, 10.0, 30.0) == pytest.approx(10.0, rel=0.05)


def test_a_learned_tokens_limit_paces_by_the_tokens_used() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, initial_tokens=2000)
    account = FakeAccount(clock, rpm=10_000, tpm=60_000)  # 1,000 tokens a second
    simulate(limiter_, account, seconds=60.0, workers=50, latency=1.0, used_tokens=250)
    assert account.rejected == 0
    assert limiter_.view().token_estimate == 250
    assert pace(account.admitted, 30.0, 60.0) == pytest.approx(4.0, rel=0.05)


def test_learn_false_ignores_the_headers_and_only_the_caps_apply() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600, learn=False)
    permit = limiter_.acquire()
    limiter_.observe(permit, headers(requests=(60, 0), tokens=(1000, 0)), used_tokens=None)
    times = times_of(clock, limiter_, 20)
    assert times[:9] == [0.0] * 9
    assert times[9:] == pytest.approx([0.1 * k for k in range(1, 12)])
    assert limiter_.view().requests_limit is None


GARBAGE = [
    {},
    {"x-ratelimit-limit-requests": "-1", "x-ratelimit-remaining-requests": "-1"},
    {"x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0"},
    {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "lots"},
    {"x-ratelimit-limit-requests": "soon", "x-ratelimit-remaining-requests": "0"},
    {"x-ratelimit-limit-tokens": "", "x-ratelimit-remaining-tokens": "0"},
    {"x-ratelimit-limit-requests": "1e9", "x-ratelimit-reset-requests": "9999999h"},
]


@pytest.mark.parametrize("raw", GARBAGE)
@pytest.mark.parametrize("rpm", [None, 600.0])
def test_unknown_headers_never_cause_a_wait_beyond_the_caps(
    raw: dict[str, str], rpm: float | None
) -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=rpm)
    said = parse_rate_limit_headers(raw)
    times = []
    for _ in range(30):
        limiter_.observe(limiter_.acquire(), said, used_tokens=None)
        times.append(clock.monotonic() - START)
    expected = [0.0] * 30 if rpm is None else [0.0] * 10 + [0.1 * k for k in range(1, 21)]
    assert times == pytest.approx(expected)


def test_headers_older_than_the_applied_ones_are_ignored() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock)
    older, newer = limiter_.acquire(), limiter_.acquire()
    limiter_.observe(newer, headers(requests=(600, 590)), used_tokens=None)
    limiter_.observe(older, headers(requests=(600, 0)), used_tokens=None)  # stale news
    assert limiter_.view().requests_remaining == 590
    times_of(clock, limiter_, 1)
    assert clock.monotonic() == START


def test_an_empty_learned_bucket_holds_requests_only_until_it_refills() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, threshold=0.8)
    permit = limiter_.acquire()
    limiter_.observe(permit, headers(requests=(600, 0)), used_tokens=None)
    limiter_.acquire()
    # From empty to the reserve (120) plus this request at 10 a second, not longer.
    assert clock.monotonic() - START == pytest.approx(12.1)
    # No header ever confirms the limit again: the run goes on at the refill rate.
    for _ in range(10):
        limiter_.observe(limiter_.acquire(), UNKNOWN_HEADERS, used_tokens=None)
    assert clock.monotonic() - START == pytest.approx(13.1)


def test_a_learned_limit_holds_a_request_two_minutes_at_most() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, threshold=0.8, initial_tokens=1)
    permits = [limiter_.acquire() for _ in range(5000)]  # sent before any answer
    # The first answer: nothing left, and 4,999 requests sent after it.
    limiter_.observe(permits[0], headers(requests=(600, 0)), used_tokens=None)
    limiter_.acquire()
    # The level is kept above -limit: at most (600 + 120 + 1) / 10 s.
    assert clock.monotonic() - START <= 72.1 + 1e-6


# --- pauses after a 429 --------------------------------------------------------------------


def test_a_429_with_retry_after_pauses_every_worker() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock)
    first = limiter_.acquire()
    limiter_.rate_limited(first, UNKNOWN_HEADERS, retry_after=2.0)
    went: list[float] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        limiter_.acquire()
        with lock:
            went.append(clock.monotonic() - START)

    run_workers(clock, 8, work)
    assert went == pytest.approx([2.0] * 8)
    view = limiter_.view()
    assert (view.pauses, view.paused_seconds, view.rate_limited) == (1, 2.0, 1)


def test_a_pause_moves_the_waiting_turns_later_and_keeps_their_spacing() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60)  # one a second
    first = limiter_.acquire()
    went: list[float] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        if index == 0:  # the answer to the first request: a 429, half a second later
            clock.sleep(0.5)
            limiter_.rate_limited(first, UNKNOWN_HEADERS, retry_after=10.0)
            return
        limiter_.acquire()
        with lock:
            went.append(clock.monotonic() - START)

    run_workers(clock, 5, work)
    # Turns at 1, 2, 3 and 4 s; the pause ends at 10.5 s: 10.5, 11.5, 12.5, 13.5.
    assert sorted(went) == pytest.approx([10.5, 11.5, 12.5, 13.5])


def test_without_retry_after_the_exhausted_buckets_reset_is_waited() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, learn=False)
    permit = limiter_.acquire()
    said = headers(requests=(600, 0), tokens=(10_000, 5_000), requests_reset=6.0, tokens_reset=0.2)
    limiter_.rate_limited(permit, said, retry_after=None)
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(6.0)
    permit = limiter_.acquire()
    said = headers(requests=(600, 3), tokens=(10_000, 0), requests_reset=6.0, tokens_reset=1.5)
    limiter_.rate_limited(permit, said, retry_after=None)
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(7.5)
    permit = limiter_.acquire()
    said = headers(requests=(600, 0), tokens=(10_000, 0), requests_reset=2.0, tokens_reset=3.0)
    limiter_.rate_limited(permit, said, retry_after=None)
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(10.5)  # both empty: the later reset


def test_retry_after_wins_over_the_reset() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, learn=False)
    said = headers(requests=(600, 0), requests_reset=30.0)
    limiter_.rate_limited(limiter_.acquire(), said, retry_after=0.25)
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(0.25)


def expected_backoffs(seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [
        min(BACKOFF_MAX, BACKOFF_FIRST * 2**k) * rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        for k in range(count)
    ]


def test_without_any_hint_the_backoff_doubles_with_jitter_and_a_success_resets_it() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, seed=42)
    waits = []
    for _ in range(9):
        permit = limiter_.acquire()
        limiter_.rate_limited(permit, UNKNOWN_HEADERS, retry_after=None)
        before = clock.monotonic()
        limiter_.release(limiter_.acquire())  # waits for the pause
        waits.append(clock.monotonic() - before)
    expected = expected_backoffs(42, 9)
    assert waits == pytest.approx(expected)
    assert waits[:7] == sorted(waits[:7])  # grows: 0.5, 1, 2, 4, 8, 16, 30
    assert all(0.4 <= w <= 36.0 for w in waits)
    assert waits[-1] == pytest.approx(30.0, rel=0.2)  # capped at 30 s, plus or minus 20%
    assert len(set(waits[-3:])) == 3  # jittered
    limiter_.observe(limiter_.acquire(), UNKNOWN_HEADERS, used_tokens=None)  # a success
    limiter_.rate_limited(limiter_.acquire(), UNKNOWN_HEADERS, retry_after=None)
    before = clock.monotonic()
    limiter_.acquire()
    assert clock.monotonic() - before <= BACKOFF_FIRST * (1 + BACKOFF_JITTER)


def test_a_volley_of_429s_for_requests_sent_together_counts_once() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, seed=3)
    in_flight = [limiter_.acquire() for _ in range(20)]
    for permit in in_flight:
        limiter_.rate_limited(permit, UNKNOWN_HEADERS, retry_after=None)
    limiter_.acquire()
    # One 429's worth of backoff (0.5 s +-20%), not 20 doublings (30 s).
    assert clock.monotonic() - START <= BACKOFF_FIRST * (1 + BACKOFF_JITTER)
    assert limiter_.view().rate_limited == 20


def test_a_429_gives_the_tokens_back() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, tpm=6000, initial_tokens=100)  # one a second
    limiter_.rate_limited(limiter_.acquire(), UNKNOWN_HEADERS, retry_after=0.0)
    limiter_.acquire()
    assert clock.monotonic() == START


# --- waits too long, and stopping ----------------------------------------------------------


def test_a_pause_longer_than_max_pause_raises_at_once() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, max_pause=3600.0)
    limiter_.rate_limited(limiter_.acquire(), UNKNOWN_HEADERS, retry_after=7200.0)
    with pytest.raises(PauseTooLong) as raised:
        limiter_.acquire()
    assert raised.value.wait == pytest.approx(7200.0)
    assert "429" in str(raised.value)
    assert clock.monotonic() == START  # no waiting first
    assert clock.sleeps == []


def test_a_waiting_worker_raises_when_a_pause_makes_its_wait_too_long() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60, max_pause=100.0)
    first = limiter_.acquire()
    outcome: list[object] = []

    def work(index: int) -> None:
        if index == 0:
            clock.sleep(0.5)
            limiter_.rate_limited(first, UNKNOWN_HEADERS, retry_after=500.0)
            return
        try:
            limiter_.acquire()
            outcome.append("went")
        except PauseTooLong as exc:
            outcome.append((exc.wait, clock.monotonic() - START))

    run_workers(clock, 2, work)
    assert len(outcome) == 1 and isinstance(outcome[0], tuple)
    wait, when = outcome[0]
    assert when == pytest.approx(0.5, abs=0.2)
    assert wait == pytest.approx(500.0, abs=1.0)


def test_a_cap_wait_longer_than_max_pause_raises_and_says_why() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, tpm=60, initial_tokens=10_000, max_pause=3600.0)
    limiter_.acquire()  # a full bucket: goes, 9,999 tokens in debt
    with pytest.raises(PauseTooLong) as raised:
        limiter_.acquire()  # 10,000 tokens at 1 a second
    assert raised.value.wait == pytest.approx(10_000.0)
    assert "tokens-per-minute cap" in raised.value.reason
    assert clock.monotonic() == START


def test_a_refused_turn_charges_nothing() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60, max_pause=3600.0)
    limiter_.rate_limited(limiter_.acquire(), UNKNOWN_HEADERS, retry_after=5000.0)
    for _ in range(3):
        with pytest.raises(PauseTooLong):
            limiter_.acquire()
    clock.sleep(5000.0)
    times = times_of(clock, limiter_, 2)
    assert times == pytest.approx([5000.0, 5001.0])  # the refused turns took no slot


def test_stopping_ends_a_long_wait_within_one_slice() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60)
    limiter_.rate_limited(limiter_.acquire(), UNKNOWN_HEADERS, retry_after=600.0)
    stop_at = START + 42.05

    with pytest.raises(LimiterStopped):
        limiter_.acquire(stopping=lambda: clock.monotonic() >= stop_at)
    assert stop_at <= clock.monotonic() <= stop_at + 0.2
    assert max(clock.sleeps) <= 0.2
    assert limiter_.view().waiting == 0
    # The abandoned turn gave its place back: the next one goes when the pause ends.
    clock.sleep(START + 600.0 - clock.monotonic())
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(600.0)


def test_a_turn_given_up_gives_its_place_back() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60, tpm=60_000, initial_tokens=1000)  # one a second
    limiter_.acquire()
    # The next turn is fixed at 1 s, charged, and given up at 0.5 s.
    with pytest.raises(LimiterStopped):
        limiter_.acquire(stopping=lambda: clock.monotonic() >= START + 0.5)
    assert clock.monotonic() - START == pytest.approx(0.6)  # looked again after 0.2 s
    limiter_.acquire()
    assert clock.monotonic() - START == pytest.approx(1.0)  # its turn, not the one after
    assert limiter_.view().waiting == 0


def test_stopping_is_not_asked_when_there_is_no_wait() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600)
    limiter_.acquire(stopping=lambda: True)  # a free turn goes even while stopping


# --- the token estimate --------------------------------------------------------------------


def test_the_token_estimate_converges_to_the_usage() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, initial_tokens=1000)
    estimates = []
    for used in [400, 400, 400, 800, 400, 400, 400, 400, 400, 400]:
        permit = limiter_.acquire()
        limiter_.observe(permit, UNKNOWN_HEADERS, used_tokens=used)
        estimates.append(limiter_.view().token_estimate)
    # The first answer replaces the guess; a rise shows at once; a fall within five.
    assert estimates == [400, 400, 400, 800, 800, 800, 800, 800, 400, 400]
    assert limiter_.acquire().tokens == 400


def test_the_token_estimate_of_a_varying_usage_stays_near_its_top() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, initial_tokens=5000)
    rng = random.Random(5)
    for _ in range(200):
        limiter_.observe(limiter_.acquire(), UNKNOWN_HEADERS, rng.randint(300, 500))
    assert 400 <= limiter_.view().token_estimate <= 500


@pytest.mark.parametrize("used", [None, 0, -5])
def test_a_missing_usage_leaves_the_estimate_alone(used: int | None) -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, initial_tokens=700)
    limiter_.observe(limiter_.acquire(), UNKNOWN_HEADERS, used_tokens=used)
    assert limiter_.view().token_estimate == 700


# --- fairness ------------------------------------------------------------------------------


def test_waiting_workers_go_in_their_order_of_arrival() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=60)
    order: list[int] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        limiter_.acquire()
        with lock:
            order.append(index)

    run_workers(clock, 30, work)
    assert order == list(range(30))
    assert clock.monotonic() - START == pytest.approx(29.0)


def test_no_worker_is_starved_by_the_others() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600)
    turns: list[int] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        for _ in range(20):
            limiter_.acquire()
            with lock:
                turns.append(index)

    run_workers(clock, 25, work)
    assert sorted(turns) == sorted(list(range(25)) * 20)
    # Between two turns of one worker, each other worker had at most a couple of turns.
    for index in range(25):
        mine = [position for position, who in enumerate(turns) if who == index]
        gaps = [b - a for a, b in itertools.pairwise(mine)]
        assert max(gaps) <= 25 + 2, (index, gaps)


# --- settings and view ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"rpm": 0},
        {"rpm": -1.0},
        {"tpm": float("nan")},
        {"tpm": float("inf")},
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"max_pause": 0.0},
        {"initial_tokens": 0},
        {"burst_seconds": 0.0},
        {"burst_seconds": 61.0},
    ],
)
def test_settings_that_make_no_sense_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LimiterSettings(**settings)


def test_the_view_reports_limits_pace_pauses_and_waits() -> None:
    clock = FakeClock()
    limiter_ = limiter(clock, rpm=600, initial_tokens=300)
    for _ in range(30):
        limiter_.observe(
            limiter_.acquire(), headers(requests=(5000, 4000), tokens=(800_000, 700_000)), 200
        )
    in_flight = [limiter_.acquire() for _ in range(3)]
    limiter_.rate_limited(in_flight[0], UNKNOWN_HEADERS, retry_after=1.5)
    limiter_.rate_limited(in_flight[1], UNKNOWN_HEADERS, retry_after=1.0)  # inside it
    limiter_.rate_limited(in_flight[2], UNKNOWN_HEADERS, retry_after=2.0)  # longer: same pause
    view = limiter_.view()
    assert isinstance(view, LimiterView)
    assert view.waiting == 0
    assert (view.requests_limit, view.requests_remaining) == (5000, 4000)
    assert (view.tokens_limit, view.tokens_remaining) == (800_000, 700_000)
    assert view.token_estimate == 200
    assert (view.pauses, view.paused_seconds, view.pause_left) == (1, 2.0, 2.0)
    assert view.rate_limited == 3
    # 33 turns: 10 at once, then one every 0.1 s up to 2.3 s.
    assert view.requests_per_second == pytest.approx(33 / 2.3)
    assert view.waited_seconds == pytest.approx(2.3)  # 23 waits of 0.1 s, one at a time
    line = view.summary()
    for part in ("5,000 req/min (4,000 left)", "800,000 tok/min", "estimate 200", "429s 3"):
        assert part in line


def test_the_system_clock_is_the_real_one() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    clock.sleep(0.01)
    assert 0.009 <= clock.monotonic() - before < 1.0


@pytest.mark.slow
def test_eight_real_threads_at_600_rpm_go_about_10_a_second() -> None:
    """End to end on the real clock (about 3 s): the only test that waits for real."""
    limiter_ = RateLimiter(LimiterSettings(rpm=600))
    times: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def work() -> None:
        while time.monotonic() - start < 3.0:
            permit = limiter_.acquire()
            with lock:
                times.append(time.monotonic() - start)
            time.sleep(0.05)
            limiter_.observe(permit, UNKNOWN_HEADERS, used_tokens=None)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    late = [t for t in times if 1.0 <= t < 3.0]
    assert 17 <= len(late) <= 23  # about 10 a second after the first second's burst
    assert len([t for t in times if t < 3.0]) <= 10 + 30 + 2


def test_a_half_share_of_a_600_rpm_cap_lets_5_go_at_once_then_5_per_second() -> None:
    """A run of two processes gives each limiter half of the caps (``share``)."""
    clock = FakeClock()
    times = times_of(clock, limiter(clock, rpm=600, share=0.5), 20)
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([0.2 * k for k in range(1, 16)])


def test_two_limiters_with_half_shares_keep_a_cap_together() -> None:
    """Two processes of one run, each with its own limiter and half of ``--rpm 600``: 10
    requests a second together, as one process would send (whole shares would send 20)."""
    clock = FakeClock()
    halves = [limiter(clock, rpm=600, learn=False, share=0.5) for _ in range(2)]
    sent: list[float] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        while clock.monotonic() - START < 60.0:
            halves[index % 2].acquire()
            with lock:
                sent.append(clock.monotonic() - START)
            clock.sleep(0.5)

    run_workers(clock, 40, work)
    assert pace(sent, 10.0, 60.0) == pytest.approx(10.0, rel=0.02)


def test_two_limiters_with_half_shares_keep_a_learned_limit_together() -> None:
    """Two processes of one run, each with its own limiter and half a share, against one
    account: no 429, the reserve kept, and together the account's refill rate (each also
    reads what the other took from the headers, as it would another client's)."""
    clock = FakeClock()
    halves = [limiter(clock, threshold=0.8, burst_seconds=60, share=0.5) for _ in range(2)]
    account = FakeAccount(clock, rpm=600)

    def request(limiter_: RateLimiter) -> None:
        permit = limiter_.acquire()
        admitted = account.admit(permit.tokens)
        said = account.headers()
        clock.sleep(1.0)
        if admitted:
            limiter_.observe(permit, said, 100)
        else:
            limiter_.rate_limited(permit, said, None)

    def work(index: int) -> None:
        while clock.monotonic() - START < 120.0:
            request(halves[index % 2])

    for half in halves:  # each process's canary
        request(half)
    run_workers(clock, 40, work)
    assert account.rejected == 0
    # Each sees the other's requests only through the headers, about a second late (as
    # with another client of the account): a few requests under the reserve at most.
    assert account.lowest_since(60.0) >= 0.2 * 600 - 10 * (1 + 1 + 0.2)
    assert pace(account.admitted, 60.0, 120.0) == pytest.approx(10.0, rel=0.05)


def test_a_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="share"):
        LimiterSettings(share=0.0)
    with pytest.raises(ValueError, match="share"):
        LimiterSettings(share=1.5)
