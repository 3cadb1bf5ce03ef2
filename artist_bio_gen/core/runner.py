"""One run of a job, from the frozen config to the final tally.

``run_job`` is one straight sequence, the same for a new job and a resumed one:

1. take the job's run lock (a second run exits at once);
2. decide new job / resume / refuse, without writing anything yet;
3. check everything that can be checked before spending money: the input file, the
   database, its table and columns, the ledger table;
4. open the output, write a new job's manifest, reconcile the JSONL with the ledger;
5. process the artists not yet done (a batch job: ``core/batch.run_batch`` submits and
   collects its batches instead); reconcile again and save the checkpoint.

Nothing is written before step 4 (``--overwrite`` aside, which moves the old files away),
so a run refused for a configuration mistake leaves no trace that would get in the way of
the corrected run. Everything opened is entered into one ``ExitStack`` and closed in reverse
order, unless workers are left running (see ``LeftRunning``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import NamedTuple

from ..api.batches import BatchApi
from ..api.client import create_openai_client
from ..config import Config
from ..database.batches import BatchStore
from ..database.connection import describe_database
from ..database.store import JobTotals
from ..errors import ArtistBioGenError, LimitReachedError, UsageError
from ..jobfiles import JobPaths, Manifest, write_manifest
from ..models import ArtistData, Outcome, ProcessingStats
from ..utils.uuidset import UuidSet
from .assembly import (
    assemble_pipeline,
    closing,
    open_lazy_clients,
    open_ledger,
    open_throttle,
    price_override,
)
from .batch import BatchReport, BatchRun, run_batch
from .batch_parts import BatchParts
from .budget import utc_today
from .failures import batch_failures, count_attempts
from .inputmark import InputTracker, MarkCheck, PrefixHash, make_mark
from .job import decide_job
from .jsonl import JsonlWriter
from .lastrun import LastRunRecorder, run_exit_code
from .ledger import DatabaseLedger, Ledger
from .lock import RunLock
from .processes import WorkerProcesses, choose_processes
from .processor import OutcomeCallback, Pipeline, RunControl, Tally, process_artists_concurrent
from .reader import ArtistReader, InputPosition, LineCount, count_input_lines, has_header
from .recovery import scan_jsonl
from .throttle import RequestCounts
from .view import RunView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeftRunning:
    """Workers still in flight when the shutdown grace period ran out.

    They may yet commit and append, so everything they use (the run lock, the JSONL writer,
    the database pool, the API clients) stays open in ``resources``: the caller must end the
    process now (``os._exit``) rather than close it, and the next run waits on the run lock
    until this process is gone.
    """

    workers: int
    resources: contextlib.ExitStack


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    stats: ProcessingStats
    job_id: str
    error: ArtistBioGenError | None = None
    interrupted: bool = False
    left_running: LeftRunning | None = None
    #: What the run's HTTP requests did (requests, 429s, spend).
    requests: RequestCounts = field(default_factory=RequestCounts)
    #: What all runs of the job committed and spent (None without a database).
    job_totals: JobTotals | None = None
    #: A batch job's batches and what this run did with them (None for an online job).
    batches: BatchReport | None = None


#: Called once processing begins, with the run's live counts.
StartCallback = Callable[[RunView], None]


def _started(view: RunView, on_start: StartCallback | None) -> Callable[[int], None] | None:
    """The batch run's start callback (it knows the done count) as a ``StartCallback``."""
    if on_start is None:
        return None

    def started(already_done: int) -> None:
        view.already_done = already_done
        on_start(view)

    return started


