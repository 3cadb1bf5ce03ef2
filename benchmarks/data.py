"""Benchmark artists and the files built from them.

Artists look like the test suite's (non-ASCII names, JSON data on every third one) but are
generated here, fast and deterministically, so a million of them cost a second or two.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artist:
    """One input row."""

    artist_id: str
    name: str
    data: str | None


def make_artists(count: int, seed: int, prefix: str = "Artist") -> Iterator[Artist]:
    """``count`` artists with seeded random version-4 UUIDs, generated lazily."""
    rng = random.Random(seed)
    for index in range(count):
        artist_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        data = (
            json.dumps({"spotify": f"https://open.spotify.com/artist/{seed}-{index}"})
            if index % 3 == 0
            else None
        )
        yield Artist(artist_id, f"{prefix} {seed}-{index:07d} Ünïcode", data)


def write_csv(path: Path, artists: Iterable[Artist]) -> Path:
    """Write ``artists`` as the tool's input CSV (with a header row)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["artist_id", "artist_name", "artist_data"])
        writer.writerows((a.artist_id, a.name, a.data or "") for a in artists)
    return path


def append_csv(path: Path, artists: Iterable[Artist]) -> Path:
    """Append ``artists`` to an input CSV written by ``write_csv``."""
    with open(path, "a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows((a.artist_id, a.name, a.data or "") for a in artists)
    return path
