"""What ``artist-bio-gen status`` knows about a job, gathered without running it.

Nothing here writes a file, takes the run lock, migrates a table or calls the API: a job can
be looked at while a run works on it (the lock is read from the kernel's table, see
``core/lock.lock_state``), after it finished or failed, and when its database is down (then
the job's files answer what they can: done from the JSONL, spend from the transaction log).

The figures:

* done: artists the job committed (ledger rows; the JSONL's lines without a database);
* failed / given up: not done, with failed attempts recorded in the failures file, fewer than
  ``max_attempts`` (the next ``--resume`` retries them) or that many (given up);
* remaining: distinct input artists not done, found by streaming the input past the done
  set, as a run would (failed and given-up artists are among them);
* the last run: ``<stem>.lastrun.json`` (``core/lastrun.py``) read with the lock's state;
* the quick check: the comparison a run makes at its start (``core/recovery.quick_check``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg_pool import PoolTimeout

from .. import exit_codes
from ..database.batches import BatchRecord, BatchStore
from ..database.connection import (
    create_db_connection_pool,
    describe_database,
    first_line,
    is_database_url,
    redact,
)
from ..database.store import BioStore, JobTotals
from ..errors import ArtistBioGenError, UsageError
from ..jobfiles import JobPaths, LastRun, Manifest, read_last_run, read_manifest
from ..models import DatabaseConfig
from ..utils.uuidset import UuidSet
from .failures import count_attempts
from .jsonl import iter_records
from .lock import LockState, lock_state
from .reader import ArtistReader
from .recovery import QuickCheck, quick_check, scan_jsonl, torn_tail_bytes

logger = logging.getLogger(__name__)

#: Seconds to wait for the database: status answers at once, or says it is unreachable.
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Counts:
    """How far the job is (``remaining`` and ``input_artists`` are None without the input)."""

    done: int
    failed: int
    given_up: int
    remaining: int | None = None
    input_artists: int | None = None
    bad_lines: int | None = None
    #: Why the input could not be read (None when it was).
    input_error: str | None = None


@dataclass(frozen=True)
class Spend:
    """What the job's bios cost so far, and where the figure comes from."""

    cost_usd: float
    #: Bios (or answers) whose cost is unknown, left out of ``cost_usd``.
    unpriced: int
    total_tokens: int
    #: ``ledger`` or ``transaction log`` (the job's files, when the database is not read).
    source: str


@dataclass(frozen=True)
class DatabaseView:
    """The job's database as status saw it."""

    #: ``user@host:port/dbname`` (never a password) and the table; None for a JSONL-only job.
    name: str | None
    table: str | None
    #: Whether it was read; None for a JSONL-only job.
    reachable: bool | None = None
    #: Why it was not read (one sentence, password scrubbed).
    error: str | None = None


@dataclass(frozen=True)
class JobStatus:
    """Everything ``status`` shows."""

    paths: JobPaths
    manifest: Manifest
    database: DatabaseView
    counts: Counts
    spend: Spend
    lock: LockState
    #: The quick check (None: not made, the database was not read, or the job has none).
    check: QuickCheck | None
    torn_tail_bytes: int
    #: A batch job's batches (None for an online job or when the database was not read).
    batches: list[BatchRecord] | None = None
    #: The last run's record (None: no run of this job recorded one).
    last_run: LastRun | None = None

    @property
    def last_run_state(self) -> str | None:
        """``ended``, ``running`` (no end recorded, a run holds the lock) or ``killed`` (no
        end recorded and nobody holds the lock: SIGKILL, a crash, the machine stopped)."""
        if self.last_run is None:
            return None
        if self.last_run.ended_at is not None:
            return "ended"
        return "running" if self.lock.held else "killed"

    @property
    def exit_code(self) -> int:
        """6 when the JSONL holds bios the database does not, 3 when the database could not
        be read for a job that has one, else 0."""
        if self.check is not None and not self.check.consistent:
            return exit_codes.EXIT_OUT_OF_SYNC
        if self.database.reachable is False:
            return exit_codes.EXIT_CONFIG_ERROR
        return exit_codes.EXIT_SUCCESS


def job_status(output: Path, url: str | None, max_attempts: int) -> JobStatus:
    """Gather the status of the job of ``output``; ``url`` is the database URL configured now.

    Raises ``UsageError`` when there is no job at ``output``.
    """
    paths = JobPaths(output)
    manifest = read_manifest(paths)
    if manifest is None:
        raise UsageError(
            f"There is no job at {output} (no {paths.manifest.name}); pass the --output of a "
            "job that was started."
        )
    lock, last_run = _lock_and_last_run(paths, manifest)
    attempts = count_attempts(paths.failures, manifest.job_id)
    settings = manifest.settings
    view = DatabaseView(settings.database, settings.table)
    found: _FromDatabase | None = None
    if settings.database is not None:
        view, found = _read_database(paths, manifest, url)
    if found is None:
        done, spend = _from_files(paths, manifest), _spend_from_log(paths, manifest.job_id)
    else:
        done, spend = found.done, found.spend
    return JobStatus(
        paths=paths,
        manifest=manifest,
        database=view,
        counts=_counts(manifest, done, attempts, max_attempts),
        spend=spend,
        lock=lock,
        check=found.check if found else None,
        torn_tail_bytes=torn_tail_bytes(paths.output),
        batches=found.batches if found else None,
        last_run=last_run,
    )


