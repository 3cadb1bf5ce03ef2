"""The user's table (checked, never altered) and our ledger table (created idempotently).

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
==============  ===========  ====================================================
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ..errors import ConfigError
from .connection import first_line

logger = logging.getLogger(__name__)

LEDGER_TABLE = "artist_bio_ledger"

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

# Any fixed number works; it only has to be the same for every run creating the ledger, so
# that two first runs starting together do not race on CREATE TABLE.
_DDL_LOCK_KEY = 0x61726269  # "arbi"

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


def inspect_target_table(pool: ConnectionPool, name: str, where: str) -> TargetTable:
    """Check the user's table has ``id`` and ``bio`` and that we may update it."""
    identifier = parse_table_name(name)
    with pool.connection() as conn:
        columns = _columns(conn, name, where)
        for needed in ("id", "bio"):
            if needed not in columns:
                raise ConfigError(_missing_column_message(name, needed, where))
        if not conn.execute("SELECT has_table_privilege(%s, 'UPDATE')", (name,)).fetchone()[0]:
            raise ConfigError(
                f"The database user may not UPDATE table '{name}' in {where}; "
                f"grant it with: GRANT UPDATE ON {name} TO <user>."
            )
    return TargetTable(name, identifier, "updated_at" in columns)


def _columns(conn: psycopg.Connection, name: str, where: str) -> set[str]:
    oid = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()[0]
    if oid is None:
        raise ConfigError(
            f"Table '{name}' does not exist in {where}; create it (see README, "
            "'Database') or choose another with --db-table / --test-mode."
        )
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
        (oid,),
    ).fetchall()
    return {row[0] for row in rows}


def _missing_column_message(table: str, column: str, where: str) -> str:
    fix = {
        "bio": f"ALTER TABLE {table} ADD COLUMN bio TEXT",
        "id": "the table needs an 'id' column holding the artist UUIDs of the input",
    }[column]
    return f"Table '{table}' in {where} has no '{column}' column; {fix}."


def ensure_ledger(pool: ConnectionPool, where: str) -> None:
    """Create the ledger table if it is missing (safe when several runs start together)."""
    try:
        with pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))
            conn.execute(_LEDGER_DDL)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"Cannot create the ledger table {LEDGER_TABLE} in {where} "
            f"({first_line(exc)}); ask an administrator to create it (README, 'Database') "
            "or grant CREATE on the schema."
        ) from exc
