"""``run_job`` in-process: whole runs from a resolved ``Config`` to the ``RunResult``.

Configs are built the way the CLI builds them (``create_argument_parser().parse_args`` then
``resolve_config`` with an explicit environment), the real SDK talks HTTP to the fake server
(a thread of this process) and bios are committed to a real PostgreSQL. Being in-process,
these tests can look at what the subprocess tests cannot: the ``RunResult`` itself, the
``LeftRunning`` resources and the run lock while the run's process is still alive.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.cli.main import create_argument_parser, exit_code_for
from artist_bio_gen.config import Config, resolve_config
from artist_bio_gen.core.lock import RunLock
from artist_bio_gen.core.processor import RunControl, Tally
from artist_bio_gen.core.runner import RunResult, run_job
from artist_bio_gen.errors import LockedError, QuotaExhaustedError, UsageError
from artist_bio_gen.jobfiles import JobPaths, read_manifest
from artist_bio_gen.models import ArtistData, Outcome

from .support.checks import assert_mirror, read_jsonl
from .support.cli import TEST_API_KEY
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

#: Generous bound for anything that should take a fraction of a second (2 shared cores).
PATIENCE = 30.0
WORKER_PREFIX = "artist_"


class Job:
    """One job's directory, input and environment; ``config`` resolves a run's settings."""

    def __init__(
        self,
        tmp_path: Path,
        fake: FakeOpenAI,
        database: TestDatabase | None,
        artists: list[ArtistData],
    ):
        self.dir = tmp_path
        self.output = tmp_path / "out.jsonl"
        self.paths = JobPaths(self.output)
        self.csv = write_csv(tmp_path / "artists.csv", artists)
        self.env = {"OPENAI_API_KEY": TEST_API_KEY, "OPENAI_BASE_URL": fake.base_url}
        if database is not None:
            database.seed(artists)
            self.env["DATABASE_URL"] = database.url

    def config(self, *args: str, new: bool = False) -> Config:
        """A run's config; ``new`` adds the input and the prompt (a resume reads them)."""
        start = ["--input", str(self.csv), "--prompt-id", "pmpt_runner"] if new else []
        argv = [
            *start,
            "--output",
            str(self.output),
            "--max-retries",
            "0",
            "--request-timeout",
            "15",
            *args,
        ]
        return resolve_config(create_argument_parser().parse_args(argv), self.env)

    def run(self, *args: str, new: bool = False, **kwargs: object) -> RunResult:
        return run_job(self.config(*args, new=new), RunControl(), **kwargs)  # type: ignore[arg-type]

    def failures(self) -> list[dict]:
        path = self.paths.failures
        return read_jsonl(path) if path.exists() else []

    def attempts(self, artist: ArtistData) -> list[int]:
        return [f["attempt"] for f in self.failures() if f["artist_id"] == artist.artist_id]

    def lock_is_free(self) -> bool:
        try:
            with RunLock(self.paths.run_lock):
                return True
        except LockedError:
            return False


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t.is_alive()]


