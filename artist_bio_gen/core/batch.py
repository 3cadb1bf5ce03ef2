"""Batch mode: the same job, files and guarantees; the requests travel through the Batch API.

A batch job is a job (``--mode batch`` is recorded in its manifest and ``--resume`` keeps
it): the same input, run lock, database, ledger, JSONL, failures file and reconciliation as
online mode (``core/runner.run_job`` runs steps 1-4 unchanged and calls ``run_batch`` for
step 5). Only the way requests travel changes: they are written into request files, each
sent as one batch, and the answers are collected when the batch has ended, up to 24 hours
later, at half the price. A run does rounds of:

1. **finish** what an earlier run left between "recorded" and "submitted"
   (``Submitter.finish_unrecorded``; a batch created but not recorded is found by its
   metadata, never created twice);
2. **poll** every submitted batch and **collect** those that ended (``Collector``): answers
   committed exactly as online (ledger row and bio in one statement, then the JSONL line
   rendered from the committed row), failures recorded, the batch marked ended;
3. **submit** every artist still waiting that no open batch holds (``Submitter.submit``):
   new ones, and those a batch did not answer (expired, 429, 5xx, a failed batch) or
   answered with a failure that counts (until ``--max-attempts``).

One round, then the run exits (the cron case: ``--mode batch`` once, ``--resume`` hourly),
unless ``--batch-wait S`` keeps it polling every ``--batch-poll-interval`` seconds until
nothing is open or S seconds passed. ``--finish-online`` replaces step 3 with the online
pipeline over the artists still waiting that no open batch holds (full price).
``artist-bio-gen batch cancel`` replaces it with cancelling the open batches (then collecting
what they return, waiting up to ``--wait`` seconds).

**Exactly once.** An artist is committed at most once per job, whatever is killed when:

* the ledger's commit is guarded by "no row yet for this job and artist" (one statement);
* a collector skips every line whose artist is committed already (the run starts from the
  reconciled ledger, so that includes what a killed collector committed), and every second
  line of an artist within a collection, before any write; so no JSONL line is written
  twice either;
* an artist is submitted only when no open batch holds it (the items of open batches), and
  a request file's row and artists are committed before its upload, its batch's id right
  after its creation; a crash in between is resolved from the API's list of batches, by the
  job id and file number in each batch's ``metadata``, before anything new is created.

**Exit codes.** 0 when the round went well, batches still running included (the summary
says what is pending); 4 when artists failed in this run (recorded, retried by
``--resume``); 7 when a budget (``--limit``, ``--max-cost``, ``--daily-limit`` at batch
prices) or a full batch queue (``token_limit_exceeded``) stopped the submissions; 5 when a
batch failed as a whole for another reason, or the Batch API did not answer; 3 for a key or
model the API refuses; 130 interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace

from ..database.batches import BatchRecord, Collected
from ..errors import ArtistBioGenError, LimitReachedError
from ..models import ProcessingStats, TokenUsage
from ..utils.uuidset import UuidSet
from .batch_collect import Collector
from .batch_parts import BatchParts
from .batch_submit import SubmitReport, Submitter, estimate_per_request
from .processor import Tally

logger = logging.getLogger(__name__)

#: The online pipeline over the input, skipping the given ids (``--finish-online``).
OnlineRun = Callable[[Collection[str]], "tuple[Tally, ProcessingStats, ArtistBioGenError | None]"]


@dataclass(frozen=True)
class BatchReport:
    """What a batch run did and where the job's batches stand (for the summary)."""

    #: Every batch of the job after the run, by request file number.
    batches: list[BatchRecord]
    submitted_artists: int = 0
    submitted_batches: int = 0
    #: What this run collected, and what the answers it committed cost (batch prices).
    collected: Collected = field(default_factory=Collected)
    collected_cost: float = 0.0
    #: Estimated USD per request at batch prices (None: no price known).
    estimate: float | None = None
    #: Batches this run asked the API to cancel (``batch cancel``).
    cancelled: int = 0
    #: ``--finish-online`` ran the online pipeline.
    finished_online: bool = False

    @property
    def open_batches(self) -> list[BatchRecord]:
        """Batches not ended yet."""
        return [record for record in self.batches if record.open]

    @property
    def pending_requests(self) -> int:
        """Requests in the open batches."""
        return sum(record.requests for record in self.open_batches)

    @property
    def pending_cost(self) -> float | None:
        """What the open batches are expected to cost at batch prices (None: unknown)."""
        if self.estimate is None:
            return None
        return self.pending_requests * self.estimate


