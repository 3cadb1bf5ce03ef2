"""The whole tool through its command line: fake OpenAI over HTTP, real PostgreSQL.

The runs are in-process (``main(argv)``); ``test_help_has_examples`` starts real processes,
because it is about the entry points themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support.checks import assert_legacy_record, assert_mirror, read_jsonl
from .support.cli import MakeJob, cli_env, summary_figure
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI, bio_for


def test_a_thousand_artists_with_16_workers(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(1200, seed=7)
    artists = job.artists
    out = job.dir / "out.jsonl"
    fake_openai.latency = 0.005

    result = job.run(
        *job.input_args(
            "--output",
            str(out),
            "--prompt-id",
            "pmpt_e2e",
            "--version",
            "2",
            "--max-workers",
            "16",
        )
    )

    assert result.code == 0, result.stderr
    records = assert_mirror(out, database)
    assert len(records) == len(artists)
    by_id = {a.artist_id: a for a in artists}
    for record in records:
        artist = by_id[record["artist_id"]]
        assert_legacy_record(record, artist)
        assert record["response_text"] == bio_for(artist.name)
        assert record["db_status"] == "updated"
        assert record["request"]["prompt_id"] == "pmpt_e2e"
        assert record["request"]["version"] == "2"
    assert fake_openai.total_requests == len(artists)  # nobody paid for twice
    assert fake_openai.concurrent_max <= 16
    assert summary_figure(result, "committed") == "1,200"


def test_updated_at_is_set_and_other_columns_untouched(
    make_job: MakeJob, database: TestDatabase
) -> None:
    job = make_job(5, seed=8)
    artists = job.artists
    database.execute("UPDATE artists SET updated_at = '2000-01-01'")
    result = job.run(*job.input_args("--prompt-id", "p"))
    assert result.code == 0, result.stderr
    with database.connect() as conn:
        rows = conn.execute("SELECT name, updated_at > '2001-01-01' FROM artists").fetchall()
    assert sorted(name for name, _ in rows) == sorted(a.name for a in artists)
    assert all(fresh for _, fresh in rows)


def test_jsonl_only_run_writes_null_db_status(make_job: MakeJob) -> None:
    job = make_job(30, seed=9, database=False)
    result = job.run(*job.input_args("--prompt-id", "p", "--no-db"))
    assert result.code == 0, result.stderr
    records = read_jsonl(job.out)
    assert {r["artist_id"] for r in records} == {a.artist_id for a in job.artists}
    assert {r["db_status"] for r in records} == {"null"}


def test_model_mode_sends_instructions_and_names_the_artist(make_job: MakeJob) -> None:
    job = make_job(3, seed=10, database=False)
    instructions = job.dir / "instructions.txt"
    instructions.write_text("Write one sentence.", encoding="utf-8")
    result = job.run(
        *job.input_args("--model", "local-llm", "--instructions-file", str(instructions), "--no-db")
    )
    assert result.code == 0, result.stderr
    records = read_jsonl(job.out)
    # The fake recognised each artist from the "Artist name:" line of the input.
    assert sorted(r["response_text"] for r in records) == sorted(
        bio_for(a.name) for a in job.artists
    )
    assert all(r["request"]["prompt_id"] is None for r in records)


def test_test_mode_writes_test_artists(make_job: MakeJob, database: TestDatabase) -> None:
    job = make_job(4, seed=11, table="test_artists")
    result = job.run(*job.input_args("--prompt-id", "p", "--test-mode"))
    assert result.code == 0, result.stderr
    assert all(database.bios("test_artists").values())
    assert_mirror(job.out, database, table="test_artists")


def test_skip_existing_keeps_bios_and_does_not_pay_for_them(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(10, seed=12, seeded=0)
    artists = job.artists
    database.seed(artists[:4], bio="Hand-written bio")
    database.seed(artists[4:])
    result = job.run(*job.input_args("--prompt-id", "p", "--skip-existing"))
    assert result.code == 0, result.stderr
    bios = database.bios()
    assert [bios[a.artist_id] for a in artists[:4]] == ["Hand-written bio"] * 4
    assert fake_openai.total_requests == 6
    assert {r["artist_id"] for r in assert_mirror(job.out, database)} == {
        a.artist_id for a in artists[4:]
    }


def test_an_artist_missing_from_the_table_is_recorded_as_skipped(
    make_job: MakeJob, database: TestDatabase
) -> None:
    job = make_job(3, seed=13, seeded=2)
    artists = job.artists
    result = job.run(*job.input_args("--prompt-id", "p"))
    assert result.code == 0, result.stderr
    statuses = {r["artist_id"]: r["db_status"] for r in assert_mirror(job.out, database)}
    assert statuses[artists[2].artist_id] == "skipped"
    assert statuses[artists[0].artist_id] == "updated"


def test_citations_are_stripped_before_commit(
    make_job: MakeJob, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    job = make_job(2, seed=14)
    fake_openai.add_rule("citations")
    result = job.run(*job.input_args("--prompt-id", "p"))
    assert result.code == 0, result.stderr
    assert sorted(database.bios().values()) == sorted(bio_for(a.name) for a in job.artists)


def test_dry_run_needs_no_key_and_no_database(make_job: MakeJob, fake_openai: FakeOpenAI) -> None:
    job = make_job(8, seed=15, database=False)
    env = {"OPENAI_API_KEY": None, "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/none"}
    result = job.run(*job.input_args("--prompt-id", "pmpt_x", "--dry-run"), env=env)
    assert result.code == 0, result.stderr
    payloads = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(payloads) == 5
    assert payloads[0]["request"]["prompt"]["variables"]["artist_name"] == job.artists[0].name
    assert fake_openai.total_requests == 0
    assert not job.out.exists()


@pytest.mark.parametrize(
    "entry",
    [
        ["-m", "artist_bio_gen"],
        ["-c", "from artist_bio_gen.cli import main; raise SystemExit(main())"],
    ],
)
def test_help_has_examples(entry: list[str]) -> None:
    """The entry points (``python -m`` and the console script's ``main``) as real processes."""
    result = subprocess.run(
        [sys.executable, *entry, "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert result.returncode == 0
    assert (
        "examples:" in result.stdout
        and "--resume" in result.stdout
        and "exit codes:" in result.stdout
    )
