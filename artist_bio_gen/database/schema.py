"""The user's table (checked, never altered) and our tables (created by migrations).

The ledger, ``artist_bio_ledger``, holds one row per bio committed by a job. It is written in
the same statement as the user's ``bio`` column, so a row exists exactly when the bio was
committed. Resume reads it to know what is done and recovery renders missing JSONL lines from
it, so the JSONL can always be rebuilt without calling the API again.

==============  ===========  ====================================================
column          type         meaning
==============  ===========  ====================================================
seq             bigserial    commit order (primary key)
job_id          uuid         the job (see the ``.job.json`` manifest)
artist_id       uuid         the artist; unique per job
artist_name     text         as read from the input
artist_data     text         as read from the input (NULL when empty)
response_id     text         the API response id (``resp_...``)
response_text   text         the bio exactly as committed
prompt_id       text         stored prompt id (NULL in ``--model`` mode)
prompt_version  text         stored prompt version, if any
model           text         model name in ``--model`` mode
created         bigint       the response's ``created_at`` (unix seconds)
db_status       text         ``updated`` (bio written) or ``skipped`` (row kept)
input_tokens    integer      usage reported by the API
output_tokens   integer
total_tokens    integer
committed_at    timestamptz  commit time
response_model  text         the model the API answered with (``m002``)
service_tier    text         the tier the response was served at (``m002``)
cost_usd        numeric      what the response cost, USD (``m002``; NULL: unknown)
==============  ===========  ====================================================

Columns marked ``m002`` were added by that migration: rows committed before it hold NULL.
``cost_usd`` (``NUMERIC(14,9)``, exact to the nano-dollar) comes from ``api/pricing.py``; it
is NULL when the model's price or the tier was unknown.

Our tables change only through ``LEDGER_MIGRATIONS`` (``migrations.py`` has the design):
``ensure_ledger`` applies, under an advisory lock and in one transaction, the migrations not
yet recorded in the version table, ``artist_bio_gen_migrations``:

==============  ===========  ====================================================
column          type         meaning
==============  ===========  ====================================================
name            text         a migration's name (primary key), e.g. ``m001_ledger_table``
applied_at      timestamptz  when it was applied
==============  ===========  ====================================================

The daily request counts of ``--daily-limit``, ``artist_bio_usage`` (``m002``): one row per
job and UTC day, counting the API requests reserved for that day (``core/budget.py``; a run
reserves blocks ahead and gives back what it did not use at its end, so a crash leaves the
count high, never low):

==============  ===========  ====================================================
column          type         meaning
==============  ===========  ====================================================
job_id          uuid         the job (primary key with ``day``)
day             date         the UTC day
requests        bigint       requests reserved for the day by all runs of the job
==============  ===========  ====================================================

The batches of a job in batch mode (``m003``; ``database/batches.py`` reads and writes them,
``core/batch.py`` has the design): ``artist_bio_batches``, one row per request file of a job,
committed before the file is uploaded and before its batch is created, so that a crash
between "created" and "recorded" is found again (by the batch's metadata) instead of
creating a second batch:

==============  ===========  ====================================================
column          type         meaning
==============  ===========  ====================================================
job_id          uuid         the job (primary key with ``chunk``)
chunk           integer      the request file's number in the job (1, 2, ...)
state           text         ``recorded``, ``uploaded``, ``submitted`` or ``ended``
requests        integer      request lines in the file
input_file_id   text         the uploaded file (NULL until uploaded)
batch_id        text         the batch (NULL until created and recorded); unique
status          text         the batch's last status seen (``in_progress``, ...)
completed       integer      the API's ``request_counts.completed`` (last seen)
failed          integer      the API's ``request_counts.failed`` (last seen)
committed       integer      answers this job committed from it when it ended
failures        integer      lines recorded as failures of their artist
resubmit        integer      lines left unanswered (expired, 429, a systemic error)
error           text         why it failed as a whole (``code: message``), if it did
created_at      timestamptz  when the row was recorded
updated_at      timestamptz  its last change
==============  ===========  ====================================================

and ``artist_bio_batch_items``, the artists of each open batch (the request file's content,
kept until the batch ended, so that a file can be uploaded again and an answer, which
carries only the artist id, finds its artist's name and data):

==============  ===========  ====================================================
column          type         meaning
==============  ===========  ====================================================
job_id          uuid         the job
chunk           integer      the request file (with ``job_id``: the batch's row)
artist_id       uuid         the artist (``custom_id`` of its request line)
artist_name     text         as read from the input
artist_data     text         as read from the input (NULL when empty)
==============  ===========  ====================================================

A new column goes in a new migration appended to ``LEDGER_MIGRATIONS`` (never by editing
``_LEDGER_DDL``, which databases already hold), together with this table and the README's
SQL for administrators.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ..errors import ConfigError
from .connection import first_line, one_row
from .migrations import VERSION_TABLE, Migrations

logger = logging.getLogger(__name__)

LEDGER_TABLE = "artist_bio_ledger"
USAGE_TABLE = "artist_bio_usage"
BATCHES_TABLE = "artist_bio_batches"
BATCH_ITEMS_TABLE = "artist_bio_batch_items"

_LEDGER_DDL = """
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

#: The migrations of our tables, in order. Their names are recorded in users' databases:
#: never rename or reorder a released one; append new ones.
LEDGER_MIGRATIONS = Migrations()


@LEDGER_MIGRATIONS.register
def m001_ledger_table(conn: psycopg.Connection) -> None:
    """The ledger as first released.

    IF NOT EXISTS adopts a ledger created before the registry existed (by an earlier version
    or by an administrator): the table and its rows are left exactly as they are.
    """
    conn.execute(_LEDGER_DDL)


