"""The committer against a real PostgreSQL and a real JSONL file: bios that wait together
share one transaction and one write, each line still follows its own commit, and a refused
bio or a failed write reaches exactly the bios it concerns."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from artist_bio_gen.core.committer import ArrivalRate, Committer, Settled
from artist_bio_gen.core.jsonl import JsonlWriter, encode_line
from artist_bio_gen.core.ledger import DatabaseLedger
from artist_bio_gen.database.store import BioStore
from artist_bio_gen.errors import OutputWriteError
from artist_bio_gen.models import ArtistData, CommittedBio, GeneratedBio, JobRef, TokenUsage

from .support.checks import read_jsonl
from .support.data import make_artists
from .support.database import TestDatabase

JOB = JobRef(job_id=str(uuid.uuid4()), prompt_id="p", prompt_version=None, model=None)


def _bio(artist: ArtistData, text: str, response_id: str | None = None) -> GeneratedBio:
    return GeneratedBio(
        artist=artist,
        response_id=response_id or f"resp_{artist.artist_id[:8]}",
        text=text,
        created=1_700_000_000,
        tokens=TokenUsage(1, 2, 3),
    )


def _render(committed: CommittedBio) -> bytes:
    return encode_line(committed, "p", None)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[JsonlWriter]:
    with JsonlWriter(tmp_path / "out.jsonl") as opened:
        yield opened


@pytest.fixture
def committer(store: BioStore, writer: JsonlWriter) -> Iterator[Committer]:
    opened = Committer(DatabaseLedger(store, JOB), writer, _render)
    yield opened
    opened.close()


def _queued(committer: Committer) -> int:
    return committer._inbox.qsize()  # what waits for the commit thread


def _settle_together(
    committer: Committer, database: TestDatabase, bios: list[GeneratedBio]
) -> list[Settled]:
    """Settle ``bios[0]`` while a lock on the table stalls its commit, queue the others
    meanwhile, then lift the lock: the others wait together, as under load."""
    results: list[Settled | None] = [None] * len(bios)

    def settle(index: int) -> None:
        results[index] = committer.settle(bios[index])

    with database.connect() as conn, conn.transaction():
        conn.execute("LOCK TABLE artists IN EXCLUSIVE MODE")
        threads = [threading.Thread(target=settle, args=(0,))]
        threads[0].start()
        _wait_until(lambda: _queued(committer) == 0 and _waiting_on_lock(database))
        threads += [threading.Thread(target=settle, args=(i,)) for i in range(1, len(bios))]
        for thread in threads[1:]:
            thread.start()
        _wait_until(lambda: _queued(committer) == len(bios) - 1)
    for thread in threads:  # the lock went with the transaction
        thread.join(timeout=30)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def _waiting_on_lock(database: TestDatabase) -> bool:
    with database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return bool(row and row[0])


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _ledger_transactions(database: TestDatabase) -> int:
    with database.connect() as conn:
        row = conn.execute("SELECT count(DISTINCT xmin::text) FROM artist_bio_ledger").fetchone()
    return int(row[0]) if row else 0


def test_bios_that_wait_together_share_one_transaction_and_one_write(
    committer: Committer, database: TestDatabase, writer: JsonlWriter
) -> None:
    artists = make_artists(12, seed=70)
    database.seed(artists)
    bios = [_bio(artist, f"Bio {i}.") for i, artist in enumerate(artists)]
    results = _settle_together(committer, database, bios)
    assert [r.committed.response_text if r.committed else None for r in results] == [
        f"Bio {i}." for i in range(12)
    ]
    assert all(r.error is None and r.append_error is None for r in results)
    # The first alone, the eleven that waited in one transaction.
    assert _ledger_transactions(database) == 2
    lines = read_jsonl(writer.path)
    assert lines[0]["artist_id"] == artists[0].artist_id
    ledger = {row["artist_id"]: row["response_text"] for row in database.ledger()}
    assert {line["artist_id"]: line["response_text"] for line in lines} == ledger
    assert len(lines) == 12 and writer.appended_lines == 12


def test_a_refused_bio_costs_only_itself(
    committer: Committer, database: TestDatabase, writer: JsonlWriter
) -> None:
    artists = make_artists(4, seed=71)
    database.seed(artists)
    texts = ["First.", "Good.", "bad \x00 bio", "Also good."]
    bios = [_bio(artist, text) for artist, text in zip(artists, texts, strict=True)]
    results = _settle_together(committer, database, bios)
    refused = results[2]
    assert refused.committed is None and isinstance(refused.error, psycopg.DataError)
    assert [r.committed is not None for r in results] == [True, True, False, True]
    line_ids = [line["artist_id"] for line in read_jsonl(writer.path)]
    assert sorted(line_ids) == sorted(artists[i].artist_id for i in (0, 1, 3))
    assert len(database.ledger()) == 3


def test_a_failed_write_reaches_every_bio_it_held(
    committer: Committer,
    database: TestDatabase,
    writer: JsonlWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Committed, not appended: each worker learns it (and stops the run); the next start
    restores the lines from the ledger."""
    artists = make_artists(3, seed=72)
    database.seed(artists)

    def full(lines: list[bytes]) -> None:
        raise OutputWriteError("No space left on device (simulated)")

    monkeypatch.setattr(writer, "append_lines", full)
    results = _settle_together(committer, database, [_bio(a, "Bio.") for a in artists])
    assert all(r.committed is not None for r in results)
    assert all(isinstance(r.append_error, OutputWriteError) for r in results)
    assert len(database.ledger()) == 3


