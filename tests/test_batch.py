"""Batch mode (``--mode batch``), end to end in the test process: the CLI submits request files
to the fake's Batch API, ``--resume`` collects them into PostgreSQL and the JSONL.

Each test runs the real CLI (``make_job(...).run``) against the fake server (the real SDK
over HTTP, its Files and Batches endpoints) and a real database, then checks the job's state:
the exact mirror (``assert_mirror``), the batches table, the failures file, and what the fake
saw: no online request unless the test asks for one, no batch created twice.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.api.batches import CHUNK_KEY, JOB_KEY
from artist_bio_gen.api.request import PromptSettings, build_request
from artist_bio_gen.cli.main import create_argument_parser, exit_code_for
from artist_bio_gen.config import load_environment, resolve_config
from artist_bio_gen.core.processor import RunControl, Tally
from artist_bio_gen.core.runner import run_job
from artist_bio_gen.models import ArtistData, Outcome

from .support.checks import assert_legacy_record, assert_mirror, read_jsonl
from .support.cli import CliResult, Job, MakeJob, summary_figure
from .support.database import TestDatabase
from .support.fake_batches import FakeBatch
from .support.fake_openai import FakeOpenAI, bio_for

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-4.1-mini"
#: Fast polling for the tests that wait (--batch-wait, batch cancel --wait).
FAST_POLL = {"OPENAI_BATCH_POLL_INTERVAL": "0.05"}


# -- helpers --------------------------------------------------------------------------------------


def start(job: Job, *extra: str, env: dict[str, str] | None = None) -> CliResult:
    """A new batch job over the job's input."""
    return job.run(*job.input_args("--mode", "batch", "--model", MODEL, *extra), env=env)


def resume(job: Job, *extra: str, env: dict[str, str] | None = None) -> CliResult:
    return job.run("--resume", *extra, env=env)


def ok(result: CliResult, code: int = exit_codes.EXIT_SUCCESS) -> CliResult:
    assert result.code == code, result.stderr
    return result


def batch_rows(db: TestDatabase) -> list[dict]:
    """The job's rows of artist_bio_batches, by request file."""
    with db.connect() as conn:
        cur = conn.execute("SELECT * FROM artist_bio_batches ORDER BY chunk")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def item_count(db: TestDatabase) -> int:
    with db.connect() as conn:
        return int(conn.execute("SELECT count(*) FROM artist_bio_batch_items").fetchone()[0])


def request_lines(fake: FakeOpenAI, batch: FakeBatch) -> list[dict]:
    return fake.batches.input_lines(batch)


def ids_in(fake: FakeOpenAI, batch: FakeBatch) -> set[str]:
    return {line["custom_id"] for line in request_lines(fake, batch)}


def failures(job: Job) -> list[dict]:
    path = job.dir / "out.failures.jsonl"
    return read_jsonl(path) if path.exists() else []


def artist_named(job: Job, index: int) -> ArtistData:
    return job.artists[index]


def assert_complete(job: Job, count: int | None = None) -> list[dict]:
    """Every artist committed once and mirrored; every batch ended; no item left."""
    assert job.database is not None
    records = assert_mirror(job.out, job.database)
    expected = len(job.artists) if count is None else count
    assert len(records) == expected
    assert len(job.database.ledger()) == expected
    by_id = {a.artist_id: a for a in job.artists}
    for record in records:
        artist = by_id[record["artist_id"]]
        assert_legacy_record(record, artist)
        assert record["response_text"] == bio_for(artist.name)
    assert all(row["state"] == "ended" for row in batch_rows(job.database))
    assert item_count(job.database) == 0
    return records


# -- acceptance: 2,500 artists in 3 files, collected to an exact mirror, no online request --------


