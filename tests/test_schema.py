"""Migrations of our tables against a real PostgreSQL: applied once, in order, all or nothing.

Tests that need their own migrations build a private ``Migrations()`` registry and hand it to
``ensure_ledger``, so they go through the same lock and transaction as the tool without
touching ``LEDGER_MIGRATIONS``.
"""

from __future__ import annotations

import datetime
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from artist_bio_gen import exit_codes
from artist_bio_gen.database import schema
from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.migrations import VERSION_TABLE, Migrations
from artist_bio_gen.database.schema import (
    LEDGER_MIGRATIONS,
    USAGE_TABLE,
    ensure_ledger,
    inspect_target_table,
    m001_ledger_table,
    m002_costs_and_daily_usage,
    m003_batches,
)
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.errors import ConfigError
from artist_bio_gen.models import ArtistData, DatabaseConfig, GeneratedBio, JobRef, TokenUsage

from .conftest import ROOT
from .support.cli import run_in_process
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

# What versions before the migration registry ran (frozen here on purpose: it is what users'
# databases already hold, whatever schema.py says today).
PRE_REGISTRY_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS artist_bio_ledger (
    seq            BIGSERIAL PRIMARY KEY,
    job_id         UUID NOT NULL,
    artist_id      UUID NOT NULL,
    artist_name    TEXT NOT NULL,
    artist_data    TEXT,
    response_id    TEXT NOT NULL,
    response_text  TEXT NOT NULL,
    prompt_id      TEXT,
    prompt_version TEXT,
    model          TEXT,
    created        BIGINT NOT NULL,
    db_status      TEXT NOT NULL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    total_tokens   INTEGER,
    committed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (job_id, artist_id)
)
"""

LEDGER_ROW = (
    "INSERT INTO artist_bio_ledger (job_id, artist_id, artist_name, response_id, "
    "response_text, created, db_status) VALUES (%s, %s, 'Old Artist', 'resp_old', "
    "'An old bio.', 1700000000, 'updated')"
)


def _pool(url: str) -> ConnectionPool:
    return create_db_connection_pool(DatabaseConfig(url=url, pool_size=2, retry_seconds=5))


@pytest.fixture
def pool(database: TestDatabase) -> Iterator[ConnectionPool]:
    pool = _pool(database.url)
    yield pool
    pool.close()


@pytest.fixture
def where(database: TestDatabase) -> str:
    return describe_database(database.url)


def _exists(database: TestDatabase, table: str) -> bool:
    with database.connect() as conn:
        return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def _recorded(database: TestDatabase) -> list[tuple]:
    """(name, applied_at) rows of the version table; empty when it does not exist."""
    if not _exists(database, VERSION_TABLE):
        return []
    with database.connect() as conn:
        return conn.execute(
            f"SELECT name, applied_at FROM {VERSION_TABLE} ORDER BY name"
        ).fetchall()


def _recorded_names(database: TestDatabase) -> list[str]:
    return [name for name, _ in _recorded(database)]


def _columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str, bool]]:
    """(name, type, not null) of a table's columns, in order."""
    return conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()


def _constraints(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s)",
        (table,),
    ).fetchall()
    return sorted(row[0] for row in rows)


def _docstring_columns(table_index: int) -> list[str]:
    """Column names of the n-th column table in schema.py's module docstring."""
    tables = re.findall(r"=+  =+  =+\n(.*?)\n=+  =+  =+\n(.*?)\n=+  =+  =+", schema.__doc__, re.S)
    body = tables[table_index][1]
    return [line.split()[0] for line in body.splitlines()]


