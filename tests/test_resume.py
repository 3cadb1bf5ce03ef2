"""``--resume``, ``--overwrite`` and the retry cap, through the CLI (run in-process).

Real PostgreSQL (``database``), the fake OpenAI server over HTTP (``fake_openai``). A run is
stopped early by a rule that makes later requests fail with ``insufficient_quota`` (exit 5),
which is deterministic: exactly the first ``k`` artists are committed.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.models import ArtistData

from .support.checks import assert_mirror, read_jsonl
from .support.cli import CliResult, Job, MakeJob, summary_figure
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI

PROMPT = "pmpt_resume"
# No SDK retries and a short timeout: a scripted failure costs exactly one request.
FAST = ["--max-retries", "0", "--request-timeout", "5"]
WORKERS = ["--max-workers", "4"]


def _start(job: Job, *extra: str, env: dict[str, str | None] | None = None) -> CliResult:
    """Start a new job on the job's CSV writing ``out.jsonl`` in the current directory."""
    return job.run(*job.input_args("--prompt-id", PROMPT, *WORKERS, *FAST, *extra), env=env)


def _resume(job: Job, *extra: str, env: dict[str, str | None] | None = None) -> CliResult:
    """``--resume`` alone (the job recorded beside ``out.jsonl``)."""
    return job.run("--resume", *WORKERS, *FAST, *extra, env=env)


def _stop_after(fake: FakeOpenAI, committed: int) -> None:
    """Let ``committed`` requests succeed, then answer every request with insufficient_quota."""
    fake.add_rule("ok", times=committed)
    fake.add_rule("insufficient_quota")


def _assert_paid_once(fake: FakeOpenAI, artists: list[ArtistData]) -> None:
    """Every artist got exactly one successful (billed) answer over the whole test."""
    paid = {a.name: fake.succeeded(a.name) for a in artists}
    assert paid == {a.name: 1 for a in artists}


def _ids(artists: list[ArtistData]) -> set[str]:
    return {a.artist_id for a in artists}