def test_2500_artists_in_3_request_files_collect_to_an_exact_mirror_without_online_requests(
    make_job: MakeJob,
) -> None:
    job = make_job(2500, seed=80)
    result = ok(start(job, "--batch-max-requests", "1000", "--max-workers", "8"))
    assert "--resume --output out.jsonl" in result.stdout, "the run says how to collect"
    fake, db = job.fake, job.database
    assert db is not None
    batches = fake.batches.batches
    assert [len(request_lines(fake, b)) for b in batches] == [1000, 1000, 500]

    # Every line is the artist's online request (plus the model), keyed by the artist id.
    settings = PromptSettings(model=MODEL)
    by_id = {a.artist_id: a for a in job.artists}
    seen: set[str] = set()
    for batch in batches:
        for line in request_lines(fake, batch):
            artist = by_id[line["custom_id"]]
            assert (line["method"], line["url"]) == ("POST", "/v1/responses")
            assert line["body"] == build_request(artist, settings)
            seen.add(artist.artist_id)
    assert seen == set(by_id)
    # Recorded before creation; each batch names its job and request file.
    rows = batch_rows(db)
    manifest = json.loads((job.dir / "out.job.json").read_text(encoding="utf-8"))
    assert manifest["format"] == 2 and manifest["settings"]["mode"] == "batch"
    assert [(r["chunk"], r["state"], r["requests"], r["batch_id"]) for r in rows] == [
        (i + 1, "submitted", n, b.id)
        for i, (n, b) in enumerate(zip([1000, 1000, 500], batches, strict=True))
    ]
    for i, batch in enumerate(batches):
        assert batch.metadata == {JOB_KEY: manifest["job_id"], CHUNK_KEY: str(i + 1)}
    assert db.ledger() == [] and job.out.read_bytes() == b""

    ok(resume(job, "--max-workers", "8"))
    assert_complete(job)
    assert fake.total_requests == 0, "no online request"
    ledger = db.ledger()
    assert {row["service_tier"] for row in ledger} == {"batch"}
    row = ledger[0]
    # Half the list price of gpt-4.1-mini (0.40 / 1.60 USD per million tokens).
    full = Decimal(row["input_tokens"]) * Decimal("0.4") + Decimal(row["output_tokens"]) * Decimal(
        "1.6"
    )
    assert row["cost_usd"] == (full / 2 / 1_000_000).quantize(Decimal("1e-9"))
    assert fake.batches.files_with_purpose("batch") == [], "uploaded inputs are deleted"
    assert not (job.dir / "out.batch-upload.jsonl").exists()
    assert not (job.dir / "out.batch-download.jsonl").exists()
    verified = job.run("verify")
    assert verified.code == 0, verified.stdout


def test_request_files_are_split_by_size_as_well(make_job: MakeJob) -> None:
    job = make_job(30, seed=81)
    ok(start(job, "--batch-max-bytes", "4096"))
    fake = job.fake
    sizes = [len(fake.batches.files[b.input_file_id].data) for b in fake.batches.batches]
    assert len(sizes) > 3 and all(size <= 4096 for size in sizes)
    assert sum(len(ids_in(fake, b)) for b in fake.batches.batches) == 30


# -- polling and the summary --------------------------------------------------------------------


def test_batches_still_running_are_a_normal_state_that_says_what_is_pending(
    make_job: MakeJob,
) -> None:
    job = make_job(12, seed=82)
    job.fake.batches.script(polls=2)
    job.fake.batches.script(polls=0)
    ok(start(job, "--batch-max-requests", "6"))
    first, second = job.fake.batches.batches
    result = ok(resume(job))
    assert "1 open (6 requests)" in result.stdout
    assert first.id in result.stdout and second.id in result.stdout
    assert "in_progress" in result.stdout and "completed" in result.stdout
    assert "about $" in result.stdout and "batch prices" in result.stdout
    assert "run `artist-bio-gen --resume --output out.jsonl` later" in result.stdout
    assert job.database is not None
    assert [r["status"] for r in batch_rows(job.database)] == ["in_progress", "completed"]
    ok(resume(job))
    result = ok(resume(job))
    assert "0 open" in result.stdout and "next" not in result.stdout
    assert_complete(job)


def test_batch_wait_polls_until_every_batch_is_collected(make_job: MakeJob) -> None:
    job = make_job(10, seed=83)
    job.fake.batches.script(polls=3)
    ok(start(job, "--batch-wait", "60", env=FAST_POLL))
    assert_complete(job)
    assert job.fake.batches.calls["batches.retrieve"] == 4


# -- acceptance: expired, a 400 up to the cap, token_limit_exceeded ------------------------------