def _lock_and_last_run(paths: JobPaths, manifest: Manifest) -> tuple[LockState, LastRun | None]:
    """The lock's state between two equal readings of the last-run record.

    A run records its start after taking the lock and its end before letting it go, so when
    the record reads the same before and after the lock was read and has no end, the lock
    was held in between unless the run is dead: "killed" is then never a run that just
    started or just ended.
    """
    before = _last_run(paths, manifest)
    lock = lock_state(paths.run_lock)
    after = _last_run(paths, manifest)
    for _ in range(4):  # a run started or ended meanwhile: read again
        if after == before:
            break
        before, lock, after = after, lock_state(paths.run_lock), _last_run(paths, manifest)
    return lock, after


def _last_run(paths: JobPaths, manifest: Manifest) -> LastRun | None:
    record = read_last_run(paths)
    # A record of another job: the output was --overwrite'n since (its runs are not this job's).
    return record if record is not None and record.job_id == manifest.job_id else None


@dataclass(frozen=True)
class _FromDatabase:
    done: UuidSet
    spend: Spend
    check: QuickCheck
    batches: list[BatchRecord] | None = field(default=None)


def _read_database(
    paths: JobPaths, manifest: Manifest, url: str | None
) -> tuple[DatabaseView, _FromDatabase | None]:
    settings = manifest.settings
    problem = _url_problem(settings.database, url)
    if problem is not None or url is None:
        return DatabaseView(settings.database, settings.table, False, problem), None
    config = DatabaseConfig(
        url=url, pool_size=2, connect_timeout=CONNECT_TIMEOUT, retry_seconds=0.0
    )
    try:
        found = _query(paths, manifest, config)
    except (ArtistBioGenError, psycopg.Error, PoolTimeout) as exc:
        reason = str(exc) if isinstance(exc, ArtistBioGenError) else first_line(exc)
        error = f"The database was not read: {redact(reason, url)}"
        return DatabaseView(settings.database, settings.table, False, error), None
    return DatabaseView(settings.database, settings.table, True), found


def _url_problem(recorded: str | None, url: str | None) -> str | None:
    """Why the configured URL cannot be used to read the job's database (None: it can)."""
    if not url:
        return (
            f"No database URL is configured, so {recorded} was not read; set DATABASE_URL or "
            "pass --db-url."
        )
    if not is_database_url(url):
        return (
            "The database URL is not valid; it should look like "
            "postgresql://user:password@host:5432/dbname."
        )
    configured = describe_database(url)
    if configured != recorded:
        return (
            f"The configured database is {configured}, not the job's {recorded}, so it was not "
            "read; pass the job's --db-url."
        )
    return None


def _query(paths: JobPaths, manifest: Manifest, config: DatabaseConfig) -> _FromDatabase:
    job_id = manifest.job_id
    with contextlib.closing(create_db_connection_pool(config)) as pool:
        store = BioStore(pool, config)
        # The lines before the rows (see quick_check): then a running job looks consistent.
        check = quick_check(paths.output, manifest, store)
        done = store.done_ids(job_id)
        _add_legacy_ids(paths, manifest, done)
        spend = _spend_from_totals(store.job_totals(job_id))
        batches = BatchStore(store, job_id).batches() if manifest.settings.mode == "batch" else None
    return _FromDatabase(done, spend, check, batches)


def _spend_from_totals(totals: JobTotals) -> Spend:
    return Spend(totals.cost_usd, totals.unpriced, totals.total_tokens, "ledger")


def _from_files(paths: JobPaths, manifest: Manifest) -> UuidSet:
    """The done artists the JSONL knows (every line after the legacy prefix, and before)."""
    done = scan_jsonl(paths.output, manifest.legacy_prefix).ids
    _add_legacy_ids(paths, manifest, done)
    return done


def _add_legacy_ids(paths: JobPaths, manifest: Manifest, done: UuidSet) -> None:
    # A legacy output adopted by the job: its lines count as done, as they do for a run.
    if manifest.legacy_prefix:
        done.update(scan_jsonl(paths.output, 0, manifest.legacy_prefix).ids)


def _spend_from_log(paths: JobPaths, job_id: str) -> Spend:
    """The job's spend from its transaction log (at its default place): the committed bios'
    costs, as the ledger would sum them."""
    cost, unpriced, tokens = 0.0, 0, 0
    if paths.transaction_log.exists():
        for event in iter_records(paths.transaction_log):
            if event.get("job_id") != job_id or event.get("event") != "commit":
                continue
            tokens += int(event.get("total_tokens") or 0)
            if isinstance(event.get("cost_usd"), (int, float)):
                cost += float(event["cost_usd"])
            else:
                unpriced += 1
    return Spend(cost, unpriced, tokens, "transaction log")


def _counts(manifest: Manifest, done: UuidSet, attempts: Counter[str], max_attempts: int) -> Counts:
    failing = {artist: n for artist, n in attempts.items() if artist not in done}
    given_up = sum(1 for n in failing.values() if n >= max_attempts)
    base = Counts(done=len(done), failed=len(failing) - given_up, given_up=given_up)
    try:
        with _quiet_reader(), ArtistReader(manifest.input, skip_ids=done) as reader:
            remaining = sum(1 for _ in reader)
            return Counts(
                done=base.done,
                failed=base.failed,
                given_up=base.given_up,
                remaining=remaining,
                input_artists=remaining + reader.already_done,
                bad_lines=reader.error_lines,
            )
    except ArtistBioGenError as exc:
        return Counts(base.done, base.failed, base.given_up, input_error=str(exc))


@contextlib.contextmanager
def _quiet_reader() -> Iterator[None]:
    """The reader's per-line warnings are for a run; status only counts the bad lines."""
    reader_logger = logging.getLogger(ArtistReader.__module__)
    disabled, reader_logger.disabled = reader_logger.disabled, True
    try:
        yield
    finally:
        reader_logger.disabled = disabled
