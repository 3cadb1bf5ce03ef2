"""Bench databases on the ``TEST_DATABASE_URL`` server, and bulk loading with COPY.

Every measured run gets a fresh database copied from a template that holds the user's
tables: ``BenchDatabases`` is the suite's ``TemplateDatabases`` (``tests.support.database``,
which defines the tables as ``USER_TABLES``), with databases named ``abg_bench_*``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import psycopg

from tests.support.data import Artist
from tests.support.database import TemplateDatabases

_PREFIX = "abg_bench"


class BenchDatabases(TemplateDatabases):
    """Creates (and drops) bench databases on one server; a context manager."""

    def __init__(self, admin_url: str) -> None:
        """Create the template database on the server of ``admin_url``."""
        super().__init__(admin_url, prefix=_PREFIX)


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


def copy_ledger_rows(url: str, rows: Iterable[tuple[object, ...]]) -> None:
    """COPY rows (``LEDGER_COPY_COLUMNS`` order) into the tool's ledger table, then VACUUM
    ANALYZE it (as autovacuum would have done after the runs that committed them)."""
    columns = ", ".join(LEDGER_COPY_COLUMNS)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY artist_bio_ledger ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        conn.execute("VACUUM ANALYZE artist_bio_ledger")


def settle(url: str) -> None:
    """Write out what building a job left dirty (PostgreSQL's checkpoint, then the page
    cache's dirty pages: hundreds of MB after a million rows and lines), so the measured
    start does not share the disk and CPU with that writeback. A real resume comes long
    after the runs that committed its done artists."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def ledger_stats(url: str, job_id: str) -> tuple[int, int]:
    """(rows, highest seq) of a job in the ledger."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM artist_bio_ledger WHERE job_id = %s",
            (job_id,),
        ).fetchone()
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return int(row[0]), int(row[1])


def done_ids_plan(url: str, job_id: str) -> str:
    """The first line of the plan of the tool's done-ids query (for the report)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "EXPLAIN SELECT artist_id FROM artist_bio_ledger WHERE job_id = %s", (job_id,)
        ).fetchone()
    if row is None:
        raise RuntimeError("EXPLAIN returned no plan")
    return str(row[0])