def test_an_expired_batch_with_partial_output_resubmits_the_remainder_and_finishes(
    make_job: MakeJob,
) -> None:
    job = make_job(20, seed=84)
    job.fake.batches.script(outcome="expired", answered=12, shuffle=False)
    ok(start(job))
    (first,) = job.fake.batches.batches
    order = [line["custom_id"] for line in request_lines(job.fake, first)]
    result = ok(resume(job))
    assert "12 committed" in result.stdout and "8 to submit again" in result.stdout
    assert job.database is not None
    assert len(job.database.ledger()) == 12
    _, second = job.fake.batches.batches
    assert ids_in(job.fake, second) == set(order[12:]), "exactly the remainder, in a new batch"
    ok(resume(job))
    assert_complete(job)
    assert failures(job) == [], "an expired request is not held against its artist"
    rows = batch_rows(job.database)
    assert [(r["status"], r["committed"], r["resubmit"]) for r in rows] == [
        ("expired", 12, 8),
        ("completed", 8, 0),
    ]


def test_a_400_line_is_recorded_retried_up_to_the_cap_then_given_up(make_job: MakeJob) -> None:
    job = make_job(8, seed=85)
    poison = artist_named(job, 3)
    job.fake.add_rule("bad_request", name=poison.name)
    ok(start(job, "--max-attempts", "3"))
    for attempt in (1, 2, 3):
        result = ok(resume(job, "--max-attempts", "3"), exit_codes.EXIT_API_FAILURES)
        recorded = failures(job)
        assert [(f["artist_id"], f["code"], f["attempt"]) for f in recorded][-1] == (
            poison.artist_id,
            "bad_request",
            attempt,
        )
        assert len(recorded) == attempt
        assert recorded[-1]["batch_id"] == job.fake.batches.batches[attempt - 1].id
        assert "HTTP 400" in recorded[-1]["reason"]
        resubmitted = attempt < 3
        assert len(job.fake.batches.batches) == attempt + (1 if resubmitted else 0), result.stderr
        if resubmitted:
            assert ids_in(job.fake, job.fake.batches.batches[-1]) == {poison.artist_id}
    result = ok(resume(job, "--max-attempts", "3"))
    assert len(job.fake.batches.batches) == 3, "given up: not submitted again"
    assert summary_figure(result, "given up") == "1"
    assert job.fake.batch_calls(poison.name) == 3
    assert len(failures(job)) == 3
    records = assert_mirror(job.out, job.database) if job.database else []
    assert len(records) == 7 and poison.artist_id not in {r["artist_id"] for r in records}
    # --retry-failed gives it another try.
    job.fake.clear_rules()
    ok(resume(job, "--max-attempts", "3", "--retry-failed"))
    ok(resume(job))
    assert_complete(job)


def test_a_batch_failed_for_a_full_token_queue_is_resubmitted_later_in_smaller_files(
    make_job: MakeJob,
) -> None:
    job = make_job(20, seed=86)
    job.fake.batches.script(outcome="failed", error_code="token_limit_exceeded")
    ok(start(job))
    result = ok(resume(job), exit_codes.EXIT_LIMIT_REACHED)
    assert "token_limit_exceeded" in result.stderr
    assert len(job.fake.batches.batches) == 1, "not in the run that saw the queue full"
    assert job.database is not None
    (row,) = batch_rows(job.database)
    assert (row["state"], row["status"], row["resubmit"]) == ("ended", "failed", 20)
    assert row["error"].startswith("token_limit_exceeded: Enqueued token limit reached")
    ok(resume(job))
    sizes = [len(ids_in(job.fake, b)) for b in job.fake.batches.batches[1:]]
    assert sizes == [10, 10], "half the size of the failed file"
    ok(resume(job))
    assert_complete(job)
    # Once a batch got going, files are full size again.
    assert [r["requests"] for r in batch_rows(job.database)] == [20, 10, 10]


def test_a_batch_failed_validation_stops_with_exit_5_and_is_submitted_again(
    make_job: MakeJob,
) -> None:
    job = make_job(6, seed=87)
    job.fake.batches.script(outcome="failed", error_code="invalid_request")
    ok(start(job))
    result = ok(resume(job), exit_codes.EXIT_RUN_ABORTED)
    assert (
        "failed as a whole (invalid_request: The batch input file is not valid.)" in result.stderr
    )
    assert len(job.fake.batches.batches) == 1
    ok(resume(job))
    assert len(job.fake.batches.batches) == 2
    ok(resume(job))
    assert_complete(job)


