"""A PostgreSQL restart in the middle of a run costs no artist (README, "Database faults");
committed only, exact mirror and whole lines hold throughout.

The test restarts (or stops for a few seconds) the real local cluster that serves the test
database, with ``pg_ctlcluster ... -m immediate`` (every connection is cut, the server runs
crash recovery), while the CLI subprocess is mid-run. It needs a local Debian-style cluster
(``pg_lsclusters``/``pg_ctlcluster``) and is skipped otherwise. Whatever happens, the server
is brought back up before the test ends, because every other test needs it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from artist_bio_gen import exit_codes

from .support.cli import summary_table
from .support.data import make_artists, write_csv
from .support.database import ReadyDatabases, TestDatabase
from .support.fake_openai import FakeOpenAI
from .test_crash_safety import (
    Child,
    assert_job_complete,
    assert_verify_consistent,
    count_lines,
    db_env,
    job_args,
    run_to_completion,
)

ARTISTS = 600
WORKERS = 8
LATENCY = 0.05  # 8 / 0.05 = 160 artists/s: the run spans a few seconds
RESTART_AFTER_LINES = 120
OUTAGE_SECONDS = 3.0
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Cluster:
    """A local cluster managed by postgresql-common."""

    version: str
    name: str
    port: int

    def ctl(self, action: str, *extra: str) -> None:
        """``pg_ctlcluster`` on this cluster (raises if it fails)."""
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]
        subprocess.run([*command, *extra], check=True, capture_output=True, timeout=120)


def find_cluster(admin_url: str) -> Cluster:
    """The local cluster serving ``admin_url``; skips the test when there is none."""
    parts = urlsplit(admin_url)
    host = parts.hostname
    if host not in LOCAL_HOSTS and not (host or "").startswith("/"):
        pytest.skip(f"TEST_DATABASE_URL points at a non-local server ({host}); cannot restart it")
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        pytest.skip("pg_ctlcluster/pg_lsclusters (postgresql-common) are not installed")
    port = parts.port or 5432
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            return Cluster(fields[0], fields[1], port)
    pytest.skip(f"no local cluster listens on port {port} (pg_lsclusters: {listing.strip()!r})")


def server_answers(url: str) -> bool:
    """True if a new connection can run a query."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def wait_until_up(url: str, timeout: float) -> bool:
    """Poll until the server accepts connections again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_answers(url):
            return True
        time.sleep(0.2)
    return False


def postmaster_started(url: str) -> object:
    """When the server last started (changes with every restart)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


@pytest.fixture
def cluster(pg_admin_url: str, ready_databases: ReadyDatabases) -> Iterator[Cluster]:
    """The local cluster; guaranteed to be up again after the test, pass or fail. The
    suite's background database copies wait meanwhile."""
    found = find_cluster(pg_admin_url)
    with ready_databases.paused():
        yield found
        if wait_until_up(pg_admin_url, 10):
            return
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", found.version, found.name, "start"],
            capture_output=True,
            timeout=120,
        )
        assert wait_until_up(pg_admin_url, 60), "PostgreSQL did not come back after the test"


def interrupt_database(cluster: Cluster, how: str, url: str) -> None:
    """Cut every connection: an immediate restart, or an immediate stop then a start."""
    if how == "restart":
        cluster.ctl("restart", "-m", "immediate")
    else:
        cluster.ctl("stop", "-m", "immediate")
        time.sleep(OUTAGE_SECONDS)
        cluster.ctl("start")
    assert wait_until_up(url, 60), "PostgreSQL did not come back"


def summary_count(stdout: str, what: str) -> int:
    """A figure of the final summary (e.g. ``committed``)."""
    return int(summary_table(stdout)[what][0].replace(",", ""))


def wait_for_lines(child: Child, out: Path, lines: int, timeout: float = 60) -> None:
    """Wait until the run has appended ``lines`` lines (it must still be running)."""
    deadline = time.monotonic() + timeout
    while count_lines(out) < lines:
        assert child.alive(), "the run ended before the database could be restarted"
        assert time.monotonic() < deadline, f"fewer than {lines} lines after {timeout} s"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "outage"])
def test_database_restart_mid_run_loses_no_artist(
    tmp_path: Path,
    database: TestDatabase,
    fake_openai: FakeOpenAI,
    cluster: Cluster,
    pg_admin_url: str,
    how: str,
) -> None:
    """Restart PostgreSQL (immediate mode) while a 600-artist run is committing.

    "restart": the server is gone for the length of a crash-recovery restart; "outage": it
    stays down for 3 s more. Proves that the pool replaces the dead connections, commits
    cut off mid-flight are retried (checked by id first), and the run still finishes with
    exit 0 and every artist committed once, the JSONL an exact mirror of the database. If
    the run does not survive, a --resume is still run and checked, so the report tells both
    whether the run survived and whether anything was lost.
    """
    artists = make_artists(ARTISTS, seed=41)
    database.seed(artists)
    csv_path = write_csv(tmp_path / "artists.csv", artists)
    out = tmp_path / "out.jsonl"
    fake_openai.latency = LATENCY
    args, env = job_args(csv_path, out, WORKERS), db_env(database)
    started_before = postmaster_started(pg_admin_url)

    child = Child.start(args, env)
    wait_for_lines(child, out, RESTART_AFTER_LINES)
    interrupt_database(cluster, how, pg_admin_url)
    lines_after_restart = count_lines(out)
    code, stderr = child.finish(timeout=180)
    print(f"run stderr (exit {code}, {lines_after_restart} lines after the {how}):\n{stderr}")

    assert postmaster_started(pg_admin_url) != started_before, "the server did not restart"
    assert lines_after_restart < ARTISTS, "the restart happened after the run's last commit"
    if code != exit_codes.EXIT_SUCCESS:
        run_to_completion(args, env)
        assert_job_complete(out, database, artists)
        pytest.fail(f"the run did not survive the {how} (exit {code}):\n{stderr}")
    assert summary_count(child.stdout, "committed") == ARTISTS, stderr
    assert summary_count(child.stdout, "failed") == 0, stderr
    assert_job_complete(out, database, artists)
    assert_verify_consistent(out, database)
    # Nobody was paid for twice: a commit cut off by the restart is retried, not re-asked.
    assert fake_openai.total_requests == ARTISTS