@dataclass(frozen=True)
class BatchRun:
    """How a batch run ended (``run_job`` turns it into its ``RunResult``)."""

    tally: Tally
    stats: ProcessingStats
    error: ArtistBioGenError | None
    report: BatchReport


@dataclass
class _Run:
    parts: BatchParts
    collector: Collector
    submitter: Submitter
    started: float = field(default_factory=time.monotonic)
    submitted: SubmitReport = field(default_factory=SubmitReport)
    #: Submission passes over the input so far.
    passes: int = 0
    cancelled: int = 0
    error: ArtistBioGenError | None = None


def run_batch(
    parts: BatchParts, online: OnlineRun, on_start: Callable[[int], None] | None = None
) -> BatchRun:
    """Rounds of finish, poll and collect, submit (or cancel) as the config says; then
    ``--finish-online``'s online pass. Never raises for what happens after the start: an
    error ends the run as its ``error``, after which the runner reconciles as always."""
    run = _Run(parts, Collector(parts), Submitter(parts))
    config = parts.config
    _log_start(parts)
    if on_start is not None:
        on_start(len(parts.done))
    deadline = run.started + config.batch.wait
    try:
        while True:
            _round(run)
            if run.error is not None or parts.control.stopping:
                break
            if not any(record.open for record in parts.store.batches()):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            parts.control.sleep(min(config.batch.poll_interval, left))
    except ArtistBioGenError as exc:
        run.error = run.error or exc
    tally, stats = run.collector.tally, _stats(run)
    error = _error(run)
    if error is not None:
        # A budget is no fault (as online: a warning); anything else is an error.
        log = logger.warning if isinstance(error, LimitReachedError) else logger.error
        log("%s", error)
    if config.batch.finish_online and error is None and not parts.control.stopping:
        tally, stats, error = _finish_online(run, online, tally, stats)
    return BatchRun(tally, stats, error, _report(run))


def _round(run: _Run) -> None:
    """One round: finish what a killed run left, poll and collect, then submit."""
    parts = run.parts
    for record in _unsubmitted(parts):
        if parts.config.batch.cancel:
            _abandon(run, record)
        else:
            run.submitter.finish_unrecorded(record)
    ended = _poll_and_collect(run)
    run.error = run.error or run.collector.error
    if ended is None or not _may_submit(run):
        return
    if run.passes and not ended:
        return  # nothing came back since the last pass read the input: nothing new to submit
    report = run.submitter.submit(parts.store.batches())
    run.passes += 1
    run.submitted = _plus(run.submitted, report)
    run.error = report.stopped


def _poll_and_collect(run: _Run) -> int | None:
    """Poll every submitted batch (``batch cancel``: cancel it), collect those that ended;
    returns how many ended, None when the run is stopping."""
    parts = run.parts
    ended = 0
    for record in parts.store.batches():
        if parts.control.stopping:
            return None
        if record.state != "submitted":
            continue
        info = run.collector.poll(record)
        if parts.config.batch.cancel and not info.final and info.status != "cancelling":
            info = parts.api.cancel(info.id)
            parts.store.set_status(record.chunk, info.status, info.completed, info.failed)
            run.cancelled += 1
            logger.info("asked the API to cancel batch %s (request file %d)", info.id, record.chunk)
        if info.final:
            if not run.collector.collect(record, info):
                return None
            ended += 1
    return ended


def _may_submit(run: _Run) -> bool:
    batch = run.parts.config.batch
    if batch.cancel or batch.finish_online or run.error is not None:
        return False
    return not (run.collector.hold or run.parts.control.stopping)


def _unsubmitted(parts: BatchParts) -> Iterator[BatchRecord]:
    for record in parts.store.batches():
        if parts.control.stopping:
            return
        if record.state in ("recorded", "uploaded"):
            yield record


def _abandon(run: _Run, record: BatchRecord) -> None:
    """``batch cancel`` of a request file whose batch was never recorded: cancel the batch
    if it exists after all, else close the row (its artists are waiting again)."""
    parts = run.parts
    if record.state == "uploaded" and run.submitter.find_batch(record.chunk, record.created_at):
        return  # now "submitted": this round's poll cancels it
    if record.input_file_id is not None:
        parts.api.delete_file(record.input_file_id)
    parts.store.end(record.chunk, "not_submitted", Collected(resubmit=record.requests))
    logger.info("request file %d was never submitted: closed", record.chunk)