def run_job(
    config: Config,
    control: RunControl,
    *,
    on_outcome: OutcomeCallback | None = None,
    on_start: StartCallback | None = None,
    today: Callable[[], date] = utc_today,
) -> RunResult:
    """Run (or resume) the job of ``config.output_path``.

    ``on_start`` receives the run's live counts (``RunView``) when processing begins;
    ``today`` is the UTC day the daily request budget counts (a test can move it).
    Raises ``ArtistBioGenError`` subclasses for problems found before processing starts.
    """
    paths = JobPaths(config.output_path)
    _check_output_location(paths)
    _check_transaction_log(config.transaction_log)
    with contextlib.ExitStack() as stack:
        lock = stack.enter_context(RunLock(paths.run_lock))
        start = decide_job(config, paths)
        job_id = start.manifest.job_id
        # Entered after the lock, so the run's end is recorded before the lock is let go.
        last_run = stack.enter_context(LastRunRecorder(paths, _command(config), config.secrets))
        if not start.new:
            last_run.started(job_id)
        ArtistReader(config.input_path).close()  # a missing or unreadable input fails here
        ledger = _open_ledger(config, paths, job_id, stack)
        writer = closing(stack, _open_writer(config, paths))
        control.on_emergency(writer.freeze)
        control.on_emergency(last_run.interrupted_now)
        if start.new:
            write_manifest(paths, start.manifest)
            last_run.started(job_id)
            logger.info("started job %s", job_id)
        manifest = _reconcile(paths, ledger, start.manifest, writer, None)
        mark = _Mark.of(writer)
        check = _mark_check(config, manifest, ledger)  # hashes the input while ids load
        clients = open_lazy_clients(config, config.max_workers)
        if config.mode == "online" and choose_processes(config, None) == 1:
            clients.prepare()  # this process will call the API, whatever is left to do
        done, ledger_rows = _done_ids(paths, manifest, ledger)
        input_start = _input_start(check, ledger, job_id, ledger_rows)
        throttle = closing(stack, open_throttle(config, ledger.usage(job_id), control, today))
        pipeline = assemble_pipeline(
            config,
            job_id,
            stack,
            ledger=ledger,
            writer=writer,
            throttle=throttle,
            clients=clients,
            previous_attempts=count_attempts(paths.failures, job_id),
        )
        batches: BatchReport | None = None
        processes: WorkerProcesses | None = None
        position: InputPosition | None = None
        view = RunView(job_id, already_done=len(done), requests=throttle.counts)
        if config.mode == "batch":
            parts = _batch_parts(config, paths, ledger, pipeline, control, done, stack)
            batch = _batch(parts, on_outcome, _started(view, on_start), today)
            tally, stats, error, batches = batch.tally, batch.stats, batch.error, batch.report
        else:
            processes = WorkerProcesses(
                config,
                job_id,
                control,
                writer=writer,
                lock=lock,
                previous_attempts=pipeline.previous_attempts,
                requests=throttle.counts,
            )
            stack.callback(processes.close)
            run = _Processing(
                config, pipeline, control, on_outcome, on_start, view, processes, input_start
            )
            tally, stats, error, position = _process(run, done)
        result = RunResult(
            stats, job_id, error, control.interrupted, requests=throttle.counts, batches=batches
        )
        if tally.abandoned:
            left = _leave_running(stack, writer, tally.abandoned)
            return _ended(last_run, replace(result, left_running=left))
        appended = (
            mark.since(writer) if processes is None else processes.appended(mark.since(writer))
        )
        # Quiet now (no worker, thread or process, can append), so the checkpoint is exact.
        manifest = _reconcile(paths, ledger, manifest, writer, appended)
        totals = _job_totals(ledger, job_id)
        if config.mode == "online" and position is not None and totals is not None:
            base = None if check is None else check.trusted
            _save_input_mark(paths, config.input_path, manifest, ledger, position, totals, base)
        return _ended(last_run, replace(result, job_totals=totals))


def _command(config: Config) -> str:
    return "batch cancel" if config.batch.cancel else "run"


def _ended(last_run: LastRunRecorder, result: RunResult) -> RunResult:
    """Record how the run ended (its exit code, figures and error) and return ``result``."""
    code = run_exit_code(result.error, result.interrupted, result.stats.failed)
    error = None if result.error is None else str(result.error)
    last_run.ended(code, stats=result.stats, requests=result.requests, error=error)
    return result


def _batch_parts(
    config: Config,
    paths: JobPaths,
    ledger: Ledger,
    pipeline: Pipeline,
    control: RunControl,
    done: UuidSet,
    stack: contextlib.ExitStack,
) -> BatchParts:
    """What a batch run works with (``config.py`` made sure the job has a database)."""
    if not isinstance(ledger, DatabaseLedger):
        raise UsageError("--mode batch needs the database; set DATABASE_URL or --db-url.")
    job_id = ledger.job.job_id
    client = create_openai_client(
        config.api_key, config.base_url, timeout=config.request_timeout, max_retries=2
    )
    # The pipeline's attempts, as a Counter this run adds its batch failures to.
    attempts = Counter(pipeline.previous_attempts)
    return BatchParts(
        config=config,
        job_id=job_id,
        paths=paths,
        api=closing(stack, BatchApi(client, config.api_key)),
        store=BatchStore(ledger.store, job_id),
        bios=ledger.store,
        pipeline=replace(pipeline, previous_attempts=attempts),
        control=control,
        done=done,
        attempts=attempts,
        recorded_failures=batch_failures(paths.failures, job_id),
        usage=ledger.usage(job_id),
        totals=lambda: _job_totals(ledger, job_id),
        price=price_override(config),
        on_outcome=None,
        today=lambda: utc_today(),
    )