def test_a_fresh_database_gets_every_migration_recorded(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    assert LEDGER_MIGRATIONS.names()[0] == "m001_ledger_table"
    # The registries tests build from the tool's migrations know every one of them.
    assert _registry_up_to(LEDGER_MIGRATIONS.names()[-1]).names() == LEDGER_MIGRATIONS.names()
    assert ensure_ledger(pool, where) == LEDGER_MIGRATIONS.names()
    assert _recorded_names(database) == LEDGER_MIGRATIONS.names()
    with database.connect() as conn:
        # The module docstring documents the tables column by column: it must stay true.
        ledger_columns = [name for name, _, _ in _columns(conn, "artist_bio_ledger")]
        version_columns = [name for name, _, _ in _columns(conn, VERSION_TABLE)]
        usage_columns = [name for name, _, _ in _columns(conn, USAGE_TABLE)]
        cost_type = dict((name, kind) for name, kind, _ in _columns(conn, "artist_bio_ledger"))
        batches_columns = [name for name, _, _ in _columns(conn, schema.BATCHES_TABLE)]
        items_columns = [name for name, _, _ in _columns(conn, schema.BATCH_ITEMS_TABLE)]
    assert ledger_columns == _docstring_columns(0)
    assert version_columns == _docstring_columns(1)
    assert usage_columns == _docstring_columns(2)
    assert batches_columns == _docstring_columns(3)
    assert items_columns == _docstring_columns(4)
    assert cost_type["cost_usd"] == "numeric(14,9)"


def test_a_second_run_applies_nothing_and_changes_no_rows(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    ensure_ledger(pool, where)
    database.execute(LEDGER_ROW, (str(uuid.uuid4()), str(uuid.uuid4())))
    recorded, ledger = _recorded(database), database.ledger()

    assert ensure_ledger(pool, where) == []
    assert _recorded(database) == recorded  # same names, same applied_at: nothing rewritten
    assert database.ledger() == ledger


def test_a_ledger_from_before_the_registry_is_adopted_with_its_rows(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    database.execute(PRE_REGISTRY_LEDGER_DDL)
    database.execute(LEDGER_ROW, (str(uuid.uuid4()), str(uuid.uuid4())))
    before = database.ledger()
    assert not _exists(database, VERSION_TABLE)

    assert ensure_ledger(pool, where) == LEDGER_MIGRATIONS.names()
    assert _recorded_names(database) == LEDGER_MIGRATIONS.names()
    assert database.ledger() == [_with_m002_columns(row) for row in before]
    assert ensure_ledger(pool, where) == []


def _with_m002_columns(row: dict) -> dict:
    """A ledger row from before m002, as it reads after it: the new columns NULL."""
    return {**row, "response_model": None, "service_tier": None, "cost_usd": None}


def _registry_up_to(name: str) -> Migrations:
    """A registry holding the tool's migrations up to ``name`` (a database a version ago)."""
    registry = Migrations()
    for function in (m001_ledger_table, m002_costs_and_daily_usage, m003_batches):
        registry.register(function)
        if function.__name__ == name:
            return registry
    raise AssertionError(f"unknown migration {name}")


def test_m002_upgrades_a_ledger_at_m001_keeping_its_rows(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    """What a user of the previous version holds: m001 recorded, committed rows. m002 adds
    the cost columns (NULL in every old row: unknown) and the usage table; the old rows
    still commit, read and total as before."""
    assert ensure_ledger(pool, where, migrations=_registry_up_to("m001_ledger_table")) == [
        "m001_ledger_table"
    ]
    job_id = str(uuid.uuid4())
    for _ in range(3):
        database.execute(LEDGER_ROW, (job_id, str(uuid.uuid4())))
    before = database.ledger()
    assert "cost_usd" not in before[0] and not _exists(database, USAGE_TABLE)

    upgraded = ensure_ledger(pool, where, migrations=_registry_up_to("m002_costs_and_daily_usage"))
    assert upgraded == ["m002_costs_and_daily_usage"]
    assert database.ledger() == [_with_m002_columns(row) for row in before]
    assert _exists(database, USAGE_TABLE)
    store = BioStore(pool, DatabaseConfig(url=database.url, retry_seconds=5))
    assert [row.cost_usd for row in store.iter_job_rows(job_id)] == [None, None, None]
    totals = store.job_totals(job_id)
    assert (totals.bios, totals.cost_usd, totals.unpriced) == (3, 0.0, 3)
    assert (
        ensure_ledger(pool, where, migrations=_registry_up_to("m002_costs_and_daily_usage")) == []
    )


def test_m003_adds_the_batch_tables_to_a_database_at_m002_keeping_its_rows(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    """What a user of the version before batch mode holds: m001 and m002, committed rows.
    m003 adds the batch tables only; the ledger and its rows are untouched."""
    ensure_ledger(pool, where, migrations=_registry_up_to("m002_costs_and_daily_usage"))
    job_id = str(uuid.uuid4())
    for _ in range(2):
        database.execute(LEDGER_ROW, (job_id, str(uuid.uuid4())))
    before = database.ledger()
    assert not _exists(database, schema.BATCHES_TABLE)

    assert ensure_ledger(pool, where) == ["m003_batches"]
    assert _recorded_names(database) == LEDGER_MIGRATIONS.names()
    assert database.ledger() == before
    assert _exists(database, schema.BATCHES_TABLE) and _exists(database, schema.BATCH_ITEMS_TABLE)
    # A row's state is one of the four; items go with their batch.
    with pytest.raises(psycopg.errors.CheckViolation):
        database.execute(
            "INSERT INTO artist_bio_batches (job_id, chunk, state, requests) "
            "VALUES (%s, 1, 'x', 1)",
            (job_id,),
        )
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        database.execute(
            "INSERT INTO artist_bio_batch_items VALUES (%s, 9, %s, 'n', NULL)",
            (job_id, str(uuid.uuid4())),
        )
    assert ensure_ledger(pool, where) == []


def test_a_database_from_a_newer_version_is_refused_before_any_write(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    ensure_ledger(pool, where)
    database.execute(f"INSERT INTO {VERSION_TABLE} (name) VALUES ('m099_from_the_future')")
    recorded = _recorded(database)
    registry = Migrations()
    registry.register(m001_ledger_table)

    @registry.register
    def m002_pending(conn: psycopg.Connection) -> None:
        conn.execute("CREATE TABLE pending_probe (x int)")

    with pytest.raises(ConfigError) as caught:
        ensure_ledger(pool, where, migrations=registry)
    message = str(caught.value)
    assert "m099_from_the_future" in message and where in message
    assert message.endswith("upgrade artist-bio-gen before running it against this database.")
    assert "\n" not in message and ". " not in message  # one sentence
    assert not _exists(database, "pending_probe")  # the pending migration did not run
    assert _recorded(database) == recorded


def test_a_newer_database_stops_the_cli_before_any_request(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    pool = _pool(database.url)
    try:
        ensure_ledger(pool, describe_database(database.url))
    finally:
        pool.close()
    database.execute(f"INSERT INTO {VERSION_TABLE} (name) VALUES ('m099_from_the_future')")
    csv_file = write_csv(tmp_path / "artists.csv", make_artists(2, seed=80))
    result = run_in_process(
        ["--input", str(csv_file), "--prompt-id", "p"], env={"DATABASE_URL": database.url}
    )
    assert result.code == exit_codes.EXIT_CONFIG_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    assert "newer artist-bio-gen" in result.stderr and "upgrade artist-bio-gen" in result.stderr
    assert fake_openai.total_requests == 0


def test_runs_starting_together_apply_each_migration_once(database: TestDatabase) -> None:
    """The second run waits on the lock and then sees the first one's records.

    The migration sleeps with its table created but not committed, so without the lock both
    runs would find nothing recorded and the second CREATE TABLE (no IF NOT EXISTS) or
    version-table insert would fail.
    """
    calls: list[str] = []
    registry = Migrations()
    registry.register(m001_ledger_table)

    @registry.register
    def m002_slow(conn: psycopg.Connection) -> None:
        calls.append(threading.current_thread().name)
        conn.execute("CREATE TABLE race_probe (x int)")
        conn.execute("SELECT pg_sleep(0.5)")

    pools = [_pool(database.url), _pool(database.url)]
    where = describe_database(database.url)
    start = threading.Barrier(len(pools))
    results: dict[int, object] = {}

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = ensure_ledger(pools[index], where, migrations=registry)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"run{i}") for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for p in pools:
            p.close()
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    assert sorted(results.values(), key=len) == [[], ["m001_ledger_table", "m002_slow"]]
    assert len(calls) == 1
    assert _recorded_names(database) == ["m001_ledger_table", "m002_slow"]


def _failing_registry() -> Migrations:
    registry = _registry_up_to(LEDGER_MIGRATIONS.names()[-1])

    @registry.register
    def m999_breaks_halfway(conn: psycopg.Connection) -> None:
        conn.execute("ALTER TABLE artist_bio_ledger ADD COLUMN half_done TEXT")
        conn.execute("CREATE TABLE half_probe (x int)")
        raise RuntimeError("migration bug")

    return registry


def test_a_failing_migration_on_a_fresh_database_leaves_nothing(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    with pytest.raises(RuntimeError, match="migration bug"):
        ensure_ledger(pool, where, migrations=_failing_registry())
    # m001 and m002 ran in the same transaction: rolled back too, with the version table.
    for table in ("artist_bio_ledger", USAGE_TABLE, VERSION_TABLE, "half_probe"):
        assert not _exists(database, table), table
    # The lock was released: the next run goes ahead.
    assert ensure_ledger(pool, where) == LEDGER_MIGRATIONS.names()


def test_a_failing_migration_keeps_the_recorded_ones_and_the_rows(
    pool: ConnectionPool, where: str, database: TestDatabase
) -> None:
    ensure_ledger(pool, where)
    database.execute(LEDGER_ROW, (str(uuid.uuid4()), str(uuid.uuid4())))
    recorded, ledger = _recorded(database), database.ledger()

    with pytest.raises(RuntimeError, match="migration bug"):
        ensure_ledger(pool, where, migrations=_failing_registry())
    assert _recorded(database) == recorded
    assert database.ledger() == ledger
    with database.connect() as conn:
        assert "half_done" not in [name for name, _, _ in _columns(conn, "artist_bio_ledger")]
    assert not _exists(database, "half_probe")


def test_the_registry_keeps_names_permanent_and_unique() -> None:
    registry = Migrations()
    assert registry.register(m001_ledger_table) is m001_ledger_table
    with pytest.raises(ValueError, match="already registered"):
        registry.register(m001_ledger_table)

    def add_a_column(conn: psycopg.Connection) -> None:
        raise AssertionError("never run")

    with pytest.raises(ValueError, match="m001_what_it_does"):
        registry.register(add_a_column)
    assert registry.names() == ["m001_ledger_table"]


# --- a database user without CREATE on the schema --------------------------------------------


@pytest.fixture
def limited_user(pg_admin_url: str, database: TestDatabase) -> Iterator[str]:
    """The test database's URL for a new login role without CREATE on the schema (PG >= 15
    grants none on public) but allowed to update the user's table, as the tool needs."""
    role = f"abg_limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited_pw'")
    try:
        database.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        database.execute(f"GRANT SELECT, UPDATE ON artists TO {role}")
        parts = urlsplit(database.url)
        netloc = f"{role}:limited_pw@{parts.hostname}:{parts.port or 5432}"
        yield parts._replace(netloc=netloc).geturl()
    finally:
        database.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def _readme_admin_sql() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if VERSION_TABLE in b]
    return block


def test_a_user_without_create_gets_one_sentence_naming_the_fix(
    limited_user: str, database: TestDatabase
) -> None:
    pool = _pool(limited_user)
    try:
        with pytest.raises(ConfigError) as caught:
            ensure_ledger(pool, describe_database(limited_user))
    finally:
        pool.close()
    message = str(caught.value)
    assert "permission denied" in message
    assert "artist_bio_ledger" in message and VERSION_TABLE in message
    assert message.endswith(
        "ask an administrator to create them (README, 'Database') or grant CREATE on the schema."
    )
    assert "\n" not in message
    assert "limited_pw" not in message
    assert not _exists(database, "artist_bio_ledger")


def test_the_readme_admin_sql_lets_a_user_without_create_run(
    limited_user: str, database: TestDatabase
) -> None:
    """What the README tells an administrator is enough: the tool then runs no DDL at all, and
    the tables are the ones its own migrations create."""
    role = urlsplit(limited_user).username
    with database.connect() as conn:  # several statements: no parameters, simple protocol
        conn.execute(_readme_admin_sql().replace("<user>", role))

    pool = _pool(limited_user)
    try:
        where = describe_database(limited_user)
        assert ensure_ledger(pool, where) == []
        artist = make_artists(1, seed=81)[0]
        database.seed([artist])
        config = DatabaseConfig(url=limited_user, pool_size=2, retry_seconds=5)
        store = BioStore(pool, config, inspect_target_table(pool, "artists", where))
        bio = GeneratedBio(
            artist=ArtistData(artist.artist_id, artist.name, None),
            response_id="resp_1",
            text="A bio.",
            created=1_700_000_000,
            tokens=TokenUsage(1, 2, 3),
        )
        job = JobRef(job_id=str(uuid.uuid4()), prompt_id="p", prompt_version=None, model=None)
        assert store.commit(bio, job).db_status == "updated"
        assert database.bios()[artist.artist_id] == "A bio."
        # --daily-limit's counts: reserved, given back and read.
        today = datetime.date(2025, 8, 14)
        assert store.reserve_requests(job.job_id, today, 16, 20) == 16
        store.release_requests(job.job_id, today, 6)
        assert store.requests_used(job.job_id, today) == 10
        assert store.job_totals(job.job_id).bios == 1
    finally:
        pool.close()

    # The README's tables match what the migrations build (in a schema of their own here).
    with database.connect() as conn:
        conn.execute("CREATE SCHEMA toolmade")
    parts = urlsplit(database.url)
    query = "&".join(q for q in (parts.query, "options=-csearch_path%3Dtoolmade") if q)
    tool_url = parts._replace(query=query).geturl()
    tool_pool = _pool(tool_url)
    try:
        assert ensure_ledger(tool_pool, where) == LEDGER_MIGRATIONS.names()
    finally:
        tool_pool.close()
    with database.connect() as conn:
        for table in (
            "artist_bio_ledger",
            USAGE_TABLE,
            VERSION_TABLE,
            schema.BATCHES_TABLE,
            schema.BATCH_ITEMS_TABLE,
        ):
            readme_made, tool_made = f"public.{table}", f"toolmade.{table}"
            assert _columns(conn, readme_made) == _columns(conn, tool_made), table
            # A foreign key names the other schema's table with its schema: compare without.
            tool_constraints = [c.replace("toolmade.", "") for c in _constraints(conn, tool_made)]
            assert _constraints(conn, readme_made) == tool_constraints, table
        recorded = conn.execute(f"SELECT name FROM public.{VERSION_TABLE} ORDER BY name")
        assert [row[0] for row in recorded] == LEDGER_MIGRATIONS.names()


def test_the_readme_admin_sql_upgrades_tables_an_earlier_version_made(
    limited_user: str, database: TestDatabase
) -> None:
    """A user without CREATE on tables set up for the previous version (m001): the run
    stops with one sentence until the administrator runs the README's SQL again, which
    upgrades the tables with their rows; then the run needs no DDL."""
    role = urlsplit(limited_user).username
    admin_pool = _pool(database.url)
    try:
        where = describe_database(database.url)
        ensure_ledger(admin_pool, where, migrations=_registry_up_to("m001_ledger_table"))
    finally:
        admin_pool.close()
    for grant in (
        f"GRANT SELECT, INSERT ON artist_bio_ledger TO {role}",
        f"GRANT USAGE ON SEQUENCE artist_bio_ledger_seq_seq TO {role}",
        f"GRANT SELECT ON {VERSION_TABLE} TO {role}",
    ):
        database.execute(grant)
    database.execute(LEDGER_ROW, (str(uuid.uuid4()), str(uuid.uuid4())))
    before = database.ledger()

    pool = _pool(limited_user)
    try:
        with pytest.raises(ConfigError, match="ask an administrator"):
            ensure_ledger(pool, describe_database(limited_user))
        with database.connect() as conn:
            conn.execute(_readme_admin_sql().replace("<user>", role))
        assert ensure_ledger(pool, describe_database(limited_user)) == []
    finally:
        pool.close()
    assert _recorded_names(database) == LEDGER_MIGRATIONS.names()
    assert database.ledger() == [_with_m002_columns(row) for row in before]


def test_the_readme_user_table_is_the_one_the_suite_runs_against(database: TestDatabase) -> None:
    """The README's ``CREATE TABLE artists`` builds, column for column and constraint for
    constraint, the table every test of the suite writes bios to (``USER_TABLES``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if "CREATE TABLE artists" in b]
    with database.connect() as conn:
        conn.execute("CREATE SCHEMA documented")
        conn.execute("SET search_path TO documented")
        conn.execute(block)
        conn.execute("SET search_path TO public")
        assert _columns(conn, "documented.artists") == _columns(conn, "public.artists")
        assert _constraints(conn, "documented.artists") == _constraints(conn, "public.artists")
        assert [name for name, _, _ in _columns(conn, "public.artists")] == [
            "id", "name", "bio", "created_at", "updated_at"
        ]  # fmt: skip