def _log_start(parts: BatchParts) -> None:
    batches = parts.store.batches()
    open_batches = [record for record in batches if record.open]
    logger.info(
        "batch job %s: %s artists done, %d batches open (%s requests), %d ended",
        parts.job_id,
        f"{len(parts.done):,}",
        len(open_batches),
        f"{sum(record.requests for record in open_batches):,}",
        len(batches) - len(open_batches),
    )


def _error(run: _Run) -> ArtistBioGenError | None:
    if run.error is not None:
        return run.error
    batch = run.parts.config.batch
    if run.collector.hold and not (batch.cancel or batch.finish_online):
        # Only a run that would have submitted was held back by the full queue.
        return LimitReachedError(
            "A batch failed because the account's queue of batch tokens is full "
            "(token_limit_exceeded); run again with --resume later (e.g. from cron): its "
            "artists are submitted again, in smaller request files."
        )
    return None


def _finish_online(
    run: _Run, online: OnlineRun, tally: Tally, stats: ProcessingStats
) -> tuple[Tally, ProcessingStats, ArtistBioGenError | None]:
    """The online pipeline over the artists still waiting that no open batch holds."""
    open_ids = run.parts.store.open_artist_ids()
    logger.info(
        "--finish-online: answering the artists still waiting online (full price); %s "
        "artists in open batches are left to them",
        f"{len(open_ids):,}",
    )
    more, more_stats, error = online(_Either(run.parts.done, open_ids))
    merged = Tally(
        committed=tally.committed + more.committed,
        skipped=tally.skipped + more.skipped,
        failed=tally.failed + more.failed,
        not_started=tally.not_started + more.not_started,
        tokens=tally.tokens + more.tokens,
        cost_usd=tally.cost_usd + more.cost_usd,
        abandoned=tally.abandoned + more.abandoned,
    )
    return merged, _stats_plus(stats, more_stats), error


@dataclass(frozen=True)
class _Either(Collection[str]):
    """Done or in an open batch: the artists ``--finish-online`` leaves alone."""

    done: UuidSet
    open_ids: UuidSet

    def __contains__(self, artist_id: object) -> bool:
        return artist_id in self.done or artist_id in self.open_ids

    def __len__(self) -> int:
        return len(self.done) + len(self.open_ids)

    def __iter__(self) -> Iterator[str]:
        yield from self.done
        yield from self.open_ids


def _stats(run: _Run) -> ProcessingStats:
    tally, submitted = run.collector.tally, run.submitted
    return ProcessingStats(
        artists_read=submitted.rows + submitted.already_done,
        committed=tally.committed,
        skipped=tally.skipped + submitted.skipped,
        failed=tally.failed,
        already_done=submitted.already_done,
        bad_lines=submitted.bad_lines,
        duplicate_lines=submitted.duplicate_lines,
        not_started=tally.not_started + tally.abandoned,
        elapsed_seconds=time.monotonic() - run.started,
        tokens=tally.tokens,
        given_up=submitted.given_up,
    )


def _stats_plus(a: ProcessingStats, b: ProcessingStats) -> ProcessingStats:
    return ProcessingStats(
        artists_read=b.artists_read,
        committed=a.committed + b.committed,
        skipped=a.skipped + b.skipped,
        failed=a.failed + b.failed,
        already_done=b.already_done,
        bad_lines=b.bad_lines,
        duplicate_lines=b.duplicate_lines,
        not_started=a.not_started + b.not_started,
        elapsed_seconds=a.elapsed_seconds + b.elapsed_seconds,
        tokens=TokenUsage(*(x + y for x, y in zip(a.tokens, b.tokens, strict=True))),
        given_up=b.given_up,
        remaining=b.remaining,
    )


def _plus(a: SubmitReport, b: SubmitReport) -> SubmitReport:
    return replace(
        b,
        artists=a.artists + b.artists,
        batches=a.batches + b.batches,
        # Each pass reads the whole input: the last one's counts are the run's.
        given_up=b.given_up,
        skipped=b.skipped,
    )


def _report(run: _Run) -> BatchReport:
    parts = run.parts
    try:
        batches = parts.store.batches()
        estimate = estimate_per_request(parts, margin=False)
    except ArtistBioGenError as exc:
        # For the summary only: a database that stopped answering must not cost the end.
        logger.warning("could not read the job's batches: %s", exc)
        batches, estimate = [], None
    return BatchReport(
        batches=batches,
        submitted_artists=run.submitted.artists,
        submitted_batches=run.submitted.batches,
        collected=run.collector.collected,
        collected_cost=run.collector.tally.cost_usd,
        estimate=estimate,
        cancelled=run.cancelled,
        finished_online=parts.config.batch.finish_online,
    )
