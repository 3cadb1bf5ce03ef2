"""The run's pacer: every HTTP request passes here first (``api/call.Pacer``).

It puts together, for one run:

* the rate limiter (``api/limiter.RateLimiter``): the account's limits learned from the
  headers, the ``--rpm``/``--tpm`` caps, the run-wide pause after a 429;
* the budgets (``core/budget``): ``--max-cost`` for this run, checked against what was
  spent plus the expected cost of the requests in flight; ``--daily-limit`` requests per
  UTC day for the job, taken last, right before a request goes out;
* the run's request counters (requests, retries, 429s, spend) and the periodic log line of
  ``--quota-log-interval``.

A refusal is ``NotSent``: with a ``LimitReachedError`` when a budget or a too-long pause
stops the run, without one when the run is stopping anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..api.call import NotSent, Ticket
from ..api.limiter import LimiterStopped, PauseTooLong, Permit, RateLimiter
from ..api.pricing import Price
from ..api.ratelimit import RateLimitHeaders
from ..errors import ArtistBioGenError, ConfigError, LimitReachedError, OutputWriteError
from ..models import TokenUsage
from .budget import CostBudget, DailyBudget

logger = logging.getLogger(__name__)

#: Input and output tokens assumed for the first request's expected cost, before any usage
#: was reported: generous (a bio is a few hundred tokens) so that it cannot overrun the
#: budget. It goes alone (the canary); from its answer on, real costs are known.
FIRST_GUESS_TOKENS = 1_000
#: The expected cost of a request is the largest cost seen so far, plus this margin for an
#: answer longer than any before it.
COST_MARGIN = 1.25


@dataclass(frozen=True)
class _Ticket:
    permit: Permit
    expected_cost: float


@dataclass
class RequestCounts:
    """What the run's requests did (for the summary and the periodic log line)."""

    requests: int = 0
    #: Requests that were another attempt of an artist's request (after a 429, a timeout,
    #: a dropped connection or a 5xx); included in ``requests``.
    retries: int = 0
    answered: int = 0
    rate_limited: int = 0
    failed: int = 0
    spent_usd: float = 0.0
    unknown_cost: int = 0


