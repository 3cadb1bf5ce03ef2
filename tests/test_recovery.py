"""reconcile() at the end of a run: confirmed by counting when counts agree, full otherwise."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from artist_bio_gen.core.jsonl import JsonlWriter, encode_line
from artist_bio_gen.core.recovery import reconcile
from artist_bio_gen.database.connection import create_db_connection_pool, describe_database
from artist_bio_gen.database.schema import ensure_ledger, inspect_target_table
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.jobfiles import Checkpoint, JobSettings, Manifest
from artist_bio_gen.models import ArtistData, DatabaseConfig, GeneratedBio, JobRef

from .support.checks import read_jsonl
from .support.data import make_artists
from .support.database import TestDatabase


@pytest.fixture
def store(database: TestDatabase) -> Iterator[BioStore]:
    config = DatabaseConfig(url=database.url, pool_size=2, retry_seconds=5)
    pool = create_db_connection_pool(config)
    ensure_ledger(pool, describe_database(config.url))
    yield BioStore(pool, config, inspect_target_table(pool, "artists", "test db"))
    pool.close()


def _manifest(job_id: str) -> Manifest:
    settings = JobSettings("p", None, None, None, "db", "artists", False)
    return Manifest(job_id=job_id, input="in.csv", settings=settings, created_at="now")


def _commit(store: BioStore, job_id: str, artist_id: str) -> bytes:
    row = store.commit(
        GeneratedBio(ArtistData(artist_id, "Name", None), f"resp_{artist_id[:8]}", "Bio.", 1),
        JobRef(job_id, "p", None, None),
    )
    return encode_line(row, "p")


def test_counts_that_agree_confirm_the_run_without_rescanning(
    tmp_path: Path, database: TestDatabase, store: BioStore
) -> None:
    job_id = str(uuid.uuid4())
    artists = make_artists(5, seed=50)
    database.seed(artists)
    with JsonlWriter(tmp_path / "out.jsonl") as writer:
        _, manifest = reconcile(_manifest(job_id), store, writer)
        for artist in artists:
            writer.append_line(_commit(store, job_id, artist.artist_id))
        result, manifest = reconcile(manifest, store, writer, (5, writer.appended_bytes))
    assert result.scanned_lines == 0  # confirmed by counting
    assert manifest.checkpoint.lines == 5
    assert manifest.checkpoint.jsonl_size == (tmp_path / "out.jsonl").stat().st_size


def test_a_committed_row_without_its_line_is_caught_at_the_end(
    tmp_path: Path, database: TestDatabase, store: BioStore
) -> None:
    """If a row committed during the run never got its line, counting disagrees and the
    full comparison appends it from the database."""
    job_id = str(uuid.uuid4())
    artists = make_artists(4, seed=51)
    database.seed(artists)
    with JsonlWriter(tmp_path / "out.jsonl") as writer:
        _, manifest = reconcile(_manifest(job_id), store, writer)
        lines = [_commit(store, job_id, a.artist_id) for a in artists]
        for line in lines[:3]:  # the 4th artist's append "crashed"
            writer.append_line(line)
        result, manifest = reconcile(manifest, store, writer, (3, writer.appended_bytes))
    assert result.appended == 1
    assert manifest.checkpoint == Checkpoint(
        jsonl_size=(tmp_path / "out.jsonl").stat().st_size,
        ledger_seq=manifest.checkpoint.ledger_seq,
        lines=4,
    )
    assert {r["artist_id"] for r in read_jsonl(tmp_path / "out.jsonl")} == {
        a.artist_id for a in artists
    }