def test_an_answer_seen_twice_appends_no_second_line(
    committer: Committer, store: BioStore, database: TestDatabase, writer: JsonlWriter
) -> None:
    (artist,) = make_artists(1, seed=73)
    database.seed([artist])
    first = store.commit(_bio(artist, "First.", "resp_first"), JOB)
    again = committer.settle(_bio(artist, "Second.", "resp_second"), only_new=True)
    assert again.committed == first and again.append_error is None
    assert read_jsonl(writer.path) == []


def test_close_settles_what_is_queued_and_a_late_bio_still_settles(
    store: BioStore, database: TestDatabase, writer: JsonlWriter
) -> None:
    artists = make_artists(6, seed=74)
    database.seed(artists)
    committer = Committer(DatabaseLedger(store, JOB), writer, _render)
    results: list[Settled] = []
    threads = [
        threading.Thread(target=lambda a=a: results.append(committer.settle(_bio(a, "Bio."))))
        for a in artists[:5]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    committer.close()
    late = committer.settle(_bio(artists[5], "Late."))
    assert late.committed is not None and late.committed.response_text == "Late."
    assert len(results) == 5 and all(r.committed is not None for r in results)
    assert len(read_jsonl(writer.path)) == 6 and len(database.ledger()) == 6


def test_under_heavy_load_bios_arriving_apart_are_gathered_into_one_group(
    committer: Committer, database: TestDatabase, writer: JsonlWriter, monkeypatch
) -> None:
    """Above the gathering rate, a bio that comes while the group's first waits joins it,
    though the commit thread was free when the first came."""
    monkeypatch.setattr("artist_bio_gen.core.committer.GATHER_ABOVE_RATE", -1.0)  # always
    monkeypatch.setattr("artist_bio_gen.core.committer.GATHER_SECONDS", 0.5)
    artists = make_artists(3, seed=75)
    database.seed(artists)
    bios = [_bio(artist, f"Bio {i}.") for i, artist in enumerate(artists)]
    results: list[Settled | None] = [None] * 3

    def settle(index: int) -> None:
        results[index] = committer.settle(bios[index])

    threads = [threading.Thread(target=settle, args=(i,)) for i in range(3)]
    threads[0].start()
    _wait_until(lambda: _queued(committer) == 0)  # the commit thread took the first
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(r is not None and r.committed is not None for r in results)
    assert _ledger_transactions(database) == 1
    assert len(read_jsonl(writer.path)) == 3


def test_below_the_gathering_rate_a_lone_bio_is_committed_at_once(
    committer: Committer, database: TestDatabase, monkeypatch
) -> None:
    """A quiet run never waits for a group to fill (were it to gather, this would take
    the whole 60 s)."""
    monkeypatch.setattr("artist_bio_gen.core.committer.GATHER_SECONDS", 60.0)
    artist = make_artists(1, seed=76)[0]
    database.seed([artist])
    started = time.monotonic()
    result = committer.settle(_bio(artist, "Alone."))
    assert result.committed is not None and result.committed.response_text == "Alone."
    assert time.monotonic() - started < 30


def test_the_arrival_rate_reads_a_steady_rate_and_fades_when_it_stops() -> None:
    rate = ArrivalRate(window=0.5)
    assert rate.per_second(0.0) == 0.0
    for tick in range(500):  # 100 a second for 5 s
        rate.add(tick * 0.01, 1)
    assert rate.per_second(4.99) == pytest.approx(100, rel=0.03)
    rate.add(5.0, 25)  # a group of 25 at once counts as much as 25 apart
    assert rate.per_second(5.0) == pytest.approx(100 * math.exp(-0.01 / 0.5) + 50, rel=0.03)
    assert rate.per_second(7.0) < 5  # two seconds of nothing: four windows, e^-4