def test_a_clean_run_commits_every_artist_and_the_jsonl_mirrors_the_ledger(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Counts of the ``RunResult`` against what the input, the ledger and the fake hold;
    the manifest records the job and a checkpoint at the end of the file; exit code 0; a
    ``--resume`` afterwards finds everything done and requests nothing."""
    artists = make_artists(8, seed=501)
    job = Job(tmp_path, fake_openai, database, artists)
    with open(job.csv, "a", encoding="utf-8") as handle:
        handle.write("not-a-uuid,Nobody\n")  # a bad line
        handle.write(f"{artists[0].artist_id},{artists[0].name}\n")  # a duplicate id

    result = job.run("--max-workers", "3", new=True)

    assert result.error is None and not result.interrupted and result.left_running is None
    stats = result.stats
    assert (stats.artists_read, stats.committed, stats.skipped, stats.failed) == (8, 8, 0, 0)
    assert (stats.not_started, stats.already_done) == (0, 0)
    assert (stats.bad_lines, stats.duplicate_lines) == (1, 1)
    assert exit_code_for(result) == exit_codes.EXIT_SUCCESS
    records = assert_mirror(job.output, database)
    assert sorted(r["artist_id"] for r in records) == sorted(a.artist_id for a in artists)
    ledger = database.ledger()
    assert {str(row["job_id"]) for row in ledger} == {result.job_id}
    assert stats.tokens.total_tokens == sum(row["total_tokens"] for row in ledger) > 0
    manifest = read_manifest(job.paths)
    assert manifest is not None and manifest.job_id == result.job_id
    assert manifest.checkpoint.jsonl_size == job.output.stat().st_size
    assert job.failures() == []
    assert fake_openai.total_requests == 8

    again = job.run("--resume")

    assert again.job_id == result.job_id and again.error is None
    assert again.stats.committed == again.stats.failed == 0
    # Nine rows of done artists: on a resume the reader counts the duplicate row of a done
    # artist as "already done" (rows, not artists), on a first run as a duplicate.
    assert again.stats.already_done + again.stats.duplicate_lines == 9
    assert exit_code_for(again) == exit_codes.EXIT_SUCCESS
    assert fake_openai.total_requests == 8
    assert len(assert_mirror(job.output, database)) == 8


def test_a_poison_artist_is_given_up_after_max_attempts_runs(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """An artist that always gets ``bad_request`` is tried once per run (exit 4); after
    ``--max-attempts 3`` runs it is given up (counted as skipped, not requested); with
    ``--retry-failed`` it is requested again. Attempts are numbered 1, 2, 3, 4."""
    artists = make_artists(5, seed=502)
    poison = artists[2]
    fake_openai.add_rule("bad_request", name=poison.name)
    job = Job(tmp_path, fake_openai, database, artists)
    cap = ("--max-attempts", "3")

    first = job.run(*cap, new=True)
    assert (first.stats.committed, first.stats.failed) == (4, 1)
    assert exit_code_for(first) == exit_codes.EXIT_API_FAILURES
    for run in (2, 3):
        result = job.run("--resume", *cap)
        assert (result.stats.already_done, result.stats.failed) == (4, 1)
        assert exit_code_for(result) == exit_codes.EXIT_API_FAILURES
        assert fake_openai.calls(poison.name) == run
    assert job.attempts(poison) == [1, 2, 3]

    given_up = job.run("--resume", *cap)
    assert fake_openai.calls(poison.name) == 3
    assert (given_up.stats.given_up, given_up.stats.failed, given_up.stats.committed) == (1, 0, 0)
    assert given_up.stats.skipped == 0
    assert job.attempts(poison) == [1, 2, 3]

    retried = job.run("--resume", "--retry-failed", *cap)
    assert fake_openai.calls(poison.name) == 4
    assert retried.stats.failed == 1
    assert exit_code_for(retried) == exit_codes.EXIT_API_FAILURES
    assert job.attempts(poison) == [1, 2, 3, 4]
    assert {f["code"] for f in job.failures()} == {"bad_request"}
    others = [a for a in artists if a is not poison]
    assert [fake_openai.calls(a.name) for a in others] == [1] * len(others)
    assert len(assert_mirror(job.output, database)) == len(others)


def test_abandoned_workers_keep_the_run_lock_until_their_resources_close(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """After the canary, the W requests are parked at the fake; an interrupt with
    ``--shutdown-grace 0.2`` makes ``run_job`` return with ``left_running`` for W workers
    and the run lock still held. Released, the workers end (their requests fail with a
    ``server_error``, so none of them reaches the frozen JSONL writer); once the resources
    are closed the lock is free, and ``--resume`` finishes the job."""
    workers = 2
    artists = make_artists(1 + workers, seed=503)  # after the canary: W in flight, none queued
    job = Job(tmp_path, fake_openai, database, artists)
    control = RunControl()

    def interrupt_once_parked() -> None:
        fake_openai.wait_for_requests(1 + workers, timeout=PATIENCE)
        control.interrupt()

    def after_canary(outcome: Outcome, tally: Tally) -> None:
        if tally.finished == 1:
            fake_openai.add_rule("server_error")  # the answer each parked request will get
            fake_openai.hold()
            threading.Thread(target=interrupt_once_parked, daemon=True).start()

    config = job.config("--max-workers", str(workers), "--shutdown-grace", "0.2", new=True)
    try:
        result = run_job(config, control, on_outcome=after_canary)
        in_flight = fake_openai.in_flight
        lock_was_free = job.lock_is_free()
    finally:
        fake_openai.release()
    for thread in _worker_threads():
        thread.join(timeout=PATIENCE)

    assert result.left_running is not None
    assert result.left_running.workers == workers == in_flight
    assert not lock_was_free, "the run lock must stay held while workers may still write"
    assert result.interrupted and result.error is None
    assert exit_code_for(result) == exit_codes.EXIT_INTERRUPTED
    assert (result.stats.committed, result.stats.not_started) == (1, workers)
    assert not _worker_threads(), "released workers must end"
    assert {f["code"] for f in job.failures()} == {"server_error"}
    assert not job.lock_is_free()

    result.left_running.resources.close()
    assert job.lock_is_free()
    fake_openai.clear_rules()

    resumed = job.run("--resume")

    assert resumed.error is None and resumed.left_running is None
    assert (resumed.stats.already_done, resumed.stats.committed) == (1, workers)
    assert exit_code_for(resumed) == exit_codes.EXIT_SUCCESS
    records = assert_mirror(job.output, database)
    assert sorted(r["artist_id"] for r in records) == sorted(a.artist_id for a in artists)


def test_a_jsonl_only_job_resumes_from_its_lines(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """``--no-db``: lines carry db_status "null"; a quota stop exits 5; the resume requests
    only the artists without a line, and stays JSONL-only although DATABASE_URL is set."""
    artists = make_artists(6, seed=504)
    fake_openai.add_rule("ok", times=3)
    fake_openai.add_rule("insufficient_quota")
    job = Job(tmp_path, fake_openai, None, artists)

    first = job.run("--no-db", "--max-workers", "1", new=True)

    assert isinstance(first.error, QuotaExhaustedError)
    assert exit_code_for(first) == exit_codes.EXIT_RUN_ABORTED
    assert (first.stats.committed, first.stats.failed) == (3, 1)
    done = read_jsonl(job.output)
    assert [r["artist_id"] for r in done] == [a.artist_id for a in artists[:3]]
    assert {r["db_status"] for r in done} == {"null"}
    assert job.failures() == []  # no quota is not the artist's fault

    fake_openai.clear_rules()
    job.env["DATABASE_URL"] = database.url
    resumed = job.run("--resume")

    assert resumed.error is None
    assert (resumed.stats.already_done, resumed.stats.committed) == (3, 3)
    assert [fake_openai.calls(a.name) for a in artists] == [1, 1, 1, 2, 1, 1]
    records = read_jsonl(job.output)
    assert sorted(r["artist_id"] for r in records) == sorted(a.artist_id for a in artists)
    assert {r["db_status"] for r in records} == {"null"}
    assert database.ledger() == []


def test_a_resume_config_of_a_replaced_job_is_refused_without_writing(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A ``--resume`` config resolved against job A, then job A replaced by ``--overwrite``
    (job B): running the stale config raises UsageError and changes no file, no row and
    makes no request."""
    artists = make_artists(3, seed=505)
    job = Job(tmp_path, fake_openai, database, artists)
    first = job.run(new=True)
    stale = job.config("--resume")
    replaced = job.run("--overwrite", new=True)
    assert stale.resumed_job == first.job_id != replaced.job_id
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    ledger, requests = database.ledger(), fake_openai.total_requests

    with pytest.raises(UsageError, match="changed while this run was starting"):
        run_job(stale, RunControl())

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files
    assert database.ledger() == ledger
    assert fake_openai.total_requests == requests
    assert job.lock_is_free()
