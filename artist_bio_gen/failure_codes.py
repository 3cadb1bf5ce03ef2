"""Every way an artist can fail, once: what each code means for the run.

A failed artist is an ``Outcome`` with one of these codes. The table decides, for every
module that has to know (the API client, the processor, the failures file, the exit code):

* **stops the run**: the failure would repeat for every artist (a rejected key, an unknown
  prompt, no quota, the database gone), so the run stops with that error (its exit code)
  instead of paying for N identical failures. These are not the artist's fault: they are
  not recorded against it and it stays to do;
* **counts towards the cap**: recorded in the failures file; ``--resume`` retries the artist
  until it has failed ``--max-attempts`` times, then gives it up (a poison artist must not
  cost money every night);
* **retried**: the request was retried (up to ``--max-retries``, with a jittered backoff)
  before it became a failure.

A 429 ``rate_limit_exceeded`` is not in this table for a run: it slows the whole run and the
request goes again, so it never fails an artist. ``rate_limited`` is only what a bare call
of the legacy ``call_openai_api`` (no run around it) reports after its retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import (
    ArtistBioGenError,
    ConfigError,
    DatabaseUnavailableError,
    QuotaExhaustedError,
)


@dataclass(frozen=True)
class FailureCode:
    """One failure code and what it means for the run."""

    code: str
    meaning: str
    #: The error the whole run stops with, or None when only this artist failed.
    stops_run: type[ArtistBioGenError] | None
    #: Recorded in the failures file and counted against ``--max-attempts``.
    counts_towards_cap: bool
    #: Retried (up to ``--max-retries``, with backoff) before it is reported.
    retried: bool


_TABLE = (
    # code, meaning, stops the run (with), counts towards the cap, retried
    FailureCode("auth", "the API rejected the key (HTTP 401)", ConfigError, False, False),
    FailureCode("forbidden", "the API refused access (HTTP 403)", ConfigError, False, False),
    FailureCode("not_found", "unknown prompt or model (HTTP 404)", ConfigError, False, False),
    FailureCode(
        "insufficient_quota", "the account has no quota left", QuotaExhaustedError, False, False
    ),
    FailureCode(
        "db_unavailable",
        "the database did not answer within --db-retry-seconds",
        DatabaseUnavailableError,
        False,
        False,
    ),
    # A 429 is never the artist's fault, so old records of it do not count towards the cap.
    FailureCode("rate_limited", "HTTP 429 (a call outside a run)", None, False, True),
    FailureCode("timeout", "no answer within --request-timeout", None, True, True),
    FailureCode("connection_error", "the API could not be reached", None, True, True),
    FailureCode("server_error", "HTTP 5xx from the API", None, True, True),
    FailureCode("api_error", "another HTTP error from the API", None, True, False),
    FailureCode("bad_request", "the API rejected this artist's request (400)", None, True, False),
    FailureCode("bad_response", "the answer could not be read", None, True, False),
    FailureCode("empty_response", "the answer held no text", None, True, False),
    FailureCode("db_rejected", "the database refused this bio", None, True, False),
    FailureCode("internal_error", "a bug or an unforeseen library error", None, True, False),
)

FAILURE_CODES: dict[str, FailureCode] = {entry.code: entry for entry in _TABLE}


def failure(code: str) -> FailureCode:
    """The table entry of ``code``; an unknown code is a bug (KeyError)."""
    return FAILURE_CODES[code]


def stops_run(code: str | None) -> bool:
    """True when a failure with ``code`` stops the whole run."""
    return code is not None and code in FAILURE_CODES and FAILURE_CODES[code].stops_run is not None


def counts_towards_cap(code: str | None) -> bool:
    """True when a failure with ``code`` is recorded against the artist."""
    return code is not None and code in FAILURE_CODES and FAILURE_CODES[code].counts_towards_cap


def run_error(code: str, message: str) -> ArtistBioGenError:
    """The error a run stops with for a failure with ``code`` (which must stop the run)."""
    error_class = FAILURE_CODES[code].stops_run
    if error_class is None:
        raise ValueError(f"failure code {code!r} does not stop the run")
    return error_class(message)
