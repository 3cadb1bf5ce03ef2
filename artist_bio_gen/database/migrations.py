"""Ordered schema migrations of our own tables, each applied once and recorded.

Modelled on simonw/llm's ``llm/migrations.py``: a registry's ``register`` decorator appends
a function to an ordered list, the function's name is the migration's permanent name, and
``apply`` runs, in order, every registered migration whose name is not yet recorded in the
version table, recording each one as it goes. The registry is an object rather than a module
list so that a test can build its own (``Migrations()``) without touching the tool's.

The version table, ``artist_bio_gen_migrations``, holds one row per applied migration
(``name`` primary key, ``applied_at``) rather than a single version number, because:

- a database touched by a newer tool is recognised by a name this code does not know, and
  the message can name it (a number only says "higher");
- the primary key makes recording a migration twice impossible, whatever happens;
- an administrator sees what ran and when, and can record a migration by hand after running
  its SQL (README, "Database") with a plain ``INSERT``.

``apply`` does everything in one transaction on one connection:

1. ``pg_advisory_xact_lock(DDL_LOCK_KEY)``: runs starting together queue here; the next one
   goes on only after the previous one committed, and then sees what it recorded. Versions
   before the registry took the same lock around their ``CREATE TABLE``, so an old and a
   new run starting together are serialised too.
2. Read the recorded names (none when the version table does not exist yet).
3. Refuse a recorded name this code does not know, before any write.
4. Nothing pending: return without running any DDL, so a database user without CREATE on
   the schema works against tables an administrator set up.
5. Otherwise create the version table if missing, run each pending migration in order and
   record it.

PostgreSQL DDL is transactional: a failing migration rolls back the whole transaction
(earlier migrations of this run, the version table, every record) and commit or rollback
releases the lock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import ConfigError
from .connection import one_row

logger = logging.getLogger(__name__)

VERSION_TABLE = "artist_bio_gen_migrations"

_VERSION_DDL = f"""
CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
    name       TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

# Any fixed number works; it only has to be the same for every run changing our tables. It is
# the value earlier versions used around CREATE TABLE: keep it, so old and new runs queue.
DDL_LOCK_KEY = 0x61726269  # "arbi"

_NAME = re.compile(r"^m[0-9]{3}_[a-z0-9_]+$")

#: A migration: runs its DDL on the connection, inside the transaction ``apply`` opened.
MigrationFunction = Callable[[psycopg.Connection], None]


@dataclass(frozen=True)
class Migration:
    """One registered migration: its permanent name and the function applying it."""

    name: str
    function: MigrationFunction


class Migrations:
    """An ordered registry of migrations (the tool's is ``schema.LEDGER_MIGRATIONS``)."""

    def __init__(self) -> None:
        """An empty registry."""
        self._migrations: list[Migration] = []

    def register(self, function: MigrationFunction) -> MigrationFunction:
        """Decorator: append ``function`` as the next migration, named by its ``__name__``.

        The name is recorded in users' databases, so it must never change once released;
        ``mNNN_what`` keeps the order visible. The function is returned unchanged, so the
        same function can be registered in another registry (tests do).
        """
        name = function.__name__
        if not _NAME.match(name):
            raise ValueError(f"migration name {name!r} does not look like m001_what_it_does")
        if name in self.names():
            raise ValueError(f"migration {name!r} is already registered")
        self._migrations.append(Migration(name, function))
        return function

    def names(self) -> list[str]:
        """Names of the registered migrations, in order."""
        return [migration.name for migration in self._migrations]

    def apply(self, pool: ConnectionPool, where: str) -> list[str]:
        """Apply the migrations not yet recorded; returns their names (empty when none).

        Raises ``ConfigError`` when the database records a migration this code does not
        know. Any other error (e.g. ``psycopg.errors.InsufficientPrivilege``) propagates
        after the transaction rolled back, leaving the database as it was.
        """
        with pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
            recorded = _recorded_names(conn)
            known = self.names()
            unknown = sorted(recorded.difference(known))
            if unknown:
                raise ConfigError(_newer_tool_message(unknown, where))
            pending = [m for m in self._migrations if m.name not in recorded]
            if pending:
                conn.execute(_VERSION_DDL)
            for migration in pending:
                migration.function(conn)
                conn.execute(f"INSERT INTO {VERSION_TABLE} (name) VALUES (%s)", (migration.name,))
        applied = [migration.name for migration in pending]
        for name in applied:  # only once committed
            logger.info("applied schema migration %s in %s", name, where)
        return applied


def _recorded_names(conn: psycopg.Connection) -> set[str]:
    """Names in the version table; empty when it does not exist (a database set up by a
    version before the registry, or a fresh one)."""
    if one_row(conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)))[0] is None:
        return set()
    return {row[0] for row in conn.execute(f"SELECT name FROM {VERSION_TABLE}").fetchall()}


def _newer_tool_message(unknown: list[str], where: str) -> str:
    return (
        f"The database {where} was set up by a newer artist-bio-gen (table {VERSION_TABLE} "
        f"records migration {', '.join(unknown)}, which this version does not know); "
        "upgrade artist-bio-gen before running it against this database."
    )
