"""Plain immutable records shared by the modules (the legacy public names are kept here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

#: The placeholder sent as ``artist_data`` when an artist has none (legacy contract).
NO_ARTIST_DATA = "No additional data provided"


class ArtistData(NamedTuple):
    """One artist read from the input CSV; ``artist_id`` is a canonical lower-case UUID."""

    artist_id: str
    name: str
    data: str | None = None


class ParseResult(NamedTuple):
    """Legacy whole-file parse result (``parse_input_file``); the core streams instead."""

    artists: list[ArtistData]
    skipped_lines: int
    error_lines: int


class ApiResponse(NamedTuple):
    """One generated bio in the legacy shape, for the legacy output functions.

    The tool itself carries a bio as ``GeneratedBio`` (from the API) and ``CommittedBio``
    (as committed); this tuple is what scripts written for the legacy tool pass around.
    """

    artist_id: str
    artist_name: str
    artist_data: str | None
    response_text: str
    response_id: str
    created: int
    db_status: str | None = None
    error: str | None = None


class TokenUsage(NamedTuple):
    """Token counts reported by the API for one response."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: object) -> TokenUsage:
        # NamedTuple's + concatenates; adding usages should sum them.
        if not isinstance(other, TokenUsage):
            return NotImplemented
        return TokenUsage(*(a + b for a, b in zip(self, other, strict=True)))


class ProcessingStats(NamedTuple):
    """Final tally of one run (what the summary prints)."""

    artists_read: int
    committed: int
    skipped: int
    failed: int
    already_done: int
    bad_lines: int
    duplicate_lines: int
    not_started: int
    elapsed_seconds: float
    tokens: TokenUsage
    #: Artists not sent because they failed ``--max-attempts`` times already (not in
    #: ``skipped``).
    given_up: int = 0
    #: Artists of the input neither committed, skipped nor given up after the run: what the
    #: next ``--resume`` has left (None: unknown).
    remaining: int | None = None

    @property
    def rate(self) -> float:
        """Artists committed per second of wall time."""
        return self.committed / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class DatabaseConfig(NamedTuple):
    """Where and how bios are written."""

    url: str
    table: str = "artists"
    pool_size: int = 10
    connect_timeout: float = 10.0
    #: How long a worker keeps retrying a commit while the database is unreachable.
    retry_seconds: float = 60.0

    def __repr__(self) -> str:
        # The URL carries the password; a config printed in a traceback must not.
        return f"DatabaseConfig(url='***', table={self.table!r}, pool_size={self.pool_size})"


class DatabaseResult(NamedTuple):
    """Outcome of one database write (legacy ``update_artist_bio`` result)."""

    success: bool
    rows_affected: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GeneratedBio:
    """A usable bio the API returned for one artist, not yet committed."""

    artist: ArtistData
    response_id: str
    text: str
    created: int
    tokens: TokenUsage = TokenUsage()
    #: The model the API answered with (``response.model``, e.g. ``gpt-4.1-mini-2025-04-14``).
    model: str | None = None
    #: The service tier the response says it was served at (``default``, ``flex``, ...).
    service_tier: str | None = None
    #: What the response cost in USD (``api/pricing.cost_usd``); None when unknown.
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class CommittedBio:
    """A bio as committed: the ledger row, or for a job without a database the bio itself.

    Every JSONL line is rendered from one of these, whether a worker appends it right after
    its commit or recovery appends it later from the database, so both render the same
    bytes. ``db_status`` is ``"updated"``/``"skipped"``, or None when no database is used.
    ``seq`` is the ledger's commit order (0 without a database). ``model`` (the model the API
    answered with: the ledger's ``response_model``, not the job's ``--model``),
    ``service_tier`` and ``cost_usd`` are accounting only: the JSONL line never shows them.
    """

    artist_id: str
    artist_name: str
    artist_data: str | None
    response_id: str
    response_text: str
    created: int
    db_status: str | None
    tokens: TokenUsage = TokenUsage()
    seq: int = 0
    model: str | None = None
    service_tier: str | None = None
    cost_usd: float | None = None

    @classmethod
    def without_database(cls, bio: GeneratedBio) -> CommittedBio:
        """The record of a bio in a job that writes the JSONL only."""
        artist = bio.artist
        return cls(
            artist.artist_id,
            artist.name,
            artist.data,
            bio.response_id,
            bio.text,
            bio.created,
            None,
            bio.tokens,
            model=bio.model,
            service_tier=bio.service_tier,
            cost_usd=bio.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class JobRef:
    """The job a bio belongs to and the prompt that made it (stored with each ledger row)."""

    job_id: str
    prompt_id: str | None
    prompt_version: str | None
    model: str | None


OutcomeStatus = Literal["committed", "skipped", "failed", "not_started"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one worker did with one artist; the tally, exit code and retries derive from it.

    ``code`` is a stable machine-readable reason: for a failure one of
    ``failure_codes.FAILURE_CODES`` (``bad_request``, ``empty_response`` ...), for a skip
    ``no_row`` or ``has_bio``; ``reason`` is the human message.
    """

    artist_id: str
    artist_name: str
    status: OutcomeStatus
    code: str | None = None
    reason: str | None = None
    response_id: str | None = None
    db_status: str | None = None
    tokens: TokenUsage = TokenUsage()
    duration: float = 0.0
    #: What the bio cost (None: not billed, or the price of the model is unknown).
    cost_usd: float | None = None
    #: The model that answered.
    model: str | None = None
    #: The committed bio's text (for ``--print-bios``; None unless committed).
    text: str | None = None
