"""Every user mistake gets one clear sentence, the right exit code, no traceback, no secret."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from artist_bio_gen import exit_codes

from .support.cli import TEST_API_KEY, cli_env, run_process
from .support.data import make_artists, write_csv
from .support.database import TestDatabase
from .support.fake_openai import FakeOpenAI


def _assert_clean_failure(result, code: int, *fragments: str) -> None:
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "artists.csv", make_artists(3, seed=3))


def test_missing_input_file(tmp_path: Path, database: TestDatabase) -> None:
    result = run_process(
        ["--input", "nope.csv", "--prompt-id", "p"], env=cli_env(DATABASE_URL=database.url)
    )
    _assert_clean_failure(result, exit_codes.EXIT_INPUT_FILE_ERROR, "nope.csv", "does not exist")


def test_missing_api_key(csv_file: Path) -> None:
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p", "--no-db"], env=cli_env(OPENAI_API_KEY=None)
    )
    _assert_clean_failure(result, exit_codes.EXIT_CONFIG_ERROR, "No API key", "OPENAI_API_KEY")


def test_missing_prompt(csv_file: Path) -> None:
    result = run_process(["--input", str(csv_file), "--no-db"])
    _assert_clean_failure(
        result, exit_codes.EXIT_CONFIG_ERROR, "No prompt configured", "--prompt-id", "--model"
    )


def test_bad_database_url(csv_file: Path) -> None:
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p"],
        env=cli_env(DATABASE_URL="mysql://u:hunter2@h/db"),
    )
    _assert_clean_failure(
        result, exit_codes.EXIT_CONFIG_ERROR, "database URL is not valid", "postgresql://"
    )
    assert "hunter2" not in result.stderr


def test_unreachable_database(csv_file: Path, fake_openai: FakeOpenAI) -> None:
    url = "postgresql://someone:s3cretpass@127.0.0.1:1/music"
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p"], env=cli_env(DATABASE_URL=url)
    )
    _assert_clean_failure(
        result, exit_codes.EXIT_CONFIG_ERROR, "Cannot connect to PostgreSQL", "127.0.0.1:1/music"
    )
    assert "s3cretpass" not in result.stderr
    assert fake_openai.total_requests == 0


def test_wrong_password(csv_file: Path, database: TestDatabase, fake_openai: FakeOpenAI) -> None:
    parts = urlsplit(database.url)
    assert parts.password, "the test database URL must carry a password for this test"
    url = parts._replace(
        netloc=f"{parts.username}:wrong-password-xyz@{parts.hostname}:{parts.port}"
    ).geturl()
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p"], env=cli_env(DATABASE_URL=url)
    )
    _assert_clean_failure(
        result,
        exit_codes.EXIT_CONFIG_ERROR,
        "Cannot connect to PostgreSQL",
        "password authentication failed",
    )
    assert "wrong-password-xyz" not in result.stderr
    assert fake_openai.total_requests == 0


def test_missing_table(csv_file: Path, database: TestDatabase, fake_openai: FakeOpenAI) -> None:
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p", "--db-table", "singers"],
        env=cli_env(DATABASE_URL=database.url),
    )
    _assert_clean_failure(result, exit_codes.EXIT_CONFIG_ERROR, "Table 'singers' does not exist")
    assert fake_openai.total_requests == 0


def test_missing_bio_column(
    csv_file: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    database.execute("ALTER TABLE artists DROP COLUMN bio")
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p"], env=cli_env(DATABASE_URL=database.url)
    )
    _assert_clean_failure(
        result,
        exit_codes.EXIT_CONFIG_ERROR,
        "has no 'bio' column",
        "ALTER TABLE artists ADD COLUMN bio TEXT",
    )
    assert fake_openai.total_requests == 0


def test_invalid_table_name(csv_file: Path, database: TestDatabase) -> None:
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p", "--db-table", "artists; drop table x"],
        env=cli_env(DATABASE_URL=database.url),
    )
    _assert_clean_failure(result, exit_codes.EXIT_CONFIG_ERROR, "is not a valid table name")


def test_existing_output_without_resume_is_refused_and_kept(csv_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"artist_id": "x"}\n', encoding="utf-8")
    result = run_process(["--input", str(csv_file), "--prompt-id", "p", "--no-db"])
    _assert_clean_failure(
        result, exit_codes.EXIT_INPUT_ERROR, "already holds lines", "--resume", "--overwrite"
    )
    assert out.read_text(encoding="utf-8") == '{"artist_id": "x"}\n'


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--enable-db", "--no-db"], "--enable-db and --no-db"),
        (["--test-mode", "--db-table", "x"], "--test-mode"),
        (["--resume", "--overwrite"], "--resume continues"),
        (["--no-db", "--skip-existing"], "--skip-existing needs the database"),
        (["--max-workers", "0"], "--max-workers must be between 1 and 4096"),
        (["--quota-threshold", "2"], "--quota-threshold must be between 0.1 and 1.0"),
        (["--quota-monitoring", "maybe"], "expected true or false, got 'maybe'"),
    ],
)
def test_bad_flag_combinations(csv_file: Path, flags: list[str], fragment: str) -> None:
    result = run_process(["--input", str(csv_file), "--prompt-id", "p", *flags])
    _assert_clean_failure(result, exit_codes.EXIT_INPUT_ERROR, fragment)


def test_instructions_file_with_a_stored_prompt(csv_file: Path, tmp_path: Path) -> None:
    (tmp_path / "i.txt").write_text("x", encoding="utf-8")
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p", "--instructions-file", "i.txt", "--no-db"]
    )
    _assert_clean_failure(
        result, exit_codes.EXIT_INPUT_ERROR, "--instructions-file applies to --model"
    )


def test_enable_db_without_url(csv_file: Path) -> None:
    result = run_process(["--input", str(csv_file), "--prompt-id", "p", "--enable-db"])
    _assert_clean_failure(result, exit_codes.EXIT_CONFIG_ERROR, "No database URL")


def test_bad_environment_value(csv_file: Path) -> None:
    result = run_process(
        ["--input", str(csv_file), "--prompt-id", "p", "--no-db"],
        env=cli_env(OPENAI_TIMEOUT="soon"),
    )
    _assert_clean_failure(
        result, exit_codes.EXIT_CONFIG_ERROR, "OPENAI_TIMEOUT='soon' is not valid"
    )


def test_transaction_log_in_a_missing_directory(csv_file: Path, tmp_path: Path) -> None:
    args = ["--input", str(csv_file), "--prompt-id", "p", "--no-db"]
    result = run_process([*args, "--transaction-log", "nope/tx.jsonl"])
    _assert_clean_failure(result, exit_codes.EXIT_INPUT_ERROR, "--transaction-log")
    assert not (tmp_path / "out.job.json").exists()  # nothing written: a corrected run starts


def test_output_in_a_missing_directory(csv_file: Path) -> None:
    result = run_process(
        [
            "--input",
            str(csv_file),
            "--prompt-id",
            "p",
            "--no-db",
            "--output",
            "no/such/dir/out.jsonl",
        ]
    )
    _assert_clean_failure(result, exit_codes.EXIT_INPUT_ERROR, "does not exist; create it first")


def test_bad_rows_are_reported_and_skipped(
    tmp_path: Path, database: TestDatabase, fake_openai: FakeOpenAI
) -> None:
    good = make_artists(2, seed=4)
    database.seed(good)
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(
        "artist_id,artist_name,artist_data\n"
        f"{good[0].artist_id},{good[0].name},\n"
        "not-a-uuid,Someone,\n"
        f"{good[1].artist_id},,\n"
        f"{good[1].artist_id},{good[1].name},\n",
        encoding="utf-8",
    )
    result = run_process(
        ["--input", str(csv_path), "--prompt-id", "p"], env=cli_env(DATABASE_URL=database.url)
    )
    assert result.code == 0, result.stderr
    assert "line 3" in result.stderr and "not a valid UUID" in result.stderr
    assert "line 4" in result.stderr
    assert "bad input lines 2" in result.stderr
    assert fake_openai.total_requests == 2


def test_api_key_on_the_command_line_is_never_printed(
    csv_file: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add_rule("unauthorized")
    secret = "sk-commandline-secret-0000000000"
    result = run_process(
        [
            "--input",
            str(csv_file),
            "--prompt-id",
            "p",
            "--no-db",
            "--openai-api-key",
            secret,
            "--verbose",
        ]
    )
    assert result.code == exit_codes.EXIT_CONFIG_ERROR
    assert secret not in result.stderr + result.stdout
