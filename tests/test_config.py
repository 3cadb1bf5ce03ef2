"""Configuration: precedence, secrets kept out of reprs, and the resume manifest rules.

Pure unit tests: no database, no server, no subprocess. Arguments go through the real parser
(``create_argument_parser``) and ``resolve_config``; ``.env`` files are read by
``load_environment`` from the test's own directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from artist_bio_gen.cli.main import create_argument_parser
from artist_bio_gen.config import Config, load_environment, resolve_config
from artist_bio_gen.core.job import new_manifest
from artist_bio_gen.errors import ConfigError, UsageError
from artist_bio_gen.jobfiles import JobPaths, Manifest, write_manifest

API_KEY = "sk-proj-SECRET-key-0123456789abcdef"
DB_PASSWORD = "pw-SECRET-5up3r"
URL_1 = f"postgresql://bios:{DB_PASSWORD}@db1.example:5432/music"
URL_2 = f"postgresql://bios:{DB_PASSWORD}@db2.example:5432/music"
BASE_ARGS = ["--input", "artists.csv", "--model", "m-1"]
LAYERS = ("cli", "env", ".env.local", ".env", "default")
JOB_ID = "0b6f3f4e-58a2-4d62-9a55-3c1e2d7f9a10"


def _args(argv: list[str]) -> argparse.Namespace:
    return create_argument_parser().parse_args(argv)


def _config(argv: list[str], env: Mapping[str, str] | None = None) -> Config:
    """A config from a command line and an environment mapping (no .env files)."""
    return resolve_config(_args(argv), {"OPENAI_API_KEY": API_KEY, **(env or {})})


@dataclass(frozen=True)
class Setting:
    """One setting as seen through each layer of the precedence order."""

    flag: str
    env_name: str
    #: The raw value at each layer: command line, environment, .env.local, .env.
    values: tuple[str, str, str, str]
    #: The resolved value for each raw value, then the default.
    expected: tuple[object, object, object, object, object]
    read: Callable[[Config], object]
    extra_env: tuple[tuple[str, str], ...] = ()


SETTINGS = {
    "max-workers": Setting(
        "--max-workers",
        "MAX_WORKERS",
        ("7", "6", "5", "3"),
        (7, 6, 5, 3, 4),
        lambda c: c.max_workers,
    ),
    "prompt-id": Setting(
        "--prompt-id",
        "OPENAI_PROMPT_ID",
        ("p_cli", "p_env", "p_local", "p_dotenv"),
        ("p_cli", "p_env", "p_local", "p_dotenv", None),
        lambda c: c.prompt.prompt_id,
    ),
    "request-timeout": Setting(
        "--request-timeout",
        "OPENAI_TIMEOUT",
        ("11", "22", "33", "44"),
        (11.0, 22.0, 33.0, 44.0, 120.0),
        lambda c: c.request_timeout,
    ),
    "db-table": Setting(
        "--db-table",
        "DB_TABLE",
        ("t_cli", "t_env", "t_local", "t_dotenv"),
        ("t_cli", "t_env", "t_local", "t_dotenv", "artists"),
        lambda c: c.db.table if c.db else None,
        extra_env=(("DATABASE_URL", URL_1),),
    ),
    "db-url": Setting(
        "--db-url",
        "DATABASE_URL",
        (URL_1, URL_2, URL_1.replace("db1", "db3"), URL_1.replace("db1", "db4")),
        (URL_1, URL_2, URL_1.replace("db1", "db3"), URL_1.replace("db1", "db4"), None),
        lambda c: c.db.url if c.db else None,
    ),
}


@pytest.mark.parametrize("top", LAYERS)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_precedence_cli_env_env_local_dotenv_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, top: str
) -> None:
    """With every layer from ``top`` down holding a value, the value of ``top`` wins."""
    setting = SETTINGS[name]
    present = LAYERS[LAYERS.index(top) :]
    cli_value, env_value, local_value, dotenv_value = setting.values
    argv = list(BASE_ARGS)
    if "cli" in present:
        argv += [setting.flag, cli_value]
    if "env" in present:
        monkeypatch.setenv(setting.env_name, env_value)
    for key, value in setting.extra_env:
        monkeypatch.setenv(key, value)
    if ".env.local" in present:
        (tmp_path / ".env.local").write_text(f"{setting.env_name}={local_value}\n")
    if ".env" in present:
        (tmp_path / ".env").write_text(f"{setting.env_name}={dotenv_value}\n")

    config = resolve_config(_args(argv), load_environment(tmp_path))

    assert setting.read(config) == setting.expected[LAYERS.index(top)]


def test_dotenv_files_do_not_touch_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading .env/.env.local leaves ``os.environ`` alone (no global side effect)."""
    monkeypatch.delenv("MAX_WORKERS", raising=False)
    (tmp_path / ".env").write_text("MAX_WORKERS=9\n")
    assert load_environment(tmp_path)["MAX_WORKERS"] == "9"
    assert "MAX_WORKERS" not in os.environ


