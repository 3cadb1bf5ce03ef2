"""BioStore against a real PostgreSQL: one-statement commits, idempotence, ledger reads."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal

import psycopg
import pytest

from artist_bio_gen.core.jsonl import encode_line
from artist_bio_gen.core.legacy import update_artist_bio
from artist_bio_gen.database.connection import (
    CheckIfIdle,
    create_db_connection_pool,
    describe_database,
)
from artist_bio_gen.database.schema import ensure_ledger, inspect_target_table
from artist_bio_gen.database.store import BioStore, JobTotals
from artist_bio_gen.models import (
    ArtistData,
    CommittedBio,
    DatabaseConfig,
    GeneratedBio,
    JobRef,
    TokenUsage,
)

from .support.data import make_artists
from .support.database import TestDatabase

JOB = str(uuid.uuid4())


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
@pytest.mark.parametrize("expected", [None, 0, 5001, 100_000])
def test_done_ids_streams_every_id(
    store: BioStore,
    database: TestDatabase,
    chunk: int,
    expected: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every id arrives, whether in one packed chunk or across chunk boundaries, and
    whatever the caller's estimate of their number (none: counted)."""
    monkeypatch.setattr("artist_bio_gen.database.store._DONE_CHUNK", chunk)
    ids = [str(uuid.uuid4()) for _ in range(5000)] + ["00000000-0000-0000-0000-000000000000"]
    with database.connect() as conn, conn.cursor() as cur:
        ensure_rows = (
            "INSERT INTO artist_bio_ledger (job_id, artist_id, artist_name, response_id, "
            "response_text, created, db_status) VALUES (%s, %s, 'n', 'r', 't', 1, 'updated')"
        )
        cur.executemany(ensure_rows, [(JOB, i) for i in ids])
    done = store.done_ids(JOB, expected=expected)
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


# --- what each bio cost (m002) -----------------------------------------------------------


def _priced(
    artist_id: str, cost: float | None, job: str = JOB, tokens: TokenUsage = TokenUsage(10, 20, 30)
) -> tuple[GeneratedBio, JobRef]:
    bio, _ = _row(artist_id, job=job)
    priced = dataclasses.replace(
        bio,
        tokens=tokens,
        model="gpt-4.1-mini-2025-04-14",
        service_tier="flex",
        cost_usd=cost,
    )
    return priced, JobRef(job_id=job, prompt_id=None, prompt_version=None, model="gpt-4.1-mini")


def test_commit_stores_and_returns_the_answering_model_tier_and_cost(
    store: BioStore, database: TestDatabase
) -> None:
    artist = make_artists(1, seed=38)[0]
    database.seed([artist])
    committed = store.commit(*_priced(artist.artist_id, 0.000123457))
    assert committed.model == "gpt-4.1-mini-2025-04-14"
    assert committed.service_tier == "flex"
    assert committed.cost_usd == 0.000123457
    (ledger,) = database.ledger()
    assert ledger["model"] == "gpt-4.1-mini"  # the job's --model, as before
    assert ledger["response_model"] == "gpt-4.1-mini-2025-04-14"
    assert ledger["service_tier"] == "flex"
    assert ledger["cost_usd"] == Decimal("0.000123457")
    # Read back (recovery, a retry after a lost connection) the same values come out.
    assert list(store.iter_job_rows(JOB)) == [committed]
    assert store.commit(*_priced(artist.artist_id, 9.0)) == committed


def test_the_jsonl_line_does_not_show_the_accounting(
    store: BioStore, database: TestDatabase
) -> None:
    artist = make_artists(1, seed=39)[0]
    database.seed([artist])
    priced = store.commit(*_priced(artist.artist_id, 0.5))
    plain = dataclasses.replace(priced, model=None, service_tier=None, cost_usd=None)
    assert encode_line(priced, "p") == encode_line(plain, "p")
    bio, _ = _priced(artist.artist_id, 0.5)
    assert CommittedBio.without_database(bio).cost_usd == 0.5