def _jsonl_line(artist_id: str, name: str, text: str, **fields: object) -> bytes:
    """One line in the legacy record format (keys in the legacy order)."""
    record: dict[str, object] = {
        "artist_id": artist_id,
        "artist_name": name,
        "request": {
            "prompt_id": PROMPT,
            "variables": {"artist_name": name, "artist_data": "No additional data provided"},
        },
        "response_text": text,
        "response_id": f"resp_{uuid.uuid4().hex}",
        "created": 1_700_000_000,
        "db_status": "updated",
        "error": None,
    }
    record.update(fields)
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def test_resume_after_a_quota_stop_processes_only_the_rest(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A run stopped by exhausted quota, then ``--resume``: only the remaining artists are
    requested, the log says how many were already done, the JSONL mirrors the database and
    no artist is paid for twice."""
    job = make_job(30, seed=101)
    artists = job.artists
    _stop_after(fake_openai, 10)
    first = _start(job)
    assert first.code == exit_codes.EXIT_RUN_ABORTED, first.stderr
    assert len(assert_mirror(job.out, database)) == 10

    fake_openai.clear_rules()
    before = fake_openai.total_requests
    second = job.run("--resume", *job.input_args(*WORKERS, *FAST))

    assert second.code == exit_codes.EXIT_SUCCESS, second.stderr
    assert "resumed: 10 already done, about 20 to go" in second.stderr
    assert summary_figure(second, "already done") == "10"
    assert fake_openai.total_requests - before == 20  # only the rest was requested
    records = assert_mirror(job.out, database)
    assert {r["artist_id"] for r in records} == _ids(artists)
    _assert_paid_once(fake_openai, artists)


def test_resume_twice_after_a_complete_run_does_nothing_quickly(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """After a complete run, ``--resume`` twice in a row: no request, exit 0, fast, and the
    output is left byte-identical."""
    job = make_job(25, seed=102)
    artists = job.artists
    assert _start(job).code == exit_codes.EXIT_SUCCESS
    content = job.out.read_bytes()
    requests = fake_openai.total_requests
    assert requests == len(artists)

    for _ in range(2):
        started = time.monotonic()
        result = _resume(job)
        elapsed = time.monotonic() - started
        assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
        assert f"resumed: {len(artists)} already done, about 0 to go" in result.stderr
        assert fake_openai.total_requests == requests
        # "Nothing left to do exits quickly": one DB check, one scan (in-process here, so no
        # interpreter start). Generous on purpose (a loaded CI box), yet far below a run that
        # did any work.
        assert elapsed < 5.0, f"--resume with nothing to do took {elapsed:.1f} s"
    assert job.out.read_bytes() == content
    assert_mirror(job.out, database)


def test_resume_alone_continues_the_recorded_job(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """``--resume`` with neither --input nor --prompt-id continues the job of out.job.json:
    same input file, same prompt, same job id."""
    job = make_job(16, seed=103)
    artists = job.artists
    _stop_after(fake_openai, 6)
    assert _start(job).code == exit_codes.EXIT_RUN_ABORTED
    manifest = json.loads((job.dir / "out.job.json").read_text(encoding="utf-8"))
    assert Path(manifest["input"]) == job.csv.resolve()

    fake_openai.clear_rules()
    result = _resume(job)

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert "resumed: 6 already done" in result.stderr
    records = assert_mirror(job.out, database)
    assert {r["artist_id"] for r in records} == _ids(artists)
    assert {r["request"]["prompt_id"] for r in records} == {PROMPT}
    assert {str(row["job_id"]) for row in database.ledger()} == {manifest["job_id"]}
    _assert_paid_once(fake_openai, artists)


@pytest.mark.parametrize(
    ("flags", "recorded"),
    [
        (["--prompt-id", "pmpt_other"], repr(PROMPT)),
        (["--db-table", "other_artists"], "'artists'"),
        (["--test-mode"], "'artists'"),
    ],
    ids=["prompt-id", "db-table", "test-mode"],
)
def test_resume_refuses_a_conflicting_job_setting(
    make_job: MakeJob,
    fake_openai: FakeOpenAI,
    flags: list[str],
    recorded: str,
) -> None:
    """``--resume`` with another prompt or table than the job's is refused (exit 2) with a
    message naming the recorded value; nothing is requested and the output is untouched."""
    job = make_job(12, seed=104)
    _stop_after(fake_openai, 4)
    assert _start(job).code == exit_codes.EXIT_RUN_ABORTED
    fake_openai.clear_rules()
    content = job.out.read_bytes()
    requests = fake_openai.total_requests

    result = _resume(job, *flags)

    assert result.code == exit_codes.EXIT_INPUT_ERROR, result.stderr
    assert "started with" in result.stderr and recorded in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert fake_openai.total_requests == requests
    assert job.out.read_bytes() == content


def test_resume_accepts_a_safe_override(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """``--max-workers`` does not define the job: ``--resume --max-workers 2`` finishes it,
    with at most 2 requests in flight."""
    job = make_job(14, seed=105)
    artists = job.artists
    _stop_after(fake_openai, 4)
    assert _start(job).code == exit_codes.EXIT_RUN_ABORTED
    fake_openai.clear_rules()
    fake_openai.reset_counts()
    fake_openai.latency = 0.02

    result = job.run("--resume", "--max-workers", "2", *FAST)

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert fake_openai.total_requests == 10
    assert fake_openai.concurrent_max <= 2
    assert len(assert_mirror(job.out, database)) == len(artists)


def test_resume_with_nothing_to_resume_and_no_input(
    make_job: MakeJob, fake_openai: FakeOpenAI
) -> None:
    """``--resume`` in a directory without a job and without --input: exit 2, a message that
    says there is nothing to resume and how to start, and no job files created."""
    job = make_job(0)
    result = job.run("--resume", "--prompt-id", PROMPT)

    assert result.code == exit_codes.EXIT_INPUT_ERROR, result.stderr
    assert "Nothing to resume" in result.stderr and "--input" in result.stderr
    assert "Traceback" not in result.stderr
    assert not job.out.exists()
    assert not (job.dir / "out.job.json").exists()
    assert fake_openai.total_requests == 0


def test_resume_adopts_a_legacy_jsonl(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A hand-written legacy out.jsonl (no manifest) with good lines, failed lines (non-empty
    ``error``) and a database failure (``db_status: "error"``, ``error: null``): resume
    requests only the failed and the new artists and leaves the legacy bytes untouched."""
    job = make_job(12, seed=106)
    artists = job.artists
    good, failed, db_error, fresh = artists[:5], artists[5:7], artists[7], artists[8:]
    legacy = b"".join(
        [
            *(_jsonl_line(a.artist_id, a.name, f"Legacy bio of {a.name}.") for a in good),
            *(
                _jsonl_line(
                    a.artist_id,
                    a.name,
                    "",
                    response_id="",
                    db_status=None,
                    error="APIError: The server had an error",
                )
                for a in failed
            ),
            _jsonl_line(
                db_error.artist_id, db_error.name, "A bio lost by the DB.", db_status="error"
            ),
        ]
    )
    out = job.out
    out.write_bytes(legacy)

    result = _start(job, "--resume")

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    data = out.read_bytes()
    assert data.startswith(legacy), "the legacy lines must stay byte-identical"
    redone = [*failed, db_error, *fresh]
    assert {a.name: fake_openai.calls(a.name) for a in artists} == {
        **{a.name: 0 for a in good},
        **{a.name: 1 for a in redone},
    }
    new_records = [json.loads(line) for line in data[len(legacy) :].splitlines()]
    assert sorted(r["artist_id"] for r in new_records) == sorted(_ids(redone))
    ledger = {row["artist_id"]: row for row in database.ledger()}
    assert set(ledger) == _ids(redone)
    assert all(r["response_text"] == ledger[r["artist_id"]]["response_text"] for r in new_records)


def _replaced(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.replaced-*"))


def test_overwrite_moves_the_old_job_aside(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """``--overwrite`` renames out.jsonl, out.job.json and out.failures.jsonl to
    ``*.replaced-*`` (content intact), starts a new job id and deletes nothing."""
    job = make_job(8, seed=107)
    artists = job.artists
    fake_openai.add_rule("bad_request", name=artists[3].name)
    assert _start(job).code == exit_codes.EXIT_API_FAILURES
    names = ("out.jsonl", "out.job.json", "out.failures.jsonl")
    before = {name: (job.dir / name).read_bytes() for name in names}
    old_job = json.loads(before["out.job.json"])["job_id"]
    fake_openai.clear_rules()

    result = _start(job, "--overwrite")

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    for name in names:
        moved = _replaced(job.dir, name)
        assert len(moved) == 1, (name, sorted(p.name for p in job.dir.iterdir()))
        assert moved[0].read_bytes() == before[name]
    new_job = json.loads((job.dir / "out.job.json").read_text(encoding="utf-8"))["job_id"]
    assert new_job != old_job
    records = read_jsonl(job.out)
    assert {r["artist_id"] for r in records} == _ids(artists)
    assert {str(row["job_id"]) for row in database.ledger()} == {old_job, new_job}


def _attempts(job: Job, artist: ArtistData) -> list[int]:
    failures = read_jsonl(job.dir / "out.failures.jsonl")
    return [f["attempt"] for f in failures if f["artist_id"] == artist.artist_id]


def test_a_poison_artist_is_given_up_after_max_attempts(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """An artist that always gets ``bad_request`` is tried once per run; after 3 runs
    (default --max-attempts) a 4th ``--resume`` does not request it and says so;
    ``--retry-failed`` requests it again. Attempts are numbered 1, 2, 3(, 4)."""
    job = make_job(6, seed=108)
    artists = job.artists
    poison = artists[2]
    fake_openai.add_rule("bad_request", name=poison.name)

    assert _start(job).code == exit_codes.EXIT_API_FAILURES
    for run in (2, 3):
        result = _resume(job)
        assert result.code == exit_codes.EXIT_API_FAILURES, result.stderr
        assert fake_openai.calls(poison.name) == run
    assert _attempts(job, poison) == [1, 2, 3]

    fourth = _resume(job)
    assert fourth.code in (exit_codes.EXIT_SUCCESS, exit_codes.EXIT_API_FAILURES)
    assert fake_openai.calls(poison.name) == 3
    assert "failed 3 times already" in fourth.stderr and "--retry-failed" in fourth.stderr
    assert _attempts(job, poison) == [1, 2, 3]

    retried = _resume(job, "--retry-failed")
    assert retried.code == exit_codes.EXIT_API_FAILURES, retried.stderr
    assert fake_openai.calls(poison.name) == 4
    assert _attempts(job, poison) == [1, 2, 3, 4]
    others = [a for a in artists if a is not poison]
    assert {a.name: fake_openai.calls(a.name) for a in others} == {a.name: 1 for a in others}
    assert len(assert_mirror(job.out, database)) == len(others)


def test_resume_without_database_uses_the_jsonl(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """A ``--no-db`` job resumes from the JSONL alone: the rest is requested once, a further
    resume requests nothing, and a DATABASE_URL appearing later does not turn the job into
    a database job."""
    job = make_job(15, seed=109, database=False)
    artists = job.artists
    _stop_after(fake_openai, 5)
    assert _start(job, "--no-db").code == exit_codes.EXIT_RUN_ABORTED
    assert len(read_jsonl(job.out)) == 5
    fake_openai.clear_rules()
    before = fake_openai.total_requests

    second = _resume(job)
    assert second.code == exit_codes.EXIT_SUCCESS, second.stderr
    assert "resumed: 5 already done" in second.stderr
    assert fake_openai.total_requests - before == 10
    records = read_jsonl(job.out)
    assert sorted(r["artist_id"] for r in records) == sorted(_ids(artists))
    assert {r["db_status"] for r in records} == {"null"}

    # DATABASE_URL is set now; the job stays JSONL-only
    third = _resume(job, env={"DATABASE_URL": database.url})
    assert third.code == exit_codes.EXIT_SUCCESS, third.stderr
    assert fake_openai.total_requests - before == 10
    assert database.ledger() == []
    _assert_paid_once(fake_openai, artists)


def test_resume_restores_lines_lost_after_commit_from_the_database(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    """The last 3 lines of a complete run's JSONL are deleted (a crash after COMMIT, before
    the append): ``--resume`` appends them again from the database, byte for byte, without
    any API call."""
    job = make_job(10, seed=110)
    artists = job.artists
    assert _start(job).code == exit_codes.EXIT_SUCCESS
    out = job.out
    lines = out.read_bytes().splitlines(keepends=True)
    kept, lost = lines[:-3], lines[-3:]
    out.write_bytes(b"".join(kept))
    requests = fake_openai.total_requests

    result = _resume(job)

    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert fake_openai.total_requests == requests
    restored = out.read_bytes().splitlines(keepends=True)
    assert restored[: len(kept)] == kept
    assert sorted(restored[len(kept) :]) == sorted(lost)
    assert len(assert_mirror(out, database)) == len(artists)


def test_a_line_without_ledger_row_stops_resume(make_job: MakeJob, fake_openai: FakeOpenAI) -> None:
    """A JSONL line for an artist the database never committed (a fabricated line): resume
    stops with exit 6 naming the id, before any API call, and leaves the file as it is."""
    job = make_job(12, seed=111)
    _stop_after(fake_openai, 4)
    assert _start(job).code == exit_codes.EXIT_RUN_ABORTED
    fake_openai.clear_rules()
    out = job.out
    stranger = str(uuid.uuid4())
    record = read_jsonl(out)[0] | {"artist_id": stranger, "response_id": "resp_fabricated"}
    with open(out, "ab") as handle:
        handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    content = out.read_bytes()
    requests = fake_openai.total_requests

    result = _resume(job)

    assert result.code == exit_codes.EXIT_OUT_OF_SYNC, result.stderr
    assert stranger in result.stderr
    assert "Traceback" not in result.stderr
    assert fake_openai.total_requests == requests
    assert out.read_bytes() == content
