"""``artist-bio-gen verify [--repair]``: every kind of JSONL/database mismatch is reported.

A clean 12-artist job is run once per test (real PostgreSQL, fake OpenAI), then its out.jsonl
is damaged by hand in one specific way and ``verify`` must name exactly that damage. The CLI
runs in-process (``main(["verify", ...])``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror
from .support.cli import CliResult, Job, MakeJob
from .support.database import TestDatabase

ARTISTS = 12
# The report's counters that describe a problem (all 0 for a consistent job).
PROBLEMS = (
    "missing in JSONL",
    "missing in database",
    "text differs",
    "duplicate ids",
    "unreadable lines",
    "torn tail bytes",
)
_COUNTER = re.compile(r"^  ([A-Za-z ]+?)\s+([\d,]+)$")


@dataclass
class CleanJob:
    """A completed job: its output and its lines, and the CLI to run on it."""

    job: Job
    out: Path
    lines: list[bytes]

    def verify(self, *extra: str) -> CliResult:
        return self.job.run("verify", "--output", str(self.out), *extra)

    def write_lines(self, lines: list[bytes]) -> None:
        self.out.write_bytes(b"".join(lines))

    def append(self, data: bytes) -> None:
        with open(self.out, "ab") as handle:
            handle.write(data)


@pytest.fixture
def job(make_job: MakeJob, database: TestDatabase) -> CleanJob:
    """A clean, complete job of 12 artists in out.jsonl."""
    new = make_job(ARTISTS, seed=401)
    result = new.run(*new.input_args("--prompt-id", "pmpt_verify"))
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    out = new.dir / "out.jsonl"
    assert len(assert_mirror(out, database)) == ARTISTS
    return CleanJob(new, out, out.read_bytes().splitlines(keepends=True))


def counters(report: str) -> dict[str, int]:
    """The ``label  value`` lines of a verify report."""
    found = {}
    for line in report.splitlines():
        match = _COUNTER.match(line)
        if match:
            found[match.group(1)] = int(match.group(2).replace(",", ""))
    return found


def _edited(line: bytes, **fields: object) -> bytes:
    record = json.loads(line) | fields
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _torn_tail(job: CleanJob) -> None:
    job.append(job.lines[0][:40])  # half a line, no newline


def _missing_line(job: CleanJob) -> None:
    job.write_lines(job.lines[:5] + job.lines[6:])


def _not_in_database(job: CleanJob) -> None:
    job.append(_edited(job.lines[0], artist_id=str(uuid.uuid4()), response_id="resp_fake"))


def _duplicate_line(job: CleanJob) -> None:
    job.append(job.lines[3])


def _text_differs(job: CleanJob) -> None:
    edited = _edited(job.lines[2], response_text="A bio edited by hand.")
    job.write_lines([*job.lines[:2], edited, *job.lines[3:]])


# (damage, the counter that must report it, its expected value)
DAMAGES: dict[str, tuple[Callable[[CleanJob], None], str, int]] = {
    "torn-tail": (_torn_tail, "torn tail bytes", 40),
    "missing-line": (_missing_line, "missing in JSONL", 1),
    "not-in-database": (_not_in_database, "missing in database", 1),
    "duplicate-line": (_duplicate_line, "duplicate ids", 1),
    "text-differs": (_text_differs, "text differs", 1),
}
REPAIRABLE = ("torn-tail", "missing-line")
NOT_REPAIRABLE = ("not-in-database", "duplicate-line", "text-differs")


def test_a_clean_job_is_consistent(job: CleanJob) -> None:
    """Right after a clean run, verify exits 0, says "consistent" and counts every line."""
    result = job.verify()
    assert result.code == exit_codes.EXIT_SUCCESS, result.stdout + result.stderr
    assert "consistent" in result.stdout
    report = counters(result.stdout)
    assert report["JSONL lines"] == report["committed rows"] == ARTISTS
    assert {name: report[name] for name in PROBLEMS} == dict.fromkeys(PROBLEMS, 0)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_mismatch_is_reported(job: CleanJob, damage: str) -> None:
    """Each kind of damage makes verify exit 6 with exactly its own counter raised."""
    damage_fn, counter, expected = DAMAGES[damage]
    damage_fn(job)

    result = job.verify()

    assert result.code == exit_codes.EXIT_OUT_OF_SYNC, result.stdout + result.stderr
    assert "DIFFERENT" in result.stdout
    report = counters(result.stdout)
    wanted = dict.fromkeys(PROBLEMS, 0) | {counter: expected}
    assert {name: report[name] for name in PROBLEMS} == wanted, result.stdout


@pytest.mark.parametrize("damage", REPAIRABLE)
def test_repair_fixes_a_torn_tail_and_missing_lines(job: CleanJob, damage: str) -> None:
    """``verify --repair`` cuts a torn tail / appends missing lines from the database (the
    same bytes as before); it and a following plain verify exit 0."""
    DAMAGES[damage][0](job)

    repaired = job.verify("--repair")
    again = job.verify()

    assert repaired.code == exit_codes.EXIT_SUCCESS, repaired.stdout + repaired.stderr
    assert again.code == exit_codes.EXIT_SUCCESS, again.stdout + again.stderr
    assert "consistent" in again.stdout
    assert sorted(job.out.read_bytes().splitlines(keepends=True)) == sorted(job.lines)


def test_repair_fixes_both_at_once(job: CleanJob) -> None:
    """A missing line and a torn tail together are both repaired by one ``--repair``."""
    _missing_line(job)
    _torn_tail(job)

    repaired = job.verify("--repair")

    assert repaired.code == exit_codes.EXIT_SUCCESS, repaired.stdout + repaired.stderr
    assert job.verify().code == exit_codes.EXIT_SUCCESS
    assert sorted(job.out.read_bytes().splitlines(keepends=True)) == sorted(job.lines)


@pytest.mark.parametrize("damage", NOT_REPAIRABLE)
def test_repair_leaves_what_it_cannot_repair(job: CleanJob, damage: str) -> None:
    """A line the database lacks, a duplicate or an edited text needs a human: ``--repair``
    still exits 6 and does not change the file."""
    DAMAGES[damage][0](job)
    damaged = job.out.read_bytes()

    result = job.verify("--repair")

    assert result.code == exit_codes.EXIT_OUT_OF_SYNC, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert job.out.read_bytes() == damaged
