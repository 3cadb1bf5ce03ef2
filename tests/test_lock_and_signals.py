"""One run per job and interruption by signals, with the CLI as a subprocess.

The fake OpenAI server keeps requests in flight on purpose (``hold()`` or a ``hang`` rule with
a delay), so a test knows exactly how many artists are in flight when it signals the run.
The run that is locked out, signalled or killed is a real process (a signal or SIGKILL must
hit a process of its own, and a run whose grace period expires ends with ``os._exit``); the
runs that only check or finish the job afterwards run in-process.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror, read_jsonl
from .support.cli import Job, MakeJob
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

WORKERS = 4
# The canary (first artist, alone) plus one request per worker.
IN_FLIGHT_AFTER_CANARY = 1 + WORKERS
ARTISTS = 40


class _Run:
    """A CLI run in the background whose stderr is collected line by line as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._lines: list[str] = []
        self.stdout = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_text(self, text: str, timeout: float) -> bool:
        """Wait until a stderr line contains ``text``; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self._lines), timeout=timeout
            )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the exit; (exit code, whole stderr). ``stdout`` holds what it printed."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        # Small (the summary): the pipe held it all while the process ran.
        self.stdout = self.proc.stdout.read()
        self.proc.stdout.close()
        return code, self.stderr

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


@pytest.fixture
def job(make_job: MakeJob) -> Job:
    """A 40-artist job writing out.jsonl in the test directory (the fake's URL and the
    database in the environment)."""
    return make_job(ARTISTS, seed=301)


def _start(job: Job, *extra: str) -> _Run:
    """The job's run as a process in the background."""
    args = job.input_args("--prompt-id", "pmpt_sig", "--max-workers", str(WORKERS), *extra)
    return _Run(job.start_process(*args))


