"""Committing bios: the user's table and the ledger in one statement, safe to retry.

One SQL statement updates ``bio`` (and ``updated_at``) and inserts the ledger row; on an
autocommit connection a statement is its own transaction, so both happen or neither does, in
one round trip. The update is guarded by "no ledger row yet for this job and artist", which
makes the statement idempotent: when a connection drops during COMMIT (outcome unknown), the
retry first looks the row up and, if it is there, takes the committed values instead of
writing again.

The same store keeps the job's per-bio costs (``response_model``, ``service_tier``,
``cost_usd``: written with the row, summed by ``job_totals``) and its daily request counts
(``artist_bio_usage``, for ``--daily-limit``; ``core/budget.DatabaseUsage`` is the policy,
the SQL is here with the rest of our tables').
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date
from decimal import ROUND_CEILING, Decimal
from functools import partial
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import DatabaseUnavailableError
from ..models import CommittedBio, DatabaseConfig, GeneratedBio, JobRef, TokenUsage
from ..utils.prefetch import prefetched
from ..utils.uuidset import UuidSet
from .connection import describe_database, first_line, one_row, redact
from .schema import LEDGER_TABLE, USAGE_TABLE, TargetTable

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors after which the connection's state is unknown and the write must be re-checked.
CONNECTION_ERRORS = (psycopg.OperationalError, PoolTimeout)

_LEDGER_COLUMNS = (
    "artist_id, artist_name, artist_data, response_id, response_text, "
    "created, db_status, input_tokens, output_tokens, total_tokens, seq, "
    "response_model, service_tier, cost_usd"
)

#: The largest cost the ledger's ``cost_usd NUMERIC(14,9)`` holds.
_MAX_COST = Decimal("99999.999999999")
_COST_QUANTUM = Decimal("1e-9")


def _committed(values: TupleRow) -> CommittedBio:
    artist_id, name, data, response_id, text, created, status = values[:7]
    tin, tout, ttotal, seq, response_model, service_tier, cost = values[7:]
    return CommittedBio(
        artist_id=str(artist_id),
        artist_name=name,
        artist_data=data,
        response_id=response_id,
        response_text=text,
        created=int(created),
        db_status=status,
        tokens=TokenUsage(tin or 0, tout or 0, ttotal or 0),
        seq=int(seq),
        model=response_model,
        service_tier=service_tier,
        cost_usd=None if cost is None else float(cost),
    )


def _written(bio: GeneratedBio, cost: Decimal | None, seq: int, status: str) -> CommittedBio:
    """The ledger row a group's statement has just written for ``bio``, built from what it
    was sent: only the row's ``seq`` and ``db_status`` come back, not the bio's text a second
    time (a group's answer stays a few bytes per bio, in the driver's buffers too)."""
    return replace(
        CommittedBio.without_database(bio),
        db_status=status,
        seq=int(seq),
        cost_usd=None if cost is None else float(cost),
    )


def _cost_param(cost: float | None) -> Decimal | None:
    """A cost as the ledger stores it: exact to 1e-9 USD (a float that came out of
    ``api/pricing`` already is), or None when unknown or unstorable.

    A cost the column cannot hold (negative, not finite, 1e5 USD or more) is stored as
    unknown with a warning: an accounting column must never cost a paid-for bio its commit.
    """
    if cost is None:
        return None
    if math.isfinite(cost) and cost >= 0:
        value = Decimal(repr(float(cost))).quantize(_COST_QUANTUM, rounding=ROUND_CEILING)
        if value <= _MAX_COST:
            return value
    logger.warning("cost %r USD cannot be recorded; the ledger row says unknown", cost)
    return None


@dataclass(frozen=True)
class JobTotals:
    """What a job's committed bios (every run, ``updated`` and ``skipped`` alike: each was a
    paid response) add up to.

    ``cost_usd`` is the exact sum of the known costs; ``unpriced`` counts the bios whose cost
    is unknown (a model or tier without a price, or committed before costs were recorded),
    which ``cost_usd`` leaves out. ``cost_usd`` is 0.0 when no cost is known.
    """

    bios: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0

    @property
    def cost_complete(self) -> bool:
        """True when every bio's cost is known (``cost_usd`` is the whole cost)."""
        return self.unpriced == 0


