"""The run-wide rate limiter: when may the next request go (pure: no I/O of its own).

One ``RateLimiter`` serves every worker of a run. A worker calls ``acquire`` before each
HTTP request, which blocks until the request's turn, and then reports what came back:
``observe`` for an answer that was not a 429, ``rate_limited`` for a 429, ``release`` when no
answer came (connection error, timeout). Time comes from an injectable ``Clock``, so the
tests run on a virtual clock.

Turns, in arrival order
    Every limit is a token bucket: a level that refills continuously at a rate up to a
    capacity, and that each request lowers by its cost (1 for a requests limit, the token
    estimate for a tokens limit). Waiting workers form one queue in the order they called
    ``acquire``. Under one lock, the limiter fixes the turn of the first one in the queue:
    the earliest time at which every bucket admits it after all the turns fixed before it
    (and after any pause), charging the buckets as of that time; then the next one, and so
    on, as long as the turn is at most ``HORIZON`` (1 s) ahead. The worker sleeps until its
    turn. Nobody is overtaken or starved, nobody races for capacity, and the pace is exact.
    Turns further ahead are fixed later, by whichever worker looks next, so what the
    headers tell meanwhile applies to them: a run never commits more than a second of
    turns to what it knew. A waiting worker sleeps in slices of at most 0.2 s of clock time
    and looks again after each: at ``stopping()``, and at its turn, which a pause may have
    moved later. A request that costs more than a bucket holds goes when the bucket is
    full and leaves it in debt: it waits, but never deadlocks.

Client caps (``rpm``, ``tpm``)
    Buckets refilled at rpm/60 (tpm/60) per second that hold ``burst_seconds`` (one
    second) of that rate: 600 RPM lets 10 requests go at once, then 10 per second.

Limits learned from the headers (``learn``)
    Each response tells the account's per-minute limit and what remained. That bucket is
    modelled with capacity = limit, refill = limit/60 per second, and a turn is given only
    while the level stays at or above the reserve, (1 - threshold) x limit; below it the
    turns come at the refill rate, so throughput settles at the limit's rate and the
    bucket is never emptied. Servers do not say *when* they counted: ``remaining`` is read
    both as the level just after the server admitted that request (plus the refill since
    it went, minus what the requests sent after it and the fixed turns were charged) and
    as the level when the answer was written (plus the refill since, minus the fixed turns
    not sent yet), and the lower reading is taken. Each reading is right for one way of
    counting and too low for the other during a burst; at a steady pace both are right.
    For this, every ``Permit`` notes what had been sent up to it. Only headers newer (by
    turn) than the ones applied are applied; unknown headers (missing, ``-1``, ``0``,
    garbage) change nothing; the level is kept within [-limit, limit], so a learned limit
    holds a request up for about two minutes at most, whatever comes or does not come.
    Servers enforce per-minute limits over short windows (600 RPM behaves like 10 per
    second), so a learned limit also gets a second bucket holding ``burst_seconds`` of its
    rate (no reserve): without it a fresh 600 RPM account would be sent 480 requests at
    once. ``burst_seconds=60`` leaves the minute bucket alone.

Pauses after a 429
    ``rate_limited`` sets one run-wide pause: ``retry_after`` if the server gave one, else
    the reset time of the exhausted bucket (remaining 0), else a fallback backoff of 0.5 s
    doubling per consecutive 429 up to 30 s, with +-20% jitter. Only 429s of requests sent
    after the backoff last grew count as consecutive (a volley of 429s for requests that
    were all in flight together is one 429), and an answer to such a request resets it.
    The fixed turns move later, keeping their spacing, so the first one goes when the
    pause ends, and the others follow. The exhausted bucket's ``reset`` is honoured even
    with ``learn`` off: a 429 is never ignored.

Waits too long to make
    If the wait a turn needs is longer than ``max_pause``, ``acquire`` raises
    ``PauseTooLong`` at once, without waiting (a worker already waiting raises it as soon
    as a pause makes its wait that long; a worker far back in the queue, as soon as the
    wait it is sure to have is that long), so the run can stop cleanly and be resumed.
    A turn given up (``PauseTooLong``, ``LimiterStopped``, an interrupt) gives back what
    it was charged.

The token estimate
    A request is charged ``initial_tokens`` until usage was reported, then the largest of
    the last 5 reported usages: it follows a rise at the next answer and a fall within
    five, and the bias upward keeps a varying usage from overrunning the tokens limit
    while requests are in flight (a guess too high only holds back a little more). Every
    report corrects the token buckets by ``used_tokens - permit.tokens``, so over time the
    buckets are charged what was really used and the estimate only decides how much is
    held for requests in flight. A usage of 0 or None means "not reported" (the client
    turns a missing usage into 0).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ArtistBioGenError
from .ratelimit import Bucket, RateLimitHeaders

#: Longest stretch of clock time a waiting ``acquire`` sleeps before looking again.
WAIT_SLICE = 0.2
#: Turns are fixed at most this many seconds ahead; later ones wait unfixed, so what the
#: headers say meanwhile applies to them. More than two slices: a turn is always fixed
#: before its worker has to look.
HORIZON = 1.0
#: ``view`` measures the current pace over this many seconds.
PACE_WINDOW = 10.0
#: The fallback backoff after a 429 that says how long to wait in no way.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
BACKOFF_JITTER = 0.2
#: The token estimate is the largest of this many recent usages.
ESTIMATE_SAMPLES = 5
#: A reported usage above this is not believed (no request uses ten million tokens).
MAX_REQUEST_TOKENS = 10_000_000

_REQUESTS = "requests"
_TOKENS = "tokens"
# Float sums of refill times can end a hair before the turn they were computed for.
_EPSILON = 1e-9
_PAUSE_REASON = "the run-wide pause after a 429 (rate limited)"
_QUEUE_REASON = "the requests queued before it"


class Clock(Protocol):
    """Where the limiter reads the time and how it waits (a fake one in tests)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``time.sleep``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)``."""
        time.sleep(seconds)


def _check_rate(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number or None (got {value})")


@dataclass(frozen=True)
class LimiterSettings:
    """How a run is throttled (validated: ValueError on a value that makes no sense)."""

    #: Client cap, requests per minute (None: no cap).
    rpm: float | None = None
    #: Client cap, tokens per minute (None: no cap).
    tpm: float | None = None
    #: Learn the account's limits from the response headers.
    learn: bool = True
    #: Use at most this fraction of a learned bucket; (1 - threshold) of it stays in reserve.
    threshold: float = 0.8
    #: A single wait longer than this (seconds) raises ``PauseTooLong``.
    max_pause: float = 86400.0
    #: Tokens charged per request until some usage was reported.
    initial_tokens: int = 1000
    #: Seconds' worth of a per-minute rate (cap or learned) that may go at once.
    burst_seconds: float = 1.0
    #: This limiter's part of the caps and of the learned limits: a run of several
    #: processes gives each process an equal share (its own limiter), so that together
    #: they keep to the limits; 1 for a run of one process.
    share: float = 1.0

    def __post_init__(self) -> None:
        _check_rate("rpm", self.rpm)
        _check_rate("tpm", self.tpm)
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] (got {self.threshold})")
        if not self.max_pause > 0:
            raise ValueError(f"max_pause must be positive (got {self.max_pause})")
        if self.initial_tokens < 1:
            raise ValueError(f"initial_tokens must be at least 1 (got {self.initial_tokens})")
        if not 0 < self.burst_seconds <= 60:
            raise ValueError(f"burst_seconds must be in (0, 60] (got {self.burst_seconds})")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1] (got {self.share})")


class PauseTooLong(ArtistBioGenError):
    """The rate limit needs a wait longer than the longest pause allowed.

    ``wait`` is that wait in seconds and ``reason`` what it is for. The run should stop
    (resumable) rather than sit idle; the exit code is "stopped early".
    """

    def __init__(self, wait: float, reason: str, max_pause: float) -> None:
        super().__init__(
            f"The API's rate limit needs a wait of {wait:.0f} s ({reason}), longer than "
            f"the longest pause allowed ({max_pause:.0f} s, --pause-duration); run again "
            "with --resume later."
        )
        self.wait = wait
        self.reason = reason
        self.max_pause = max_pause


class LimiterStopped(Exception):
    """``acquire`` gave up waiting because the run is stopping (``stopping()`` was true)."""


@dataclass(frozen=True)
class Permit:
    """What one ``acquire`` charged; give it back to exactly one of ``observe``,
    ``rate_limited`` or ``release``. Built by the limiter only."""

    #: Tokens charged for this request (the estimate when its turn was fixed).
    tokens: int
    #: The turn's number: 1, 2, ... in the order ``acquire`` was called.
    seq: int
    #: Clock time at which ``acquire`` returned (when the request went).
    granted_at: float
    #: Requests sent run-wide up to and including this one, in the order they went (to
    #: read this request's headers: what was sent after it, the server had not counted).
    requests_mark: int = 0
    #: Tokens charged for those requests.
    tokens_mark: int = 0


@dataclass(frozen=True)
class LimiterView:
    """A snapshot for a periodic log line (``summary()`` writes one)."""

    #: The account's limits as last reported (None: not known, or ``learn`` is off).
    requests_limit: int | None
    requests_remaining: int | None
    tokens_limit: int | None
    tokens_remaining: int | None
    #: Turns given over the last ``PACE_WINDOW`` seconds, per second (tokens: estimated).
    requests_per_second: float
    tokens_per_second: float
    #: Run-wide pauses begun after 429s, their total length, and what is left of one now.
    pauses: int
    paused_seconds: float
    pause_left: float
    #: Seconds all ``acquire`` calls spent waiting, added up over the workers.
    waited_seconds: float
    #: Workers waiting for their turn now.
    waiting: int
    token_estimate: int
    #: 429s reported through ``rate_limited``.
    rate_limited: int

    def summary(self) -> str:
        """One line: limits, pace, estimate, 429s, pauses and waits."""
        return (
            f"limits: {_limit_text(self.requests_limit, self.requests_remaining, 'req')}, "
            f"{_limit_text(self.tokens_limit, self.tokens_remaining, 'tok')}; "
            f"pace {self.requests_per_second:.1f} req/s, {self.tokens_per_second:,.0f} tok/s; "
            f"estimate {self.token_estimate:,} tok/request; 429s {self.rate_limited}; "
            f"pauses {self.pauses} ({self.paused_seconds:.1f} s, {self.pause_left:.1f} s left); "
            f"{self.waiting} waiting, {self.waited_seconds:.1f} s waited"
        )


def _limit_text(limit: int | None, remaining: int | None, unit: str) -> str:
    if limit is None:
        return f"{unit}/min unknown"
    left = "?" if remaining is None else f"{remaining:,}"
    return f"{limit:,} {unit}/min ({left} left)"


@dataclass(slots=True)
class _Bucket:
    """A token bucket; ``level`` is its content at the limiter's stamp time."""

    capacity: float
    rate: float  # refill per second
    reserve: float = 0.0  # a request may not take the level below this (unless it is full)
    floor: float = -math.inf  # the deepest debt kept
    level: float = 0.0

    def refill(self, seconds: float) -> None:
        """``seconds`` of refill, up to the capacity."""
        self.level = min(self.capacity, self.level + self.rate * seconds)

    def delay(self, cost: float) -> float:
        """Seconds of refill until a request of ``cost`` may go (0: now)."""
        # A cost that does not fit above the reserve goes when the bucket is full.
        needed = min(self.reserve + cost, self.capacity)
        return max(0.0, needed - self.level) / self.rate

    def take(self, cost: float) -> None:
        """Charge ``cost`` (negative: give back), within floor and capacity."""
        self.level = min(self.capacity, max(self.floor, self.level - cost))

    def resize(self, capacity: float, rate: float, reserve: float, floor: float) -> None:
        """A new limit; the level is kept, within the new bounds."""
        self.capacity, self.rate, self.reserve, self.floor = capacity, rate, reserve, floor
        self.level = min(capacity, max(floor, self.level))


