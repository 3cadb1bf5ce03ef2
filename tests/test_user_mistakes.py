"""Every user mistake gets one clear sentence, the right exit code, no traceback, no secret.

The mistakes are one table (``MISTAKES``): each row says how to set the mistake up, the
command line, the exit code and the fragments of the message. Every row is run in-process
and checked the same way: the code, each fragment on stderr, no "Traceback", neither the
test API key nor any password on stdout or stderr, and no request to the API.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from artist_bio_gen import exit_codes

from .support.cli import TEST_API_KEY, CliResult, Job, MakeJob, summary_table

# The command line of a run on the job's CSV (cwd is the job directory).
RUN = ("--input", "artists.csv", "--prompt-id", "p")


@dataclass(frozen=True)
class Mistake:
    """One row of the table."""

    args: tuple[str, ...]
    code: int
    fragments: tuple[str, ...]
    #: Environment of the run: a value sets a variable, None removes it.
    env: Mapping[str, str | None] = field(default_factory=dict)
    #: A test database is DATABASE_URL (and holds the job's artists).
    database: bool = False
    #: Called on the job before the run (to write files, alter the database, set env).
    setup: Callable[[Job, pytest.MonkeyPatch], None] | None = None
    #: Files (in the job directory) that must be left byte-identical.
    unchanged: tuple[str, ...] = ()
    #: Files (in the job directory) that must not exist after the run.
    not_created: tuple[str, ...] = ()


def _wrong_password(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    assert job.database is not None
    parts = urlsplit(job.database.url)
    assert parts.password, "the test database URL must carry a password for this test"
    url = parts._replace(
        netloc=f"{parts.username}:wrong-password-xyz@{parts.hostname}:{parts.port}"
    ).geturl()
    monkeypatch.setenv("DATABASE_URL", url)


def _drop_bio_column(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    assert job.database is not None
    job.database.execute("ALTER TABLE artists DROP COLUMN bio")


def _existing_output(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    job.out.write_text('{"artist_id": "x"}\n', encoding="utf-8")


def _instructions_file(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    (job.dir / "i.txt").write_text("x", encoding="utf-8")


def _fifo_input(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(job.dir / "pipe.csv")  # opening it to read would block: it must not be opened


def _flags(*flags: str, fragment: str) -> Mistake:
    """A bad combination of flags (or a bad flag value): exit 2 naming it."""
    return Mistake((*RUN, *flags), exit_codes.EXIT_INPUT_ERROR, (fragment,))


MISTAKES: dict[str, Mistake] = {
    "missing-input-file": Mistake(
        ("--input", "nope.csv", "--prompt-id", "p"),
        exit_codes.EXIT_INPUT_FILE_ERROR,
        ("nope.csv", "does not exist"),
        database=True,
    ),
    "input-is-a-pipe": Mistake(
        ("--input", "pipe.csv", "--prompt-id", "p", "--no-db"),
        exit_codes.EXIT_INPUT_FILE_ERROR,
        ("'pipe.csv' is not a regular file", "save the CSV to a file"),
        setup=_fifo_input,
    ),
    "missing-api-key": Mistake(
        (*RUN, "--no-db"),
        exit_codes.EXIT_CONFIG_ERROR,
        ("No API key", "OPENAI_API_KEY"),
        env={"OPENAI_API_KEY": None},
    ),
    "missing-prompt": Mistake(
        ("--input", "artists.csv", "--no-db"),
        exit_codes.EXIT_CONFIG_ERROR,
        ("No prompt configured", "--prompt-id", "--model"),
    ),
    "bad-database-url": Mistake(
        RUN,
        exit_codes.EXIT_CONFIG_ERROR,
        ("database URL is not valid", "postgresql://"),
        env={"DATABASE_URL": "mysql://u:hunter2@h/db"},
    ),
    "unreachable-database": Mistake(
        RUN,
        exit_codes.EXIT_CONFIG_ERROR,
        ("Cannot connect to PostgreSQL", "127.0.0.1:1/music"),
        env={"DATABASE_URL": "postgresql://someone:s3cretpass@127.0.0.1:1/music"},
    ),
    "wrong-password": Mistake(
        RUN,
        exit_codes.EXIT_CONFIG_ERROR,
        ("Cannot connect to PostgreSQL", "password authentication failed"),
        database=True,
        setup=_wrong_password,
    ),
    "missing-table": Mistake(
        (*RUN, "--db-table", "singers"),
        exit_codes.EXIT_CONFIG_ERROR,
        ("Table 'singers' does not exist",),
        database=True,
    ),
    "missing-bio-column": Mistake(
        RUN,
        exit_codes.EXIT_CONFIG_ERROR,
        ("has no 'bio' column", "ALTER TABLE artists ADD COLUMN bio TEXT"),
        database=True,
        setup=_drop_bio_column,
    ),
    "invalid-table-name": Mistake(
        (*RUN, "--db-table", "artists; drop table x"),
        exit_codes.EXIT_CONFIG_ERROR,
        ("is not a valid table name",),
        database=True,
    ),
    "existing-output-without-resume": Mistake(
        (*RUN, "--no-db"),
        exit_codes.EXIT_INPUT_ERROR,
        ("already holds lines", "--resume", "--overwrite"),
        setup=_existing_output,
        unchanged=("out.jsonl",),
    ),
    "enable-db-and-no-db": _flags("--enable-db", "--no-db", fragment="--enable-db and --no-db"),
    "test-mode-and-db-table": _flags("--test-mode", "--db-table", "x", fragment="--test-mode"),
    "resume-and-overwrite": _flags("--resume", "--overwrite", fragment="--resume continues"),
    "skip-existing-without-db": _flags(
        "--no-db", "--skip-existing", fragment="--skip-existing needs the database"
    ),
    "zero-workers": _flags(
        "--max-workers", "0", fragment="--max-workers must be between 1 and 4096"
    ),
    "zero-progress-interval": _flags(
        "--progress-interval", "0", fragment="--progress-interval must be between 0.1 and"
    ),
    "metrics-file-in-a-missing-directory": _flags(
        "--metrics-file",
        "nodir/m.prom",
        fragment="--metrics-file 'nodir/m.prom' must be a file in an existing directory",
    ),
    "quota-threshold-too-high": _flags(
        "--quota-threshold", "2", fragment="--quota-threshold must be between 0.1 and 1.0"
    ),
    "quota-monitoring-not-a-boolean": _flags(
        "--quota-monitoring", "maybe", fragment="expected true or false, got 'maybe'"
    ),
    "instructions-file-with-a-stored-prompt": Mistake(
        (*RUN, "--instructions-file", "i.txt", "--no-db"),
        exit_codes.EXIT_INPUT_ERROR,
        ("--instructions-file applies to --model",),
        setup=_instructions_file,
    ),
    "enable-db-without-url": Mistake(
        (*RUN, "--enable-db"), exit_codes.EXIT_CONFIG_ERROR, ("No database URL",)
    ),
    "bad-environment-value": Mistake(
        (*RUN, "--no-db"),
        exit_codes.EXIT_CONFIG_ERROR,
        ("OPENAI_TIMEOUT='soon' is not valid",),
        env={"OPENAI_TIMEOUT": "soon"},
    ),
    "transaction-log-in-a-missing-directory": Mistake(
        (*RUN, "--no-db", "--transaction-log", "nope/tx.jsonl"),
        exit_codes.EXIT_INPUT_ERROR,
        ("--transaction-log",),
        # Nothing written: a corrected run starts as a new job.
        not_created=("out.job.json",),
    ),
    "output-in-a-missing-directory": Mistake(
        (*RUN, "--no-db", "--output", "no/such/dir/out.jsonl"),
        exit_codes.EXIT_INPUT_ERROR,
        ("does not exist; create it first",),
    ),
}


def _passwords(*urls: str | None) -> set[str]:
    return {p for p in (urlsplit(u).password for u in urls if u) if p}


def _assert_clean_failure(result: CliResult, code: int, fragments: tuple[str, ...]) -> None:
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_gets_one_clear_sentence(
    name: str, make_job: MakeJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's exit code and message, no traceback, no secret, no request, and the files
    the row names untouched."""
    mistake = MISTAKES[name]
    job = make_job(3, seed=3, database=mistake.database)
    if mistake.setup is not None:
        mistake.setup(job, monkeypatch)
    before = {file: (job.dir / file).read_bytes() for file in mistake.unchanged}
    secrets = _passwords(
        job.database.url if job.database else None,
        mistake.env.get("DATABASE_URL") or os.environ.get("DATABASE_URL"),
    )

    result = job.run(*mistake.args, env=mistake.env)

    _assert_clean_failure(result, mistake.code, mistake.fragments)
    for secret in secrets:
        assert secret not in result.stderr + result.stdout, secret
    assert job.fake.total_requests == 0
    for file_name, content in before.items():
        assert (job.dir / file_name).read_bytes() == content, file_name
    for file_name in mistake.not_created:
        assert not (job.dir / file_name).exists(), file_name


def test_bad_rows_are_reported_and_skipped(make_job: MakeJob) -> None:
    job = make_job(2, seed=4)
    good = job.artists
    job.csv.write_text(
        "artist_id,artist_name,artist_data\n"
        f"{good[0].artist_id},{good[0].name},\n"
        "not-a-uuid,Someone,\n"
        f"{good[1].artist_id},,\n"
        f"{good[1].artist_id},{good[1].name},\n",
        encoding="utf-8",
    )
    result = job.run(*RUN)
    assert result.code == 0, result.stderr
    assert "line 3" in result.stderr and "not a valid UUID" in result.stderr
    assert "line 4" in result.stderr
    assert summary_table(result.stdout)["input lines"] == ("4", "bad 2, duplicates 0")
    assert job.fake.total_requests == 2


def test_api_key_on_the_command_line_is_never_printed(make_job: MakeJob) -> None:
    job = make_job(3, seed=3, database=False)
    job.fake.add_rule("unauthorized")
    secret = "sk-commandline-secret-0000000000"
    result = job.run(*RUN, "--no-db", "--openai-api-key", secret, "--verbose")
    assert result.code == exit_codes.EXIT_CONFIG_ERROR
    assert secret not in result.stderr + result.stdout
