"""BioStore against a real PostgreSQL: one-statement commits, idempotence, ledger reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from artist_bio_gen.core.legacy import update_artist_bio
from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.schema import ensure_ledger, inspect_target_table
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.models import ArtistData, DatabaseConfig, GeneratedBio, JobRef, TokenUsage

from .support.data import make_artists
from .support.database import TestDatabase

JOB = str(uuid.uuid4())


@pytest.fixture
def store(database: TestDatabase) -> Iterator[BioStore]:
    config = DatabaseConfig(url=database.url, pool_size=4, retry_seconds=5)
    pool = create_db_connection_pool(config)
    where = describe_database(config.url)
    ensure_ledger(pool, where)
    ensure_ledger(pool, where)  # idempotent
    yield BioStore(pool, config, inspect_target_table(pool, "artists", where))
    pool.close()


def _row(
    artist_id: str, text: str = "A bio.", job: str = JOB, name: str = "N"
) -> tuple[GeneratedBio, JobRef]:
    """A bio to commit and the job it belongs to (``store.commit(*_row(...))``)."""
    bio = GeneratedBio(
        artist=ArtistData(artist_id, name, None),
        response_id=f"resp_{text[:8]}",
        text=text,
        created=1_700_000_000,
        tokens=TokenUsage(1, 2, 3),
    )
    return bio, JobRef(job_id=job, prompt_id="p", prompt_version=None, model=None)


def test_commit_updates_bio_and_ledger_together(store: BioStore, database: TestDatabase) -> None:
    artist = make_artists(1, seed=30)[0]
    database.seed([artist])
    committed = store.commit(*_row(artist.artist_id, "First bio."))
    assert committed.db_status == "updated" and committed.response_text == "First bio."
    assert database.bios()[artist.artist_id] == "First bio."
    (ledger,) = database.ledger()
    assert ledger["response_text"] == "First bio." and ledger["total_tokens"] == 3


def test_a_second_commit_of_the_same_artist_keeps_the_first(
    store: BioStore, database: TestDatabase
) -> None:
    """The statement is idempotent: a retry after an unknown outcome cannot overwrite."""
    artist = make_artists(1, seed=31)[0]
    database.seed([artist])
    first = store.commit(*_row(artist.artist_id, "First bio."))
    again = store.commit(*_row(artist.artist_id, "Second bio."))
    assert again == first
    assert database.bios()[artist.artist_id] == "First bio."
    assert len(database.ledger()) == 1


def test_other_jobs_are_independent(store: BioStore, database: TestDatabase) -> None:
    artist = make_artists(1, seed=32)[0]
    database.seed([artist])
    store.commit(*_row(artist.artist_id, "Job one."))
    other = str(uuid.uuid4())
    store.commit(*_row(artist.artist_id, "Job two.", job=other))
    assert database.bios()[artist.artist_id] == "Job two."
    assert [a for a in store.done_ids(other)] == [artist.artist_id]


def test_missing_row_is_recorded_as_skipped(store: BioStore, database: TestDatabase) -> None:
    committed = store.commit(*_row(str(uuid.uuid4())))
    assert committed.db_status == "skipped"
    assert database.bios() == {}


def test_keep_existing_never_overwrites(store: BioStore, database: TestDatabase) -> None:
    artist = make_artists(1, seed=33)[0]
    database.seed([artist], bio="Curated.")
    assert store.has_bio(artist.artist_id) is True
    assert store.has_bio(str(uuid.uuid4())) is None
    committed = store.commit(*_row(artist.artist_id, "Generated."), keep_existing=True)
    assert committed.db_status == "skipped"
    assert database.bios()[artist.artist_id] == "Curated."


@pytest.mark.parametrize("chunk", [500_000, 999], ids=["one-chunk", "many-chunks"])
def test_done_ids_streams_every_id(
    store: BioStore, database: TestDatabase, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every id arrives, whether in one packed chunk or across chunk boundaries."""
    monkeypatch.setattr("artist_bio_gen.database.store._DONE_CHUNK", chunk)
    ids = [str(uuid.uuid4()) for _ in range(5000)] + ["00000000-0000-0000-0000-000000000000"]
    with database.connect() as conn, conn.cursor() as cur:
        ensure_rows = (
            "INSERT INTO artist_bio_ledger (job_id, artist_id, artist_name, response_id, "
            "response_text, created, db_status) VALUES (%s, %s, 'n', 'r', 't', 1, 'updated')"
        )
        cur.executemany(ensure_rows, [(JOB, i) for i in ids])
    done = store.done_ids(JOB)
    assert len(done) == len(ids)
    assert set(done) == set(ids)
    assert store.count_job_rows(JOB) == len(ids)
    assert store.missing_from_ledger(JOB, [ids[0], "11111111-1111-4111-8111-111111111111"]) == [
        "11111111-1111-4111-8111-111111111111"
    ]