def test_429_5xx_empty_and_unserved_lines_go_again_and_only_some_count(
    make_job: MakeJob,
) -> None:
    job = make_job(10, seed=88)
    limited, broken, empty, lost = (artist_named(job, i) for i in (1, 2, 3, 4))
    job.fake.add_rule("rate_limit", name=limited.name, times=1)
    job.fake.add_rule("server_error", name=broken.name, times=1)
    job.fake.add_rule("empty", name=empty.name, times=1)
    job.fake.add_rule("hang", name=lost.name, times=1)
    ok(start(job))
    ok(resume(job), exit_codes.EXIT_API_FAILURES)
    second = job.fake.batches.batches[1]
    assert ids_in(job.fake, second) == {a.artist_id for a in (limited, broken, empty, lost)}
    recorded = {f["artist_id"]: f["code"] for f in failures(job)}
    assert recorded == {broken.artist_id: "server_error", empty.artist_id: "empty_response"}
    ok(resume(job))
    assert_complete(job)


def test_a_systemic_error_line_stops_submitting_with_its_exit_code(make_job: MakeJob) -> None:
    job = make_job(6, seed=89)
    job.fake.add_rule("not_found", name=artist_named(job, 0).name, times=1)
    ok(start(job))
    result = ok(resume(job), exit_codes.EXIT_CONFIG_ERROR)
    assert "HTTP 404" in result.stderr
    assert len(job.fake.batches.batches) == 1 and failures(job) == []
    ok(resume(job))
    ok(resume(job))
    assert_complete(job)


# -- exactly once ----------------------------------------------------------------------------


def test_an_answer_given_twice_in_an_output_file_is_committed_and_written_once(
    make_job: MakeJob,
) -> None:
    job = make_job(12, seed=90)
    job.fake.batches.script(duplicates=4)
    ok(start(job))
    ok(resume(job))
    records = assert_complete(job)
    output = job.fake.batches.output_lines(job.fake.batches.batches[0])
    assert len(output) == 16
    answered = {}
    for line in output:
        answered.setdefault(line["custom_id"], set()).add(line["response"]["body"]["id"])
    for record in records:
        assert record["response_id"] in answered[record["artist_id"]]