@pytest.mark.parametrize(
    ("cost", "stored"),
    [
        (None, None),
        (0.0, Decimal("0E-9")),
        (0.1234567891, Decimal("0.123456790")),  # more decimals than kept: rounded up
        (99999.999999999, Decimal("99999.999999999")),
        (100000.0, None),  # does not fit NUMERIC(14,9): unknown, and the bio is committed
        (-1.0, None),
        (float("nan"), None),
    ],
    ids=repr,
)
def test_a_cost_is_stored_exactly_or_as_unknown_never_failing_the_commit(
    store: BioStore, database: TestDatabase, cost: float | None, stored: Decimal | None
) -> None:
    artist = make_artists(1, seed=40)[0]
    database.seed([artist])
    committed = store.commit(*_priced(artist.artist_id, cost))
    assert committed.db_status == "updated"
    (ledger,) = database.ledger()
    assert ledger["cost_usd"] == stored
    assert committed.cost_usd == (None if stored is None else float(stored))


def test_job_totals_sum_the_job_and_count_unknown_costs(
    store: BioStore, database: TestDatabase
) -> None:
    artists = make_artists(6, seed=41)
    database.seed(artists[:5])  # the last one has no row: skipped, but it was paid for
    assert store.job_totals(JOB) == JobTotals()
    costs = [0.1, 0.2, None, 0.000000001, 0.3, 0.7]
    for artist, cost in zip(artists, costs, strict=True):
        store.commit(*_priced(artist.artist_id, cost, tokens=TokenUsage(100, 50, 150)))
    other = str(uuid.uuid4())
    store.commit(*_priced(artists[0].artist_id, 5.0, job=other))
    # A row from before costs were recorded (m001): every new column NULL.
    store.commit(*_row(str(uuid.uuid4())))

    totals = store.job_totals(JOB)
    assert totals == JobTotals(
        bios=7,
        input_tokens=6 * 100 + 1,
        output_tokens=6 * 50 + 2,
        total_tokens=6 * 150 + 3,
        cost_usd=1.300000001,  # exact: summed as NUMERIC, not as floats
        unpriced=2,
    )
    assert not totals.cost_complete
    assert store.job_totals(other) == JobTotals(1, 10, 20, 30, 5.0, 0)
    assert store.job_totals(other).cost_complete


# --- connections the server closed ---------------------------------------------------------


def _terminate_other_backends(database: TestDatabase) -> int:
    """Close, on the server, every connection to the test database but this one (as a
    restart would); returns how many were closed."""
    with database.connect() as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_pooled_connection_closed_by_the_server_costs_no_commit(
    store: BioStore, database: TestDatabase
) -> None:
    """Right after a commit its connection is handed out again without a ping; if the
    server closed it meanwhile, the commit goes through on a new one, once."""
    first, second = make_artists(2, seed=39)
    database.seed([first, second])
    store.commit(*_row(first.artist_id, "First bio."))
    assert _terminate_other_backends(database) >= 1
    committed = store.commit(*_row(second.artist_id, "Second bio."))
    assert committed.response_text == "Second bio." and committed.db_status == "updated"
    # The dead connection was handed out unpinged and came back broken (the retry's doing).
    assert store.pool.get_stats().get("returns_bad", 0) >= 1
    assert len(database.ledger()) == 2
    assert database.bios()[second.artist_id] == "Second bio."


def test_check_if_idle_pings_only_a_connection_not_handed_out_recently(
    database: TestDatabase,
) -> None:
    """A connection handed out within ``recent`` seconds passes without a round trip (its
    death shows at its next statement); after that, or when known broken, it is pinged."""
    now = [100.0]
    check = CheckIfIdle(recent=1.0, clock=lambda: now[0])
    with database.connect() as conn:
        check(conn)  # never seen: pinged, and it answers
        now[0] += 0.5
        with database.connect() as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        check(conn)  # handed out 0.5 s ago: no round trip, so no error yet
        now[0] += 1.5
        with pytest.raises(psycopg.OperationalError):
            check(conn)  # idle for 1.5 s: pinged, and the ping finds it closed
        assert conn.broken
        now[0] += 0.1
        with pytest.raises(psycopg.OperationalError):
            check(conn)  # known broken: never handed out unchecked


