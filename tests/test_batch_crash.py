"""Batch mode under SIGKILL: the real CLI as a subprocess, killed at exact points through the
test-only fault shim (``tests/faultshim``), then ``--resume``.

* A kill right after a batch was created and before its id was recorded: the next run finds
  the batch by its metadata and creates no second one.
* Ten kills (seeded) while a collector commits an output file (after a commit, halfway
  through a JSONL write, before its fsync), each followed by another collector: the final
  state is the one an uninterrupted collection gives (every artist committed once, with the
  answer its batch returned; the JSONL equal to the database, no line twice).

The kill test prints its seed; replay it with ``ABG_BATCH_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes

from .support.checks import assert_mirror
from .support.cli import ROOT, CliResult, Job, MakeJob
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI, bio_for

SHIM_DIR = Path(__file__).resolve().parent / "faultshim"
SIGKILLED = -signal.SIGKILL
MODEL = "gpt-4.1-mini"
WORKERS = 4

pytestmark = pytest.mark.timeout(300)


def shim(fault: str, report: Path) -> dict[str, str | None]:
    """Environment overrides arming the fault shim in the CLI subprocess."""
    return {
        "PYTHONPATH": os.pathsep.join([str(SHIM_DIR), str(ROOT)]),
        "ABG_FAULT": fault,
        "ABG_FAULT_REPORT": str(report),
    }


def killed(result: CliResult, what: str) -> None:
    assert result.code == SIGKILLED, f"{what} did not fire:\n{result.stderr}"


def batch_rows(db: TestDatabase) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(
            "SELECT chunk, state, batch_id, requests FROM artist_bio_batches ORDER BY chunk"
        ).fetchall()


def complete_lines(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


def assert_crash_state(job: Job) -> None:
    """Right after a kill: every whole line is a committed bio (with its text), no artist has
    two lines, at most the workers' bios are committed and not yet written."""
    assert job.database is not None
    ledger = {row["artist_id"]: row for row in job.database.ledger()}
    records = [json.loads(line) for line in complete_lines(job.out)]
    ids = [record["artist_id"] for record in records]
    assert len(ids) == len(set(ids)), "an artist has two lines"
    for record in records:
        assert record["artist_id"] in ledger, "a line without a committed bio"
        assert record["response_text"] == ledger[record["artist_id"]]["response_text"]
    assert len(set(ledger) - set(ids)) <= WORKERS


@pytest.mark.parametrize("nth", [1, 2])
def test_a_crash_after_create_before_record_is_found_by_metadata_on_resume(
    make_job: MakeJob, tmp_path: Path, nth: int
) -> None:
    job = make_job(20, seed=70 + nth)
    args = job.input_args("--mode", "batch", "--model", MODEL, "--batch-max-requests", "10")
    report = tmp_path / "fault.json"
    killed(job.run_process(*args, env=shim(f"after_batch_create:{nth}", report)), "the fault")
    fake, db = job.fake, job.database
    assert db is not None
    created = list(fake.batches.batches)
    assert len(created) == nth
    assert json.loads(report.read_text(encoding="utf-8"))["artist_id"] == created[-1].id
    rows = batch_rows(db)
    assert rows[nth - 1][1:3] == ("uploaded", None), "created, not recorded"
    assert len(rows) == nth, "the run died before the next request file"

    result = job.run("--resume")
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert f"batch {created[-1].id} was created for request file {nth}" in result.stderr
    assert len(fake.batches.batches) == 2, "no second batch for the same request file"
    assert fake.batches.calls["batches.create"] == 2
    assert [row[2] for row in batch_rows(db)] == [b.id for b in fake.batches.batches]
    job.run("--resume")
    records = assert_mirror(job.out, db)
    assert len(records) == 20 and fake.total_requests == 0
    assert all(row[1] == "ended" for row in batch_rows(db))


KILLS = 10
POINTS = ("after_commit", "mid_write", "before_fsync")


def crash_seed() -> int:
    text = os.environ.get("ABG_BATCH_CRASH_SEED")
    return int(text) if text else 20261202


@pytest.mark.slow
def test_ten_seeded_sigkills_while_collecting_then_resume_commit_everyone_once(
    make_job: MakeJob, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    seed = crash_seed()
    print(f"batch crash seed: {seed} (replay with ABG_BATCH_CRASH_SEED={seed})")
    rng = random.Random(seed)
    job = make_job(600, seed=rng.randrange(2**32))
    db = job.database
    assert db is not None
    result = job.run(
        *job.input_args("--mode", "batch", "--model", MODEL, "--batch-max-requests", "300")
    )
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    collect = ["--resume", "--max-workers", str(WORKERS)]

    kills = []
    for index in range(KILLS):
        left = len(job.artists) - len(db.ledger())
        point = POINTS[index % len(POINTS)] if index < len(POINTS) else rng.choice(POINTS)
        nth = rng.randint(1, max(1, left // 3))
        report = tmp_path / f"fault-{index}.json"
        result = job.run_process(*collect, env=shim(f"{point}:{nth}", report), timeout=120)
        killed(result, f"kill {index} ({point}:{nth}, seed {seed})")
        kills.append(f"{point}:{nth}")
        assert_crash_state(job)
    print(f"seed {seed}: kills {kills}; {len(db.ledger())} of 600 committed before the last run")
    assert len(db.ledger()) < 600, "the kills should land while there is work left"

    result = job.run(*collect)
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    records = assert_mirror(job.out, db)
    assert len(records) == 600 and len(job.out.read_bytes().splitlines()) == 600
    # The state an uninterrupted collection gives: each artist committed once, with the
    # answer its batch returned for it.
    answers = {
        line["custom_id"]: line["response"]["body"]["id"]
        for batch in fake_openai.batches.batches
        for line in fake_openai.batches.output_lines(batch)
    }
    ledger = db.ledger()
    assert len(ledger) == 600 == len({row["artist_id"] for row in ledger})
    assert {row["artist_id"]: row["response_id"] for row in ledger} == answers
    by_id = {a.artist_id: a for a in job.artists}
    assert all(r["response_text"] == bio_for(by_id[r["artist_id"]].name) for r in records)
    assert fake_openai.total_requests == 0 and len(fake_openai.batches.batches) == 2
    assert all(row[1] == "ended" for row in batch_rows(db))
    verified = job.run("verify")
    assert verified.code == exit_codes.EXIT_SUCCESS, verified.stdout
