"""The input mark: a resume starts reading where every artist before was done.

The reader's positions and the tracker are pure (a temporary CSV, no database). The runs go
through the CLI in-process against real PostgreSQL and the fake OpenAI server, and check
what matters to a user: the artists requested, each paid once, the JSONL mirroring the
ledger, and the mark falling back to reading the whole input whenever it no longer holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tracemalloc
import uuid
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.core.inputmark import InputTracker, hash_prefix, prefix_sha256
from artist_bio_gen.core.reader import ArtistReader, InputPosition, count_input_lines
from artist_bio_gen.jobfiles import InputMark, JobPaths, read_manifest
from artist_bio_gen.models import ArtistData, Outcome
from artist_bio_gen.utils.uuidset import UuidSet

from .support.checks import assert_mirror
from .support.cli import CliResult, Job, MakeJob, summary_figure
from .support.data import append_csv, make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

PROMPT = "pmpt_mark"
FAST = ["--max-retries", "0", "--request-timeout", "5"]
WORKERS = ["--max-workers", "4"]
MARK_USED = "resuming from the input mark"


# -- the reader's positions -----------------------------------------------------------------------


def _messy_csv(path: Path, count: int, seed: int) -> Path:
    """A CSV with everything the reader handles: a BOM, CRLF and LF, blank and comment lines,
    bad rows, repeated ids, quoted fields with newlines and quotes."""
    rng = random.Random(seed)
    parts = ["\ufeffartist_id,artist_name,artist_data\r\n"]
    ids: list[str] = []
    for index in range(count):
        roll = rng.random()
        new = str(uuid.UUID(int=rng.getrandbits(128)))
        if roll < 0.05:
            parts.append("\r\n")
        elif roll < 0.08:
            parts.append("# a comment\n")
        elif roll < 0.1:
            parts.append("not-a-uuid,Someone\n")
        elif roll < 0.13 and ids:
            parts.append(f"{rng.choice(ids)},Again\n")
        elif roll < 0.2:
            parts.append(f'{new},"Two\nlines, ""quoted""",data\r\n')
            ids.append(new)
        else:
            parts.append(f'{new},Name {index},"{{""a"": {index}}}"\n')
            ids.append(new)
    path.write_bytes("".join(parts).encode("utf-8"))
    return path


def _counts(reader: ArtistReader) -> tuple[int, int, int]:
    return reader.lines_read, reader.error_lines, reader.skipped_lines


@pytest.mark.parametrize("fast_path", [False, True], ids=["set", "UuidSet"])
def test_a_reader_started_at_a_position_reads_exactly_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_path: bool
) -> None:
    """Stop a reader after k artists and start another at its position, with those k done:
    the second yields exactly what the first had left and ends with the same counts; its
    done count is every record before the position whose id is done (repeats included)."""
    caplog.set_level(logging.ERROR)  # the bad and repeated rows warn on every reading
    path = _messy_csv(tmp_path / "in.csv", 600, seed=3)
    total = len(list(ArtistReader(path)))
    for cut in (0, 1, 2, 37, 200, total - 1, total):
        first = ArtistReader(path)
        taken = [next(first) for _ in range(cut)]
        position = first.position()
        rest = list(first)
        ids = {a.artist_id for a in taken}
        done: set[str] | UuidSet = UuidSet(ids) if fast_path else ids
        second = ArtistReader(path, skip_ids=done, start=position)
        assert list(second) == rest, cut
        assert _counts(second) == _counts(first), cut
        # Every record before the position is done now; after it, repeats of the done ids
        # are done too, and nothing else is.
        full = ArtistReader(path, skip_ids=done)
        assert list(full) == rest
        assert second.already_done == full.already_done, cut
        assert second.error_lines == full.error_lines and second.rows == full.rows


def test_a_position_after_a_bom_counts_its_bytes(tmp_path: Path) -> None:
    """Offsets are bytes of the file (a BOM included), so a hash of the first ``offset``
    bytes covers exactly the lines before the position."""
    artists = make_artists(3, seed=5)
    path = write_csv(tmp_path / "in.csv", artists)
    data = path.read_bytes()
    path.write_bytes(b"\xef\xbb\xbf" + data)
    reader = ArtistReader(path)
    next(reader)
    position = reader.position()
    first_two_lines = b"\xef\xbb\xbf" + b"".join(data.splitlines(keepends=True)[:2])
    assert position.offset == len(first_two_lines)
    assert position.lines == 2 and position.done == 1 and position.skipped_lines == 1
    rest = list(ArtistReader(path, start=position))
    assert rest == artists[1:]


