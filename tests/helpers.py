"""Helpers shared by the tests: artists, CSV files, the CLI as a subprocess, invariants."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from artist_bio_gen.core.jsonl import LEGACY_KEYS
from artist_bio_gen.models import NO_ARTIST_DATA, ArtistData

ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-test-0123456789abcdef-not-a-real-key"


def make_artists(count: int, seed: int = 1, prefix: str = "Artist") -> list[ArtistData]:
    """``count`` artists with seeded random UUIDs; every third one has JSON data."""
    rng = random.Random(seed)
    artists = []
    for index in range(count):
        artist_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        data = (
            json.dumps({"spotify": f"https://open.spotify.com/artist/{index}"})
            if index % 3 == 0
            else None
        )
        artists.append(ArtistData(artist_id, f"{prefix} {index:05d} Ünïcode", data))
    return artists


def write_csv(path: Path, artists: list[ArtistData], header: bool = True) -> Path:
    """Write ``artists`` as the tool's input CSV."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(["artist_id", "artist_name", "artist_data"])
        for artist in artists:
            writer.writerow([artist.artist_id, artist.name, artist.data or ""])
    return path


@dataclass
class TestDatabase:
    """A database of one test, with the user's tables (see conftest.USER_TABLES)."""

    url: str
    __test__ = False  # not a test class, despite its name

    def connect(self) -> psycopg.Connection:
        """An autocommit connection."""
        return psycopg.connect(self.url, autocommit=True)

    def seed(
        self, artists: list[ArtistData], table: str = "artists", bio: str | None = None
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


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The current (test-isolated) environment plus ``overrides`` (None removes a key)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m artist_bio_gen ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=env or cli_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``python -m artist_bio_gen ARGS`` in the background (stdout/stderr to pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=env or cli_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSONL file, asserting each is whole and parseable."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file must end in a complete line"
    return [json.loads(line) for line in data.splitlines()]


def assert_legacy_record(record: dict, artist: ArtistData | None = None) -> None:
    """``record`` has exactly the legacy keys, in the legacy order."""
    expected = [k for k in LEGACY_KEYS if k != "artist_data" or record.get("artist_data")]
    assert list(record) == expected
    assert list(record["request"])[:2] == ["prompt_id", "variables"]
    assert isinstance(record["created"], int)
    assert record["error"] is None
    if artist is not None:
        assert record["artist_name"] == artist.name
        assert record["request"]["variables"] == {
            "artist_name": artist.name,
            "artist_data": artist.data or NO_ARTIST_DATA,
        }
        assert record.get("artist_data") == artist.data


def assert_mirror(jsonl: Path, db: TestDatabase, table: str = "artists") -> list[dict]:
    """The invariants of guarantees G1-G3 for a job that wrote to ``db``.

    Every line is whole; one line per artist; the JSONL ids equal the ids with a ledger row;
    every line's text equals the committed ledger text, and the user's table holds it.
    """
    records = read_jsonl(jsonl) if jsonl.exists() else []
    ids = [r["artist_id"] for r in records]
    assert len(ids) == len(set(ids)), "one line per artist"
    ledger = {row["artist_id"]: row for row in db.ledger()}
    assert set(ids) == set(ledger), "JSONL ids == committed ids"
    bios = db.bios(table)
    for record in records:
        row = ledger[record["artist_id"]]
        assert record["response_text"] == row["response_text"]
        assert record["response_id"] == row["response_id"]
        if row["db_status"] == "updated":
            assert bios[record["artist_id"]] == row["response_text"]
    return records