# --- commits in groups (core/committer.py) -------------------------------------------------


def _ledger_transactions(database: TestDatabase) -> int:
    """How many transactions wrote the ledger's rows (rows of one transaction share xmin)."""
    with database.connect() as conn:
        row = conn.execute("SELECT count(DISTINCT xmin::text) FROM artist_bio_ledger").fetchone()
    return int(row[0]) if row else 0


def test_a_group_commits_in_one_transaction_and_returns_each_bio_in_order(
    store: BioStore, database: TestDatabase
) -> None:
    artists = make_artists(5, seed=60)
    database.seed(artists)
    bios = [_row(a.artist_id, f"Bio {i}.")[0] for i, a in enumerate(artists)]
    job = _row(artists[0].artist_id)[1]
    committed = store.commit_group(bios, job)
    assert [c.artist_id for c in committed] == [a.artist_id for a in artists]
    assert [c.response_text for c in committed] == [f"Bio {i}." for i in range(5)]
    assert all(c.db_status == "updated" for c in committed)
    assert database.bios() == {a.artist_id: f"Bio {i}." for i, a in enumerate(artists)}
    assert _ledger_transactions(database) == 1
    # The ledger's order is the group's: a reader of the ledger by seq sees the JSONL's order.
    assert [c.seq for c in committed] == sorted(c.seq for c in committed)
    assert [row["artist_id"] for row in database.ledger()] == [a.artist_id for a in artists]


def _bios_with_everything(artists: list[ArtistData]) -> list[GeneratedBio]:
    """Bios whose every column differs from artist to artist (costs known and unknown,
    data present and absent), so a column mixed up between bios cannot pass unseen."""
    return [
        GeneratedBio(
            artist=ArtistData(a.artist_id, f"N\u00e4me {i}", None if i % 2 else f'{{"k": {i}}}'),
            response_id=f"resp_{i}",
            text=f"Bio {i}, 'quotes', \\ {{braces}}: Bj\u00f6rk \U0001f3b5 \u201c{i}\u201d.",
            created=1_700_000_000 + i,
            tokens=TokenUsage(10 + i, 20 + i, 30 + 2 * i),
            model=None if i == 1 else f"model-{i}",
            service_tier="flex" if i % 2 else "default",
            cost_usd=None if i == 2 else 0.000123 * (i + 1),
        )
        for i, a in enumerate(artists)
    ]


def _outcome(database: TestDatabase, job_id: str) -> tuple[list[dict], dict, set[str]]:
    """What a job left: its ledger rows (without job, seq and time), the user's bios and
    which rows' ``updated_at`` moved."""
    drop = {"seq", "job_id", "committed_at"}
    rows = [
        {k: v for k, v in row.items() if k not in drop}
        for row in database.ledger()
        if str(row["job_id"]) == job_id
    ]
    with database.connect() as conn:
        moved = conn.execute(
            "SELECT id::text FROM artists WHERE updated_at > '2001-01-01'"
        ).fetchall()
    return rows, database.bios(), {row[0] for row in moved}


@pytest.mark.parametrize("keep_existing", [False, True], ids=["overwrite", "keep-existing"])
def test_a_group_writes_exactly_what_one_commit_at_a_time_writes(
    store: BioStore, database: TestDatabase, keep_existing: bool
) -> None:
    """Every column of every ledger row, each status (a row with a bio, rows without one,
    an artist with no row) and the user's table come out the same either way."""
    artists = make_artists(5, seed=64)
    database.seed(artists[:4])
    bios = _bios_with_everything(artists)

    def reset() -> None:
        database.execute(
            "UPDATE artists SET bio = CASE WHEN id = %s THEN 'Curated.' END, "
            "updated_at = '2000-01-01'",
            (artists[0].artist_id,),
        )

    one_at_a_time = JobRef(str(uuid.uuid4()), "p", "v1", "gpt-x")
    grouped = dataclasses.replace(one_at_a_time, job_id=str(uuid.uuid4()))
    reset()
    singles = [store.commit(bio, one_at_a_time, keep_existing=keep_existing) for bio in bios]
    expected = _outcome(database, one_at_a_time.job_id)
    reset()
    group = store.commit_group(bios, grouped, keep_existing=keep_existing)
    assert _outcome(database, grouped.job_id) == expected
    assert [dataclasses.replace(c, seq=0) for c in group] == [
        dataclasses.replace(c, seq=0) for c in singles
    ]
    statuses = [c.db_status for c in group]
    first = "skipped" if keep_existing else "updated"
    assert statuses == [first, "updated", "updated", "updated", "skipped"]


