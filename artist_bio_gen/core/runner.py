"""One run of a job, from the frozen config to the final tally.

The order matters and is the same for a new job and a resumed one:

1. take the job's run lock (a second run exits at once);
2. decide new job / resume / refuse, without writing anything yet;
3. check everything that can be checked before spending money: the input file, the prompt
   settings and key, the database, its table and columns, the ledger table;
4. open the output, write the manifest, reconcile the JSONL with the ledger;
5. process the artists not yet done; reconcile again and save the checkpoint.

Nothing is written before step 4, so a run refused for a configuration mistake leaves no
trace that would get in the way of the corrected run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg_pool import ConnectionPool

from ..api.client import create_client_pool
from ..config import Config, check_runnable
from ..database.connection import create_db_connection_pool, describe_database
from ..database.schema import ensure_ledger, inspect_target_table
from ..database.store import BioStore, new_job_id
from ..errors import ArtistBioGenError, UsageError
from ..models import ArtistData, ProcessingStats
from ..utils.logging import TransactionLog
from ..utils.uuidset import UuidSet
from .failures import FailureLog, count_attempts
from .job import Manifest, apply_manifest, new_manifest, read_manifest, write_manifest
from .lock import RunLock
from .output import JsonlWriter, move_aside
from .parser import ArtistReader, estimate_rows
from .paths import JobPaths
from .processor import OutcomeCallback, Pipeline, RunControl, Tally, process_artists_concurrent
from .recovery import reconcile, scan_jsonl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """How a run ended."""

    stats: ProcessingStats
    error: ArtistBioGenError | None = None
    interrupted: bool = False
    #: Artists still in flight when the shutdown grace period ran out.
    abandoned: int = 0
    job_id: str | None = None


@dataclass
class _Session:
    """What the run opened; closed in reverse order by ``_closing``."""

    config: Config
    paths: JobPaths
    manifest: Manifest | None
    pool: ConnectionPool | None = None
    store: BioStore | None = None
    writer: JsonlWriter | None = None
    failures: FailureLog | None = None
    txlog: TransactionLog | None = None
    #: Workers still running when the run returned: their files must stay open.
    abandoned: int = 0
    #: The writer's (lines, bytes) counters when the manifest's checkpoint was saved.
    mark: tuple[int, int] = (0, 0)


def run_job(
    config: Config,
    control: RunControl,
    *,
    on_outcome: OutcomeCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunResult:
    """Run (or resume) the job of ``config.output_path``.

    ``on_start`` receives the number of artists already done before processing begins.
    Raises ``ArtistBioGenError`` subclasses for problems found before processing starts.
    """
    paths = JobPaths(config.output_path)
    _check_output_location(paths)
    _check_transaction_log(config.transaction_log)
    with RunLock(paths.run_lock) as lock, _closing(_Session(config, paths, None)) as session:
        _decide_job(session)
        _check_before_spending(session)
        _open_outputs(session)
        assert session.writer is not None
        control.on_emergency(session.writer.freeze)
        result = _process(session, control, on_outcome, on_start)
        if result.abandoned:
            lock.hold_until_exit()
        return result


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


def _decide_job(session: _Session) -> None:
    """New job, resume, or refuse; nothing is written here."""
    config, paths = session.config, session.paths
    manifest = read_manifest(paths)
    has_lines = paths.output.exists() and paths.output.stat().st_size > 0
    if config.resume:
        session.manifest = _resume(config, paths, manifest, has_lines)
        if session.manifest is not None:
            session.config = apply_manifest(config, session.manifest)
    elif manifest is not None or has_lines:
        if not config.overwrite:
            raise UsageError(_existing_output_message(paths, manifest))
        for path in (paths.output, paths.manifest, paths.failures):
            if path.exists():
                move_aside(path)
    check_runnable(session.config)


def _resume(
    config: Config, paths: JobPaths, manifest: Manifest | None, has_lines: bool
) -> Manifest | None:
    if manifest is not None:
        logger.info("resuming job %s (%s)", manifest.job_id, paths.output)
        return manifest
    if has_lines:
        logger.info("%s has no job manifest: adopting it as a legacy output", paths.output)
        return None  # adopted when the output is opened (its size is the legacy prefix)
    if config.input_path is None:
        raise UsageError(
            f"Nothing to resume: {paths.output} has no job (no {paths.manifest.name}); "
            "start one with --input PATH."
        )
    logger.info("nothing to resume at %s; starting a new job", paths.output)
    return None


def _existing_output_message(paths: JobPaths, manifest: Manifest | None) -> str:
    what = f"belongs to job {manifest.job_id}" if manifest else "already holds lines"
    return (
        f"{paths.output} {what}; pass --resume to continue it, --overwrite to move it aside "
        "and start a new job, or choose another --output."
    )


def _check_before_spending(session: _Session) -> None:
    config = session.config
    assert config.input_path is not None
    ArtistReader(config.input_path).close()  # a missing or unreadable input fails here
    if config.db is None:
        logger.warning('no database configured: writing the JSONL only (db_status "null")')
        return
    where = describe_database(config.db.url)
    session.pool = create_db_connection_pool(config.db)
    table = inspect_target_table(session.pool, config.db.table, where)
    ensure_ledger(session.pool, where)
    session.store = BioStore(session.pool, config.db, table)
    logger.info("writing bios to table %s in %s", config.db.table, where)


def _open_outputs(session: _Session) -> None:
    config, paths = session.config, session.paths
    session.writer = JsonlWriter(paths.output, fsync_interval=config.fsync_interval, hold_lock=True)
    if session.manifest is None:
        legacy_prefix = paths.output.stat().st_size if config.resume else 0
        session.manifest = new_manifest(config, new_job_id(), legacy_prefix)
        write_manifest(paths, session.manifest)
        logger.info("started job %s", session.manifest.job_id)
    job_id = session.manifest.job_id
    session.failures = FailureLog(paths.failures, job_id)
    session.txlog = TransactionLog(config.transaction_log or paths.transaction_log, job_id)
    _reconcile(session)


def _reconcile(session: _Session, *, end_of_run: bool = False) -> None:
    assert session.manifest is not None and session.writer is not None
    writer = session.writer
    appended = None
    if end_of_run:
        lines, size = session.mark
        appended = (writer.appended_lines - lines, writer.appended_bytes - size)
    result, manifest = reconcile(session.manifest, session.store, writer, appended)
    session.manifest = manifest
    write_manifest(session.paths, manifest)
    # What the writer has appended so far is covered by the checkpoint just saved.
    session.mark = (writer.appended_lines, writer.appended_bytes)
    logger.debug("reconciled: %d lines scanned, %d appended", result.scanned_lines, result.appended)


@dataclass
class _GiveUpFilter:
    """Drops artists that failed ``max_attempts`` times already (a poison artist must not
    cost money every night); counts them."""

    attempts: dict[str, int]
    max_attempts: int
    given_up: int = 0

    def __call__(self, artists: Iterable[ArtistData]) -> Iterator[ArtistData]:
        for artist in artists:
            if self.attempts.get(artist.artist_id, 0) >= self.max_attempts:
                self.given_up += 1
                continue
            yield artist


def _done_ids(session: _Session) -> UuidSet:
    manifest = session.manifest
    assert manifest is not None
    path = session.paths.output
    legacy = (
        scan_jsonl(path, 0, manifest.legacy_prefix).ids if manifest.legacy_prefix else UuidSet()
    )
    if session.store is None:
        legacy.update(scan_jsonl(path, manifest.legacy_prefix).ids)
        return legacy
    done = session.store.done_ids(manifest.job_id)
    done.update(legacy)
    return done


def _process(
    session: _Session,
    control: RunControl,
    on_outcome: OutcomeCallback | None,
    on_start: Callable[[int], None] | None,
) -> RunResult:
    config, manifest = session.config, session.manifest
    assert manifest is not None and config.input_path is not None
    done = _done_ids(session)
    attempts = dict(count_attempts(session.paths.failures, manifest.job_id))
    give_up = _GiveUpFilter(attempts, config.max_attempts if not config.retry_failed else 10**9)
    to_go = max(0, estimate_rows(config.input_path) - len(done)) if done or config.resume else None
    _log_start(len(done), to_go)
    if on_start is not None:
        on_start(len(done))
    pipeline = _pipeline(session, attempts)
    started = time.monotonic()
    with ArtistReader(config.input_path, skip_ids=done) as reader:
        tally = process_artists_concurrent(
            give_up(reader),
            pipeline,
            control,
            max_workers=config.max_workers,
            on_outcome=on_outcome,
            shutdown_grace=config.shutdown_grace,
        )
        stats = _stats(reader, tally, time.monotonic() - started, give_up.given_up)
    if give_up.given_up:
        logger.warning(
            "%d artists failed %d times already and were skipped (--retry-failed retries them)",
            give_up.given_up,
            config.max_attempts,
        )
    session.abandoned = tally.abandoned
    if tally.abandoned == 0:
        # Abandoned workers may still be inside an API call: their clients stay open then.
        _close_api_clients(pipeline)
        # Quiet now (no worker can append), so the checkpoint is exact.
        _reconcile(session, end_of_run=True)
    return RunResult(stats, control.error, control.interrupted, tally.abandoned, manifest.job_id)


def _log_start(done_count: int, to_go: int | None) -> None:
    if to_go is not None:
        logger.info("resumed: %s already done, about %s to go", f"{done_count:,}", f"{to_go:,}")


def _pipeline(session: _Session, attempts: dict[str, int]) -> Pipeline:
    config, manifest = session.config, session.manifest
    assert manifest and session.writer and session.failures and session.txlog
    client = create_client_pool(
        config.api_key,
        config.base_url,
        workers=config.max_workers,
        timeout=config.request_timeout,
        max_retries=config.max_retries,
    )
    return Pipeline(
        job_id=manifest.job_id,
        settings=config.prompt,
        client=client,
        store=session.store,
        writer=session.writer,
        failures=session.failures,
        txlog=session.txlog,
        skip_existing=config.skip_existing,
        api_key=config.api_key,
        previous_attempts=attempts,
    )


def _close_api_clients(pipeline: Pipeline) -> None:
    """Close the API clients' connections (every client of a ``ClientPool``)."""
    if pipeline.client is not None:
        with contextlib.suppress(Exception):  # the bios are committed; a close error is moot
            pipeline.client.close()


def _stats(reader: ArtistReader, tally: Tally, elapsed: float, given_up: int) -> ProcessingStats:
    return ProcessingStats(
        artists_read=reader.rows + reader.already_done,
        committed=tally.committed,
        skipped=tally.skipped + given_up,
        failed=tally.failed,
        already_done=reader.already_done,
        bad_lines=reader.error_lines,
        duplicate_lines=reader.duplicate_lines,
        not_started=tally.not_started,
        elapsed_seconds=elapsed,
        tokens=tally.tokens,
    )


@contextlib.contextmanager
def _closing(session: _Session) -> Iterator[_Session]:
    try:
        yield session
    finally:
        if session.abandoned and session.writer is not None:
            # Workers may still append: closing the descriptor could let its number be
            # reused by another file under their feet. Freeze it; the caller exits next.
            session.writer.freeze()
        else:
            for resource in (session.txlog, session.failures, session.writer, session.pool):
                if resource is not None:
                    with contextlib.suppress(Exception):
                        resource.close()