def _batch(
    parts: BatchParts,
    on_outcome: OutcomeCallback | None,
    on_start: Callable[[int], None] | None,
    today: Callable[[], date],
) -> BatchRun:
    parts = replace(parts, on_outcome=on_outcome, today=today)
    config, pipeline, control = parts.config, parts.pipeline, parts.control

    def online(skip: Collection[str]) -> tuple[Tally, ProcessingStats, ArtistBioGenError | None]:
        view = RunView(parts.job_id)  # not shown: the batch run reports its own progress
        processed = _process(_Processing(config, pipeline, control, on_outcome, None, view), skip)
        return processed.tally, processed.stats, processed.error

    return run_batch(parts, online, on_start)


def _check_output_location(paths: JobPaths) -> None:
    output = paths.output
    if output.is_dir():
        raise UsageError(
            f"--output '{output}' is a directory; give a file name such as {output / 'out.jsonl'}."
        )
    if not output.parent.resolve().is_dir():
        raise UsageError(f"The directory of --output '{output}' does not exist; create it first.")


def _check_transaction_log(path: Path | None) -> None:
    # Checked before anything is written: a bad path found later would leave a manifest.
    if path is not None and (path.is_dir() or not path.parent.resolve().is_dir()):
        raise UsageError(f"--transaction-log '{path}' must be a file in an existing directory.")


def _open_ledger(
    config: Config, paths: JobPaths, job_id: str, stack: contextlib.ExitStack
) -> Ledger:
    ledger = open_ledger(config, paths.output, job_id, stack)
    if config.db is None:
        logger.warning('no database configured: writing the JSONL only (db_status "null")')
    else:
        where = describe_database(config.db.url)
        logger.info("writing bios to table %s in %s", config.db.table, where)
    return ledger


def _open_writer(config: Config, paths: JobPaths) -> JsonlWriter:
    return JsonlWriter(paths.output, fsync_interval=config.fsync_interval, hold_lock=True)


def _reconcile(
    paths: JobPaths,
    ledger: Ledger,
    manifest: Manifest,
    writer: JsonlWriter,
    appended: tuple[int, int] | None,
) -> Manifest:
    """Reconcile and save the new checkpoint; returns the manifest holding it."""
    result, manifest = ledger.reconcile(manifest, writer, appended)
    write_manifest(paths, manifest)
    logger.debug("reconciled: %d lines scanned, %d appended", result.scanned_lines, result.appended)
    return manifest


@dataclass(frozen=True)
class _Mark:
    """The writer's counters when the manifest's checkpoint was saved."""

    lines: int
    size: int

    @classmethod
    def of(cls, writer: JsonlWriter) -> _Mark:
        return cls(writer.appended_lines, writer.appended_bytes)

    def since(self, writer: JsonlWriter) -> tuple[int, int]:
        """(lines, bytes) the writer appended after this mark."""
        return writer.appended_lines - self.lines, writer.appended_bytes - self.size


def _done_ids(paths: JobPaths, manifest: Manifest, ledger: Ledger) -> tuple[UuidSet, int]:
    """The done ids, and how many of them the ledger gave."""
    done = ledger.done_ids(manifest)
    ledger_rows = len(done)
    if manifest.legacy_prefix:
        done.update(scan_jsonl(paths.output, 0, manifest.legacy_prefix).ids)
    return done, ledger_rows


def _mark_check(config: Config, manifest: Manifest, ledger: Ledger) -> MarkCheck | None:
    """Starts checking the manifest's input mark (online jobs with a database only)."""
    mark = manifest.input_mark
    if mark is None or config.mode != "online" or not isinstance(ledger, DatabaseLedger):
        return None
    return MarkCheck(config.input_path, mark)


