"""Submitting a batch job's artists: request files, recorded before they are uploaded and
before their batches are created (``core/batch.py`` has the design).

``Submitter.submit`` streams the input (``ArtistReader``: never the whole input in memory)
past the artists that need no request (committed, given up, already in an open batch) into
request files of at most ``--batch-max-requests`` lines and ``--batch-max-bytes`` bytes.
For each file, in this order:

1. the file is written beside the output (``<stem>.batch-upload.jsonl``);
2. its row and its artists are committed (``BatchStore.record_chunk``, state ``recorded``);
3. it is uploaded; the file id is recorded (``uploaded``);
4. its batch is created with the job and the file's number in its metadata; the batch id is
   recorded (``submitted``).

A crash after 2 leaves a row that the next run finishes from the database
(``finish_unrecorded``: the file is rebuilt from the recorded artists, uploaded, the batch
created); after 3 the next run first looks the batch up by its metadata (a crash between
"created" and "recorded") and creates it only if the API has none. So an artist is in at most
one open batch, and no file gets two batches.

Budgets, at batch prices: ``--limit`` caps the artists this run submits, ``--max-cost`` the
estimated cost of what it submits, ``--daily-limit`` the requests submitted per UTC day
(reserved before a file is recorded, the unused rest given back). They hold for the whole
run (every round of ``--batch-wait``). Reaching one ends the run with exit 7; ``--resume``
submits the rest.

``--skip-existing`` looks the artists up in the user's table before they are submitted (a
group at a time): an artist whose row has a bio, or who has no row, is not paid for, as
online.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from ..api.batches import BatchInfo
from ..api.batchfile import BATCH_TIER, request_line
from ..api.pricing import cost_usd, price_for
from ..database.batches import BatchRecord
from ..errors import BatchApiError, ConfigError, LimitReachedError
from ..models import ArtistData
from ..utils.uuidset import UuidSet
from .batch_parts import BatchParts
from .reader import ArtistReader
from .throttle import COST_MARGIN, FIRST_GUESS_TOKENS

logger = logging.getLogger(__name__)

#: The error code of a batch that failed as a whole because the account's queue is full.
TOKEN_LIMIT = "token_limit_exceeded"
#: Artists looked up in the user's table at once (``--skip-existing``).
LOOKUP_GROUP = 500


def estimate_per_request(parts: BatchParts, *, margin: bool) -> float | None:
    """What one batch request is expected to cost (USD): the job's average cost per bio so
    far (``margin``: plus ``COST_MARGIN``), else ``FIRST_GUESS_TOKENS`` in and out at the
    batch price of ``--model`` (generous already, as online mode's first guess); None when
    no price is known."""
    totals = parts.totals()
    if totals is not None and totals.bios > totals.unpriced:
        average = totals.cost_usd / (totals.bios - totals.unpriced)
        return average * COST_MARGIN if margin else average
    price = price_for(parts.config.prompt.model, override=parts.price)
    return cost_usd(price, FIRST_GUESS_TOKENS, FIRST_GUESS_TOKENS, BATCH_TIER)


def upload_name(job_id: str, chunk: int) -> str:
    """The name an uploaded request file gets."""
    return f"artist-bio-gen-{job_id}-{chunk:05d}.jsonl"


@dataclass
class SubmitReport:
    """What one submission pass did."""

    artists: int = 0
    batches: int = 0
    given_up: int = 0
    #: ``--skip-existing``: artists whose row has a bio or who have no row.
    skipped: int = 0
    #: Rows, bad lines and duplicates of the input read (for the summary).
    rows: int = 0
    already_done: int = 0
    bad_lines: int = 0
    duplicate_lines: int = 0
    #: Why it stopped before the end of the input (a budget), if it did.
    stopped: LimitReachedError | None = None


@dataclass
class _Budget:
    """How many requests this run may still submit (``--limit``, ``--max-cost``,
    ``--daily-limit``); ``allow`` is asked before each request file."""

    parts: BatchParts
    artists_left: int | None
    cost_left: int | None
    daily_granted: int = 0
    reason: str = ""

    @classmethod
    def of(cls, parts: BatchParts) -> _Budget:
        budget = parts.config.budget
        cost_left: int | None = None
        if budget.max_cost is not None:
            each = estimate_per_request(parts, margin=True)
            if each is None:
                raise ConfigError(
                    f"--max-cost needs prices, and the built-in table does not know model "
                    f"{parts.config.prompt.model}; pass --price-input and --price-output "
                    "(USD per million tokens)."
                )
            cost_left = math.floor(budget.max_cost / each) if each > 0 else None
        return cls(parts, budget.limit, cost_left)

    def allow(self, wanted: int) -> int:
        """Requests the next file may hold (0: a budget is spent; ``reason`` says which)."""
        for left, reason in (
            (self.artists_left, "limit"),
            (self.cost_left, "cost"),
        ):
            if left is not None and left < wanted:
                wanted = left
                self.reason = reason
        daily = self.parts.config.budget.daily_limit
        if daily is not None and wanted > 0:
            granted = self.parts.usage.reserve(self.parts.today(), wanted, daily)
            if granted < wanted:
                self.reason = "daily"
            wanted = self.daily_granted = granted
        return wanted

    def used(self, count: int) -> None:
        """``count`` requests went into a file; give back the rest of the reservation."""
        if self.artists_left is not None:
            self.artists_left -= count
        if self.cost_left is not None:
            self.cost_left -= count
        daily = self.parts.config.budget.daily_limit
        if daily is not None and self.daily_granted > count:
            self.parts.usage.release(self.parts.today(), self.daily_granted - count)
        self.daily_granted = 0

    def release(self) -> None:
        """Give back a reservation no file used (the pass stopped before filling one)."""
        self.used(0)

    def error(self) -> LimitReachedError:
        """The error a run stopped by this budget ends with."""
        budget = self.parts.config.budget
        if self.reason == "limit":
            what = (
                f"--limit {budget.limit} reached: this run submitted {budget.limit} artists "
                "and more are left"
            )
        elif self.reason == "cost":
            what = (
                f"--max-cost {budget.max_cost} USD reached: the next requests could pass it at "
                "batch prices (estimated)"
            )
        else:
            what = f"--daily-limit reached: {budget.daily_limit} requests today (UTC) for this job"
        return LimitReachedError(f"{what}; run again with --resume to submit the rest.")


@dataclass
class _Chunk:
    """A request file being written."""

    path: Path
    cap: int
    max_bytes: int
    artists: list[ArtistData] = field(default_factory=list)
    size: int = 0

    def fits(self, line: bytes) -> bool:
        if len(self.artists) >= self.cap:
            return False
        return not self.artists or self.size + len(line) <= self.max_bytes


class Submitter:
    """Submits request files for one run; see the module docstring."""

    def __init__(self, parts: BatchParts) -> None:
        self.parts = parts
        self._next_chunk: int | None = None
        self._budget: _Budget | None = None

    # -- new request files ------------------------------------------------------------------

    def submit(self, batches: list[BatchRecord]) -> SubmitReport:
        """Submit every artist still waiting that no open batch holds (or up to a budget)."""
        parts = self.parts
        report = SubmitReport()
        if self._budget is None:  # one budget for the whole run
            self._budget = _Budget.of(parts)
        budget = self._budget
        max_requests = self._max_requests(batches)
        open_ids = parts.store.open_artist_ids()
        with ArtistReader(parts.config.input_path, skip_ids=parts.done) as reader:
            waiting = self._waiting(reader, open_ids, report)
            if parts.config.skip_existing:
                waiting = self._without_bios(waiting, report)
            try:
                for chunk in self._chunks(waiting, budget, max_requests, report):
                    # Counted before it is recorded: a file that fails after its recording is
                    # submitted by a later run all the same (the daily count stays high, never
                    # low).
                    budget.used(len(chunk.artists))
                    self._submit_chunk(chunk)
                    report.artists += len(chunk.artists)
                    report.batches += 1
            finally:
                budget.release()
            report.rows = reader.rows
            report.already_done = reader.already_done
            report.bad_lines = reader.error_lines
            report.duplicate_lines = reader.duplicate_lines
        with contextlib.suppress(FileNotFoundError):
            parts.paths.batch_upload.unlink()
        return report

    def _waiting(
        self, artists: Iterable[ArtistData], open_ids: UuidSet, report: SubmitReport
    ) -> Iterator[ArtistData]:
        attempts, cap = self.parts.attempts, self.parts.cap
        for artist in artists:
            if artist.artist_id in open_ids:
                continue
            if attempts.get(artist.artist_id, 0) >= cap:
                report.given_up += 1
                continue
            yield artist

    def _without_bios(
        self, artists: Iterator[ArtistData], report: SubmitReport
    ) -> Iterator[ArtistData]:
        """``--skip-existing``: only the artists whose row exists and has no bio."""
        while group := list(islice(artists, LOOKUP_GROUP)):
            states = self.parts.bios.bio_states([artist.artist_id for artist in group])
            for artist in group:
                if states.get(artist.artist_id) is False:
                    yield artist
                else:
                    report.skipped += 1

    def _chunks(
        self,
        artists: Iterator[ArtistData],
        budget: _Budget,
        max_requests: int,
        report: SubmitReport,
    ) -> Iterator[_Chunk]:
        """Request files, written, each yielded once full (or at the end of the input)."""
        settings = self.parts.config.prompt
        max_bytes = self.parts.config.batch.max_bytes
        chunk: _Chunk | None = None
        handle: BinaryIO | None = None
        try:
            for artist in artists:
                line = request_line(artist, settings)
                if chunk is not None and not chunk.fits(line):
                    _close(handle)
                    handle = None
                    yield chunk
                    chunk = None
                if self.parts.control.stopping:
                    return
                if chunk is None:
                    cap = budget.allow(max_requests)
                    if cap <= 0:
                        report.stopped = budget.error()
                        return
                    chunk = _Chunk(self.parts.paths.batch_upload, cap, max_bytes)
                    # Open across the yields of this generator; closed in the finally below.
                    handle = open(chunk.path, "wb")  # noqa: SIM115
                if handle is not None:
                    handle.write(line)
                chunk.artists.append(artist)
                chunk.size += len(line)
            if chunk is not None:
                _close(handle)
                handle = None
                yield chunk
        finally:
            _close(handle)

    def _max_requests(self, batches: list[BatchRecord]) -> int:
        """``--batch-max-requests``, or half the size of the last batch that failed for a
        full queue (``token_limit_exceeded``) while no batch got going since."""
        configured = self.parts.config.batch.max_requests
        for record in reversed(batches):
            if record.status == "failed" and (record.error or "").startswith(TOKEN_LIMIT):
                smaller = max(1, record.requests // 2)
                if smaller < configured:
                    logger.info(
                        "the last batch found the queue full: request files of at most %s now",
                        f"{smaller:,}",
                    )
                return min(configured, smaller)
            if record.status not in (None, "failed"):
                break
        return configured

    def _submit_chunk(self, chunk: _Chunk) -> None:
        parts = self.parts
        number = self._chunk_number()
        parts.store.record_chunk(number, chunk.artists)
        file_id = parts.api.upload(chunk.path, upload_name(parts.job_id, number))
        parts.store.set_input_file(number, file_id)
        info = self._create(number, file_id, since=None)
        logger.info(
            "submitted batch %s: request file %d, %s artists, %s bytes",
            info.id,
            number,
            f"{len(chunk.artists):,}",
            f"{chunk.size:,}",
        )

    def _chunk_number(self) -> int:
        if self._next_chunk is None:
            self._next_chunk = self.parts.store.next_chunk()
        number = self._next_chunk
        self._next_chunk += 1
        return number

    # -- request files recorded by a run that did not finish -------------------------------

    def finish_unrecorded(self, record: BatchRecord) -> None:
        """Bring a ``recorded`` or ``uploaded`` row to ``submitted`` (see the docstring)."""
        file_id = record.input_file_id
        if file_id is None:
            file_id = self._upload_again(record)
        try:
            info = self._create(record.chunk, file_id, since=record.created_at)
        except BatchApiError:
            if record.input_file_id is None:
                raise
            # The file uploaded by an earlier run may be gone (uploads expire after a week):
            # upload it again, once; an orphan of this costs nothing (it expires too).
            logger.warning(
                "no batch from request file %d's upload %s; uploading it again",
                record.chunk,
                record.input_file_id,
            )
            info = self._create(record.chunk, self._upload_again(record), since=record.created_at)
        logger.info("batch %s of request file %d is recorded now", info.id, record.chunk)

    def _upload_again(self, record: BatchRecord) -> str:
        """Rebuild a recorded request file from its artists and upload it; returns the id."""
        parts = self.parts
        path = self._rebuild(record)
        file_id = parts.api.upload(path, upload_name(parts.job_id, record.chunk))
        parts.store.set_input_file(record.chunk, file_id)
        path.unlink()
        logger.info("uploaded request file %d (recorded by a run that stopped)", record.chunk)
        return file_id

    def find_batch(self, chunk: int, since: float) -> BatchInfo | None:
        """The batch the API holds for request file ``chunk`` whose row does not know it
        (created, not recorded: the last run stopped in between), recorded when found."""
        info = self.parts.api.find(self.parts.job_id, chunk, since)
        if info is not None:
            logger.warning(
                "batch %s was created for request file %d but not recorded (the last run "
                "stopped in between): found by its metadata, recorded now",
                info.id,
                chunk,
            )
            self.parts.store.set_batch(chunk, info.id, info.status)
        return info

    def _rebuild(self, record: BatchRecord) -> Path:
        path = self.parts.paths.batch_upload
        settings = self.parts.config.prompt
        with open(path, "wb") as handle:
            for artist in self.parts.store.iter_items(record.chunk):
                handle.write(request_line(artist, settings))
        return path

    def _create(self, chunk: int, file_id: str, since: float | None) -> BatchInfo:
        """Create the batch of request file ``chunk`` unless the API has it already (a
        ``since`` is given for a row recorded by an earlier run), and record it."""
        parts = self.parts
        if since is not None:
            found = self.find_batch(chunk, since)
            if found is not None:
                return found
        try:
            info = parts.api.create(file_id, parts.job_id, chunk)
        except BatchApiError:
            # The batch may exist although the answer was lost: look, never create twice.
            found = self.find_batch(chunk, time.time() if since is None else since)
            if found is None:
                raise
            return found
        parts.store.set_batch(chunk, info.id, info.status)
        return info


def _close(handle: BinaryIO | None) -> None:
    if handle is not None:
        handle.close()