@pytest.mark.parametrize("where", ["env", ".env"])
def test_an_invalid_value_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A non-numeric MAX_WORKERS from the environment or a .env file is a ConfigError that
    names the variable and its value."""
    if where == "env":
        monkeypatch.setenv("MAX_WORKERS", "lots")
    else:
        (tmp_path / ".env").write_text("MAX_WORKERS=lots\n")
    with pytest.raises(ConfigError, match="MAX_WORKERS='lots'"):
        resolve_config(_args(BASE_ARGS), load_environment(tmp_path))


@pytest.mark.parametrize("source", ["cli", "env"])
def test_config_repr_holds_no_secret(source: str) -> None:
    """Neither the API key nor the database password appears in the config's repr/str (a
    traceback or a debug log may print it), nor in the job manifest written to disk."""
    if source == "cli":
        config = resolve_config(
            _args([*BASE_ARGS, "--openai-api-key", API_KEY, "--db-url", URL_1]), {}
        )
    else:
        config = _config(BASE_ARGS, {"DATABASE_URL": URL_1})
    assert config.api_key == API_KEY and config.db is not None and config.db.url == URL_1

    manifest = json.dumps(new_manifest(config, JOB_ID).to_json())
    for text in (repr(config), str(config), repr(config.db), manifest):
        assert API_KEY not in text
        assert DB_PASSWORD not in text
    assert "db1.example" in manifest  # the database is named, without its password


# -- resuming a job: the manifest as a layer of the lookup --------------------------------------


def _record(manifest: Manifest) -> Manifest:
    """Write ``manifest`` as the job of out.jsonl in the test's directory (the default
    --output), where ``--resume`` reads it."""
    write_manifest(JobPaths(Path("out.jsonl")), manifest)
    return manifest


@pytest.fixture
def recorded() -> Manifest:
    """The manifest of a stored-prompt job started on database URL_1, table artists."""
    config = _config(
        ["--input", "artists.csv", "--prompt-id", "p_rec", "--version", "2", "--db-url", URL_1]
    )
    return _record(new_manifest(config, JOB_ID))


@pytest.fixture
def job_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Warnings of the package, captured even when its logger does not propagate."""
    package = logging.getLogger("artist_bio_gen")
    package.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    try:
        yield caplog
    finally:
        package.removeHandler(caplog.handler)


@pytest.mark.parametrize(
    ("flags", "recorded_value"),
    [
        (["--prompt-id", "p_new"], "'p_rec'"),
        (["--version", "3"], "'2'"),
        (["--db-table", "other_artists"], "'artists'"),
        (["--test-mode"], "'artists'"),
        (["--no-db"], "db1.example"),
    ],
    ids=["prompt-id", "prompt-version", "db-table", "test-mode", "no-db"],
)
def test_a_conflicting_cli_setting_is_refused(
    recorded: Manifest, flags: list[str], recorded_value: str
) -> None:
    """A job-defining setting given on the command line that differs from the record is a
    UsageError naming what the job was started with."""
    with pytest.raises(UsageError, match="started with") as raised:
        _config(["--resume", *flags], {"DATABASE_URL": URL_1})
    assert recorded_value in str(raised.value)
    assert DB_PASSWORD not in str(raised.value)


def test_an_environment_only_difference_is_ignored_with_a_warning(
    recorded: Manifest, job_warnings: pytest.LogCaptureFixture
) -> None:
    """OPENAI_PROMPT_ID from the environment differing from the record: the recorded prompt
    wins, a warning says so, and the input comes from the manifest."""
    merged = _config(["--resume"], {"DATABASE_URL": URL_1, "OPENAI_PROMPT_ID": "p_env"})

    assert merged.prompt.prompt_id == "p_rec"
    assert merged.prompt.prompt_version == "2"
    assert merged.input_path == Path(recorded.input)
    messages = [r.getMessage() for r in job_warnings.records if r.levelno == logging.WARNING]
    assert any("'p_env'" in m and "'p_rec'" in m for m in messages), messages


@pytest.mark.parametrize("source", ["cli", "env"])
def test_another_database_is_always_refused(recorded: Manifest, source: str) -> None:
    """Another database is refused whether it comes from --db-url or only from DATABASE_URL
    (the recorded URL is not stored, so the job cannot be continued anywhere else)."""
    with pytest.raises(UsageError) as raised:
        if source == "cli":
            _config(["--resume", "--db-url", URL_2])
        else:
            _config(["--resume"], {"DATABASE_URL": URL_2})
    message = str(raised.value)
    assert "db1.example" in message and "db2.example" in message
    assert DB_PASSWORD not in message


def test_a_safe_override_is_kept(recorded: Manifest) -> None:
    """Settings that do not define the job (workers, timeout) are taken from the command
    line on resume."""
    merged = _config(
        ["--resume", "--max-workers", "9", "--request-timeout", "7"], {"DATABASE_URL": URL_1}
    )
    assert (merged.max_workers, merged.request_timeout) == (9, 7.0)
    assert merged.db is not None and merged.db.url == URL_1 and merged.db.table == "artists"


def test_a_jsonl_only_job_stays_jsonl_only() -> None:
    """A job started with --no-db ignores a DATABASE_URL that appears later."""
    _record(new_manifest(_config([*BASE_ARGS, "--no-db"]), JOB_ID))
    merged = _config(["--resume"], {"DATABASE_URL": URL_1})
    assert merged.db is None
    assert merged.prompt.model == "m-1"


def test_a_database_job_needs_a_database_to_resume(recorded: Manifest) -> None:
    """Resuming a database job with no database URL configured is a ConfigError that says
    which database the job writes to."""
    with pytest.raises(ConfigError, match=r"db1\.example"):
        _config(["--resume"])
