"""Bench databases on the ``TEST_DATABASE_URL`` server, and bulk loading with COPY.

Every measured run gets a fresh database copied from a template that holds the user's
tables (the test suite's ``USER_TABLES``); each is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import psycopg

from .data import Artist

_PREFIX = "abg_bench"


def _user_tables() -> str:
    """The DDL of the user's tables, as the test suite defines it."""
    from tests.support.database import USER_TABLES

    return USER_TABLES


def url_for(admin_url: str, dbname: str) -> str:
    """``admin_url`` pointed at another database."""
    return urlsplit(admin_url)._replace(path="/" + dbname).geturl()


class BenchDatabases:
    """Creates (and drops) bench databases on one server; a context manager."""

    def __init__(self, admin_url: str) -> None:
        """Create the template database on the server of ``admin_url``."""
        self.admin_url = admin_url
        self._template = f"{_PREFIX}_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._admin(f'CREATE DATABASE "{self._template}"')
        with psycopg.connect(url_for(admin_url, self._template), autocommit=True) as conn:
            conn.execute(_user_tables())

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(statement)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """A new database with the user's tables (dropped on exit); yields its URL."""
        name = f"{_PREFIX}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        try:
            yield url_for(self.admin_url, name)
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        """Drop the template."""
        self._admin(f'DROP DATABASE IF EXISTS "{self._template}" WITH (FORCE)')

    def __enter__(self) -> BenchDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def seed_artists(url: str, artists: Iterable[Artist]) -> int:
    """COPY ``artists`` (id, name, no bio) into the user's table; returns the row count."""
    count = 0
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy("COPY artists (id, name) FROM STDIN") as copy,
    ):
        for artist in artists:
            copy.write_row((artist.artist_id, artist.name))
            count += 1
    return count


LEDGER_COPY_COLUMNS = (
    "job_id",
    "artist_id",
    "artist_name",
    "artist_data",
    "response_id",
    "response_text",
    "prompt_id",
    "prompt_version",
    "model",
    "created",
    "db_status",
    "input_tokens",
    "output_tokens",
    "total_tokens",
)


def copy_ledger_rows(url: str, rows: Iterable[tuple]) -> None:
    """COPY rows (``LEDGER_COPY_COLUMNS`` order) into the tool's ledger table, then VACUUM
    ANALYZE it (as autovacuum would have done after the runs that committed them)."""
    columns = ", ".join(LEDGER_COPY_COLUMNS)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY artist_bio_ledger ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        conn.execute("VACUUM ANALYZE artist_bio_ledger")


def ledger_stats(url: str, job_id: str) -> tuple[int, int]:
    """(rows, highest seq) of a job in the ledger."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM artist_bio_ledger WHERE job_id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def done_ids_plan(url: str, job_id: str) -> str:
    """The first line of the plan of the tool's done-ids query (for the report)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "EXPLAIN SELECT artist_id FROM artist_bio_ledger WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])
