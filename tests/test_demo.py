"""``make demo`` (``scripts/demo.sh``): the tool end to end against the stand-in API server.

The script runs as a real process, as ``make demo`` runs it, against the suite's PostgreSQL
(``TEST_DATABASE_URL``, so the shared server is neither started nor stopped here) and without
an OpenAI key. It must say that its bios come from a stand-in, show the run's summary,
``status`` and lines of the JSONL and of the table, and leave nothing behind: no stand-in
server process, no demo database, no temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .support.cli import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_make_demo_runs_the_example_against_the_stand_in_and_cleans_up(pg_admin_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DATABASE_URL"))}
    env |= {"TEST_DATABASE_URL": pg_admin_url, "PY": sys.executable}
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()

    # It says so at the start and at the end.
    assert "STAND-IN API server" in "\n".join(lines[:3])
    assert "came from the STAND-IN server, not from OpenAI" in "\n".join(lines[-8:])
    assert "stand-in-not-a-real-key" not in output, "the stand-in's key is never printed"
    assert "abg_test_pw" not in output, "no password is printed"

    # The run's summary, status, and lines of the JSONL and of the table.
    assert re.search(r"committed\s+26\b", output), output
    assert "status of out.jsonl" in result.stdout
    assert "  done              26 of 26 input artists" in result.stdout
    assert "  result            consistent (exit 0)" in result.stdout
    jsonl = [line for line in lines if line.startswith('{"artist_id": "')]
    assert len(jsonl) == 3
    table = lines[lines.index(next(x for x in lines if "SELECT name" in x)) + 1 :]
    assert table[0].startswith("  Amélie Duchêne") and "Amélie Duchêne is an artist" in table[0]

    # Nothing left behind: the stand-in server, the database, the temporary directory.
    pid = int(_found(r"stand-in API server \(pid (\d+)\)", result.stdout))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    database = _found(r"created the demo database (\S+)", result.stdout)
    with psycopg.connect(pg_admin_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        assert found.fetchone() is None
    work = _found(r"demo: removed (\S+)", result.stdout)
    assert not Path(work).exists()
    assert "left running" in result.stdout, "PostgreSQL it did not start is not stopped"


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} is not in the output"
    return match.group(1)