def test_rows_come_back_in_commit_order(store: BioStore, database: TestDatabase) -> None:
    artists = make_artists(5, seed=34)
    database.seed(artists)
    for index, artist in enumerate(artists):
        store.commit(*_row(artist.artist_id, f"Bio {index}."))
    rows = list(store.iter_job_rows(JOB))
    assert [r.artist_id for r in rows] == [a.artist_id for a in artists]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert list(store.iter_job_rows(JOB, after_seq=rows[2].seq)) == rows[3:]


def test_a_rejected_bio_raises_a_driver_error(store: BioStore, database: TestDatabase) -> None:
    """PostgreSQL text cannot hold NUL: that is this artist's failure, not a connection issue."""
    artist = make_artists(1, seed=35)[0]
    database.seed([artist])
    with pytest.raises(psycopg.DataError):
        store.commit(*_row(artist.artist_id, "bad \x00 bio"))
    assert database.ledger() == []


def test_legacy_update_artist_bio(database: TestDatabase) -> None:
    artist = make_artists(1, seed=36)[0]
    database.seed([artist])
    with database.connect() as conn:
        conn.autocommit = False
        assert update_artist_bio(conn, artist.artist_id, "Legacy bio.") == (True, 1, None)
        assert update_artist_bio(conn, artist.artist_id, "Other.", skip_existing=True) == (
            True,
            0,
            None,
        )
        failed = update_artist_bio(conn, "not-a-uuid", "x")
    assert failed.success is False and "uuid" in (failed.error or "")
    assert database.bios()[artist.artist_id] == "Legacy bio."


def _drop_connection_around_commit(
    monkeypatch: pytest.MonkeyPatch, *, after_commit: bool
) -> list[int]:
    """Make the first commit statement fail as if the connection dropped, either after the
    server committed it (outcome unknown to us) or before it was sent. Returns a list that
    counts how often the commit statement really reached the server."""
    real_execute = psycopg.Connection.execute
    sent: list[int] = []

    def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        is_commit = "INSERT INTO" in str(getattr(query, "as_string", lambda _: query)(self))
        if is_commit and not sent and not after_commit:
            sent.append(0)
            raise psycopg.OperationalError("connection lost before sending (simulated)")
        cursor = real_execute(self, query, params, **kwargs)
        if is_commit:
            sent.append(1)
            if len(sent) == 1 and after_commit:
                cursor.fetchone()
                raise psycopg.OperationalError("server closed the connection (simulated)")
        return cursor

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    return sent


@pytest.mark.parametrize("after_commit", [True, False], ids=["lost-after-commit", "lost-before"])
def test_a_lost_connection_during_commit_is_resolved_by_checking_the_row(
    store: BioStore, database: TestDatabase, monkeypatch: pytest.MonkeyPatch, after_commit: bool
) -> None:
    """Unknown outcome: the retry looks the row up first and never writes twice."""
    artist = make_artists(1, seed=37)[0]
    database.seed([artist])
    sent = _drop_connection_around_commit(monkeypatch, after_commit=after_commit)
    committed = store.commit(*_row(artist.artist_id, "Only bio."))
    assert committed.response_text == "Only bio." and committed.db_status == "updated"
    # After a commit that did land, the retry found the row and did not send it again.
    assert sum(sent) == 1
    assert len(database.ledger()) == 1
    assert database.bios()[artist.artist_id] == "Only bio."