def test_an_artist_in_a_second_output_file_is_not_committed_again(
    make_job: MakeJob, tmp_path: Path
) -> None:
    """Another batch of the job answers artists committed already (as a batch the job lost
    track of would): collecting it writes nothing."""
    job = make_job(6, seed=91)
    ok(start(job))
    ok(resume(job))
    assert_complete(job)
    before = job.out.read_bytes()
    db = job.database
    assert db is not None
    job_id = json.loads((job.dir / "out.job.json").read_text(encoding="utf-8"))["job_id"]
    # A second batch over the same artists, recorded as request file 2 of the job.
    lines = b"".join(
        json.dumps(
            {
                "custom_id": a.artist_id,
                "method": "POST",
                "url": "/v1/responses",
                "body": build_request(a, PromptSettings(model=MODEL)),
            }
        ).encode()
        + b"\n"
        for a in job.artists
    )
    client = openai.OpenAI(base_url=job.fake.base_url, api_key="test", max_retries=0)
    uploaded = client.files.create(file=("again.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    client.close()
    db.execute(
        "INSERT INTO artist_bio_batches (job_id, chunk, state, requests, input_file_id, "
        "batch_id) VALUES (%s, 2, 'submitted', %s, %s, %s)",
        (job_id, len(job.artists), uploaded.id, batch.id),
    )
    for a in job.artists:
        db.execute(
            "INSERT INTO artist_bio_batch_items VALUES (%s, 2, %s, %s, %s)",
            (job_id, a.artist_id, a.name, a.data),
        )
    ledger_before = db.ledger()
    result = ok(resume(job))
    assert "6 lines already handled" in result.stderr
    assert job.out.read_bytes() == before
    assert db.ledger() == ledger_before
    assert_complete(job)


# -- recovery of the submission steps --------------------------------------------------------


def test_a_failed_upload_leaves_a_recorded_file_the_next_run_uploads(make_job: MakeJob) -> None:
    job = make_job(10, seed=92)
    job.fake.batches.fail_api("files.create", 500, times=3)  # the SDK tries 3 times
    job.fake.batches.script(polls=1)  # still running after the resume that creates it
    result = ok(start(job), exit_codes.EXIT_RUN_ABORTED)
    assert "uploading" in result.stderr and "--resume" in result.stderr
    assert job.database is not None
    (row,) = batch_rows(job.database)
    assert (row["state"], row["input_file_id"], row["batch_id"]) == ("recorded", None, None)
    assert item_count(job.database) == 10 and job.fake.batches.batches == []
    ok(resume(job))
    (batch,) = job.fake.batches.batches
    assert ids_in(job.fake, batch) == {a.artist_id for a in job.artists}
    ok(resume(job))
    assert_complete(job)


def test_an_upload_gone_before_its_batch_was_created_is_uploaded_again(make_job: MakeJob) -> None:
    job = make_job(6, seed=106)
    job.fake.batches.fail_api("batches.create", 500)  # refused, not created
    result = ok(start(job), exit_codes.EXIT_RUN_ABORTED)
    assert "creating the batch of request file 1" in result.stderr
    assert job.database is not None
    (row,) = batch_rows(job.database)
    assert row["state"] == "uploaded" and row["batch_id"] is None
    del job.fake.batches.files[row["input_file_id"]]  # expired meanwhile
    result = ok(resume(job))
    assert "uploading it again" in result.stderr
    (batch,) = job.fake.batches.batches
    assert batch.input_file_id != row["input_file_id"]
    ok(resume(job))
    assert_complete(job)


def test_a_lost_create_answer_is_found_by_metadata_not_created_twice(make_job: MakeJob) -> None:
    job = make_job(10, seed=93)
    job.fake.batches.fail_api("batches.create", 502, performed=True)
    result = ok(start(job, "--batch-max-requests", "5"))
    assert "found by its metadata" in result.stderr
    assert len(job.fake.batches.batches) == 2
    assert job.fake.batches.calls["batches.create"] == 2
    assert job.database is not None
    assert [r["batch_id"] for r in batch_rows(job.database)] == [
        b.id for b in job.fake.batches.batches
    ]
    ok(resume(job))
    assert_complete(job)


def test_a_created_batch_the_row_does_not_know_is_found_on_resume(make_job: MakeJob) -> None:
    """The in-process twin of the SIGKILL test (tests/test_batch_crash.py): a row left at
    "uploaded" whose batch exists is completed from the API's list, not created again."""
    job = make_job(8, seed=94)
    ok(start(job))
    assert job.database is not None
    job.database.execute("UPDATE artist_bio_batches SET state = 'uploaded', batch_id = NULL")
    ok(resume(job))
    assert len(job.fake.batches.batches) == 1
    assert job.fake.batches.calls["batches.create"] == 1
    assert_complete(job)


# -- cancel and --finish-online -------------------------------------------------------------


def test_batch_cancel_cancels_the_open_batches_and_collects_what_they_return(
    make_job: MakeJob,
) -> None:
    job = make_job(30, seed=95)
    for _ in range(3):
        job.fake.batches.script(polls=10, answered=4, cancel_polls=1)
    ok(start(job, "--batch-max-requests", "10"))
    result = ok(job.run("batch", "cancel"))
    assert "cancelled         3 batches" in result.stdout
    assert [b.status for b in job.fake.batches.batches] == ["cancelling"] * 3
    result = ok(job.run("batch", "cancel", "--wait", "30", env=FAST_POLL))
    assert [b.status for b in job.fake.batches.batches] == ["cancelled"] * 3
    assert job.database is not None
    rows = batch_rows(job.database)
    assert [(r["state"], r["status"], r["committed"], r["resubmit"]) for r in rows] == [
        ("ended", "cancelled", 4, 6)
    ] * 3
    assert len(job.database.ledger()) == 12
    assert len(job.fake.batches.batches) == 3, "cancel submits nothing"
    assert_mirror(job.out, job.database)
    ok(resume(job))  # the rest goes in a new batch
    assert len(ids_in(job.fake, job.fake.batches.batches[-1])) == 18
    ok(resume(job))
    assert_complete(job)
    assert job.fake.total_requests == 0


def test_finish_online_answers_the_rest_online_and_leaves_open_batches_alone(
    make_job: MakeJob,
) -> None:
    job = make_job(30, seed=96)
    job.fake.batches.script()
    job.fake.batches.script(outcome="expired", answered=5)
    job.fake.batches.script(polls=50)
    ok(start(job, "--batch-max-requests", "10"))
    running = job.fake.batches.batches[2]
    ok(resume(job, "--finish-online"))
    assert len(job.fake.batches.batches) == 3, "no new batch"
    assert job.fake.total_requests == 5, "the expired remainder went online"
    assert job.database is not None
    ledger = job.database.ledger()
    assert len(ledger) == 20
    assert sorted(row["service_tier"] for row in ledger) == ["batch"] * 15 + ["default"] * 5
    assert not ids_in(job.fake, running) & {row["artist_id"] for row in ledger}
    assert_mirror(job.out, job.database)
    running.polls_left = 0
    ok(resume(job))
    assert_complete(job)
    assert job.fake.total_requests == 5


def test_cancel_then_finish_online_answers_everything_now(make_job: MakeJob) -> None:
    job = make_job(10, seed=97)
    job.fake.batches.script(polls=10)
    ok(start(job))
    ok(job.run("batch", "cancel", "--wait", "10", env=FAST_POLL))
    ok(resume(job, "--finish-online"))
    assert_complete(job)
    assert job.fake.total_requests == 10


# -- budgets -------------------------------------------------------------------------------


def test_limit_max_cost_and_daily_limit_cap_what_a_run_submits(make_job: MakeJob) -> None:
    job = make_job(30, seed=98)
    # Before any answer: gpt-4.1-mini at batch prices, 1,000 tokens each way (as online mode's
    # first guess): $0.001 a request, so $0.0075 buys 7.
    result = ok(
        start(job, "--max-cost", "0.0075", "--batch-max-requests", "5"),
        exit_codes.EXIT_LIMIT_REACHED,
    )
    assert "--max-cost 0.0075 USD reached" in result.stderr
    assert [len(ids_in(job.fake, b)) for b in job.fake.batches.batches] == [5, 2]
    result = ok(
        resume(job, "--limit", "12", "--batch-max-requests", "5"), exit_codes.EXIT_LIMIT_REACHED
    )
    assert "--limit 12 reached" in result.stderr
    assert [len(ids_in(job.fake, b)) for b in job.fake.batches.batches[2:]] == [5, 5, 2]
    assert [b.status for b in job.fake.batches.batches[:2]] == ["completed"] * 2
    result = ok(resume(job, "--daily-limit", "7"), exit_codes.EXIT_LIMIT_REACHED)
    assert "--daily-limit reached" in result.stderr
    assert len(ids_in(job.fake, job.fake.batches.batches[-1])) == 7
    assert job.database is not None
    with job.database.connect() as conn:
        assert conn.execute("SELECT sum(requests) FROM artist_bio_usage").fetchone()[0] == 7
    # With answers known, --max-cost estimates from what the job's bios cost.
    ok(resume(job, "--daily-limit", "40", "--max-cost", "0.01"))
    ok(resume(job))
    assert_complete(job)


def test_limit_holds_for_every_round_of_a_waiting_run(make_job: MakeJob) -> None:
    job = make_job(4, seed=104)
    for artist in job.artists[:2]:  # unanswered in the first batch: submitted again
        job.fake.add_rule("hang", name=artist.name, times=1)
    result = start(job, "--limit", "5", "--batch-wait", "30", env=FAST_POLL)
    ok(result, exit_codes.EXIT_LIMIT_REACHED)
    assert job.database is not None
    submitted = [row["requests"] for row in batch_rows(job.database)]
    assert submitted == [4, 1], "4 in the first round, 1 more in the second, then the limit"


def test_skip_existing_submits_only_artists_whose_row_has_no_bio(make_job: MakeJob) -> None:
    job = make_job(10, seed=102, seeded=7)  # the last three have no row
    db = job.database
    assert db is not None
    for artist in job.artists[:2]:
        db.execute("UPDATE artists SET bio = 'kept' WHERE id = %s", (artist.artist_id,))
    job.fake.batches.script(polls=1)
    result = ok(start(job, "--skip-existing"))
    assert summary_figure(result, "skipped") == "5"
    (batch,) = job.fake.batches.batches
    assert ids_in(job.fake, batch) == {a.artist_id for a in job.artists[2:7]}
    ok(resume(job))
    ok(resume(job))  # the manifest keeps --skip-existing
    records = assert_mirror(job.out, db)
    assert {r["artist_id"] for r in records} == {a.artist_id for a in job.artists[2:7]}
    bios = db.bios()
    assert [bios[a.artist_id] for a in job.artists[:2]] == ["kept", "kept"]


def test_an_interrupted_collection_leaves_the_batch_to_the_next_run(make_job: MakeJob) -> None:
    job = make_job(40, seed=103)
    ok(start(job))
    args = create_argument_parser().parse_args(["--resume", "--max-workers", "2"])
    config = resolve_config(args, load_environment())
    control = RunControl()
    outcomes: list[Outcome] = []

    def interrupt_after_ten(outcome: Outcome, tally: Tally) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 10:
            control.interrupt()

    result = run_job(config, control, on_outcome=interrupt_after_ten)
    assert result.interrupted and exit_code_for(result) == exit_codes.EXIT_INTERRUPTED
    db = job.database
    assert db is not None
    assert [(r["state"], r["status"]) for r in batch_rows(db)] == [("submitted", "completed")]
    assert 10 <= len(db.ledger()) <= 10 + 2 * 2
    assert_mirror(job.out, db)
    assert len(job.fake.batches.batches) == 1, "an interrupted run submits nothing"
    ok(resume(job))
    assert_complete(job)


def test_overwriting_a_batch_job_warns_about_its_open_batches(make_job: MakeJob) -> None:
    job = make_job(3, seed=105)
    ok(start(job))
    result = ok(start(job, "--overwrite"))
    assert "is a batch job: batches it has open keep running" in result.stderr


# -- the configuration -----------------------------------------------------------------------


def test_a_job_keeps_its_mode_on_resume(make_job: MakeJob) -> None:
    job = make_job(4, seed=99)
    ok(start(job))
    result = ok(resume(job, "--mode", "online"), exit_codes.EXIT_INPUT_ERROR)
    assert "--mode batch" in result.stderr and "--finish-online" in result.stderr
    ok(resume(job, "--mode", "batch"))
    ok(job.run(*job.input_args("--model", MODEL, "--output", "online.jsonl")))
    manifest = json.loads((job.dir / "online.job.json").read_text(encoding="utf-8"))
    assert manifest["format"] == 1 and "mode" not in manifest["settings"]
    result = job.run("--resume", "--output", "online.jsonl", "--mode", "batch")
    assert result.code == exit_codes.EXIT_INPUT_ERROR, result.stderr
    assert "cannot switch it to --mode batch" in result.stderr
    result = job.run("batch", "cancel", "--output", "online.jsonl")
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert "batch cancel is for batch jobs" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--mode", "batch", "--model", MODEL, "--no-db"], 3, "--mode batch needs the database"),
        (["--mode", "batch", "--prompt-id", "pmpt_1"], 3, "--mode batch needs --model"),
        (["--mode", "batch", "--model", MODEL, "--service-tier", "flex"], 2, "--service-tier"),
        (["--mode", "batch", "--model", MODEL, "--finish-online"], 2, "pass it with --resume"),
        (["--model", MODEL, "--batch-wait", "5"], 2, "--batch-wait is for batch jobs"),
        (["--mode", "batch", "--model", MODEL, "--batch-max-requests", "50001"], 2, "between"),
        (["--mode", "batch", "--model", MODEL, "--batch-max-bytes", "10"], 2, "between"),
    ],
)
def test_batch_mode_mistakes_get_one_sentence(
    make_job: MakeJob, args: list[str], code: int, message: str
) -> None:
    job = make_job(3, seed=100)
    result = job.run(*job.input_args(*args))
    assert result.code == code, result.stderr
    assert message in result.stderr
    assert not job.out.exists() and job.fake.batches.batches == []


def test_unknown_batch_command(make_job: MakeJob) -> None:
    job = make_job(0, database=False)
    result = job.run("batch", "list")
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert "artist-bio-gen batch cancel" in result.stderr


def test_dry_run_in_batch_mode_prints_request_lines(make_job: MakeJob) -> None:
    job = make_job(3, seed=101, database=False)
    result = ok(job.run(*job.input_args("--mode", "batch", "--model", MODEL, "--dry-run")))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == [a.artist_id for a in job.artists]
    assert lines[0]["url"] == "/v1/responses" and lines[0]["body"]["model"] == MODEL
    assert job.fake.batches.calls == {}