def test_counting_lines_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"a\n\n# c\nb\r\nc")
    assert count_input_lines(path) == (5, 2)
    assert count_input_lines(path, 2) == (4, 2)  # from the blank line on
    assert count_input_lines(path, 3) == (3, 1)  # from the comment on
    assert count_input_lines(path, 7) == (2, 0)
    assert count_input_lines(path, 12) == (0, 0)


def test_prefix_sha256_hashes_exactly_the_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = random.Random(1).randbytes(3 << 20)
    path.write_bytes(data)
    for size in (0, 1, 1 << 20, (1 << 20) + 1, len(data)):
        assert prefix_sha256(path, size) == hashlib.sha256(data[:size]).hexdigest()
    assert prefix_sha256(path, len(data) + 1) is None  # shorter than the mark
    assert prefix_sha256(tmp_path / "missing", 1) is None
    # Going on from the hash of a shorter prefix (the run's start) gives the same hash, and
    # leaves that hash as it was.
    base = hash_prefix(path, 1 << 20)
    assert base is not None
    for size in (1 << 20, 2 << 20, len(data)):
        hashed = hash_prefix(path, size, base)
        assert hashed is not None and hashed.size == size
        assert hashed.state.hexdigest() == hashlib.sha256(data[:size]).hexdigest()
    assert base.state.hexdigest() == hashlib.sha256(data[: 1 << 20]).hexdigest()
    assert hash_prefix(path, len(data) + 1, base) is None


def test_a_mark_that_cannot_be_read_is_ignored_not_fatal(tmp_path: Path) -> None:
    """The mark only saves reading: a damaged one (or one with fields a newer version
    added) must not make the job's manifest unreadable."""
    paths = JobPaths(tmp_path / "out.jsonl")
    good = {
        "offset": 10,
        "lines": 2,
        "done": 1,
        "bad_lines": 0,
        "skipped_lines": 1,
        "sha256": "ab" * 32,
        "ledger_seq": 7,
        "ledger_rows": 1,
    }
    base = {
        "format": 1,
        "job_id": str(uuid.uuid4()),
        "input": "in.csv",
        "created_at": "2026-12-03T00:00:00Z",
        "settings": {
            "prompt_id": "p",
            "prompt_version": None,
            "model": None,
            "instructions_sha256": None,
            "database": None,
            "table": None,
            "skip_existing": False,
        },
    }
    cases = {
        "newer": ({**good, "added_later": 1}, InputMark(**good)),
        "missing": ({k: v for k, v in good.items() if k != "sha256"}, None),
        "negative": ({**good, "offset": -1}, None),
        "not a number": ({**good, "lines": "2"}, None),
        "not an object": ([1, 2], None),
    }
    for name, (mark, expected) in cases.items():
        paths.manifest.write_text(json.dumps({**base, "input_mark": mark}), encoding="utf-8")
        manifest = read_manifest(paths)
        assert manifest is not None, name
        assert manifest.input_mark == expected, name


# -- the tracker ----------------------------------------------------------------------------------


def _outcome(artist: ArtistData, status: str) -> Outcome:
    return Outcome(artist.artist_id, artist.name, status)  # type: ignore[arg-type]


def test_the_tracker_stops_before_the_first_artist_not_committed(tmp_path: Path) -> None:
    artists = make_artists(6, seed=7)
    path = write_csv(tmp_path / "in.csv", artists)
    reader = ArtistReader(path)
    tracker = InputTracker(reader, InputPosition())
    seen = list(tracker.track(reader))
    assert seen == artists
    # Out of order, as workers finish: the 3rd fails, the 5th is skipped, the rest commit.
    for index in (1, 0, 3, 5, 4):
        tracker.settled(_outcome(artists[index], "committed" if index != 4 else "skipped"))
    tracker.settled(_outcome(artists[2], "failed"))
    position = tracker.position()
    assert position.lines == 3 and position.done == 2  # header, 1st, 2nd
    rest = list(ArtistReader(path, start=position))
    assert rest[0] == artists[2]


