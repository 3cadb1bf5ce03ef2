"""Real PostgreSQL databases for the suite and the benchmarks.

``TemplateDatabases`` makes one template database holding the user's tables (``USER_TABLES``)
on a server and hands out fresh copies of it (``CREATE DATABASE ... TEMPLATE``, a few tens of
milliseconds each); ``TestDatabase`` is the handle a test gets on its copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import deque
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


class ReadyDatabases:
    """Copies of the template made ahead of time, and dropped, in a background thread.

    CREATE DATABASE copies and syncs the template's files (about 0.3 s on a small machine),
    which a suite of a few hundred database tests would otherwise wait for one test at a
    time. Here the next copies are made while the current test runs, and finished ones are
    dropped behind its back. A copy the background could not make in time (or at all, e.g.
    while a test restarts the server) is made on demand, so a test never waits on a failure.
    Every test still gets a database nobody used before.
    """

    def __init__(self, templates: TemplateDatabases, ahead: int = 2) -> None:
        """Keep ``ahead`` copies of ``templates``' template ready."""
        self._templates = templates
        self._ahead = ahead
        self._ready: deque[str] = deque()
        self._to_drop: deque[str] = deque()
        self._cv = threading.Condition()
        self._paused = 0
        self._busy = False
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="ready-databases", daemon=True)
        self._worker.start()

    def take(self) -> str:
        """The URL of a fresh copy (ready, or made now)."""
        with self._cv:
            if self._ready:
                url = self._ready.popleft()
                self._cv.notify_all()
                return url
        return self._templates.create()

    def discard(self, url: str) -> None:
        """Drop the copy of ``url`` in the background (its test is over)."""
        with self._cv:
            self._to_drop.append(url)
            self._cv.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No background work meanwhile (e.g. while a test restarts the server)."""
        with self._cv:
            self._paused += 1
            self._cv.wait_for(lambda: not self._busy)
        try:
            yield
        finally:
            with self._cv:
                self._paused -= 1
                self._cv.notify_all()

    def _next_task(self) -> tuple[str, str] | None:
        """("drop", url) or ("create", ""), waiting for one; None once closed."""
        with self._cv:
            self._cv.wait_for(
                lambda: (
                    self._closed
                    or (not self._paused and (self._to_drop or len(self._ready) < self._ahead))
                )
            )
            if self._closed:
                return None
            self._busy = True
            if self._to_drop:
                return "drop", self._to_drop.popleft()
            return "create", ""

    def _work(self) -> None:
        while (task := self._next_task()) is not None:
            kind, url = task
            try:
                if kind == "drop":
                    self._templates.drop(url)
                else:
                    url = self._templates.create()
            except psycopg.Error:
                failed = True  # the server is away; try again a little later
            else:
                failed = False
            with self._cv:
                self._busy = False
                if failed and kind == "drop":
                    self._to_drop.append(url)
                elif not failed and kind == "create":
                    self._ready.append(url)
                self._cv.notify_all()
            if failed:
                time.sleep(0.5)

    def close(self) -> None:
        """Stop the background work and drop every copy still around."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._worker.join()
        for url in [*self._ready, *self._to_drop]:
            self._templates.drop(url)
        self._ready.clear()
        self._to_drop.clear()

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
