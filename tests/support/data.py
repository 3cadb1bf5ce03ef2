"""Artists and the input CSV files built from them (the suite and the benchmarks).

Artists are generated, not stored: seeded random version-4 UUIDs, non-ASCII names and JSON
data on every third one, so a test's artists are the same on every run. ``iter_artists`` is
lazy, so the benchmarks' million artists cost a second or two and no list of them.

This module does not import ``artist_bio_gen`` at import time: the benchmarks' bare SDK loop
uses it, and its start-up CPU and memory are measured against the tool's.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from artist_bio_gen.models import ArtistData

HEADER = ("artist_id", "artist_name", "artist_data")


class Artist(NamedTuple):
    """One input row: the fields of ``artist_bio_gen.models.ArtistData`` (and equal to it)."""

    artist_id: str
    name: str
    data: str | None = None


def iter_artists(
    count: int,
    seed: int = 1,
    prefix: str = "Artist",
    *,
    digits: int = 5,
    seed_in_name: bool = False,
) -> Iterator[Artist]:
    """``count`` artists, generated lazily; every third one has JSON data.

    Names are ``"{prefix} {index} Ünïcode"`` with the index zero-padded to ``digits``
    ("Artist 00042 Ünïcode"). With ``seed_in_name`` the seed is part of the name and of the
    data ("Artist 4242-0000042 Ünïcode"): artists of different seeds never share a name.
    """
    rng = random.Random(seed)
    for index in range(count):
        artist_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        key = f"{seed}-{index}" if seed_in_name else str(index)
        data = (
            json.dumps({"spotify": f"https://open.spotify.com/artist/{key}"})
            if index % 3 == 0
            else None
        )
        number = f"{index:0{digits}d}"
        label = f"{seed}-{number}" if seed_in_name else number
        yield Artist(artist_id, f"{prefix} {label} Ünïcode", data)


def make_artists(count: int, seed: int = 1, prefix: str = "Artist") -> list[ArtistData]:
    """``count`` artists as a list of the package's ``ArtistData`` (the suite's default
    names, see ``iter_artists``)."""
    from artist_bio_gen.models import ArtistData  # here: see the module docstring

    return [ArtistData(*artist) for artist in iter_artists(count, seed, prefix)]


def _rows(artists: Iterable[Artist | ArtistData]) -> Iterator[tuple[str, str, str]]:
    return ((a.artist_id, a.name, a.data or "") for a in artists)


def write_csv(path: Path, artists: Iterable[Artist | ArtistData], header: bool = True) -> Path:
    """Write ``artists`` (any iterable, consumed once) as the tool's input CSV."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(HEADER)
        writer.writerows(_rows(artists))
    return path


def append_csv(path: Path, artists: Iterable[Artist | ArtistData]) -> Path:
    """Append ``artists`` to an input CSV written by ``write_csv``."""
    with open(path, "a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(_rows(artists))
    return path
