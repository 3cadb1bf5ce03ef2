"""The batches of a batch-mode job: ``artist_bio_batches`` and ``artist_bio_batch_items``.

A batch's row goes through four states, each written before the step it enables (the design
is in ``core/batch.py``)::

    recorded  -> uploaded      -> submitted -> ended
    (row and     (input_file_id   (batch_id     (collected: its answers committed, its
     items)       known)           known)        failures recorded; items deleted)

Every write here is safe to repeat after a connection lost during its COMMIT (the store's
retries do repeat them): recording a chunk inserts its row with ``ON CONFLICT DO NOTHING``
and its items only when the row was new, in one transaction; the other writes set values.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..models import ArtistData
from ..utils.uuidset import UuidSet
from .connection import one_row
from .schema import BATCH_ITEMS_TABLE, BATCHES_TABLE
from .store import BioStore

logger = logging.getLogger(__name__)

#: The states of a batch's row, in order.
STATES = ("recorded", "uploaded", "submitted", "ended")

_COLUMNS = (
    "chunk, state, requests, input_file_id, batch_id, status, completed, failed, "
    "committed, failures, resubmit, error, extract(epoch FROM created_at)"
)


@dataclass(frozen=True)
class BatchRecord:
    """One row of ``artist_bio_batches``."""

    job_id: str
    chunk: int
    state: str
    requests: int
    input_file_id: str | None = None
    batch_id: str | None = None
    #: The batch's last status seen (``validating`` ... ``completed``), None before creation.
    status: str | None = None
    #: The API's ``request_counts`` when last seen (None before).
    completed: int | None = None
    failed: int | None = None
    #: What collecting it did (set when it ended).
    committed: int = 0
    failures: int = 0
    resubmit: int = 0
    error: str | None = None
    #: When the row was recorded (unix seconds, the database's clock).
    created_at: float = 0.0

    @property
    def open(self) -> bool:
        """Not ended: its artists are in a batch that may still answer."""
        return self.state != "ended"


def _record(job_id: str, values: Sequence[object]) -> BatchRecord:
    chunk, state, requests, file_id, batch_id, status, completed, failed = values[:8]
    committed, failures, resubmit, error, created = values[8:]
    return BatchRecord(
        job_id=job_id,
        chunk=int(str(chunk)),
        state=str(state),
        requests=int(str(requests)),
        input_file_id=None if file_id is None else str(file_id),
        batch_id=None if batch_id is None else str(batch_id),
        status=None if status is None else str(status),
        completed=None if completed is None else int(str(completed)),
        failed=None if failed is None else int(str(failed)),
        committed=int(str(committed)),
        failures=int(str(failures)),
        resubmit=int(str(resubmit)),
        error=None if error is None else str(error),
        created_at=float(str(created)),
    )


@dataclass(frozen=True)
class Collected:
    """What collecting one ended batch did (stored with its row)."""

    committed: int = 0
    failures: int = 0
    resubmit: int = 0
    error: str | None = None


class BatchStore:
    """Reads and writes a job's batches through the ledger's pool and retries."""

    def __init__(self, store: BioStore, job_id: str) -> None:
        """The batches of ``job_id``, through ``store``'s pool."""
        self._store = store
        self._pool = store.pool
        self.job_id = job_id

    def batches(self) -> list[BatchRecord]:
        """Every batch of the job, by chunk number."""

        def attempt() -> list[BatchRecord]:
            with self._pool.connection() as conn:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM {BATCHES_TABLE} WHERE job_id = %s ORDER BY chunk",
                    (self.job_id,),
                ).fetchall()
            return [_record(self.job_id, row) for row in rows]

        return self._store.retrying("batch list", attempt)

    def next_chunk(self) -> int:
        """The number the job's next request file gets."""

        def attempt() -> int:
            with self._pool.connection() as conn:
                last = one_row(
                    conn.execute(
                        f"SELECT max(chunk) FROM {BATCHES_TABLE} WHERE job_id = %s", (self.job_id,)
                    )
                )[0]
            return 1 if last is None else int(last) + 1

        return self._store.retrying("chunk number", attempt)

    def record_chunk(self, chunk: int, artists: Sequence[ArtistData]) -> None:
        """Record request file ``chunk`` and its artists, in one transaction (state
        ``recorded``). A repeat after a lost COMMIT finds the row and adds nothing."""

        def attempt() -> None:
            with self._pool.connection() as conn, conn.transaction():
                new = conn.execute(
                    f"INSERT INTO {BATCHES_TABLE} (job_id, chunk, state, requests) "
                    "VALUES (%s, %s, 'recorded', %s) ON CONFLICT (job_id, chunk) DO NOTHING "
                    "RETURNING 1",
                    (self.job_id, chunk, len(artists)),
                ).fetchone()
                if new is None:
                    return
                with conn.cursor().copy(
                    f"COPY {BATCH_ITEMS_TABLE} "
                    "(job_id, chunk, artist_id, artist_name, artist_data) FROM STDIN"
                ) as copy:
                    for artist in artists:
                        copy.write_row(
                            (self.job_id, chunk, artist.artist_id, artist.name, artist.data)
                        )

        self._store.retrying("batch record", attempt)

    def set_input_file(self, chunk: int, file_id: str) -> None:
        """The request file was uploaded as ``file_id`` (state ``uploaded``; again, when the
        first upload expired before its batch was created)."""
        self._update(
            chunk,
            "state = 'uploaded', input_file_id = %(file)s",
            {"file": file_id},
            "state IN ('recorded', 'uploaded')",
        )

    def set_batch(self, chunk: int, batch_id: str, status: str) -> None:
        """The batch ``batch_id`` was created from the file (state ``submitted``)."""
        self._update(
            chunk,
            "state = 'submitted', batch_id = %(batch)s, status = %(status)s",
            {"batch": batch_id, "status": status},
            "state IN ('recorded', 'uploaded')",
        )

    def set_status(
        self, chunk: int, status: str, completed: int | None, failed: int | None
    ) -> None:
        """What the API said about the batch last."""
        self._update(
            chunk,
            "status = %(status)s, completed = %(completed)s, failed = %(failed)s",
            {"status": status, "completed": completed, "failed": failed},
            "state <> 'ended'",
        )

    def end(self, chunk: int, status: str, collected: Collected) -> None:
        """The batch ended and everything it returned was collected (state ``ended``); its
        items are deleted in the same transaction."""

        def attempt() -> None:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(
                    f"UPDATE {BATCHES_TABLE} SET state = 'ended', status = %s, committed = %s, "
                    "failures = %s, resubmit = %s, error = %s, updated_at = now() "
                    "WHERE job_id = %s AND chunk = %s",
                    (
                        status,
                        collected.committed,
                        collected.failures,
                        collected.resubmit,
                        collected.error,
                        self.job_id,
                        chunk,
                    ),
                )
                conn.execute(
                    f"DELETE FROM {BATCH_ITEMS_TABLE} WHERE job_id = %s AND chunk = %s",
                    (self.job_id, chunk),
                )

        self._store.retrying("batch end", attempt)

    def _update(self, chunk: int, assignments: str, values: dict[str, object], guard: str) -> None:
        params = {**values, "job": self.job_id, "chunk": chunk}

        def attempt() -> None:
            with self._pool.connection() as conn:
                conn.execute(
                    f"UPDATE {BATCHES_TABLE} SET {assignments}, updated_at = now() "
                    f"WHERE job_id = %(job)s AND chunk = %(chunk)s AND {guard}",
                    params,
                )

        self._store.retrying("batch update", attempt)

    # --- the artists of open batches --------------------------------------------------------

    def open_artist_ids(self) -> UuidSet:
        """The artists in the job's batches that have not ended (packed by the server, one
        value per batch)."""

        def attempt() -> UuidSet:
            ids = UuidSet()
            with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(
                    "SELECT string_agg(uuid_send(i.artist_id), ''::bytea) "
                    f"FROM {BATCH_ITEMS_TABLE} i JOIN {BATCHES_TABLE} b USING (job_id, chunk) "
                    "WHERE i.job_id = %s AND b.state <> 'ended' GROUP BY i.chunk",
                    (self.job_id,),
                )
                for (blob,) in cur:
                    ids.update_packed(bytes(blob))
            return ids

        return self._store.retrying("open batch artists", attempt)

    def items(self, chunk: int, artist_ids: Iterable[str]) -> dict[str, ArtistData]:
        """The artists of batch ``chunk`` among ``artist_ids``, by id (others are absent)."""
        wanted = [artist_id for artist_id in artist_ids if _is_uuid(artist_id)]
        if not wanted:
            return {}

        def attempt() -> dict[str, ArtistData]:
            with self._pool.connection() as conn:
                rows = conn.execute(
                    f"SELECT artist_id::text, artist_name, artist_data FROM {BATCH_ITEMS_TABLE} "
                    "WHERE job_id = %s AND chunk = %s AND artist_id = ANY(%s::uuid[])",
                    (self.job_id, chunk, wanted),
                ).fetchall()
            return {row[0]: ArtistData(row[0], row[1], row[2]) for row in rows}

        return self._store.retrying("batch items", attempt)

    def iter_items(self, chunk: int) -> Iterator[ArtistData]:
        """Every artist of batch ``chunk``, streamed (by id: any order will do)."""
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(name="batch_items")
            cursor.execute(
                f"SELECT artist_id::text, artist_name, artist_data FROM {BATCH_ITEMS_TABLE} "
                "WHERE job_id = %s AND chunk = %s ORDER BY artist_id",
                (self.job_id, chunk),
            )
            for artist_id, name, data in cursor:
                yield ArtistData(artist_id, name, data)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