class BioStore:
    """Writes and reads bios through a pool; thread-safe (the pool is)."""

    def __init__(
        self, pool: ConnectionPool, config: DatabaseConfig, table: TargetTable | None = None
    ):
        """``table`` is needed to commit; reading the ledger (verify) works without it."""
        self._pool = pool
        self._config = config
        self._where = describe_database(config.url)
        self._last_error = "no error recorded"
        # Composed once: building the statement per commit would cost CPU on the hot path.
        self._statements = _Statements(table) if table is not None else None

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (shared with ``database/batches.BatchStore``)."""
        return self._pool

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, retried while the database is unreachable (as every read here);
        ``attempt`` must be safe to repeat after a connection lost during its COMMIT."""
        return self._with_retries(what, attempt)

    def _sql(self) -> _Statements:
        if self._statements is None:
            raise RuntimeError("this BioStore was opened without a target table")
        return self._statements

    def commit(
        self, bio: GeneratedBio, job: JobRef, *, keep_existing: bool = False
    ) -> CommittedBio:
        """Commit ``bio`` for ``job``; returns it as committed (possibly by an earlier try).

        Retries while the database is unreachable for up to ``retry_seconds``, then raises
        ``DatabaseUnavailableError``. Other database errors propagate (they concern this
        artist only, e.g. a bio the server rejects).
        """
        statements = self._sql()
        params = _commit_params(bio, job)
        artist_id = bio.artist.artist_id
        uncertain = False

        def attempt() -> CommittedBio:
            nonlocal uncertain
            # getconn/putconn rather than pool.connection(): on an autocommit connection
            # the context manager's COMMIT does nothing, and on every artist that costs CPU.
            # putconn still discards a connection the statement found broken.
            conn = self._pool.getconn()
            try:
                if uncertain and (done := self._fetch(conn, job.job_id, artist_id)):
                    return done
                uncertain = True  # from here on a dropped connection leaves it unknown
                statement = statements.commit_bytes(conn, keep_existing)
                values = conn.execute(statement, params).fetchone()
                if values is None:
                    # The guard saw an earlier commit of this artist: that one stands.
                    return self._committed_before(conn, job.job_id, artist_id)
                return _committed(values)
            finally:
                self._pool.putconn(conn)

        return self._with_retries("commit", attempt)

    def commit_group(
        self, bios: Sequence[GeneratedBio], job: JobRef, *, keep_existing: bool = False
    ) -> list[CommittedBio]:
        """Commit several bios in one statement (one round trip, one transaction, one WAL
        flush); returns them as committed, in order.

        The bios travel as one JSON array and each gets ``commit``'s guard (a bio the
        job already committed for that artist stands); on an autocommit connection the one
        statement is its own transaction, so all of them hold or none does. Its cost in the
        driver is one statement's whatever the group's size, where a statement per bio (even
        pipelined) cost Python time per bio. An artist repeated in the group is sent once and
        every occurrence gets its first bio, as ``commit`` one after the other would give.

        Retried as a whole while the database is unreachable (after a connection lost at
        COMMIT, the guards of the retry skip the rows already written and they are read
        back). A bio the server refuses raises ``psycopg.Error`` for the whole group, with
        nothing committed: the caller commits each bio alone to learn which one it was.
        """
        statements = self._sql()
        firsts: dict[str, GeneratedBio] = {}
        for bio in bios:
            firsts.setdefault(bio.artist.artist_id, bio)
        costs = {artist_id: _cost_param(bio.cost_usd) for artist_id, bio in firsts.items()}
        params = _group_params(list(firsts.values()), costs, job)

        def attempt() -> list[CommittedBio]:
            conn = self._pool.getconn()
            try:
                statement = statements.group_bytes(conn, keep_existing)
                committed = {
                    artist_id: _written(firsts[artist_id], costs[artist_id], seq, status)
                    for artist_id, seq, status in conn.execute(statement, params)
                }
                for artist_id in firsts.keys() - committed.keys():
                    # The guard saw an earlier commit of this artist: that one stands.
                    committed[artist_id] = self._committed_before(conn, job.job_id, artist_id)
                return [committed[bio.artist.artist_id] for bio in bios]
            finally:
                self._pool.putconn(conn)

        return self._with_retries("commit", attempt)

    def has_bio(self, artist_id: str) -> bool | None:
        """True/False whether the user's row has a bio; None when there is no such row."""

        def attempt() -> bool | None:
            with self._pool.connection() as conn:
                found = conn.execute(self._sql().has_bio, (artist_id,)).fetchone()
                return None if found is None else bool(found[0])

        return self._with_retries("bio lookup", attempt)

    def bio_states(self, artist_ids: Sequence[str]) -> dict[str, bool]:
        """For those of ``artist_ids`` (canonical) that have a row in the user's table:
        whether it has a bio (``--skip-existing`` of a batch job, many artists at once)."""
        if not artist_ids:
            return {}
        # An array literal of unknown type: the server casts it to the id column's type
        # (uuid or text alike); canonical UUIDs hold no character that needs quoting.
        literal = "{" + ",".join(artist_ids) + "}"

        def attempt() -> dict[str, bool]:
            with self._pool.connection() as conn:
                rows = conn.execute(self._sql().bio_states, (literal,)).fetchall()
            return {str(row[0]): bool(row[1]) for row in rows}

        return self._with_retries("bio lookup", attempt)

    def _committed_before(
        self, conn: psycopg.Connection, job_id: str, artist_id: str
    ) -> CommittedBio:
        found = self._fetch(conn, job_id, artist_id)
        if found is None:
            # The statement inserts unless a row exists; no row now means it was deleted
            # under our feet, which only a human can explain.
            raise psycopg.DataError(f"the ledger row of artist {artist_id} vanished")
        return found

    def _fetch(self, conn: psycopg.Connection, job_id: str, artist_id: str) -> CommittedBio | None:
        values = conn.execute(
            f"SELECT {_LEDGER_COLUMNS} FROM {LEDGER_TABLE} WHERE job_id = %s AND artist_id = %s",
            (job_id, artist_id),
        ).fetchone()
        return None if values is None else _committed(values)

    def iter_job_rows(self, job_id: str, after_seq: int = 0) -> Iterator[CommittedBio]:
        """Committed rows of a job in commit order, streamed with a server-side cursor."""
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(name="ledger_rows")
            cursor.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM {LEDGER_TABLE} "
                "WHERE job_id = %s AND seq > %s ORDER BY seq",
                (job_id, after_seq),
            )
            for values in cursor:
                yield _committed(values)

    def iter_job_ids(self, job_id: str, after_seq: int = 0) -> Iterator[str]:
        """The artist ids of a job's rows after ``after_seq``, streamed (no bio text: a quick
        check compares ids only)."""
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(name="ledger_ids")
            cursor.execute(
                f"SELECT artist_id::text FROM {LEDGER_TABLE} WHERE job_id = %s AND seq > %s",
                (job_id, after_seq),
            )
            for (artist_id,) in cursor:
                yield str(artist_id)

    def wait_for_job_commits(self, job_id: str) -> None:
        """Return once no commit of this job is running anywhere.

        Every commit holds the job's advisory lock in shared mode for its whole statement;
        taking it exclusively waits out commits a killed process left running on the
        server, so every row with a lower sequence number is visible afterwards.
        """
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '120s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (job_lock_key(job_id),))

    def done_ids(self, job_id: str, *, expected: int | None = None) -> UuidSet:
        """Ids of the artists committed by a job, in a compact set.

        The server packs the ids (16 raw bytes each) into one value per chunk of
        ``_DONE_CHUNK`` ids, walking the (job_id, artist_id) index, so a million done artists
        arrive as a few large values instead of a million Python objects. The chunks are
        asked for one ahead, in a thread (``prefetched``): the server packs the next while
        this process adds the current one to the set. The set is sized once for
        ``expected`` ids (a caller's estimate: the job's checkpoint, which saves a count of
        the job's rows, 0.2 s at a million) or for the counted rows; a wrong estimate costs
        only the doublings it was meant to save.
        """
        done = UuidSet()
        done.reserve(self.count_job_rows(job_id) if expected is None else expected)
        chunks = prefetched(partial(self._done_chunks, job_id), name="done-ids")
        with closing(chunks):  # an error here stops the thread and frees its connection
            for blob in chunks:
                # Chunks are disjoint slices of a unique index: every id is new.
                done.update_packed(blob, all_new=True)
        return done

    def _done_chunks(self, job_id: str) -> Iterator[bytes]:
        """The job's done ids, packed, chunk after chunk in the index's order."""
        last: str | None = None
        with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
            while True:
                if last is None:
                    cur.execute(_DONE_FIRST_CHUNK, (job_id, _DONE_CHUNK))
                else:
                    cur.execute(_DONE_NEXT_CHUNK, (job_id, last, _DONE_CHUNK))
                blob, last_id, count = one_row(cur)
                if not count:
                    return
                yield bytes(blob)
                last = str(last_id)
                if count < _DONE_CHUNK:
                    return

    def job_totals(self, job_id: str) -> JobTotals:
        """The job's bios, tokens and cost so far (all runs); see ``JobTotals``.

        Read-only, so retried like a commit while the database is unreachable.
        """

        def attempt() -> JobTotals:
            with self._pool.connection() as conn:
                bios, tin, tout, ttotal, cost, unpriced = one_row(
                    conn.execute(_JOB_TOTALS, (job_id,))
                )
            return JobTotals(
                int(bios), int(tin), int(tout), int(ttotal), float(cost), int(unpriced)
            )

        return self._with_retries("totals", attempt)

    # --- daily request counts (artist_bio_usage) -----------------------------------------

    def reserve_requests(self, job_id: str, day: date, wanted: int, limit: int) -> int:
        """Add up to ``wanted`` requests to the job's count for ``day`` without passing
        ``limit``; returns how many were granted (0 when the day is spent).

        Each grant is one atomic statement that adds all it grants or nothing: an upsert
        that only updates when ``requests + n <= limit`` (ON CONFLICT DO UPDATE reads the
        latest committed count under the row lock, whatever the snapshot). While a whole
        ``wanted`` fits (every call but the last of a day) that is the only round trip;
        otherwise the count is read and the rest asked for, again all or nothing, until a
        grant or nothing is left. Concurrent callers can therefore never push the count
        past ``limit``.

        Retried while the database is unreachable. A grant whose COMMIT was lost is granted
        again by the retry: the count can come out high (requests lost for the day), never
        low.
        """
        if wanted <= 0 or limit <= 0:
            return 0

        def attempt() -> int:
            with self._pool.connection() as conn:
                ask = min(wanted, limit)
                while ask > 0:
                    row = conn.execute(_RESERVE, (job_id, day, ask, limit)).fetchone()
                    if row is not None:
                        return ask
                    used = _requests(conn, job_id, day)
                    ask = min(wanted, limit - used)
                return 0

        return self._with_retries("request reservation", attempt)

    def release_requests(self, job_id: str, day: date, unused: int) -> None:
        """Give back ``unused`` requests reserved for ``day`` (never below 0).

        One try, not retried: a release whose outcome is unknown must not be repeated (the
        count would come out low and the limit could be passed). When the database is
        unreachable the requests stay counted (a warning says so), which only costs budget.
        """
        if unused <= 0:
            return
        try:
            with self._pool.connection() as conn:
                conn.execute(_RELEASE, (unused, job_id, day))
        except CONNECTION_ERRORS as exc:
            self._note_connection_error("request release", exc)
            logger.warning(
                "%d requests reserved for %s stay counted against the daily limit", unused, day
            )

    def requests_used(self, job_id: str, day: date) -> int:
        """The job's request count for ``day`` (0 when none)."""

        def attempt() -> int:
            with self._pool.connection() as conn:
                return _requests(conn, job_id, day)

        return self._with_retries("request count", attempt)

    def count_job_rows(self, job_id: str) -> int:
        """How many artists a job has committed."""
        with self._pool.connection() as conn:
            count: int = one_row(
                conn.execute(f"SELECT count(*) FROM {LEDGER_TABLE} WHERE job_id = %s", (job_id,))
            )[0]
            return count

    def rows_after(self, job_id: str, seq: int) -> tuple[int, int]:
        """(count, highest seq) of the job's rows committed after ``seq``."""
        with self._pool.connection() as conn:
            count, last = one_row(
                conn.execute(
                    f"SELECT count(*), max(seq) FROM {LEDGER_TABLE} WHERE job_id = %s AND seq > %s",
                    (job_id, seq),
                )
            )
        return int(count), int(last or 0)

    def missing_from_ledger(self, job_id: str, artist_ids: list[str]) -> list[str]:
        """Those of ``artist_ids`` that have no ledger row for the job."""
        if not artist_ids:
            return []
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT artist_id::text FROM {LEDGER_TABLE} "
                "WHERE job_id = %s AND artist_id = ANY(%s::uuid[])",
                (job_id, artist_ids),
            ).fetchall()
        present = {row[0] for row in rows}
        return [artist_id for artist_id in artist_ids if artist_id not in present]

    def _with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, retried with backoff while the database is unreachable.

        Raises ``DatabaseUnavailableError`` once ``retry_seconds`` have passed without an
        answer. A closed pool means the run is shutting down: retrying cannot help.
        """
        deadline = time.monotonic() + self._config.retry_seconds
        tries = 0
        while True:
            try:
                return attempt()
            except PoolClosed:
                raise
            except CONNECTION_ERRORS as exc:
                self._note_connection_error(what, exc)
            tries += 1
            if time.monotonic() >= deadline:
                raise DatabaseUnavailableError(
                    f"The database at {self._where} did not answer for "
                    f"{self._config.retry_seconds:.0f} s ({self._last_error}); the job is "
                    "saved: run again with --resume once the database is back."
                )
            # The first retry goes at once: the usual cause is a pooled connection the server
            # closed since its last use (the pool has discarded it; see CheckIfIdle). Then
            # backoff, capped low: once the server is back, workers notice within seconds.
            if tries > 1:
                time.sleep(min(0.2 * 2 ** (tries - 1), 2.0))

    def _note_connection_error(self, what: str, exc: BaseException) -> None:
        self._last_error = redact(first_line(exc), self._config.url)
        logger.warning("database %s failed (%s); retrying", what, self._last_error)


_JOB_TOTALS = (
    "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
    "coalesce(sum(total_tokens), 0), coalesce(sum(cost_usd), 0), "
    f"count(*) FILTER (WHERE cost_usd IS NULL) FROM {LEDGER_TABLE} WHERE job_id = %s"
)

# Inserting, the first grant of the day is min(wanted, limit) (the caller asks no more);
# updating, it adds the whole ``ask`` or, when that would pass the limit, nothing (no row).
_RESERVE = (
    f"INSERT INTO {USAGE_TABLE} AS u (job_id, day, requests) VALUES (%s, %s, %s) "
    "ON CONFLICT (job_id, day) DO UPDATE SET requests = u.requests + EXCLUDED.requests "
    "WHERE u.requests + EXCLUDED.requests <= %s RETURNING u.requests"
)
_RELEASE = (
    f"UPDATE {USAGE_TABLE} SET requests = GREATEST(requests - %s, 0) WHERE job_id = %s AND day = %s"
)


def _requests(conn: psycopg.Connection, job_id: str, day: date) -> int:
    row = conn.execute(
        f"SELECT requests FROM {USAGE_TABLE} WHERE job_id = %s AND day = %s", (job_id, day)
    ).fetchone()
    return 0 if row is None else int(row[0])


#: Ids per chunk (4 MiB packed). The first chunk is the one wait nothing overlaps, so not
#: too many; but each chunk costs a statement and a hand-over between threads. Measured
#: (resume over 1,000,000 done, first request, medians of 4-6): with the index out of
#: memory (PostgreSQL restarted, caches dropped) 3.2-3.4 s one after the other, 2.8 s
#: with 2**18 ahead, 3.0 s with 500,000; in memory 2.4 s either way, but 2.7 s with 2**17.
_DONE_CHUNK = 1 << 18
_DONE_CHUNK_SQL = (
    "SELECT string_agg(uuid_send(artist_id), ''::bytea), "
    'max(artist_id::text COLLATE "C"), count(*) '
    f"FROM (SELECT artist_id FROM {LEDGER_TABLE} WHERE job_id = %s {{}} "
    "ORDER BY artist_id LIMIT %s) AS chunk"
)
_DONE_FIRST_CHUNK = _DONE_CHUNK_SQL.format("")
# Canonical lower-case text sorts like the uuid itself (byte order, hence COLLATE "C"), so
# max(text) is the last id of a chunk.
_DONE_NEXT_CHUNK = _DONE_CHUNK_SQL.format("AND artist_id > %s")


class _Statements:
    """The SQL for one target table."""

    def __init__(self, table: TargetTable):
        self.commit = _commit_statement(table, skip_existing=False)
        self.commit_keep = _commit_statement(table, skip_existing=True)
        self.group = _group_statement(table, skip_existing=False)
        self.group_keep = _group_statement(table, skip_existing=True)
        self._rendered: dict[tuple[str, bool], bytes] = {}
        self.has_bio = sql.SQL("SELECT bio IS NOT NULL AND bio <> '' FROM {} WHERE id = %s").format(
            table.identifier
        )
        self.bio_states = sql.SQL(
            "SELECT lower(id::text), bio IS NOT NULL AND bio <> '' FROM {} WHERE id = ANY(%s)"
        ).format(table.identifier)

    def commit_bytes(self, conn: psycopg.Connection, keep_existing: bool) -> bytes:
        """The commit statement as sent, rendered once: the driver would compose it (join
        its parts, quote the identifiers) again on every commit."""
        statement = self.commit_keep if keep_existing else self.commit
        return self._render(conn, ("commit", keep_existing), statement)

    def group_bytes(self, conn: psycopg.Connection, keep_existing: bool) -> bytes:
        """The statement committing a group, rendered once (as ``commit_bytes``)."""
        statement = self.group_keep if keep_existing else self.group
        return self._render(conn, ("group", keep_existing), statement)

    def _render(
        self, conn: psycopg.Connection, key: tuple[str, bool], statement: sql.Composed
    ) -> bytes:
        rendered = self._rendered.get(key)
        if rendered is None:
            # Two threads may both render it first: the same bytes either way.
            rendered = self._rendered[key] = statement.as_bytes(conn)
        return rendered


def _commit_statement(table: TargetTable, *, skip_existing: bool) -> sql.Composed:
    updated_at = sql.SQL(", updated_at = now()") if table.has_updated_at else sql.SQL("")
    keep = sql.SQL(" AND (bio IS NULL OR bio = '')") if skip_existing else sql.SQL("")
    return sql.SQL(
        """
        WITH guard AS (SELECT pg_advisory_xact_lock_shared(%(job_key)s) AS held),
        upd AS (
            UPDATE {table} SET bio = %(text)s{updated_at}
            WHERE id = %(artist_id)s{keep}
              AND NOT EXISTS (
                  SELECT 1 FROM {ledger} WHERE job_id = %(job_id)s AND artist_id = %(artist_id)s
              )
            RETURNING 1
        )
        INSERT INTO {ledger} (
            job_id, artist_id, artist_name, artist_data, response_id, response_text,
            prompt_id, prompt_version, model, created, db_status,
            input_tokens, output_tokens, total_tokens,
            response_model, service_tier, cost_usd
        )
        SELECT %(job_id)s, %(artist_id)s, %(name)s, %(data)s, %(response_id)s, %(text)s,
               %(prompt_id)s, %(prompt_version)s, %(model)s, %(created)s,
               CASE WHEN EXISTS (SELECT 1 FROM upd) THEN 'updated' ELSE 'skipped' END,
               %(tin)s, %(tout)s, %(ttotal)s,
               %(response_model)s, %(service_tier)s, %(cost)s::numeric(14,9)
        FROM guard
        ON CONFLICT (job_id, artist_id) DO NOTHING
        RETURNING {columns}
        """
    ).format(
        table=table.identifier,
        ledger=sql.Identifier(LEDGER_TABLE),
        updated_at=updated_at,
        keep=keep,
        columns=sql.SQL(_LEDGER_COLUMNS),
    )


def _commit_params(bio: GeneratedBio, job: JobRef) -> dict[str, object]:
    artist = bio.artist
    return {
        "job_key": job_lock_key(job.job_id),
        "job_id": job.job_id,
        "artist_id": artist.artist_id,
        "name": artist.name,
        "data": artist.data,
        "response_id": bio.response_id,
        "text": bio.text,
        "prompt_id": job.prompt_id,
        "prompt_version": job.prompt_version,
        "model": job.model,
        "created": bio.created,
        "tin": bio.tokens.input_tokens,
        "tout": bio.tokens.output_tokens,
        "ttotal": bio.tokens.total_tokens,
        "response_model": bio.model,
        "service_tier": bio.service_tier,
        "cost": _cost_param(bio.cost_usd),
    }


def _group_statement(table: TargetTable, *, skip_existing: bool) -> sql.Composed:
    """``_commit_statement`` for many bios at once: the same guard and outcome per artist.

    The bios arrive as one JSON array of rows (``_group_params``): the driver sends one text
    value, encoded by ``json``'s C encoder, where an array per column cost the driver
    Python work per value. ``given`` is those rows minus the artists the job has committed;
    it reads ``guard`` so the job's shared lock is held before anything is written. Rows are
    inserted in the group's order, so their ``seq`` follow it.

    Both look-ups are written so that no plan can scan a whole table, however stale the
    statistics (a new job's ledger rows are not counted yet while it runs): the ledger is
    probed once per artist by (job, artist) in a LATERAL subquery with LIMIT, which the
    planner cannot turn into a join over all the job's rows; the user's rows are found by
    ``id = ANY(ids)`` on its key, the ids cast to the id column's type.
    """
    updated_at = sql.SQL(", updated_at = now()") if table.has_updated_at else sql.SQL("")
    keep = sql.SQL(" AND (t.bio IS NULL OR t.bio = '')") if skip_existing else sql.SQL("")
    return sql.SQL(
        """
        WITH guard AS (SELECT pg_advisory_xact_lock_shared(%(job_key)s) AS held),
        given AS (
            SELECT (r.b->>0)::uuid AS artist_id, r.b->>1 AS name, r.b->>2 AS data,
                   r.b->>3 AS response_id, r.b->>4 AS text, (r.b->>5)::bigint AS created,
                   (r.b->>6)::integer AS tin, (r.b->>7)::integer AS tout,
                   (r.b->>8)::integer AS ttotal, r.b->>9 AS response_model,
                   r.b->>10 AS service_tier, (r.b->>11)::numeric(14,9) AS cost, r.ord
            FROM guard, json_array_elements(%(rows)s::json) WITH ORDINALITY AS r(b, ord)
            LEFT JOIN LATERAL (
                SELECT 1 AS found FROM {ledger} AS l
                WHERE l.job_id = %(job_id)s::uuid AND l.artist_id = (r.b->>0)::uuid LIMIT 1
            ) AS earlier ON true
            WHERE earlier.found IS NULL
        ),
        upd AS (
            UPDATE {table} AS t SET bio = g.text{updated_at}
            FROM given AS g
            WHERE t.id = ANY(%(ids)s::{id_type}[])
              AND t.id = g.artist_id::text::{id_type}{keep}
            RETURNING g.ord
        )
        INSERT INTO {ledger} (
            job_id, artist_id, artist_name, artist_data, response_id, response_text,
            prompt_id, prompt_version, model, created, db_status,
            input_tokens, output_tokens, total_tokens,
            response_model, service_tier, cost_usd
        )
        SELECT %(job_id)s::uuid, g.artist_id, g.name, g.data, g.response_id, g.text,
               %(prompt_id)s::text, %(prompt_version)s::text, %(model)s::text, g.created,
               CASE WHEN g.ord IN (SELECT ord FROM upd) THEN 'updated' ELSE 'skipped' END,
               g.tin, g.tout, g.ttotal, g.response_model, g.service_tier, g.cost
        FROM given AS g
        ORDER BY g.ord
        ON CONFLICT (job_id, artist_id) DO NOTHING
        RETURNING artist_id::text, seq, db_status
        """
    ).format(
        table=table.identifier,
        ledger=sql.Identifier(LEDGER_TABLE),
        updated_at=updated_at,
        keep=keep,
        id_type=sql.SQL(table.id_type),
    )


# ASCII only: a character PostgreSQL text cannot hold (NUL, a lone surrogate) reaches the
# server as a \u escape it refuses, so the group fails as a whole with nothing committed
# and each bio is then committed alone, as with any refused bio.
_ROWS_JSON = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _group_params(
    bios: Collection[GeneratedBio], costs: dict[str, Decimal | None], job: JobRef
) -> dict[str, object]:
    """``_group_statement``'s parameters: the bios as one JSON array of rows (their
    columns in ``given``'s order; ``costs`` by artist, as ``_cost_param`` made them) and
    their ids as one array literal."""
    rows = []
    for bio in bios:
        artist, tokens = bio.artist, bio.tokens
        cost = costs[artist.artist_id]
        rows.append(
            (
                artist.artist_id,
                artist.name,
                artist.data,
                bio.response_id,
                bio.text,
                bio.created,
                tokens.input_tokens,
                tokens.output_tokens,
                tokens.total_tokens,
                bio.model,
                bio.service_tier,
                None if cost is None else str(cost),
            )
        )
    return {
        "job_key": job_lock_key(job.job_id),
        "job_id": job.job_id,
        "prompt_id": job.prompt_id,
        "prompt_version": job.prompt_version,
        "model": job.model,
        "rows": _ROWS_JSON.encode(rows),
        # Canonical UUIDs hold no character an array literal would need to quote.
        "ids": "{" + ",".join(bio.artist.artist_id for bio in bios) + "}",
    }


def job_lock_key(job_id: str) -> int:
    """The advisory-lock key of a job: commits hold it shared, reconciliation exclusive."""
    return int.from_bytes(uuid.UUID(job_id).bytes[:8], "big", signed=True)