def test_a_group_finds_the_rows_of_a_table_whose_ids_are_text(database: TestDatabase) -> None:
    """Each id is cast to the id column's type to find its row."""
    database.execute(
        "CREATE TABLE text_artists "
        "(id VARCHAR(36) PRIMARY KEY, name TEXT, bio TEXT, updated_at TIMESTAMPTZ)"
    )
    artists = make_artists(3, seed=65)
    database.seed(artists[:2], table="text_artists")
    config = DatabaseConfig(url=database.url, pool_size=2, retry_seconds=5)
    pool = create_db_connection_pool(config)
    try:
        where = describe_database(config.url)
        ensure_ledger(pool, where)
        table = inspect_target_table(pool, "text_artists", where)
        assert table.id_type == "character varying(36)"
        bios = [_row(a.artist_id, f"Bio {i}.")[0] for i, a in enumerate(artists)]
        committed = BioStore(pool, config, table).commit_group(bios, _row(artists[0].artist_id)[1])
    finally:
        pool.close()
    assert [c.db_status for c in committed] == ["updated", "updated", "skipped"]
    assert database.bios("text_artists") == {
        artists[0].artist_id: "Bio 0.",
        artists[1].artist_id: "Bio 1.",
    }


def test_a_group_keeps_earlier_commits_and_the_first_of_two_answers(
    store: BioStore, database: TestDatabase
) -> None:
    """Retried after an unknown outcome, or holding one artist twice (a batch answer seen
    twice), a group writes each artist once: the earlier commit stands."""
    first, second = make_artists(2, seed=61)
    database.seed([first, second])
    earlier = store.commit(*_row(first.artist_id, "Earlier."))
    bios = [
        _row(first.artist_id, "Later.")[0],
        _row(second.artist_id, "One.")[0],
        _row(second.artist_id, "Two.")[0],
    ]
    committed = store.commit_group(bios, _row(first.artist_id)[1])
    assert committed[0] == earlier
    assert committed[1].response_text == committed[2].response_text == "One."
    assert committed[1] == committed[2]
    assert database.bios() == {first.artist_id: "Earlier.", second.artist_id: "One."}
    assert len(database.ledger()) == 2


def test_a_refused_bio_fails_its_whole_group_with_nothing_committed(
    store: BioStore, database: TestDatabase
) -> None:
    artists = make_artists(3, seed=62)
    database.seed(artists)
    texts = ["Good.", "bad \x00 bio", "Also good."]
    bios = [_row(a.artist_id, text)[0] for a, text in zip(artists, texts, strict=True)]
    with pytest.raises(psycopg.DataError):
        store.commit_group(bios, _row(artists[0].artist_id)[1])
    assert database.ledger() == []
    assert set(database.bios().values()) == {None}


def test_a_group_on_a_connection_the_server_closed_goes_through_once(
    store: BioStore, database: TestDatabase
) -> None:
    artists = make_artists(4, seed=63)
    database.seed(artists)
    job = _row(artists[0].artist_id)[1]
    store.commit_group([_row(artists[0].artist_id, "Zero.")[0]], job)
    assert _terminate_other_backends(database) >= 1
    bios = [_row(a.artist_id, f"Bio {i}.")[0] for i, a in enumerate(artists[1:])]
    committed = store.commit_group(bios, job)
    assert [c.response_text for c in committed] == ["Bio 0.", "Bio 1.", "Bio 2."]
    assert store.pool.get_stats().get("returns_bad", 0) >= 1
    assert len(database.ledger()) == 4