def _input_start(
    check: MarkCheck | None, ledger: Ledger, job_id: str, ledger_rows: int
) -> InputPosition | None:
    """Where the reader starts: the input mark when it holds, else the top (None)."""
    if check is None or not isinstance(ledger, DatabaseLedger):
        return None
    # The rows up to the mark's sequence number: all rows, less those committed since.
    later, _ = ledger.store.rows_after(job_id, check.mark.ledger_seq)
    start = check.position(ledger_rows - later)
    if start is not None:
        logger.info(
            "resuming from the input mark: the first %s lines (%s artists done) are not read again",
            f"{start.lines:,}",
            f"{start.done:,}",
        )
    return start


def _save_input_mark(
    paths: JobPaths,
    input_path: Path,
    manifest: Manifest,
    ledger: Ledger,
    position: InputPosition,
    totals: JobTotals,
    base: PrefixHash | None,
) -> None:
    """Record where the next resume may start reading the input (see ``core/inputmark``).

    ``totals`` counts the job's rows, all committed before the checkpoint's sequence number
    (the run is quiet and reconciled); without them (the database did not answer) the caller
    keeps the old mark, which still holds. ``base`` is the hash the run's start checked
    (the bytes before the old mark are not read again).
    """
    if not isinstance(ledger, DatabaseLedger):
        return
    ledger_end = (manifest.checkpoint.ledger_seq, totals.bios)
    mark = make_mark(input_path, position, ledger_end, base)
    if mark is not None and mark != manifest.input_mark:
        write_manifest(paths, replace(manifest, input_mark=mark))


@dataclass
class _GiveUpFilter:
    """Drops artists that failed ``max_attempts`` times already (a poison artist must not
    cost money every night); counts them."""

    attempts: Mapping[str, int]
    max_attempts: int
    view: RunView
    given_up: int = 0
    #: Told of each artist dropped (it is not done: the input mark stays before it).
    on_drop: Callable[[ArtistData], None] | None = None

    def __call__(self, artists: Iterable[ArtistData]) -> Iterator[ArtistData]:
        for artist in artists:
            if self.attempts.get(artist.artist_id, 0) >= self.max_attempts:
                self.given_up += 1
                self.view.given_up = self.given_up
                if self.on_drop is not None:
                    self.on_drop(artist)
                continue
            yield artist


@dataclass
class _ArtistLimit:
    """``--limit N``: lets at most N artists through in this run; notes whether more waited."""

    limit: int | None
    reached: bool = False

    def __call__(self, artists: Iterable[ArtistData]) -> Iterator[ArtistData]:
        if self.limit is None:
            yield from artists
            return
        for index, artist in enumerate(artists):
            if index >= self.limit:
                self.reached = True
                return
            yield artist

    def error(self, control: RunControl) -> LimitReachedError | None:
        """The error a run that stopped at the limit ends with (None otherwise)."""
        if not self.reached or control.interrupted:
            return None
        return LimitReachedError(
            f"--limit {self.limit} reached: this run started {self.limit:,} artists and more "
            "are left; run again with --resume to continue."
        )


@dataclass(frozen=True)
class _Processing:
    """What the online processing of a run works with."""

    config: Config
    pipeline: Pipeline
    control: RunControl
    on_outcome: OutcomeCallback | None
    on_start: StartCallback | None
    view: RunView
    #: Starts worker processes for the artists to do, when the run needs them.
    processes: WorkerProcesses | None = None
    #: Where to start reading the input (None: at the top).
    start: InputPosition | None = None


class _Processed(NamedTuple):
    """How the processing of a run ended."""

    tally: Tally
    stats: ProcessingStats
    error: ArtistBioGenError | None
    #: Where the next resume may start reading the input.
    position: InputPosition


