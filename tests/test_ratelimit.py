"""Reading rate-limit headers (api/ratelimit.py): every format, and garbage (pure).

A header a server gets wrong must read as "unknown" (None), never raise and never turn into
a long wait: the limiter treats unknown as "no information".
"""

from __future__ import annotations

import email.utils

import pytest

from artist_bio_gen.api.ratelimit import (
    UNKNOWN_HEADERS,
    Bucket,
    RateLimitHeaders,
    parse_count,
    parse_go_duration,
    parse_rate_limit_headers,
    parse_retry_after,
)

# --- Go durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1.5s", 1.5),
        ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0),
        ("500us", 0.0005),
        ("500\u00b5s", 0.0005),  # MICRO SIGN, as Go writes it
        ("500\u03bcs", 0.0005),  # GREEK SMALL LETTER MU, which Go also reads
        ("250ns", 2.5e-7),
        ("0s", 0.0),
        ("0", 0.0),  # Go's one unitless duration
        ("1.000000001s", 1.000000001),
        ("1m", 60.0),
        ("1h", 3600.0),
        (".5s", 0.5),  # Go accepts a fraction without an integer part
        ("5.s", 5.0),  # and a point without a fraction
        ("+2s", 2.0),
        ("1h1h", 7200.0),  # Go adds repeated units
        ("  1s\t", 1.0),  # whitespace around the value
        ("99999999999h", 99999999999 * 3600.0),  # huge but finite: the limiter judges it
    ],
)
def test_go_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "-1",
        "-1s",  # negative
        "-0.5s",
        "1",  # a bare number: Go requires a unit (only "0" may go without)
        "60",  # a server writing seconds this way could mean a timestamp: not guessed
        "00",
        "5x",
        "1.5.3s",
        "1 s",  # inner space
        "s",
        ".s",
        "1e3s",  # no exponents in Go durations
        "1_000s",  # nor underscores (Python's float would take them)
        "\u0661s",  # ARABIC-INDIC DIGIT ONE (Python's \d and float would take it)
        "1sm",
        "1m 2s",
        "+",
        "nan",
        "inf",
        "9" * 400 + "s",  # float overflow
        "1.7976931348623157e308h",
        "9" * 308 + "h",  # finite digits, infinite product
        "1s;",
        "garbage",
    ],
)
def test_what_is_not_a_go_duration_is_unknown(text: str | None) -> None:
    assert parse_go_duration(text) is None


# --- counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [("600", 600), ("0", 0), (" 42 ", 42), ("007", 7), ("1000000000000000", 10**15)],
)
def test_counts_read_as_integers(text: str, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        " ",
        "-1",
        "+5",
        "1.0",
        "1e3",
        "1_000",
        "6 00",
        "5x",
        "abc",
        "\u0661\u0662",  # non-ASCII digits
        "1000000000000001",  # above MAX_COUNT
        "9" * 5000,  # beyond what int() even accepts by default
        "600, 600",  # a header sent twice, joined by httpx
    ],
)
def test_what_is_not_a_count_is_unknown(text: str | None) -> None:
    assert parse_count(text) is None


# --- buckets -------------------------------------------------------------------------------


def _headers(limit: str | None, remaining: str | None, reset: str | None) -> dict[str, str]:
    values = {
        "x-ratelimit-limit-requests": limit,
        "x-ratelimit-remaining-requests": remaining,
        "x-ratelimit-reset-requests": reset,
    }
    return {name: value for name, value in values.items() if value is not None}


@pytest.mark.parametrize(
    ("limit", "remaining", "reset", "bucket", "known"),
    [
        ("600", "599", "100ms", Bucket(600, 599, 0.1), True),
        ("600", "0", "6m0s", Bucket(600, 0, 360.0), True),
        ("600", "900", "1s", Bucket(600, 600, 1.0), True),  # remaining clamped to the limit
        ("600", None, "1s", Bucket(600, None, 1.0), False),
        ("600", "-1", None, Bucket(600, None, None), False),
        ("600", "lots", "soon", Bucket(600, None, None), False),
        (None, "5", "1s", Bucket(None, None, 1.0), False),  # remaining means nothing alone
        ("0", "0", "1s", Bucket(None, None, 1.0), False),  # a limit of 0 means unknown
        ("-1", "-1", "-1", Bucket(None, None, None), False),
        ("garbage", "5", "1s", Bucket(None, None, 1.0), False),
        ("1e400", "1", "1s", Bucket(None, None, 1.0), False),
        ("9" * 40, "9" * 40, "1s", Bucket(None, None, 1.0), False),  # huge: not believed
        (None, None, None, Bucket(None, None, None), False),
    ],
)
def test_a_bucket_is_known_only_with_its_limit_and_remaining(
    limit: str | None, remaining: str | None, reset: str | None, bucket: Bucket, known: bool
) -> None:
    parsed = parse_rate_limit_headers(_headers(limit, remaining, reset))
    assert parsed.requests == bucket
    assert parsed.requests.known is known
    assert parsed.tokens == Bucket(None, None, None)


