"""A run whose JSONL cannot grow (full disk) stops cleanly, and the next run repairs the mirror."""

from __future__ import annotations

import resource
from pathlib import Path

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror, read_jsonl
from .support.cli import cli_env
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI


def _limit_file_size(limit: int):
    def apply() -> None:
        # RLIMIT_FSIZE makes writes past `limit` bytes fail with EFBIG, like a full disk;
        # Python ignores SIGXFSZ, so the write returns an error instead of killing us.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_stops_the_run_and_resume_completes_it(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    import subprocess
    import sys

    artists = make_artists(120, seed=40)
    database.seed(artists)
    csv_path = write_csv(tmp_path / "a.csv", artists)
    args = ["--input", str(csv_path), "--prompt-id", "p", "--max-workers", "4"]
    env = cli_env(DATABASE_URL=database.url)
    limit = 30_000  # the input CSV is read, not written, so only our outputs hit the limit

    result = subprocess.run(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size(limit),
    )

    assert result.returncode == exit_codes.EXIT_RUN_ABORTED, result.stderr
    assert "Could not append to" in result.stderr
    assert "restored to its last complete line" in result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "out.jsonl"
    lines = read_jsonl(out)  # ends in a complete line, every line parses
    assert 0 < len(lines) < len(artists)
    assert out.stat().st_size <= limit
    # The artist whose line did not fit was committed: the ledger is ahead of the file.
    ledger_before = len(database.ledger())
    assert ledger_before > len(lines)

    calls_before = fake_openai.total_requests
    resumed = subprocess.run(
        [sys.executable, "-m", "artist_bio_gen", "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    records = assert_mirror(out, database)
    assert len(records) == len(artists)
    # Rows committed before the stop come back from the database: only artists that were
    # never committed cost a request.
    assert fake_openai.total_requests - calls_before == len(artists) - ledger_before