@pytest.fixture
def released(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake, with its gate opened again whatever the test did."""
    try:
        yield fake_openai
    finally:
        fake_openai.release()


def _ends_in_whole_line(path: Path) -> bool:
    data = path.read_bytes() if path.exists() else b""
    return data == b"" or data.endswith(b"\n")


def _hang_after_canary(fake: FakeOpenAI, seconds: float) -> None:
    """The canary is answered at once; every later request is answered after ``seconds``."""
    fake.add_rule("ok", times=1)
    fake.add_rule("hang", delay=seconds)


# The second run is in-process: were it not refused, it would wait at the fake's closed gate;
# the timeout turns that into a failure within a minute.
@pytest.mark.timeout(60)
def test_a_second_run_is_refused_at_once(job: Job, released: FakeOpenAI) -> None:
    """While a run holds the job, a second run on the same output (cron overlap) exits 75 in
    well under a second, naming the first run's pid, without touching the job."""
    released.hold()
    first = _start(job)
    try:
        assert released.wait_for_requests(1, timeout=30), first.stderr
        started = time.monotonic()
        second = job.run("--resume")  # in-process: the refusal alone is timed
        elapsed = time.monotonic() - started
    finally:
        released.release()
    code, _ = first.finish(timeout=120)

    assert second.code == exit_codes.EXIT_LOCKED, second.stderr
    assert f"pid {first.pid}" in second.stderr, second.stderr
    assert elapsed < 1.0, f"the refused run took {elapsed:.2f} s"
    assert code == exit_codes.EXIT_SUCCESS
    assert released.total_requests == len(job.artists)


def test_a_killed_run_does_not_block_the_next(
    tmp_path: Path,
    job: Job,
    database: TestDatabase,
    released: FakeOpenAI,
) -> None:
    """After the run holding the lock is SIGKILLed, the next run proceeds: the OS dropped the
    lock, and the lock file itself is still there (it is never deleted)."""
    lock_file = tmp_path / "out.run.lock"
    released.hold()
    first = _start(job)
    try:
        assert released.wait_for_requests(1, timeout=30), first.stderr
        first.kill()
    finally:
        released.release()
    assert lock_file.exists()

    result = job.run("--resume")

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert len(assert_mirror(tmp_path / "out.jsonl", database)) == len(job.artists)
    assert lock_file.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_submitting_and_lets_in_flight_artists_finish(
    tmp_path: Path,
    job: Job,
    database: TestDatabase,
    fake_openai: FakeOpenAI,
    signum: int,
) -> None:
    """SIGTERM/SIGINT with 4 artists in flight: those 4 finish and are committed and appended,
    no new request goes out, the summary is printed and the exit code is 130. A resume then
    finishes the job without paying twice for anyone."""
    _hang_after_canary(fake_openai, seconds=2.0)
    run = _start(job, "--request-timeout", "30")
    try:
        assert fake_openai.wait_for_requests(IN_FLIGHT_AFTER_CANARY, timeout=30), run.stderr
        run.signal(signum)
        at_signal = fake_openai.total_requests
        code, stderr = run.finish(timeout=60)
    finally:
        run.kill()

    assert code == exit_codes.EXIT_INTERRUPTED, stderr
    assert "Summary" in run.stdout and "Traceback" not in stderr
    assert at_signal == IN_FLIGHT_AFTER_CANARY
    assert fake_openai.total_requests == at_signal, "no new request after the signal"
    assert len(assert_mirror(tmp_path / "out.jsonl", database)) == IN_FLIGHT_AFTER_CANARY

    fake_openai.clear_rules()
    resumed = job.run("--resume")
    assert resumed.code == exit_codes.EXIT_SUCCESS, resumed.stderr
    assert len(assert_mirror(tmp_path / "out.jsonl", database)) == len(job.artists)
    assert fake_openai.total_requests == len(job.artists)


def test_a_second_signal_exits_at_once(
    tmp_path: Path,
    job: Job,
    database: TestDatabase,
    fake_openai: FakeOpenAI,
) -> None:
    """A second SIGTERM while in-flight artists are still finishing (and appending) during
    the grace period exits at once with 130. The JSONL ends in a whole line and holds only
    committed bios; the next ``--resume`` restores the exact mirror."""
    workers = 16
    # Staggered answers: during the grace period lines keep being appended, so the second
    # signal lands while workers are committing and writing.
    fake_openai.add_rule("ok", times=1)
    for index, artist in enumerate(job.artists):
        fake_openai.add_rule("hang", name=artist.name, delay=0.2 + 0.1 * index)
    run = _start(job, "--max-workers", str(workers), "--request-timeout", "60")
    try:
        assert fake_openai.wait_for_requests(1 + workers, timeout=30), run.stderr
        run.signal(signal.SIGTERM)
        assert run.wait_for_text("SIGTERM received", timeout=10), run.stderr
        time.sleep(0.3)
        second_at = time.monotonic()
        run.signal(signal.SIGTERM)
        code, stderr = run.finish(timeout=30)
        elapsed = time.monotonic() - second_at
    finally:
        run.kill()

    assert code == exit_codes.EXIT_INTERRUPTED, stderr
    assert "received again" in stderr
    assert elapsed < 3.0, f"the second signal took {elapsed:.1f} s to end the run"
    out = tmp_path / "out.jsonl"
    records = read_jsonl(out)  # every line whole and parseable
    ledger = {row["artist_id"] for row in database.ledger()}
    assert 1 <= len(ledger) < 1 + workers, "the run ended before its in-flight artists did"
    assert {r["artist_id"] for r in records} <= ledger, "a line only after its commit"

    fake_openai.clear_rules()
    resumed = job.run("--resume")
    assert resumed.code == exit_codes.EXIT_SUCCESS, resumed.stderr
    assert len(assert_mirror(out, database)) == len(job.artists)


def test_shutdown_grace_bounds_the_wait_for_a_hung_request(
    tmp_path: Path,
    job: Job,
    database: TestDatabase,
    fake_openai: FakeOpenAI,
) -> None:
    """With ``--shutdown-grace 1`` and requests that never answer, SIGTERM ends the run with
    130 within a few seconds (not after the request timeout), summary printed."""
    _hang_after_canary(fake_openai, seconds=3600.0)
    run = _start(job, "--request-timeout", "300", "--shutdown-grace", "1")
    try:
        assert fake_openai.wait_for_requests(IN_FLIGHT_AFTER_CANARY, timeout=30), run.stderr
        signalled = time.monotonic()
        run.signal(signal.SIGTERM)
        code, stderr = run.finish(timeout=60)
        elapsed = time.monotonic() - signalled
    finally:
        run.kill()

    assert code == exit_codes.EXIT_INTERRUPTED, stderr
    assert elapsed < 5.0, f"the run took {elapsed:.1f} s to stop with a 1 s grace"
    assert "Summary" in run.stdout
    out = tmp_path / "out.jsonl"
    assert _ends_in_whole_line(out)
    assert len(assert_mirror(out, database)) == 1
