"""Invariants checked after a run: whole JSONL lines, the legacy record, the exact mirror."""

from __future__ import annotations

import json
from pathlib import Path

from artist_bio_gen.core.jsonl import LEGACY_KEYS
from artist_bio_gen.models import NO_ARTIST_DATA, ArtistData

from .database import TestDatabase


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
    """The mirror invariants (committed only, exact mirror, whole lines) for ``db``'s job.

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