class _Learned:
    """One of the account's limits as the headers describe it (no buckets until known)."""

    def __init__(
        self, kind: str, threshold: float, burst_seconds: float, share: float = 1.0
    ) -> None:
        self.kind = kind
        self._share = share
        self.reported = Bucket()  # the headers last applied
        self.minute: _Bucket | None = None
        self.burst: _Bucket | None = None
        self._threshold = threshold
        self._burst_seconds = burst_seconds
        self._seq = -1  # the turn whose headers were applied last

    def buckets(self) -> list[tuple[str, _Bucket]]:
        """(what it is, bucket) for each bucket known so far."""
        found = []
        if self.minute is not None:
            found.append((f"the account's {self.kind}-per-minute limit", self.minute))
        if self.burst is not None:
            found.append((f"the account's {self.kind} limit over short windows", self.burst))
        return found

    def learn(self, reported: Bucket, seq: int, views: tuple[tuple[float, float], ...]) -> None:
        """Take the headers of turn ``seq`` (unknown or older headers: nothing).

        ``views`` are the readings of ``remaining`` to choose from, each as (seconds of
        refill until the stamp, charges it does not include); the lowest level is taken.
        """
        limit, remaining = reported.limit, reported.remaining
        if limit is None or remaining is None or seq < self._seq:
            return
        self._seq = seq
        self.reported = reported
        # The account's limit and what remained of it are the whole run's; this limiter
        # paces its share of them (the other processes see the same headers).
        capacity = float(limit) * self._share
        left = remaining * self._share
        rate = capacity / 60.0
        reserve = (1.0 - self._threshold) * capacity
        level = min(
            min(capacity, left + rate * max(0.0, refill)) - charges for refill, charges in views
        )
        level = max(-capacity, level)
        if self.minute is None:
            self.minute = _Bucket(capacity, rate, reserve, -capacity, level)
        else:
            self.minute.resize(capacity, rate, reserve, -capacity)
            self.minute.level = level
        self._learn_burst(capacity, rate)

    def _learn_burst(self, capacity: float, rate: float) -> None:
        if self._burst_seconds >= 60:
            return
        size = capacity * self._burst_seconds / 60.0
        if self.burst is None:
            self.burst = _Bucket(size, rate, level=size)
        else:
            self.burst.resize(size, rate, 0.0, -math.inf)


