"""Crash safety: real SIGKILLs of the real CLI, then ``--resume``.

The promises at stake are committed only, exact mirror and whole lines (README).

Every test here runs ``python -m artist_bio_gen`` as a subprocess against the real
PostgreSQL and the fake OpenAI server, kills it with SIGKILL (from outside at random moments,
or from inside at an exact point through the test-only import hook in ``tests/faultshim``),
and checks the state on disk and in the database afterwards:

* after any crash: every complete line has a committed ledger row (committed only), no id
  twice, and at most ``workers`` bios are committed but not yet appended;
* after the final ``--resume``: every line parses and ends in a newline, one line per artist,
  JSONL ids == ledger ids, per-id text equal in the JSONL, the ledger and the user's table
  (exact mirror, whole lines), one job only, and the API was paid again only for requests
  in flight at a kill.

The random-kill test prints its seed; replay a failure with ``ABG_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.core.inputmark import prefix_sha256
from artist_bio_gen.core.processor import pool_threads
from artist_bio_gen.core.reader import ArtistReader
from artist_bio_gen.jobfiles import InputMark, JobPaths, read_manifest
from artist_bio_gen.models import ArtistData

from .support.checks import assert_legacy_record, assert_mirror, read_jsonl
from .support.cli import ROOT, CliResult, cli_env, run_process, start_process
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI, bio_for

SHIM_DIR = Path(__file__).resolve().parent / "faultshim"
PROMPT_ID = "pmpt_crash"
SIGKILLED = -signal.SIGKILL


# -- running the CLI ----------------------------------------------------------------------------


def job_args(csv_path: Path, out: Path, workers: int, *extra: str) -> list[str]:
    """The one command used for every run of a job: first run and resumes alike.

    ``--resume`` with no job beside ``out`` starts a new one, so the same command works
    whether or not an earlier (killed) run got as far as writing the manifest.
    """
    return [
        "--input",
        str(csv_path),
        "--output",
        str(out),
        "--prompt-id",
        PROMPT_ID,
        "--max-workers",
        str(workers),
        "--resume",
        *extra,
    ]


def db_env(db: TestDatabase, **extra: str | None) -> dict[str, str]:
    """The CLI's environment for ``db`` (the fake's OPENAI_BASE_URL is inherited)."""
    return cli_env(DATABASE_URL=db.url, **extra)


def shim_env(db: TestDatabase, fault: str, report: Path, **extra: str | None) -> dict[str, str]:
    """``db_env`` plus the fault shim first on PYTHONPATH, armed with ``ABG_FAULT=fault``."""
    return db_env(
        db,
        PYTHONPATH=os.pathsep.join([str(SHIM_DIR), str(ROOT)]),
        ABG_FAULT=fault,
        ABG_FAULT_REPORT=str(report),
        **extra,
    )


@dataclass
class Child:
    """A CLI subprocess whose pipes are drained in the background (they can never fill up
    and stall it, whatever it logs)."""

    proc: subprocess.Popen
    _output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, args: list[str], env: dict[str, str]) -> Child:
        child = cls(start_process(args, env=env))
        child._reader = threading.Thread(target=child._drain, daemon=True)
        child._reader.start()
        return child

    def _drain(self) -> None:
        stdout, stderr = self.proc.communicate()
        self._output[:] = [stdout or "", stderr or ""]

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def stdout(self) -> str:
        """What the process printed on stdout (the summary), once ``finish`` returned."""
        return self._output[0] if self._output else ""

    def kill(self) -> None:
        """SIGKILL the process if it is still running (``finish`` tells if it landed)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Wait for the process to end; its return code and stderr."""
        assert self._reader is not None
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.proc.kill()
            self._reader.join(10)
            pytest.fail(f"the CLI did not finish within {timeout} s")
        return self.proc.returncode, self._output[1]


def run_to_completion(args: list[str], env: dict[str, str]) -> CliResult:
    """Run the CLI and require exit 0 (with its stderr in the failure message)."""
    result = run_process(args, env=env, timeout=240)
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    return result


# -- reading the state --------------------------------------------------------------------------


def complete_lines(path: Path) -> list[bytes]:
    """The complete lines of ``path`` (a torn tail left by a crash is not a line)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (0 if it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def ledger_ids(db: TestDatabase) -> list[str]:
    """Artist ids of every ledger row."""
    return [row["artist_id"] for row in db.ledger()]


def assert_crash_state(out: Path, db: TestDatabase, threads: int) -> tuple[set[str], set[str]]:
    """What must hold right after any SIGKILL, before anything repairs it.

    Committed only: every complete line stands for a committed bio, with the committed
    text; no id is written twice; at most ``threads`` bios are committed but not appended
    (only the pool's running threads sit between commit and append, and every start repairs
    earlier gaps first).
    A torn tail is allowed here: the next start must cut it. Returns (line ids, ledger ids).
    """
    records = [json.loads(line) for line in complete_lines(out)]
    ids = [r["artist_id"] for r in records]
    assert len(ids) == len(set(ids)), "an artist has two lines"
    ledger = {row["artist_id"]: row for row in db.ledger()}
    uncommitted = set(ids) - set(ledger)
    assert not uncommitted, f"lines without a committed bio: {sorted(uncommitted)[:5]}"
    for record in records:
        assert record["response_text"] == ledger[record["artist_id"]]["response_text"]
    gap = set(ledger) - set(ids)
    assert len(gap) <= threads, f"{len(gap)} committed bios missing from the JSONL"
    return set(ids), set(ledger)


def assert_job_complete(
    out: Path, db: TestDatabase, artists: list[ArtistData], prompt_id: str = PROMPT_ID
) -> list[dict]:
    """The invariants after the final, successful run of a job over ``artists``.

    Every line parses and ends with a newline; exactly one line per artist and every artist
    present; JSONL ids == ledger ids; each line's text equals the ledger's and the user's
    table's bio (and is what the API returned for that artist); all rows belong to one job.
    """
    records = assert_mirror(out, db)
    by_id = {a.artist_id: a for a in artists}
    assert len(records) == len(artists), f"{len(records)} lines for {len(artists)} artists"
    assert {r["artist_id"] for r in records} == set(by_id)
    bios = db.bios()
    for record in records:
        artist = by_id[record["artist_id"]]
        assert_legacy_record(record, artist)
        assert record["db_status"] == "updated"
        assert record["response_text"] == bio_for(artist.name) == bios[artist.artist_id]
        assert record["request"]["prompt_id"] == prompt_id
    ledger = db.ledger()
    assert len(ledger) == len(artists)
    assert len({row["job_id"] for row in ledger}) == 1, "a resume started a second job"
    manifest = json.loads(out.with_name("out.job.json").read_text(encoding="utf-8"))
    assert str(ledger[0]["job_id"]) == manifest["job_id"]
    return records


def assert_verify_consistent(out: Path, db: TestDatabase) -> None:
    """``artist-bio-gen verify`` agrees that the file mirrors the ledger."""
    result = run_process(["verify", "--output", str(out)], env=db_env(db))
    assert result.code == exit_codes.EXIT_SUCCESS, result.stdout + result.stderr


# -- 1. random kills ----------------------------------------------------------------------------

ARTISTS = 1200
WORKERS = 12
LATENCY = 0.02
KILLS = int(os.environ.get("ABG_CRASH_KILLS", "32"))
END_KILLS = 3
STARTUP_SHARE = 0.25
STARTUP_WINDOW = 0.9  # seconds after spawn: interpreter start, checks, repair
JITTER = 0.04
PROGRESS_TIMEOUT = 30.0


def crash_seed() -> int:
    """``ABG_CRASH_SEED`` if set, else a fresh random seed."""
    text = os.environ.get("ABG_CRASH_SEED")
    return int(text) if text else random.SystemRandom().randrange(2**32)


@dataclass(frozen=True)
class CrashJob:
    """A seeded job for a crash test: its random source, artists, input and output."""

    seed: int
    rng: random.Random
    artists: list[ArtistData]
    csv_path: Path
    out: Path


def crash_job(
    tmp_path: Path, db: TestDatabase, fake: FakeOpenAI, total: int, latency: float
) -> CrashJob:
    """``total`` artists in ``db`` and a CSV, the fake answering after ``latency``; the
    seed (``crash_seed``) is printed so that a failure can be replayed."""
    seed = crash_seed()
    print(f"crash test seed: {seed} (replay with ABG_CRASH_SEED={seed})")
    rng = random.Random(seed)
    artists = make_artists(total, seed=rng.randrange(2**32))
    db.seed(artists)
    csv_path = write_csv(tmp_path / "artists.csv", artists)
    fake.latency = latency
    return CrashJob(seed, rng, artists, csv_path, tmp_path / "out.jsonl")


@dataclass(frozen=True)
class KillPlan:
    """When to kill one run: ``delay`` seconds after ``trigger`` returned True."""

    phase: str
    trigger: Callable[[], bool]
    delay: float


def plan_kill(rng: random.Random, index: int, out: Path, total: int) -> KillPlan:
    """The moment of kill number ``index``: at startup, mid-run, or near the end.

    Startup kills land at a random time after spawn (during imports, checks or the repair
    of the previous crash). Mid-run kills wait until the run has appended a random number
    of new lines (together about 60% of the job, the rest comes from overshoot), then a
    random jitter, so they hit every stage of the per-artist pipeline. End kills wait until
    the job is (nearly) done and so hit the last artists, the final reconcile, or a resume
    with nothing left to do.
    """
    lines_now = count_lines(out)
    if index >= KILLS - END_KILLS or lines_now >= total:
        target = total - rng.randint(0, WORKERS)
        if lines_now >= target:
            return KillPlan("end", lambda: True, rng.uniform(0, STARTUP_WINDOW))
        return KillPlan("end", lambda: count_lines(out) >= target, rng.uniform(0, JITTER))
    if rng.random() < STARTUP_SHARE:
        return KillPlan("startup", lambda: True, rng.uniform(0, STARTUP_WINDOW))
    mid_kills = (KILLS - END_KILLS) * (1 - STARTUP_SHARE)
    target = min(total, lines_now + rng.randint(1, max(1, int(2 * 0.6 * total / mid_kills))))
    return KillPlan("mid", lambda: count_lines(out) >= target, rng.uniform(0, JITTER))


def wait_for(trigger: Callable[[], bool], child: Child, timeout: float) -> None:
    """Poll ``trigger`` until it holds or the child exits; fail if nothing happens."""
    deadline = time.monotonic() + timeout
    while not trigger() and child.alive():
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the run made no progress for {timeout} s")
        time.sleep(0.005)


def kill_once(plan: KillPlan, args: list[str], env: dict[str, str]) -> bool:
    """Start a run and SIGKILL it as planned; True if the kill landed (it was running)."""
    child = Child.start(args, env)
    wait_for(plan.trigger, child, PROGRESS_TIMEOUT)
    time.sleep(plan.delay)
    child.kill()
    code, stderr = child.finish()
    # A run that finished before the planned moment must have finished well.
    assert code in (SIGKILLED, exit_codes.EXIT_SUCCESS), stderr
    return code == SIGKILLED


@pytest.mark.slow
def test_random_sigkills_then_resume_lose_nothing_and_pay_little(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """SIGKILL a 1,200-artist job at 30+ random moments, resuming after each one.

    Proves that no moment of a run is unsafe to be killed at: after every kill the state is
    a valid crash state (committed only), and after the last resume the JSONL mirrors the
    database exactly (exact mirror, whole lines) with every artist committed once, in one
    job. It also proves the resume pays no second time for committed bios: each kill may
    waste at most one request per thread of the pool (``pool_threads(WORKERS)``: the
    requests in flight and the answers waiting for their commit; queued artists of the
    2 x workers window have not called the API yet), so extra requests <= kills x threads.
    """
    job = crash_job(tmp_path, database, fake_openai, ARTISTS, LATENCY)
    seed, rng, artists, csv_path, out = job.seed, job.rng, job.artists, job.csv_path, job.out
    args, env = job_args(csv_path, out, WORKERS), db_env(database)
    threads = pool_threads(WORKERS)

    kills, attempts, phases = 0, 0, []
    while kills < KILLS and attempts < 3 * KILLS:
        attempts += 1
        plan = plan_kill(rng, kills, out, ARTISTS)
        if kill_once(plan, args, env):
            kills += 1
            phases.append(plan.phase)
            assert_crash_state(out, database, threads)
    print(f"seed {seed}: {kills} kills in {attempts} runs: {Counter(phases)}, {phases}")
    assert kills >= KILLS, f"seed {seed}: only {kills} of {attempts} kills landed"
    print(f"seed {seed}: {count_lines(out)} of {ARTISTS} lines before the final resume")

    run_to_completion(args, env)
    assert_job_complete(out, database, artists)
    assert_verify_consistent(out, database)
    extra = fake_openai.total_requests - ARTISTS
    print(f"seed {seed}: {extra} extra requests (bound {kills} x {threads})")
    assert 0 <= extra <= kills * threads, f"seed {seed}: {extra} extra requests for {kills} kills"


# -- 1b. clean stops (which leave an input mark) between the kills ------------------------------

MARK_CYCLES = 5
MARK_USED = "resuming from the input mark"


def assert_mark_holds(out: Path, csv_path: Path, db: TestDatabase) -> InputMark | None:
    """Every artist of the input before the manifest's mark has a ledger row, the mark's
    hash and counts describe those bytes: a resume may start reading there."""
    manifest = read_manifest(JobPaths(out))
    mark = None if manifest is None else manifest.input_mark
    if mark is None:
        return None
    prefix = csv_path.with_name("prefix.csv")
    prefix.write_bytes(csv_path.read_bytes()[: mark.offset])
    assert prefix_sha256(prefix, mark.offset) == mark.sha256
    before = [artist.artist_id for artist in ArtistReader(prefix)]
    missing = set(before) - set(ledger_ids(db))
    assert not missing, f"the mark is ahead of the ledger: {sorted(missing)[:5]}"
    assert len(before) == mark.done
    assert prefix.read_bytes().count(b"\n") == mark.lines
    return mark


def stop_once(args: list[str], env: dict[str, str], out: Path, lines: int) -> tuple[int, str]:
    """Start a run and SIGTERM it once the JSONL has ``lines`` lines; (exit code, stderr)."""
    child = Child.start(args, env)
    wait_for(lambda: count_lines(out) >= lines, child, PROGRESS_TIMEOUT)
    if child.alive():
        child.proc.send_signal(signal.SIGTERM)
    return child.finish()


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_stops_and_kills_alternate_and_every_input_mark_holds(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI, processes: str
) -> None:
    """Runs stopped by SIGTERM (each leaves an input mark) alternate with runs SIGKILLed at
    random moments, every one a resume of the same job, with one worker process and with
    two: after every run the manifest's mark is behind the ledger (every artist before it
    committed), the runs after the first stop start from a mark, each kill leaves a valid
    crash state, and the last resume leaves every artist committed once, an exact mirror
    and at most one paid request per pool thread and kill."""
    total = 1500
    job = crash_job(tmp_path, database, fake_openai, total, LATENCY)
    seed, rng, artists, csv_path, out = job.seed, job.rng, job.artists, job.csv_path, job.out
    args = job_args(csv_path, out, WORKERS, "--processes", processes)
    env, threads = db_env(database), pool_threads(WORKERS)
    step = total // (3 * MARK_CYCLES)
    kills = from_mark = 0
    for _ in range(MARK_CYCLES):
        code, stderr = stop_once(args, env, out, count_lines(out) + rng.randint(step // 2, step))
        assert code in (exit_codes.EXIT_INTERRUPTED, exit_codes.EXIT_SUCCESS), stderr
        from_mark += MARK_USED in stderr
        assert assert_mark_holds(out, csv_path, database) is not None
        target = count_lines(out) + rng.randint(step // 2, step)
        plan = KillPlan("mid", lambda t=target: count_lines(out) >= t, rng.uniform(0, JITTER))
        if kill_once(plan, args, env):
            kills += 1
            assert_crash_state(out, database, threads)
        assert_mark_holds(out, csv_path, database)
    assert from_mark == MARK_CYCLES - 1, "every stop after the first began at a mark"
    print(f"seed {seed}: {kills} kills, {count_lines(out)} of {total} lines before the end")

    result = run_to_completion(args, env)
    assert MARK_USED in result.stderr
    assert_job_complete(out, database, artists)
    mark = assert_mark_holds(out, csv_path, database)
    assert mark is not None and mark.done == total
    extra = fake_openai.total_requests - total
    assert 0 <= extra <= kills * threads, f"seed {seed}: {extra} extra requests for {kills} kills"


# -- 2. deterministic fault points --------------------------------------------------------------

SMALL_JOB = 20
FAULT_AT = 5


@dataclass(frozen=True)
class FaultRun:
    """A job killed by the fault shim: where it stands and whom the fault hit."""

    artists: list[ArtistData]
    csv_path: Path
    out: Path
    report: dict


def run_with_fault(
    tmp_path: Path, db: TestDatabase, fault: str, workers: int, count: int = SMALL_JOB
) -> FaultRun:
    """Start a job with ``ABG_FAULT=fault``; require that it died by SIGKILL."""
    artists = make_artists(count, seed=31)
    db.seed(artists)
    csv_path = write_csv(tmp_path / "artists.csv", artists)
    out = tmp_path / "out.jsonl"
    report_path = tmp_path / "fault.json"
    result = run_process(
        job_args(csv_path, out, workers), env=shim_env(db, fault, report_path), timeout=120
    )
    assert result.code == SIGKILLED, f"the fault {fault} did not fire:\n{result.stderr}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["artist_id"] in {a.artist_id for a in artists}
    return FaultRun(artists, csv_path, out, report)


def name_of(run: FaultRun) -> str:
    """The name of the artist the fault hit."""
    return next(a.name for a in run.artists if a.artist_id == run.report["artist_id"])


def assert_fault_state(run: FaultRun, db: TestDatabase, point: str, workers: int) -> None:
    """The crash state each fault point must leave (exact with one worker)."""
    line_ids, committed = assert_crash_state(run.out, db, workers)
    victim = run.report["artist_id"]
    assert victim in committed, "the artist being written must have been committed first"
    data = run.out.read_bytes()
    if point == "after_commit":
        assert victim not in line_ids
        assert data.endswith(b"\n")
    elif point == "mid_write":
        assert victim not in line_ids
        assert not data.endswith(b"\n"), "the file should end in the torn half line"
        assert data[data.rfind(b"\n") + 1 :].startswith(b'{"artist_id": "' + victim.encode())
    else:  # before_fsync: the line is whole (the page cache survives a process crash)
        assert victim in line_ids
        assert data.endswith(b"\n")
    if workers == 1:  # one artist at a time: the state is exact
        lines = FAULT_AT if point == "before_fsync" else FAULT_AT - 1
        assert (len(line_ids), len(committed)) == (lines, FAULT_AT)


def resume_and_check(run: FaultRun, db: TestDatabase, fake: FakeOpenAI, workers: int) -> None:
    """``--resume`` repairs the crash from the database and finishes the job."""
    run_to_completion(job_args(run.csv_path, run.out, workers), db_env(db))
    assert_job_complete(run.out, db, run.artists)
    # The victim's line was rendered from its committed ledger row: no second API call.
    assert fake.calls(name_of(run)) == 1
    assert fake.succeeded(name_of(run)) == 1
    # Only requests in flight at the kill may be paid twice (none with one worker).
    assert fake.total_requests - len(run.artists) <= workers - 1


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("point", ["after_commit", "mid_write", "before_fsync"])
def test_kill_at_fault_point_then_resume(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI, point: str, workers: int
) -> None:
    """SIGKILL at an exact point of the commit -> append -> fsync sequence, then resume.

    after_commit: committed, not appended: the ledger has the bio, the JSONL does not
    (committed only still holds), and the resume appends the line rendered from the database
    without calling the API (exact mirror). mid_write: the file ends in half a line; the
    resume cuts it and appends the whole line from the database (whole lines). before_fsync:
    the line is whole but unsynced; the resume keeps it and does not add a second line for
    the artist.
    """
    fake_openai.latency = 0.01
    run = run_with_fault(tmp_path, database, f"{point}:{FAULT_AT}", workers)
    assert_fault_state(run, database, point, workers)
    resume_and_check(run, database, fake_openai, workers)


def test_kill_while_repairing_then_resume(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A crash during the repair itself is repaired by the next start.

    The first run dies after its 5th commit (the line is missing); the second dies half-way
    through its first write, which is the repair appending that missing line; the third
    finishes. The victim is still paid for once and the file mirrors the database.
    """
    run = run_with_fault(tmp_path, database, f"after_commit:{FAULT_AT}", workers=1)
    repair = run_process(
        job_args(run.csv_path, run.out, 1),
        env=shim_env(database, "mid_write:1", tmp_path / "repair.json"),
        timeout=120,
    )
    assert repair.code == SIGKILLED, repair.stderr
    torn = json.loads((tmp_path / "repair.json").read_text(encoding="utf-8"))
    assert torn["artist_id"] == run.report["artist_id"], "the first write must be the repair"
    assert not run.out.read_bytes().endswith(b"\n")
    assert fake_openai.total_requests == FAULT_AT  # the repairing run called nobody
    resume_and_check(run, database, fake_openai, workers=1)


def test_fault_shim_is_inert_without_a_fault(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """With the shim on PYTHONPATH but no ABG_FAULT, a job runs normally (so the fault
    tests above measure the fault, not the shim)."""
    artists = make_artists(10, seed=32)
    database.seed(artists)
    csv_path = write_csv(tmp_path / "artists.csv", artists)
    out = tmp_path / "out.jsonl"
    env = shim_env(database, "", tmp_path / "unused.json")
    run_to_completion(job_args(csv_path, out, 2), env)
    assert_job_complete(out, database, artists)
    assert len(read_jsonl(out)) == 10
    assert not (tmp_path / "unused.json").exists()