@pytest.mark.parametrize(
    ("bucket", "exhausted"),
    [
        (Bucket(600, 0, 1.0), True),
        (Bucket(600, 0, None), True),
        (Bucket(600, 1, 1.0), False),
        (Bucket(None, None, 1.0), False),
        (Bucket(600, None, 1.0), False),
    ],
)
def test_only_a_known_empty_bucket_is_exhausted(bucket: Bucket, exhausted: bool) -> None:
    assert bucket.exhausted is exhausted


def test_both_limits_are_read_whatever_the_case_of_the_names() -> None:
    headers = {
        "X-RateLimit-Limit-Requests": "600",
        "X-RATELIMIT-REMAINING-REQUESTS": "598",
        "x-ratelimit-reset-requests": "200ms",
        "X-Ratelimit-Limit-Tokens": "150000",
        "x-ratelimit-remaining-tokens": "149000",
        "X-RateLimit-Reset-Tokens": "400ms",
        "Content-Type": "application/json",
    }
    assert parse_rate_limit_headers(headers) == RateLimitHeaders(
        requests=Bucket(600, 598, 0.2), tokens=Bucket(150000, 149000, 0.4)
    )


def test_httpx_headers_are_read_as_they_come_from_the_sdk() -> None:
    import httpx2

    headers = httpx2.Headers(
        [("X-RateLimit-Limit-Tokens", "30000"), ("X-RateLimit-Remaining-Tokens", "29000")]
    )
    assert parse_rate_limit_headers(headers).tokens == Bucket(30000, 29000, None)


def test_no_headers_is_nothing_known() -> None:
    parsed = parse_rate_limit_headers({})
    assert parsed == UNKNOWN_HEADERS
    assert not parsed.requests.known
    assert not parsed.tokens.known


# --- retry-after ---------------------------------------------------------------------------

NOW = 1_700_000_000.0


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(NOW + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "20.5"}, 0.0205),  # fractional milliseconds
        ({"retry-after-ms": "0"}, 0.0),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"Retry-After": " 30 "}, 30.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # the precise one first
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),  # garbage: the other one
        ({"retry-after-ms": "-5", "retry-after": "3"}, 3.0),
        ({"retry-after": _http_date(120)}, 120.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:15:20 -0000"}, 120.0),  # zone -0000: GMT
        ({"retry-after": "86400"}, 86400.0),  # long, but the limiter judges that
    ],
)
def test_retry_after_reads_milliseconds_seconds_and_dates(
    headers: dict[str, str], wait: float
) -> None:
    assert parse_retry_after(headers, now=NOW) == pytest.approx(wait)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after-ms": ""},
        {"retry-after-ms": "-1"},
        {"retry-after-ms": "1e3"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "9" * 400},  # too long to be a number anyone means
        {"retry-after": "-2"},
        {"retry-after": "soon"},
        {"retry-after": "inf"},
        {"retry-after": "2 seconds"},
        {"retry-after": _http_date(-60)},  # already past: most likely skewed clocks
        {"retry-after": "Wed, 21 Oct 99999 07:28:00 GMT"},  # a year out of range
        {"x-ratelimit-reset-requests": "1s"},  # not a retry-after header
    ],
)
def test_retry_after_that_cannot_be_read_is_absent(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, now=NOW) is None


def test_a_date_without_a_zone_is_gmt_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        wait = parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:15:20 -0000"}, now=NOW)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert wait == pytest.approx(120.0)


def test_retry_after_dates_are_measured_from_the_wall_clock_by_default() -> None:
    import time

    date = email.utils.formatdate(time.time() + 3600, usegmt=True)
    wait = parse_retry_after({"retry-after": date})
    assert wait is not None
    assert 3590 < wait <= 3600