@LEDGER_MIGRATIONS.register
def m002_costs_and_daily_usage(conn: psycopg.Connection) -> None:
    """What each bio cost, and the daily request counts of ``--daily-limit``.

    New nullable columns without a default: PostgreSQL only records them in the catalogue
    (no table rewrite, however large the ledger), and existing rows read NULL ("unknown").
    No IF NOT EXISTS: nothing older than this migration made these, so a column or table
    already there is a surprise to stop on, not to adopt.
    """
    conn.execute(
        "ALTER TABLE artist_bio_ledger "
        "ADD COLUMN response_model TEXT, "
        "ADD COLUMN service_tier TEXT, "
        "ADD COLUMN cost_usd NUMERIC(14,9)"
    )
    conn.execute(_USAGE_DDL)


_USAGE_DDL = """
CREATE TABLE artist_bio_usage (
    job_id   UUID NOT NULL,
    day      DATE NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, day)
)
"""


@LEDGER_MIGRATIONS.register
def m003_batches(conn: psycopg.Connection) -> None:
    """The batches of batch mode and the artists of each open batch.

    Two new tables, nothing else touched: a database migrated by this version still works
    with online jobs exactly as before. The items reference their batch row and go with it
    (``ON DELETE CASCADE``), though the tool itself deletes a batch's items once it ended
    and keeps the row.
    """
    conn.execute(_BATCHES_DDL)
    conn.execute(_BATCH_ITEMS_DDL)


_BATCHES_DDL = """
CREATE TABLE artist_bio_batches (
    job_id        UUID NOT NULL,
    chunk         INTEGER NOT NULL,
    state         TEXT NOT NULL,
    requests      INTEGER NOT NULL,
    input_file_id TEXT,
    batch_id      TEXT UNIQUE,
    status        TEXT,
    completed     INTEGER,
    failed        INTEGER,
    committed     INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    resubmit      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, chunk),
    CHECK (state IN ('recorded', 'uploaded', 'submitted', 'ended'))
)
"""

_BATCH_ITEMS_DDL = """
CREATE TABLE artist_bio_batch_items (
    job_id      UUID NOT NULL,
    chunk       INTEGER NOT NULL,
    artist_id   UUID NOT NULL,
    artist_name TEXT NOT NULL,
    artist_data TEXT,
    PRIMARY KEY (job_id, chunk, artist_id),
    FOREIGN KEY (job_id, chunk) REFERENCES artist_bio_batches (job_id, chunk) ON DELETE CASCADE
)
"""


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_table_name(name: str) -> sql.Identifier:
    """``table`` or ``schema.table`` as a quoted identifier; anything else is a ConfigError."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ConfigError(
            f"'{name}' is not a valid table name; use letters, digits and underscores, "
            "optionally as schema.table."
        )
    return sql.Identifier(*parts)


@dataclass(frozen=True)
class TargetTable:
    """What the startup check learned about the user's table."""

    name: str
    identifier: sql.Identifier
    has_updated_at: bool
    #: The ``id`` column's type as the server spells it (``uuid``, ``text``, ...): a commit
    #: of several bios sends their ids as one array and casts each to it to find the rows.
    id_type: str


def inspect_target_table(pool: ConnectionPool, name: str, where: str) -> TargetTable:
    """Check the user's table has ``id`` and ``bio`` and that we may update it."""
    identifier = parse_table_name(name)
    with pool.connection() as conn:
        columns = _columns(conn, name, where)
        for needed in ("id", "bio"):
            if needed not in columns:
                raise ConfigError(_missing_column_message(name, needed, where))
        if not one_row(conn.execute("SELECT has_table_privilege(%s, 'UPDATE')", (name,)))[0]:
            raise ConfigError(
                f"The database user may not UPDATE table '{name}' in {where}; "
                f"grant it with: GRANT UPDATE ON {name} TO <user>."
            )
    return TargetTable(name, identifier, "updated_at" in columns, columns["id"])


def _columns(conn: psycopg.Connection, name: str, where: str) -> dict[str, str]:
    """The table's columns and their types (``format_type``'s spelling, valid in a cast)."""
    oid = one_row(conn.execute("SELECT to_regclass(%s)::oid", (name,)))[0]
    if oid is None:
        raise ConfigError(
            f"Table '{name}' does not exist in {where}; create it (see README, "
            "'Database') or choose another with --db-table / --test-mode."
        )
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
        (oid,),
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def _missing_column_message(table: str, column: str, where: str) -> str:
    fix = {
        "bio": f"ALTER TABLE {table} ADD COLUMN bio TEXT",
        "id": "the table needs an 'id' column holding the artist UUIDs of the input",
    }[column]
    return f"Table '{table}' in {where} has no '{column}' column; {fix}."


def ensure_ledger(
    pool: ConnectionPool, where: str, migrations: Migrations = LEDGER_MIGRATIONS
) -> list[str]:
    """Bring our tables up to date; returns the names of the migrations applied (if any).

    Safe when several runs start together (they queue on an advisory lock) and all or
    nothing (one transaction). Runs no DDL when everything is already recorded, so a user
    without CREATE works against tables an administrator set up. Raises ``ConfigError``
    when the database was set up by a newer version or the user may not create the tables.
    ``migrations`` is for tests; the tool always uses ``LEDGER_MIGRATIONS``.
    """
    try:
        return migrations.apply(pool, where)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"Cannot set up the ledger tables {LEDGER_TABLE}, {USAGE_TABLE}, {BATCHES_TABLE}, "
            f"{BATCH_ITEMS_TABLE} and {VERSION_TABLE} "
            f"in {where} "
            f"({first_line(exc)}); ask an administrator to create them (README, 'Database') "
            "or grant CREATE on the schema."
        ) from exc