class Throttle:
    """Implements ``api.call.Pacer`` for one run; thread-safe."""

    def __init__(
        self,
        limiter: RateLimiter,
        daily: DailyBudget,
        cost: CostBudget,
        *,
        price: Price | None,
        stopping: Callable[[], bool],
        log_interval: int = 100,
        max_pause: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``price`` is the price known before the first answer (``--price-*``, or the
        table's price of ``--model``), None when only answers will tell."""
        self._limiter = limiter
        self._daily = daily
        self._cost = cost
        self._price = price
        self._stopping = stopping
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._largest_cost = 0.0
        self._cost_unknown_model: str | None = None
        self._max_pause = max_pause
        self._clock = clock
        #: When the current run of 429s began (None after an answer): a server that keeps
        #: saying 429 must not hold the run forever, a pause at a time.
        self._limited_since: float | None = None
        self.counts = RequestCounts()

    def before_request(self, retry: bool = False) -> Ticket:
        """Cost budget, then the limiter's wait, then the daily request budget."""
        if self._stopping():
            raise NotSent()
        self._check_cost_is_known()
        self._check_not_limited_too_long()
        expected = self._expected_cost()
        if not self._cost.reserve(expected):
            raise NotSent(LimitReachedError(self._cost_message()))
        try:
            permit = self._limiter.acquire(self._stopping)
        except (PauseTooLong, LimiterStopped) as exc:
            self._cost.settle(expected, None)
            raise NotSent(_pause_error(exc)) from None
        try:
            allowed = self._daily.take()
        except (ArtistBioGenError, OSError) as exc:
            # The day's count could not be kept (database gone, usage file unwritable):
            # sending anyway could pass the budget, so the run stops.
            self._limiter.release(permit)
            self._cost.settle(expected, None)
            raise NotSent(_usage_error(exc)) from None
        if not allowed:
            self._limiter.release(permit)
            self._cost.settle(expected, None)
            # Only now: the message reads the day's count (a query with a database).
            raise NotSent(LimitReachedError(self._daily_message()))
        self._count_request(retry)
        return _Ticket(permit, expected)

    def answered(
        self,
        ticket: Ticket,
        headers: RateLimitHeaders,
        usage: TokenUsage,
        cost: float | None,
        model: str | None,
    ) -> None:
        """Learn from the headers and the usage; the expected cost becomes the real one."""
        own = _own(ticket)
        self._limiter.observe(own.permit, headers, usage.total_tokens or None)
        # Billed even when the price is unknown: keep the expected cost counted then.
        self._cost.settle(own.expected_cost, own.expected_cost if cost is None else cost)
        with self._lock:
            self._limited_since = None
            self.counts.answered += 1
            if cost is None:
                self.counts.unknown_cost += 1
                self._cost_unknown_model = model or "(not named)"
            else:
                self.counts.spent_usd += cost
                self._largest_cost = max(self._largest_cost, cost)

    def rate_limited(
        self, ticket: Ticket, headers: RateLimitHeaders, retry_after: float | None
    ) -> None:
        """Slow the whole run; the request is not billed and will go again."""
        own = _own(ticket)
        self._limiter.rate_limited(own.permit, headers, retry_after)
        self._cost.settle(own.expected_cost, None)
        with self._lock:
            self.counts.rate_limited += 1
            if self._limited_since is None:
                self._limited_since = self._clock()

    def failed(self, ticket: Ticket, headers: RateLimitHeaders | None) -> None:
        """No usable answer: nothing billed; learn from the headers if there were any."""
        own = _own(ticket)
        if headers is None:
            self._limiter.release(own.permit)
        else:
            self._limiter.observe(own.permit, headers, None)
        self._cost.settle(own.expected_cost, None)
        with self._lock:
            self.counts.failed += 1

    def close(self) -> None:
        """Give back what the daily budget reserved but the run did not use."""
        self._daily.close()

    def _check_cost_is_known(self) -> None:
        # Without a price, --max-cost cannot be kept: stop rather than spend blindly.
        if self._cost.max_cost is None or self._cost_unknown_model is None:
            return
        raise NotSent(
            ConfigError(
                f"--max-cost needs prices, and the API answered with model "
                f"{self._cost_unknown_model}, which the built-in price table does not know; "
                "pass --price-input and --price-output (USD per million tokens)."
            )
        )

    def _check_not_limited_too_long(self) -> None:
        with self._lock:
            since = self._limited_since
        if since is not None and self._clock() - since > self._max_pause:
            raise NotSent(
                LimitReachedError(
                    f"The API has answered nothing but 429s for {self._max_pause / 3600:.2f} h "
                    "(--pause-duration); run again with --resume later."
                )
            )

    def _expected_cost(self) -> float:
        """What the next request may cost: the largest answer so far, with a margin; before
        any answer, the first guess of tokens at the known price (0 when unknown: the
        first request goes alone, as the canary, and its answer tells)."""
        with self._lock:
            seen = self._largest_cost
        guess = 0.0
        if self._price is not None:
            guess = (
                FIRST_GUESS_TOKENS * self._price.input_per_million
                + FIRST_GUESS_TOKENS * self._price.output_per_million
            ) / 1_000_000
        return max(seen * COST_MARGIN, guess if seen == 0.0 else 0.0)

    def _count_request(self, retry: bool) -> None:
        with self._lock:
            self.counts.requests += 1
            if retry:
                self.counts.retries += 1
            due = self.counts.requests % self._log_interval == 0
        if due:
            self._log_view()

    def _log_view(self) -> None:
        counts = self.counts
        logger.info(
            "quota: %s requests (%s answered, %s rate-limited, %s failed), spent $%.4f; "
            "limiter: %s",
            f"{counts.requests:,}",
            f"{counts.answered:,}",
            f"{counts.rate_limited:,}",
            f"{counts.failed:,}",
            counts.spent_usd,
            self._limiter.view().summary(),
        )

    def _cost_message(self) -> str:
        return (
            f"--max-cost {self._cost.max_cost:g} USD reached: spent ${self._cost.spent:.4f}, "
            "and the next request could pass the budget; run again with --resume (and a "
            "new --max-cost) to continue."
        )

    def _daily_message(self) -> str:
        return (
            f"--daily-limit reached: {self._daily.used_today():,} requests today (UTC) for this "
            "job; run again with --resume tomorrow, or raise the limit."
        )


def _usage_error(exc: ArtistBioGenError | OSError) -> ArtistBioGenError:
    if isinstance(exc, ArtistBioGenError):
        return exc
    return OutputWriteError(f"Could not record today's requests ({exc}).")


def _own(ticket: Ticket) -> _Ticket:
    if not isinstance(ticket, _Ticket):
        raise TypeError("a ticket of another pacer")
    return ticket


def _pause_error(exc: PauseTooLong | LimiterStopped) -> LimitReachedError | None:
    if isinstance(exc, LimiterStopped):
        return None  # the run is stopping anyway
    return LimitReachedError(
        f"The API's rate limit needs a pause of {exc.wait / 3600:.2f} h, longer than "
        "--pause-duration; run again with --resume later."
    )
