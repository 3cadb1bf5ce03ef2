"""Shared fixtures: a real PostgreSQL database per test, the fake OpenAI server, isolation,
and ``make_job``: a test's artists, input CSV and database with the CLI to run on them.

Every test runs in its own temporary directory with an environment scrubbed of the user's
settings: the API key is a dummy, OPENAI_BASE_URL points at a closed local port unless a test
asks for the fake server, and no ``.env`` file of the developer's can be read. Nothing a test
does can reach the real OpenAI API or a real database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.schema import ensure_ledger, inspect_target_table
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.models import DatabaseConfig

from .support.cli import ROOT, TEST_API_KEY, Job, MakeJob
from .support.data import make_artists, write_csv
from .support.database import ReadyDatabases, TemplateDatabases, TestDatabase
from .support.fake_openai import FakeOpenAI

_SCRUBBED_PREFIXES = (
    "OPENAI_",
    "DATABASE_URL",
    "DB_",
    "QUOTA_",
    "JSONL_",
    "MAX_WORKERS",
    "DAILY_REQUEST_LIMIT",
    "PAUSE_DURATION_HOURS",
)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A superuser URL: TEST_DATABASE_URL, or the local cluster brought up by the script."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-test-postgres.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[TemplateDatabases]:
    """A template database holding the user's tables; each test copies it."""
    with TemplateDatabases(pg_admin_url, prefix="abg_t") as databases:
        yield databases


@pytest.fixture(scope="session")
def ready_databases(pg_template: TemplateDatabases) -> Iterator[ReadyDatabases]:
    """Copies of the template made (and dropped) in the background, between tests."""
    with ReadyDatabases(pg_template) as ready:
        yield ready


@pytest.fixture
def database(ready_databases: ReadyDatabases) -> Iterator[TestDatabase]:
    """A fresh database of its own for one test (copied from the template)."""
    url = ready_databases.take()
    try:
        yield TestDatabase(url)
    finally:
        ready_databases.discard(url)


@pytest.fixture
def store(database: TestDatabase) -> Iterator[BioStore]:
    """A ``BioStore`` on ``database``'s ``artists`` table (ledger created, twice: the
    creation is idempotent), with a pool of 4 and 5 s of retries."""
    config = DatabaseConfig(url=database.url, pool_size=4, retry_seconds=5)
    pool = create_db_connection_pool(config)
    where = describe_database(config.url)
    ensure_ledger(pool, where)
    ensure_ledger(pool, where)
    yield BioStore(pool, config, inspect_target_table(pool, "artists", where))
    pool.close()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAI]:
    """One fake OpenAI server for the whole session."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(fake_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The fake server, reset, with OPENAI_BASE_URL pointing at it."""
    fake_server.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    yield fake_server
    fake_server.reset()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user setting, .env file or real endpoint can leak into a test."""
    for key in list(os.environ):
        if key.startswith(_SCRUBBED_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    # Port 9 (discard) on loopback: a request that escapes the fake fails fast and locally.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_job(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai: FakeOpenAI,
) -> MakeJob:
    """Builds a ``Job`` in the test directory: ``count`` artists (``make_artists(count,
    seed)``) written to ``artists.csv``; with ``database`` (the default) the test's database
    is DATABASE_URL and holds the first ``seeded`` artists (all by default) in ``table``,
    with ``bio``. The fake OpenAI server is always configured."""

    def make(
        count: int = 0,
        *,
        seed: int = 1,
        database: bool = True,
        table: str = "artists",
        bio: str | None = None,
        seeded: int | None = None,
    ) -> Job:
        artists = make_artists(count, seed=seed)
        db: TestDatabase | None = None
        if database:
            db = request.getfixturevalue("database")
            db.seed(artists[:seeded], table=table, bio=bio)
            monkeypatch.setenv("DATABASE_URL", db.url)
        csv_path = write_csv(tmp_path / "artists.csv", artists)
        return Job(tmp_path, artists, csv_path, db, fake_openai)

    return make