def test_the_tracker_waits_for_the_artists_in_flight(tmp_path: Path) -> None:
    artists = make_artists(5, seed=10)
    path = write_csv(tmp_path / "in.csv", artists)
    reader = ArtistReader(path)
    tracker = InputTracker(reader, InputPosition())
    assert list(tracker.track(reader)) == artists
    for index in (4, 0, 2):
        tracker.settled(_outcome(artists[index], "committed"))
    assert tracker.position().done == 1  # the 2nd is still in flight
    tracker.settled(_outcome(artists[1], "committed"))
    assert tracker.position().done == 3
    tracker.settled(_outcome(artists[3], "committed"))
    assert tracker.position() == reader.position()  # all committed: the end of the file


class _CountingReader:
    """Stands in for the reader where only its positions matter: one more byte per call."""

    path = ""

    def __init__(self) -> None:
        self.calls = 0

    def position(self) -> InputPosition:
        self.calls += 1
        return InputPosition(self.calls, self.calls, self.calls)


def test_the_tracker_holds_only_the_artists_in_flight() -> None:
    """A run that skips or fails most of its input must not keep a position per artist:
    the tracker keeps the earliest uncommitted one and the artists not settled yet."""
    reader = _CountingReader()
    tracker = InputTracker(reader, InputPosition())  # type: ignore[arg-type]
    artists = (ArtistData(str(uuid.UUID(int=i)), f"A{i}", None) for i in range(1, 50_001))
    tracemalloc.start()
    for index, artist in enumerate(tracker.track(artists)):
        if index % 3 == 2:
            tracker.dropped(artist)  # given up
        else:
            tracker.settled(_outcome(artist, "skipped" if index % 3 else "committed"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200_000, f"{peak:,} bytes for 50,000 artists"
    assert tracker.position().offset == 1  # before the second artist, the first skipped


def test_a_dropped_artist_holds_the_mark(tmp_path: Path) -> None:
    artists = make_artists(4, seed=9)
    path = write_csv(tmp_path / "in.csv", artists)
    reader = ArtistReader(path)
    tracker = InputTracker(reader, InputPosition())
    for index, artist in enumerate(tracker.track(reader)):
        if index == 1:
            tracker.dropped(artist)
        else:
            tracker.settled(_outcome(artist, "committed"))
    assert list(ArtistReader(path, start=tracker.position())) == artists[1:]


def test_the_tracker_keeps_a_last_line_without_a_line_break_out_of_the_mark(
    tmp_path: Path,
) -> None:
    """Text appended to a file whose last line has no line break would extend that line,
    so the mark stays before its record."""
    artists = make_artists(3, seed=8)
    path = write_csv(tmp_path / "in.csv", artists)
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))
    reader = ArtistReader(path)
    tracker = InputTracker(reader, InputPosition())
    for artist in tracker.track(reader):
        tracker.settled(_outcome(artist, "committed"))
    position = tracker.position()
    assert position.done == 2 and position.offset < path.stat().st_size
    assert list(ArtistReader(path, start=position)) == artists[2:]


# -- runs -----------------------------------------------------------------------------------------


def _start(job: Job, *extra: str) -> CliResult:
    return job.run(*job.input_args("--prompt-id", PROMPT, *WORKERS, *FAST, *extra))


def _resume(job: Job, *extra: str) -> CliResult:
    return job.run("--resume", *WORKERS, *FAST, *extra)


def _mark(job: Job) -> InputMark | None:
    manifest = read_manifest(JobPaths(job.out))
    assert manifest is not None
    return manifest.input_mark


def _assert_paid_once(fake: FakeOpenAI, artists: list[ArtistData]) -> None:
    assert {a.name: fake.succeeded(a.name) for a in artists} == {a.name: 1 for a in artists}


