"""Runs with several worker processes (``--processes``): the same guarantees as one process.

In-process runs show the work is shared and counted once; subprocess runs show the stops
(SIGTERM, a second signal, a worker process killed, the main process killed) leave a state
the next ``--resume`` finishes, with every artist committed once and paid for at most once
more than the requests in flight at the stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.cli.main import create_argument_parser
from artist_bio_gen.config import Config, resolve_config
from artist_bio_gen.core.processes import (
    AUTO_MIN_ARTISTS,
    choose_processes,
    split_workers,
)

from . import test_crash_safety as crash
from .support.checks import assert_mirror
from .support.cli import Job, MakeJob, run_process, summary_figure
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI, bio_for, tokens_for

PROMPT = ("--prompt-id", "pmpt_p")


def _config(*argv: str, env: dict[str, str] | None = None) -> Config:
    Path("artists.csv").write_text("artist_id,artist_name\n", encoding="utf-8")
    args = create_argument_parser().parse_args(["--input", "artists.csv", "--model", "m", *argv])
    return resolve_config(args, {"OPENAI_API_KEY": "sk-test-key", **(env or {})})


DB = ("--db-url", "postgresql://u@localhost/db")


# -- choosing the number of processes (pure) --------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "cpus", "expected"),
    [
        (1024, 2, 1),  # two CPUs: one process, whatever the workers
        (1024, 3, 1),
        (256, 4, 1),
        (257, 4, 2),
        (1024, 4, 2),  # at most one per two CPUs
        (1024, 8, 4),
        (4096, 8, 4),
        (512, 16, 2),  # one per 256 workers
        (64, 16, 1),
    ],
)
def test_auto_gives_each_process_about_256_workers_and_at_most_one_per_two_cpus(
    workers: int, cpus: int, expected: int
) -> None:
    config = _config(*DB, "--max-workers", str(workers))
    assert config.processes is None  # auto is the default
    assert choose_processes(config, to_do=100_000, cpus=cpus) == expected


def test_auto_keeps_a_small_run_and_a_job_without_database_in_one_process() -> None:
    big = _config(*DB, "--max-workers", "1024")
    assert choose_processes(big, to_do=AUTO_MIN_ARTISTS - 1, cpus=8) == 1
    assert choose_processes(big, to_do=None, cpus=8) == 4  # an unknown count is not small
    no_db = _config("--no-db", "--max-workers", "1024")
    assert choose_processes(no_db, to_do=100_000, cpus=8) == 1


def test_a_count_given_is_used_but_never_more_than_the_workers() -> None:
    assert choose_processes(_config(*DB, "--processes", "3"), to_do=5, cpus=1) == 3
    few = _config(*DB, "--processes", "8", "--max-workers", "2")
    assert choose_processes(few, to_do=None, cpus=8) == 2
    from_env = _config(*DB, env={"WORKER_PROCESSES": "4"})
    assert from_env.processes == 4
    assert _config(*DB, "--processes", "auto", env={"WORKER_PROCESSES": "4"}).processes is None


def test_workers_are_shared_out_evenly() -> None:
    assert split_workers(16, 2) == [8, 8]
    assert split_workers(10, 3) == [4, 3, 3]
    assert sum(split_workers(1023, 8)) == 1023


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "2", "--no-db"], "needs the database"),
        (["--processes", "2", "--mode", "batch", "--db-url", "postgresql://u@h/d"], "online"),
    ],
)
def test_processes_where_they_cannot_work_are_refused(
    make_job: MakeJob, argv: list[str], message: str
) -> None:
    job = make_job(3, database=False)
    result = job.run(*job.input_args("--model", "m", *argv))
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not job.out.exists()


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_process_count_is_a_usage_error(make_job: MakeJob, value: str) -> None:
    job = make_job(3, database=False)
    result = job.run(*job.input_args("--model", "m", "--processes", value))
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert "auto or a number of processes" in result.stderr


# -- in-process runs ---------------------------------------------------------------------------


def _job_args(job: Job, *extra: str, workers: int = 16, processes: int = 2) -> list[str]:
    return job.input_args(
        *PROMPT, "--max-workers", str(workers), "--processes", str(processes), *extra
    )


def test_two_processes_commit_every_artist_once(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(600, seed=21)
    fake_openai.latency = 0.01
    summary = job.dir / "summary.json"
    result = job.run(*_job_args(job, "--summary-json", str(summary)))
    assert result.code == 0, result.stderr
    records = assert_mirror(job.out, database)
    assert {r["artist_id"] for r in records} == {a.artist_id for a in job.artists}
    assert all(r["response_text"] == bio_for(r["artist_name"]) for r in records)
    assert fake_openai.total_requests == 600
    assert fake_openai.concurrent_max <= 16
    assert summary_figure(result, "committed") == "600"
    assert "2 worker processes (8+8 workers)" in result.stderr
    # The requests' figures are the worker processes' together.
    figures = json.loads(summary.read_text(encoding="utf-8"))
    assert figures["requests"] == 600, figures
    # Each worker process logged its share of the transactions.
    txlog = (job.dir / "out.transactions.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["artist_id"] for line in txlog) == sorted(
        a.artist_id for a in job.artists
    )


def test_the_limit_and_a_resume_with_another_process_count(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """``--limit`` counts the run's artists across processes; a resume may use another
    process count (what is done is the ledger's, whoever did it)."""
    job = make_job(300, seed=22)
    first = job.run(*_job_args(job, "--limit", "100", processes=3))
    assert first.code == exit_codes.EXIT_LIMIT_REACHED, first.stderr
    assert len(database.ledger()) == 100
    second = job.run(*_job_args(job, "--resume", processes=2))
    assert second.code == 0, second.stderr
    assert len(assert_mirror(job.out, database)) == 300
    assert fake_openai.total_requests == 300


def test_a_bad_key_costs_one_request_and_stops_every_process(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """The canary goes alone to one worker process; its systemic error stops the run."""
    job = make_job(200, seed=23)
    fake_openai.add_rule("unauthorized")
    result = job.run(*_job_args(job))
    assert result.code == exit_codes.EXIT_CONFIG_ERROR, result.stderr
    assert fake_openai.total_requests == 1
    assert database.ledger() == []
    assert result.stderr.count("rejected the key") == 1  # logged once, by the run


def test_a_failed_artist_is_recorded_once_by_the_process_that_tried(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(120, seed=24)
    victim = job.artists[50]
    fake_openai.add_rule("bad_request", name=victim.name)
    result = job.run(*_job_args(job))
    assert result.code == exit_codes.EXIT_API_FAILURES, result.stderr
    failures = (job.dir / "out.failures.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["artist_id"] for line in failures] == [victim.artist_id]
    assert len(assert_mirror(job.out, database)) == 119


def test_print_bios_shows_the_bios_the_worker_processes_committed(
    make_job: MakeJob, database: TestDatabase
) -> None:
    job = make_job(40, seed=30)
    result = job.run(*_job_args(job, "--print-bios", workers=4))
    assert result.code == 0, result.stderr
    bios = result.stdout.split("Summary: job ", 1)[0]
    for artist in job.artists:
        assert f"=== {artist.name} ({artist.artist_id}) ===\n{bio_for(artist.name)}\n" in bios


def test_the_budgets_hold_for_the_whole_run(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """--max-cost is split between the processes (together they never pass it) and
    --daily-limit is counted in the database (one count for all)."""
    job = make_job(400, seed=31)
    prices = ("--price-input", "2", "--price-output", "8")
    per_bio = max((50 * 2 + (tokens_for(a.name) - 50) * 8) / 1_000_000 for a in job.artists)
    budget = 200 * per_bio  # each process's half leaves room for its first, cautious guess
    result = job.run(*_job_args(job, *prices, "--max-cost", f"{budget:.9f}", workers=8))
    assert result.code == exit_codes.EXIT_LIMIT_REACHED, result.stderr
    spent = sum(Decimal(str(row["cost_usd"])) for row in database.ledger())
    assert 0 < spent <= Decimal(f"{budget:.9f}")
    assert len(database.ledger()) >= 100
    before = fake_openai.total_requests
    daily = job.run(*_job_args(job, "--resume", "--daily-limit", "60", workers=8))
    assert daily.code == exit_codes.EXIT_LIMIT_REACHED, daily.stderr
    assert fake_openai.total_requests - before <= 60
    assert len(assert_mirror(job.out, database)) == len(database.ledger())


# -- real processes: signals and kills ---------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    except OSError:
        return []
    return [int(field) for field in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _start(job: Job, *extra: str, workers: int = 8) -> tuple[subprocess.Popen, list[int]]:
    """The CLI with two worker processes, once both are up and requests are flowing."""
    proc = job.start_process(*_job_args(job, *extra, workers=workers))
    _wait_until(lambda: len(_children(proc.pid)) == 2 or proc.poll() is not None, 30, "workers")
    kids = _children(proc.pid)
    assert len(kids) == 2, proc.communicate()[1]
    _wait_until(lambda: job.fake.total_requests >= workers, 30, "requests")
    return proc, kids


def _resume_completes(job: Job, database: TestDatabase) -> None:
    job.fake.latency = 0.01
    result = job.run_process(*_job_args(job, "--resume"))
    assert result.code == 0, result.stderr
    records = assert_mirror(job.out, database)
    assert {r["artist_id"] for r in records} == {a.artist_id for a in job.artists}
    assert len(database.ledger()) == len(job.artists)


def test_sigterm_lets_every_process_finish_its_artists_in_flight_then_exits_130(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(400, seed=25)
    fake_openai.latency = 0.3
    proc, kids = _start(job, "--shutdown-grace", "20")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.EXIT_INTERRUPTED, stderr
    assert time.monotonic() - began < 20
    assert not any(_alive(pid) for pid in kids)
    # Every request sent was answered, committed and written: the mirror holds as it is.
    assert len(assert_mirror(job.out, database)) == fake_openai.total_requests
    _resume_completes(job, database)
    assert fake_openai.total_requests == len(job.artists)  # nobody paid for twice


def test_a_second_signal_ends_every_process_at_once(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(200, seed=26)
    proc, kids = _start(job, "--shutdown-grace", "60")
    fake_openai.hold()  # what is in flight now stays in flight
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == exit_codes.EXIT_INTERRUPTED, stderr
        _wait_until(lambda: not any(_alive(pid) for pid in kids), 15, "the workers to exit")
        assert time.monotonic() - began < 15
    finally:
        fake_openai.release()
    _resume_completes(job, database)
    # Only the requests in flight at the second signal (at most the 8 workers) were lost.
    assert fake_openai.total_requests - len(job.artists) <= 8


def test_a_killed_worker_process_stops_the_run_and_the_resume_finishes(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(400, seed=27)
    fake_openai.latency = 0.05
    proc, kids = _start(job)
    os.kill(kids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.EXIT_RUN_ABORTED, stderr
    assert f"worker process 1 (pid {kids[1]}) ended unexpectedly (killed by SIGKILL)" in stderr
    assert not _alive(kids[0])
    _resume_completes(job, database)
    # Only the killed process's requests in flight may have been paid twice.
    assert fake_openai.total_requests - len(job.artists) <= 4


def test_a_killed_main_process_leaves_the_job_locked_until_its_workers_finish(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(300, seed=28)
    fake_openai.latency = 0.05
    proc, kids = _start(job)
    fake_openai.hold()
    try:
        time.sleep(0.3)
        proc.kill()
        # Not communicate(): the workers still hold its stderr open (a cron job's output
        # ends when its last process does).
        proc.wait(timeout=30)
        assert all(_alive(pid) for pid in kids)
        refused = job.run_process(*_job_args(job, "--resume"))
        assert refused.code == exit_codes.EXIT_LOCKED, refused.stderr
    finally:
        fake_openai.release()
    # Their artists in flight are committed, then they exit on their own.
    _wait_until(lambda: not any(_alive(pid) for pid in kids), 30, "the orphans to exit")
    _resume_completes(job, database)
    # Nothing they had in flight was paid again.
    assert fake_openai.total_requests == len(job.artists)


def test_a_worker_killed_mid_line_leaves_a_torn_tail_the_others_cut_and_the_run_restores(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """Each worker process dies half-way through its 5th JSONL write (the fault shim, as
    in the crash tests): the torn half line is cut by the next writer, the run stops (exit
    5) and its end restores every committed line from the ledger."""
    artists = make_artists(60, seed=29)
    database.seed(artists)
    csv_path = write_csv(tmp_path / "artists.csv", artists)
    out = tmp_path / "out.jsonl"
    fake_openai.latency = 0.01
    args = crash.job_args(csv_path, out, 4, "--processes", "2")
    report = tmp_path / "fault.json"
    result = run_process(args, env=crash.shim_env(database, "mid_write:5", report), timeout=120)
    assert result.code == exit_codes.EXIT_RUN_ABORTED, result.stderr
    assert "ended unexpectedly (killed by SIGKILL)" in result.stderr
    victim = json.loads(report.read_text(encoding="utf-8"))["artist_id"]
    assert victim in {row["artist_id"] for row in database.ledger()}
    # The run's end already made the file a mirror of the ledger, the victim's line included.
    assert victim in {r["artist_id"] for r in assert_mirror(out, database)}
    crash.run_to_completion(args, crash.db_env(database))
    crash.assert_job_complete(out, database, artists)
    assert fake_openai.calls(next(a.name for a in artists if a.artist_id == victim)) == 1


KILLS = int(os.environ.get("ABG_CRASH_KILLS", "32")) // 2
WORKERS = 12


def _kill(rng: random.Random, child: crash.Child) -> str:
    """SIGKILL the whole run, its main process only, or one worker process."""
    kids = _children(child.proc.pid)
    what = rng.choice(["all", "main", "worker"]) if kids else "main"
    if what == "worker":
        os.kill(rng.choice(kids), signal.SIGKILL)
        return what
    child.kill()
    if what == "all":
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return what


@pytest.mark.slow
def test_random_kills_of_any_process_then_resume_lose_nothing_and_pay_little(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """The crash test with two worker processes: at random moments SIGKILL every process
    of the run, or its main process only (the workers finish what they have and exit), or
    one worker process (the run stops, exit 5); after each, the crash state holds (committed
    only, at most ``WORKERS`` lines missing); the last resume leaves an exact mirror with
    every artist committed once, and at most ``WORKERS`` requests paid again per kill."""
    # Large enough that every kill lands before the job ends, on a fast machine too (a
    # start-up kill may come after a second of work at several hundred artists/s).
    total = 2400
    job = crash.crash_job(tmp_path, database, fake_openai, total, 0.02)
    seed, rng, artists, csv_path, out = job.seed, job.rng, job.artists, job.csv_path, job.out
    args = crash.job_args(csv_path, out, WORKERS, "--processes", "2")
    env = crash.db_env(database)
    kills, attempts, kinds = 0, 0, []
    while kills < KILLS and attempts < 3 * KILLS:
        attempts += 1
        child = crash.Child.start(args, env)
        if rng.random() < 0.25:  # at start-up: checks, repair, workers starting
            time.sleep(rng.uniform(0, 1.0))
        else:
            target = crash.count_lines(out) + rng.randint(1, total // (2 * KILLS))
            crash.wait_for(lambda: crash.count_lines(out) >= target, child, 60)  # noqa: B023
            time.sleep(rng.uniform(0, 0.04))
        kids = _children(child.proc.pid)
        kind = _kill(rng, child)
        code, stderr = child.finish()
        _wait_until(lambda: not any(_alive(pid) for pid in kids), 60, "the workers to exit")  # noqa: B023
        assert code in (crash.SIGKILLED, exit_codes.EXIT_RUN_ABORTED, 0), stderr
        if code != 0:
            kills += 1
            kinds.append(kind)
            crash.assert_crash_state(out, database, WORKERS)
    print(f"seed {seed}: {kills} kills in {attempts} runs: {kinds}")
    assert kills >= KILLS, f"seed {seed}: only {kills} of {attempts} kills landed"
    crash.run_to_completion(args, env)
    crash.assert_job_complete(out, database, artists)
    crash.assert_verify_consistent(out, database)
    extra = fake_openai.total_requests - total
    assert 0 <= extra <= kills * WORKERS, f"seed {seed}: {extra} extra requests"


def test_a_worker_process_log_record_reaches_the_run_scrubbed_traceback_included() -> None:
    from multiprocessing.connection import Connection

    from artist_bio_gen.core.child import _ForwardingHandler, _Outbox
    from artist_bio_gen.utils.logging import RedactingFilter

    secret = "sk-proj-worker-secret-0123"
    ours, theirs = socket.socketpair()
    receiver, sender = Connection(ours.detach()), Connection(theirs.detach())
    outbox = _Outbox(sender)
    handler = _ForwardingHandler(outbox, 1, RedactingFilter([secret]))
    try:
        raise ValueError(f"refused {secret}")
    except ValueError:
        record = logging.LogRecord(
            "artist_bio_gen.x", logging.ERROR, __file__, 1, "key %s", (secret,), sys.exc_info()
        )
    handler.handle(record)
    outbox.drain()
    kind, events, _ = receiver.recv()
    assert kind == "events"
    _, level, name, text = events[0]
    assert (level, name) == (logging.ERROR, "artist_bio_gen.x")
    assert text.startswith("[process 1] key ***")
    assert "ValueError: refused ***" in text
    assert secret not in text
    outbox.send_final(("done",))