@dataclass(slots=True, eq=False)
class _Ticket:
    """A worker waiting for its turn; ``go`` is None until the turn is fixed."""

    seq: int
    go: float | None = None  # when it may go, plus the pauses since ``offset``
    offset: float = 0.0  # the limiter's offset when the turn was fixed
    tokens: int = 0  # charged when the turn was fixed
    expected: float = -math.inf  # the first unfixed turn: when it would go
    reason: str = _QUEUE_REASON  # what the wait is mostly for


def _caps(settings: LimiterSettings) -> list[tuple[str, str, _Bucket]]:
    caps = []
    for kind, per_minute in ((_REQUESTS, settings.rpm), (_TOKENS, settings.tpm)):
        if per_minute is not None:
            per_minute *= settings.share
            size = per_minute * settings.burst_seconds / 60.0
            bucket = _Bucket(size, per_minute / 60.0, level=size)
            caps.append((f"the client's {kind}-per-minute cap", kind, bucket))
    return caps


class RateLimiter:
    """The run-wide limiter (see the module docstring); thread-safe."""

    def __init__(
        self,
        settings: LimiterSettings,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """A limiter for one run; ``clock`` and ``rng`` default to the real ones."""
        self._settings = settings
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        now = self._clock.monotonic()
        self._started = now
        self._stamp = now  # the time every bucket's level refers to (the last turn, or later)
        self._offset = 0.0  # how far pauses have moved fixed turns later, in all
        self._waiting: OrderedDict[int, _Ticket] = OrderedDict()  # in order of arrival
        self._unfixed: deque[_Ticket] = deque()  # the waiting whose turn is not fixed yet
        self._open: set[int] = set()  # turns taken and not yet reported on
        self._caps = _caps(settings)
        self._learned = {
            kind: _Learned(kind, settings.threshold, settings.burst_seconds, settings.share)
            for kind in (_REQUESTS, _TOKENS)
        }
        # For reading headers: what the turns taken so far were charged, in the order they
        # were taken, and what the fixed turns not taken yet were charged.
        self._sent = {_REQUESTS: 0, _TOKENS: 0}
        self._unsent = {_REQUESTS: 0, _TOKENS: 0}
        self._seq = 0  # the last turn asked for
        self._taken_seq = 0  # the last turn taken
        self._pause_until = -math.inf
        self._backoff_level = 0  # consecutive 429s
        self._backoff_mark = 0  # 429s of turns up to this one are not "consecutive"
        self._usages: deque[int] = deque(maxlen=ESTIMATE_SAMPLES)
        self._estimate = settings.initial_tokens
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent turns
        self._recent_tokens = 0
        self._pauses = 0
        self._paused_seconds = 0.0
        self._waited = 0.0
        self._rate_limited = 0

    # --- the four calls of a worker --------------------------------------------------------

    def acquire(self, stopping: Callable[[], bool] | None = None) -> Permit:
        """Block until this request may go; the ``Permit`` says what it was charged.

        Raises ``PauseTooLong`` (without waiting) if its wait would be longer than
        ``max_pause``, and ``LimiterStopped`` if ``stopping()`` is true while it waits
        (looked at after every 0.2 s of clock time at most).
        """
        started = self._clock.monotonic()
        with self._lock:
            self._seq += 1
            ticket = _Ticket(self._seq)
            self._waiting[ticket.seq] = ticket
            self._unfixed.append(ticket)
        try:
            return self._wait(ticket, stopping, started)
        except BaseException:
            with self._lock:
                self._cancel(ticket)
            raise

    def observe(self, permit: Permit, headers: RateLimitHeaders, used_tokens: int | None) -> None:
        """After an answer that was not a 429: learn from its headers, correct the tokens.

        ``used_tokens`` is the response's total usage; None or 0 means not reported.
        """
        with self._lock:
            now = self._clock.monotonic()
            self._advance(now)
            if self._settle(permit) and used_tokens is not None and used_tokens > 0:
                used = min(used_tokens, MAX_REQUEST_TOKENS)
                self._charge(_TOKENS, used - permit.tokens)
                self._learn_usage(used)
            if permit.seq > self._backoff_mark:
                self._backoff_level = 0  # a request sent after the backoff got through
            self._learn(permit, headers, now)

    def rate_limited(
        self, permit: Permit, headers: RateLimitHeaders, retry_after: float | None
    ) -> None:
        """After a 429 (rate limit, or a flex "Resource Unavailable"): pause the whole run.

        The pause lasts ``retry_after`` seconds if given, else the reset of the exhausted
        bucket, else the fallback backoff. The permit's tokens are given back.
        """
        with self._lock:
            now = self._clock.monotonic()
            self._advance(now)
            if self._settle(permit):
                self._charge(_TOKENS, -permit.tokens)  # a 429 consumes no tokens
            self._rate_limited += 1
            if permit.seq > self._backoff_mark:
                # Sent after the backoff last grew: the backoff was not enough.
                self._backoff_level += 1
                self._backoff_mark = self._taken_seq
            self._learn(permit, headers, now)
            self._pause(now, self._pause_length(headers, retry_after))

    def release(self, permit: Permit) -> None:
        """The request got no answer to learn from (connection error, timeout): give its
        tokens back."""
        with self._lock:
            if self._settle(permit):
                self._charge(_TOKENS, -permit.tokens)

    def view(self) -> LimiterView:
        """A consistent snapshot of what the limiter knows and has done."""
        with self._lock:
            now = self._clock.monotonic()
            self._trim_recent(now)
            span = min(PACE_WINDOW, now - self._started)
            requests = self._learned[_REQUESTS].reported
            tokens = self._learned[_TOKENS].reported
            return LimiterView(
                requests_limit=requests.limit,
                requests_remaining=requests.remaining,
                tokens_limit=tokens.limit,
                tokens_remaining=tokens.remaining,
                requests_per_second=len(self._recent) / span if span > 0 else 0.0,
                tokens_per_second=self._recent_tokens / span if span > 0 else 0.0,
                pauses=self._pauses,
                paused_seconds=self._paused_seconds,
                pause_left=max(0.0, self._pause_until - now),
                waited_seconds=self._waited,
                waiting=len(self._waiting),
                token_estimate=self._estimate,
                rate_limited=self._rate_limited,
            )

    # --- turns -----------------------------------------------------------------------------

    def _constraints(self) -> list[tuple[str, str, _Bucket]]:
        """(what it is, kind, bucket) of every bucket a request must get through."""
        found = list(self._caps)
        for kind, learned in self._learned.items():
            found.extend((reason, kind, bucket) for reason, bucket in learned.buckets())
        return found

    def _advance(self, when: float) -> None:
        """Move the stamp forward to ``when``, refilling every bucket."""
        if when <= self._stamp:
            return
        for _, _, bucket in self._constraints():
            bucket.refill(when - self._stamp)
        self._stamp = when

    def _shift(self, seconds: float) -> None:
        """Move every fixed turn (and the next ones) later, with what they charged: the
        levels the buckets had at the stamp, they now have ``seconds`` later."""
        self._offset += seconds
        self._stamp += seconds

    def _go(self, ticket: _Ticket) -> float:
        """When a fixed turn may go."""
        if ticket.go is None:
            raise ValueError(f"turn {ticket.seq} is not fixed")
        return ticket.go + (self._offset - ticket.offset)

    def _fix_turns(self, now: float) -> None:
        """Fix the turns of the first waiting workers, in order, up to ``HORIZON`` ahead.

        A later turn is fixed by some later call (every waiting worker looks again within
        0.2 s), so what the headers say meanwhile still applies to it.
        """
        ahead = min(HORIZON, self._settings.max_pause)
        while self._unfixed:
            head = self._unfixed[0]
            head.expected, head.reason = self._earliest(now)
            if head.expected - now > ahead:
                return
            self._fix(head, head.expected)

    def _earliest(self, now: float) -> tuple[float, str]:
        """When the next turn could go, after the fixed ones and any pause; and why then."""
        start = max(now, self._stamp, self._pause_until)
        self._advance(start)
        go = start
        reason = _PAUSE_REASON if self._pause_until >= start > now else _QUEUE_REASON
        for name, kind, bucket in self._constraints():
            needed = start + bucket.delay(self._cost(kind))
            if needed > go:
                go, reason = needed, name
        return go, reason

    def _cost(self, kind: str) -> int:
        return 1 if kind == _REQUESTS else self._estimate

    def _fix(self, ticket: _Ticket, go: float) -> None:
        """Fix the first unfixed turn at ``go``, charging every bucket as of then."""
        self._advance(go)
        for _, kind, bucket in self._constraints():
            bucket.take(self._cost(kind))
        self._unsent[_REQUESTS] += 1
        self._unsent[_TOKENS] += self._estimate
        ticket.go, ticket.offset, ticket.tokens = go, self._offset, self._estimate
        self._unfixed.popleft()

    def _left(self, ticket: _Ticket, now: float) -> float:
        """Seconds until ``ticket`` goes; for an unfixed turn, at least this long."""
        if ticket.go is not None:
            return self._go(ticket) - now
        return max(self._unfixed[0].expected, self._pause_until, self._stamp) - now

    def _reason(self, ticket: _Ticket, now: float) -> str:
        if self._pause_until - now > self._settings.max_pause:
            return _PAUSE_REASON
        return ticket.reason if ticket.go is not None else self._unfixed[0].reason

    def _wait(self, ticket: _Ticket, stopping: Callable[[], bool] | None, started: float) -> Permit:
        while True:
            with self._lock:
                now = self._clock.monotonic()
                self._fix_turns(now)
                left = self._left(ticket, now)
                if ticket.go is not None and left <= _EPSILON:
                    return self._take(ticket, now, started)
                if left > self._settings.max_pause:
                    reason = self._reason(ticket, now)
                    raise PauseTooLong(left, reason, self._settings.max_pause)
            if stopping is not None and stopping():
                raise LimiterStopped("the run is stopping; the request was not sent")
            # An unfixed turn is at least HORIZON - 0.2 s away once it is fixed.
            self._clock.sleep(WAIT_SLICE if ticket.go is None else min(left, WAIT_SLICE))

    def _take(self, ticket: _Ticket, now: float, started: float) -> Permit:
        del self._waiting[ticket.seq]
        self._open.add(ticket.seq)
        self._taken_seq = max(self._taken_seq, ticket.seq)
        for kind, cost in ((_REQUESTS, 1), (_TOKENS, ticket.tokens)):
            self._unsent[kind] -= cost
            self._sent[kind] += cost
        self._waited += now - started
        self._recent.append((now, ticket.tokens))
        self._recent_tokens += ticket.tokens
        self._trim_recent(now)
        return Permit(ticket.tokens, ticket.seq, now, self._sent[_REQUESTS], self._sent[_TOKENS])

    def _cancel(self, ticket: _Ticket) -> None:
        """A turn not taken (stopped, too long, interrupted): give back what it charged."""
        if self._waiting.pop(ticket.seq, None) is None:
            return
        if ticket.go is None:
            self._unfixed.remove(ticket)
            return
        for kind, cost in ((_REQUESTS, 1), (_TOKENS, ticket.tokens)):
            self._unsent[kind] -= cost
            self._charge(kind, -cost)

    def _trim_recent(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - PACE_WINDOW:
            self._recent_tokens -= self._recent.popleft()[1]

    # --- what came back --------------------------------------------------------------------

    def _settle(self, permit: Permit) -> bool:
        """Whether ``permit`` was still open (a second report of it changes no charge)."""
        if permit.seq not in self._open:
            return False
        self._open.discard(permit.seq)
        return True

    def _charge(self, kind: str, amount: int) -> None:
        """Charge ``amount`` (negative: give back) to every bucket of ``kind``."""
        for _, bucket_kind, bucket in self._constraints():
            if bucket_kind == kind:
                bucket.take(amount)

    def _learn_usage(self, used: int) -> None:
        self._usages.append(used)
        self._estimate = max(self._usages)

    def _learn(self, permit: Permit, headers: RateLimitHeaders, now: float) -> None:
        if not self._settings.learn:
            return
        for kind, reported, mark in (
            (_REQUESTS, headers.requests, permit.requests_mark),
            (_TOKENS, headers.tokens, permit.tokens_mark),
        ):
            # As counted when this request was admitted, or when its answer was written.
            unsent = self._unsent[kind]
            admitted = (self._stamp - permit.granted_at, self._sent[kind] - mark + unsent)
            answered = (self._stamp - now, unsent)
            self._learned[kind].learn(reported, permit.seq, (admitted, answered))

    def _pause_length(self, headers: RateLimitHeaders, retry_after: float | None) -> float:
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            return retry_after
        resets = [
            bucket.reset
            for bucket in (headers.requests, headers.tokens)
            if bucket.exhausted and bucket.reset is not None
        ]
        if resets:
            return max(resets)
        steps = min(max(self._backoff_level, 1) - 1, 32)
        base = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0**steps)
        return base * self._rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)

    def _pause(self, now: float, length: float) -> None:
        """Pause the run until ``now + length`` (a pause already longer stays)."""
        until = now + length
        if length <= 0 or until <= self._pause_until:
            return
        if self._pause_until <= now:
            self._pauses += 1
        self._paused_seconds += until - max(self._pause_until, now)
        self._pause_until = until
        # The fixed turns are the first waiting ones: move them all, keeping their spacing.
        front = next(iter(self._waiting.values()), None)
        if front is not None and front.go is not None and self._go(front) < until:
            self._shift(until - self._go(front))
