"""A run whose JSONL cannot grow (full disk) stops cleanly, and the next run repairs the mirror.

The full disk is an RLIMIT_FSIZE set in the child before it starts, so the stopped run is a
real process; the resume that repairs the mirror runs in-process.
"""

from __future__ import annotations

import resource

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror, read_jsonl
from .support.cli import MakeJob
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI


def _limit_file_size(limit: int):
    def apply() -> None:
        # RLIMIT_FSIZE makes writes past `limit` bytes fail with EFBIG, like a full disk;
        # Python ignores SIGXFSZ, so the write returns an error instead of killing us.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_stops_the_run_and_resume_completes_it(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(120, seed=40)
    artists = job.artists
    args = job.input_args("--prompt-id", "p", "--max-workers", "4")
    limit = 30_000  # the input CSV is read, not written, so only our outputs hit the limit

    result = job.run_process(*args, timeout=120, preexec_fn=_limit_file_size(limit))

    assert result.code == exit_codes.EXIT_RUN_ABORTED, result.stderr
    assert "Could not append to" in result.stderr
    assert "restored to its last complete line" in result.stderr
    assert "Traceback" not in result.stderr
    out = job.out
    lines = read_jsonl(out)  # ends in a complete line, every line parses
    assert 0 < len(lines) < len(artists)
    assert out.stat().st_size <= limit
    # The artist whose line did not fit was committed: the ledger is ahead of the file.
    ledger_before = len(database.ledger())
    assert ledger_before > len(lines)

    calls_before = fake_openai.total_requests
    resumed = job.run("--resume")
    assert resumed.code == 0, resumed.stderr
    records = assert_mirror(out, database)
    assert len(records) == len(artists)
    # Rows committed before the stop come back from the database: only artists that were
    # never committed cost a request.
    assert fake_openai.total_requests - calls_before == len(artists) - ledger_before