def _process(run: _Processing, done: Collection[str]) -> _Processed:
    """Process what is left; returns the tally, the stats, the error the run ended with and
    where the next resume may start reading."""
    config, pipeline, control, view = run.config, run.pipeline, run.control, run.view
    cap = config.max_attempts if not config.retry_failed else 10**9
    limit = _ArtistLimit(config.budget.limit)
    counted = _count_lines(config.input_path, run.start)
    lines = None if counted is None else counted.lines
    view.already_done = len(done)
    view.to_do = None if counted is None else _to_do(config, counted, done, run.start)
    view.limit = config.budget.limit
    if done or config.resume:
        to_go = "an unknown number" if view.to_do is None else f"about {view.to_do:,}"
        logger.info("resumed: %s already done, %s to go", f"{len(done):,}", to_go)
    view.started = time.monotonic()
    if run.on_start is not None:
        run.on_start(view)
    pool = None if run.processes is None else run.processes(view.to_do)
    with ArtistReader(config.input_path, skip_ids=done, start=run.start) as reader:
        tracker = InputTracker(reader, run.start or InputPosition())
        give_up = _GiveUpFilter(pipeline.previous_attempts, cap, view, on_drop=tracker.dropped)
        tally = process_artists_concurrent(
            limit(give_up(tracker.track(reader))),
            pipeline,
            control,
            max_workers=config.max_workers,
            on_outcome=_also(tracker.settled, run.on_outcome),
            shutdown_grace=config.shutdown_grace,
            tally=view.tally,
            executor=pool,
        )
        stats = _stats(reader, tally, view.elapsed, give_up.given_up)
        stats = stats._replace(remaining=_remaining(reader, stats, lines, len(done)))
        position = tracker.position()
    if give_up.given_up:
        logger.warning(
            "%d artists failed %d times already and were skipped (--retry-failed retries them)",
            give_up.given_up,
            config.max_attempts,
        )
    if control.error is not None:
        return _Processed(tally, stats, control.error, position)
    stopped = limit.error(control)
    if stopped is not None:
        logger.warning("%s", stopped)
    return _Processed(tally, stats, stopped, position)


def _also(
    settled: Callable[[Outcome], None], on_outcome: OutcomeCallback | None
) -> OutcomeCallback:
    """An outcome callback that tells ``settled`` first, then ``on_outcome``."""

    def both(outcome: Outcome, tally: Tally) -> None:
        settled(outcome)
        if on_outcome is not None:
            on_outcome(outcome, tally)

    return both


def _count_lines(path: Path, start: InputPosition | None) -> LineCount | None:
    """The input's lines (counted from ``start`` on; those before it are known)."""
    if start is None:
        return count_input_lines(path)
    counted = count_input_lines(path, start.offset)
    if counted is None:
        return None
    return LineCount(start.lines + counted.lines, start.skipped_lines + counted.skipped)


def _to_do(
    config: Config, counted: LineCount, done: Collection[str], start: InputPosition | None
) -> int:
    """The artists left to do, estimated from the input's lines less its header, blank and
    comment lines (bad and duplicate lines count as artists until the input is read)."""
    # A start's skipped lines include the header already.
    header = has_header(config.input_path) if start is None else 0
    skipped = counted.skipped + header
    return max(0, counted.lines - skipped - len(done))


def _remaining(
    reader: ArtistReader, stats: ProcessingStats, lines: int | None, done: int
) -> int | None:
    """The artists the next ``--resume`` has left: those read and not handled, plus (when
    the run stopped before the end of the input) the unread lines less the done artists
    among them. Exact once the input was read to its end."""
    left = reader.rows - stats.committed - stats.skipped - stats.given_up
    if reader.exhausted:
        return left
    if lines is None:
        return None
    unread = lines - reader.lines_read - (done - reader.already_done)
    return left + max(0, unread)


def _stats(reader: ArtistReader, tally: Tally, elapsed: float, given_up: int) -> ProcessingStats:
    return ProcessingStats(
        artists_read=reader.rows + reader.already_done,
        committed=tally.committed,
        skipped=tally.skipped,
        failed=tally.failed,
        already_done=reader.already_done,
        bad_lines=reader.error_lines,
        duplicate_lines=reader.duplicate_lines,
        # Artists left running past the grace period never got an outcome either.
        not_started=tally.not_started + tally.abandoned,
        elapsed_seconds=elapsed,
        tokens=tally.tokens,
        given_up=given_up,
    )


def _job_totals(ledger: Ledger, job_id: str) -> JobTotals | None:
    # For the summary only: a database that stopped answering must not cost the run its end.
    try:
        return ledger.totals(job_id)
    except ArtistBioGenError as exc:
        logger.warning("could not read the job's totals: %s", exc)
        return None


def _leave_running(stack: contextlib.ExitStack, writer: JsonlWriter, workers: int) -> LeftRunning:
    """Keep everything open for workers that outlived the grace period (see LeftRunning)."""
    # Closing the JSONL's descriptor could let its number be reused by another file under
    # a worker's feet; freezing it instead stops any append from starting or being cut.
    writer.freeze()
    return LeftRunning(workers, stack.pop_all())
