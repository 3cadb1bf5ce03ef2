"""Reading the API's rate-limit headers (pure: no I/O, no clock of its own).

Every OpenAI response describes the account's two per-minute limits, requests and tokens,
in three headers each::

    x-ratelimit-limit-requests: 600        the limit, per minute
    x-ratelimit-remaining-requests: 599    what is left in the bucket now
    x-ratelimit-reset-requests: 100ms      time until the bucket is full again (Go syntax)

and the same with ``-tokens``. A 429 may add ``retry-after-ms`` and/or ``retry-after``.

OpenAI-compatible servers send these partly, not at all, as ``-1`` or as garbage. Whatever
a header holds, reading it never raises: a value that cannot be trusted is ``None``
("unknown"), and the limiter treats unknown as "no information", never as "wait".
The parsers are strict on purpose (ASCII digits only, no exponent, no underscores, no bare
number for a duration): a lenient reading of garbage could turn into an enormous pause.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

#: Counts above this are not believed (no per-minute limit is this large; Python's ``int``
#: would take thousands of digits, and float arithmetic on them overflows).
MAX_COUNT = 10**15

# Go's time.ParseDuration units. "µs" is U+00B5 MICRO SIGN, "μs" U+03BC GREEK SMALL LETTER MU;
# Go accepts both. Longer units first so "ms" is not read as "m" followed by garbage.
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# One "<number><unit>" component: "1.5s", "2m", ".5ms", "5.s" (Go accepts the last two).
_GO_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_COUNT = re.compile(r"[0-9]+")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_MAX_DIGITS = len(str(MAX_COUNT))


def parse_go_duration(text: str | None) -> float | None:
    """Seconds in a Go duration (``1s``, ``6m0s``, ``2m59.56s``, ``1h2m3s``, ``500us``).

    None when missing, empty, negative, not finite or not a Go duration (``5``, ``5x``,
    ``1.5.3s``). ``0`` alone is allowed, as in Go. Surrounding whitespace is ignored.
    """
    if text is None:
        return None
    text = text.strip()
    if text.startswith("+"):
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        return None
    total = 0.0
    position = 0
    while position < len(text):
        match = _GO_COMPONENT.match(text, position)
        if match is None or match[1] in ("", "."):
            return None  # also a leading "-": a negative wait means nothing usable
        total += float(match[1]) * _GO_UNITS[match[2]]
        position = match.end()
    return total if math.isfinite(total) else None


def parse_count(text: str | None) -> int | None:
    """A non-negative integer (``600``, `` 42 ``); None when missing, negative or garbage.

    Garbage includes decimals (``1.0``), signs, inner spaces, non-ASCII digits and values
    above ``MAX_COUNT``.
    """
    if text is None:
        return None
    text = text.strip()
    if len(text) > _MAX_DIGITS or _COUNT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= MAX_COUNT else None


@dataclass(frozen=True)
class Bucket:
    """One per-minute limit (requests or tokens) as one response described it.

    ``limit`` is None when the header is missing, garbage or not positive (a limit of 0
    means "unknown", not "send nothing"); ``remaining`` is None when unknown or when the
    limit is, and never above the limit; ``reset`` is the time in seconds until the bucket
    is full again, None when unknown.
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None

    @property
    def known(self) -> bool:
        """Whether the limit and what remains of it are both known."""
        return self.limit is not None and self.remaining is not None

    @property
    def exhausted(self) -> bool:
        """Whether the bucket is known to be empty (the one a 429 was about)."""
        return self.known and self.remaining == 0


@dataclass(frozen=True)
class RateLimitHeaders:
    """Both limits as one response described them (``UNKNOWN_HEADERS``: nothing known)."""

    requests: Bucket = Bucket()
    tokens: Bucket = Bucket()


#: Headers that said nothing (no response, or a server without rate-limit headers).
UNKNOWN_HEADERS = RateLimitHeaders()


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    # httpx's Headers look names up case-insensitively; a plain dict does not, and HTTP/1.1
    # servers may send "X-RateLimit-Limit-Requests".
    return {name.lower(): value for name, value in headers.items()}


def _bucket(headers: Mapping[str, str], kind: str) -> Bucket:
    limit = parse_count(headers.get(f"x-ratelimit-limit-{kind}"))
    if limit == 0:
        limit = None
    remaining = parse_count(headers.get(f"x-ratelimit-remaining-{kind}"))
    if limit is None:
        remaining = None
    elif remaining is not None:
        remaining = min(remaining, limit)
    return Bucket(limit, remaining, parse_go_duration(headers.get(f"x-ratelimit-reset-{kind}")))


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """The requests and tokens limits from a response's headers (names in any case)."""
    lowered = _lowered(headers)
    return RateLimitHeaders(
        requests=_bucket(lowered, "requests"), tokens=_bucket(lowered, "tokens")
    )


def _seconds(text: str | None, scale: float) -> float | None:
    """``text`` as a non-negative decimal number times ``scale``; None if it is not one."""
    if text is None:
        return None
    text = text.strip()
    if len(text) > 32 or _SECONDS.fullmatch(text) is None:
        return None
    value = float(text) * scale
    return value if math.isfinite(value) else None


def _http_date_wait(text: str | None, now: float | None) -> float | None:
    """Seconds from ``now`` (default: the wall clock) to the HTTP date in ``text``."""
    if text is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    wait = when.timestamp() - (time.time() if now is None else now)
    # A date already past says nothing usable (most likely the two clocks disagree): the
    # limiter then falls back on the bucket's reset or its own backoff.
    return wait if wait >= 0 else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a 429 asks to wait: ``retry-after-ms``, else ``retry-after``; None if neither.

    ``retry-after-ms`` is milliseconds (possibly fractional); ``retry-after`` is seconds or
    an HTTP date (then ``now``, a ``time.time()`` value, is the present; default: the wall
    clock). Missing, garbage, negative and past values count as absent.
    """
    lowered = _lowered(headers)
    wait = _seconds(lowered.get("retry-after-ms"), 0.001)
    if wait is None:
        wait = _seconds(lowered.get("retry-after"), 1.0)
    if wait is None:
        wait = _http_date_wait(lowered.get("retry-after"), now)
    return wait
