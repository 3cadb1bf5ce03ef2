"""Real PostgreSQL databases for the suite and the benchmarks.

``TemplateDatabases`` makes one template database holding the user's tables (``USER_TABLES``)
on a server and hands out fresh copies of it (``CREATE DATABASE ... TEMPLATE``, a few tens of
milliseconds each); ``TestDatabase`` is the handle a test gets on its copy.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

import psycopg

from artist_bio_gen.models import ArtistData

# The user's table as documented in the README ("Database"), plus the test-mode twin.
USER_TABLES = """
CREATE TABLE artists (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT NOT NULL,
    bio TEXT,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE test_artists (LIKE artists INCLUDING ALL);
"""


def url_for(admin_url: str, dbname: str) -> str:
    """``admin_url`` pointed at another database."""
    return urlsplit(admin_url)._replace(path="/" + dbname).geturl()


class TemplateDatabases:
    """A template database with the user's tables on one server, and fresh copies of it.

    Databases are named ``<prefix>_tpl_<pid>_<hex>`` (the template) and ``<prefix>_<hex>``
    (the copies). A context manager: leaving it drops the template.
    """

    def __init__(self, admin_url: str, prefix: str) -> None:
        """Create the template on the server of ``admin_url`` (a superuser URL)."""
        self.admin_url = admin_url
        self._prefix = prefix
        self.template = f"{prefix}_tpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{self.template}"')
        with psycopg.connect(url_for(admin_url, self.template), autocommit=True) as conn:
            conn.execute(USER_TABLES)

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(statement)

    def create(self) -> str:
        """A new copy of the template; returns its URL."""
        name = f"{self._prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return url_for(self.admin_url, name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url`` (connections to it are cut)."""
        name = urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """A new copy of the template, dropped on exit; yields its URL."""
        url = self.create()
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        """Drop the template."""
        self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TestDatabase:
    """A database of one test, with the user's tables (see ``USER_TABLES``)."""

    url: str
    __test__ = False  # not a test class, despite its name

    def connect(self) -> psycopg.Connection:
        """An autocommit connection."""
        return psycopg.connect(self.url, autocommit=True)

    def seed(
        self, artists: Iterable[ArtistData], table: str = "artists", bio: str | None = None
    ) -> None:
        """Insert rows for ``artists`` (with ``bio``) into the user's table."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} (id, name, bio) VALUES (%s, %s, %s)",
                [(a.artist_id, a.name, bio) for a in artists],
            )

    def bios(self, table: str = "artists") -> dict[str, str | None]:
        """id -> bio of every row of the user's table."""
        with self.connect() as conn:
            rows = conn.execute(f"SELECT id::text, bio FROM {table}").fetchall()
        return dict(rows)

    def ledger(self) -> list[dict]:
        """Every ledger row as a dict (empty when the ledger does not exist yet)."""
        with self.connect() as conn:
            exists = conn.execute("SELECT to_regclass('artist_bio_ledger')").fetchone()[0]
            if exists is None:
                return []
            cur = conn.execute(
                "SELECT *, artist_id::text AS artist_id FROM artist_bio_ledger ORDER BY seq"
            )
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def execute(self, statement: str, params: tuple = ()) -> None:
        """Run one statement."""
        with self.connect() as conn:
            conn.execute(statement, params)