def test_a_stopped_run_leaves_a_mark_and_the_resume_starts_there(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A run stopped by exhausted quota marks the input before its first artist not
    committed; the resume starts there, requests only the rest, and reports the same
    figures as a resume that read everything."""
    job = make_job(40, seed=301)
    fake_openai.add_rule("ok", times=12)
    fake_openai.add_rule("insufficient_quota")
    assert _start(job).code == exit_codes.EXIT_RUN_ABORTED
    committed = {row["artist_id"] for row in database.ledger()}
    mark = _mark(job)
    assert mark is not None
    # Every artist before the mark is committed, and the first after it is not.
    before = list(ArtistReader(job.csv))[: mark.done]
    assert {a.artist_id for a in before} <= committed
    assert job.artists[mark.done].artist_id not in committed
    assert mark.lines == mark.done + 1  # and the header
    assert mark.sha256 == prefix_sha256(job.csv, mark.offset)
    assert mark.ledger_rows == len(committed)

    fake_openai.clear_rules()
    requests = fake_openai.total_requests
    second = _resume(job)
    assert second.code == exit_codes.EXIT_SUCCESS, second.stderr
    assert MARK_USED in second.stderr
    assert fake_openai.total_requests - requests == 40 - len(committed)
    assert summary_figure(second, "already done") == str(len(committed))
    assert len(assert_mirror(job.out, database)) == 40
    _assert_paid_once(fake_openai, job.artists)
    final = _mark(job)
    assert final is not None and final.done == 40 and final.offset == job.csv.stat().st_size


def test_an_input_that_grew_keeps_its_mark(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """New artists appended after a complete run: the resume starts at the old end and
    requests the new artists only."""
    job = make_job(10, seed=302)
    assert _start(job).code == exit_codes.EXIT_SUCCESS
    more = make_artists(5, seed=303, prefix="New")
    database.seed(more)
    append_csv(job.csv, more)
    requests = fake_openai.total_requests
    result = _resume(job)
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert MARK_USED in result.stderr
    assert fake_openai.total_requests - requests == 5
    assert summary_figure(result, "already done") == "10"
    assert len(assert_mirror(job.out, database)) == 15
    _assert_paid_once(fake_openai, job.artists + more)


def test_an_edit_before_the_mark_sends_the_resume_to_the_top(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """An artist replaced before the mark is found: trusting the mark would skip it."""
    job = make_job(10, seed=304)
    assert _start(job).code == exit_codes.EXIT_SUCCESS
    replacement = make_artists(1, seed=305, prefix="Replacement")
    database.seed(replacement)
    artists = [*job.artists[:3], *replacement, *job.artists[4:]]
    write_csv(job.csv, artists)  # the 4th artist replaced (a different id)
    result = _resume(job)
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert MARK_USED not in result.stderr
    assert "the input changed before line" in result.stderr
    assert fake_openai.succeeded(replacement[0].name) == 1
    assert len(assert_mirror(job.out, database)) == 11


def test_ledger_rows_deleted_by_hand_send_the_resume_to_the_top(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Rows deleted from the ledger (and their lines from the JSONL): the resume warns, reads
    the whole input and does exactly those artists again."""
    job = make_job(12, seed=306)
    assert _start(job).code == exit_codes.EXIT_SUCCESS
    gone = job.artists[2:4]
    for artist in gone:
        database.execute("DELETE FROM artist_bio_ledger WHERE artist_id = %s", (artist.artist_id,))
    kept = [
        line
        for line in job.out.read_bytes().splitlines(keepends=True)
        if json.loads(line)["artist_id"] not in {a.artist_id for a in gone}
    ]
    job.out.write_bytes(b"".join(kept))
    paths = JobPaths(job.out)
    manifest = read_manifest(paths)
    assert manifest is not None and manifest.input_mark is not None
    requests = fake_openai.total_requests
    result = _resume(job, "--verbose")
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert MARK_USED not in result.stderr
    assert "rows deleted by hand?" in result.stderr
    assert fake_openai.total_requests - requests == 2
    for artist in gone:
        assert fake_openai.succeeded(artist.name) == 2
    assert len(assert_mirror(job.out, database)) == 12


def test_a_failed_artist_holds_the_mark_and_is_retried(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """An artist that fails holds the mark before it, however many commit after it; the
    resume retries it and passes over the rest, which are done."""
    job = make_job(20, seed=307)
    failing = job.artists[5]
    fake_openai.add_rule("bad_request", name=failing.name)
    first = _start(job)
    assert first.code != exit_codes.EXIT_SUCCESS
    mark = _mark(job)
    assert mark is not None and mark.done == 5
    fake_openai.clear_rules()
    requests = fake_openai.total_requests
    result = _resume(job)
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert MARK_USED in result.stderr
    assert fake_openai.total_requests - requests == 1
    assert fake_openai.succeeded(failing.name) == 1
    assert summary_figure(result, "already done") == "19"
    assert len(assert_mirror(job.out, database)) == 20
    final = _mark(job)
    assert final is not None and final.done == 20


def test_a_job_without_a_database_keeps_no_mark(make_job: MakeJob) -> None:
    job = make_job(5, seed=308, database=False)
    result = _start(job, "--no-db")
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert _mark(job) is None
