"""The run configuration: resolved once at startup into a frozen object handed to the core.

Every setting is looked up in this order (the first that has a value wins):

1. the command line;
2. the process environment;
3. ``.env.local`` then ``.env`` in the current directory (python-dotenv, read without
   touching ``os.environ``);
4. the default.

With ``--resume`` the job manifest sits between 1 and 2 for the settings that define a job
(prompt, model, instructions, database, table): see ``core/job.py``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .api.request import DEFAULT_INSTRUCTIONS, PromptSettings
from .database.connection import require_database_url
from .errors import ConfigError, UsageError
from .models import DatabaseConfig

DEFAULT_OUTPUT = "out.jsonl"
DEFAULT_TABLE = "artists"
TEST_TABLE = "test_artists"
MAX_WORKERS_LIMIT = 4096


@dataclass(frozen=True)
class QuotaSettings:
    """The legacy quota flags (validated; see README for what they do)."""

    monitoring: bool = True
    threshold: float = 0.8
    daily_limit: int | None = None
    pause_hours: float = 24.0
    log_interval: int = 100


@dataclass(frozen=True)
class Config:
    """Everything a run needs, validated. Safe to share with worker threads."""

    input_path: Path | None
    output_path: Path
    prompt: PromptSettings
    api_key: str | None = field(repr=False)
    base_url: str | None
    db: DatabaseConfig | None
    max_workers: int = 4
    request_timeout: float = 120.0
    max_retries: int = 3
    skip_existing: bool = False
    fsync_interval: float = 0.0
    shutdown_grace: float = 30.0
    max_attempts: int = 3
    retry_failed: bool = False
    transaction_log: Path | None = None
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    verbose: bool = False
    quota: QuotaSettings = QuotaSettings()
    #: Settings given explicitly on the command line (resume refuses conflicting ones).
    cli_given: frozenset[str] = frozenset()

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """Values that must never appear in any output."""
        return (self.api_key, self.db.url if self.db else None, _password(self.db))


def _password(db: DatabaseConfig | None) -> str | None:
    if db is None:
        return None
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(db.url).get("password")  # type: ignore[return-value]


def load_environment(directory: Path | None = None) -> dict[str, str]:
    """The process environment over ``.env.local`` over ``.env`` (no global side effects)."""
    directory = directory or Path.cwd()
    merged: dict[str, str] = {}
    for name in (".env", ".env.local"):  # later files win
        merged.update({k: v for k, v in dotenv_values(directory / name).items() if v is not None})
    merged.update(os.environ)
    return merged


class _Lookup:
    """CLI value, else environment value (parsed), else default."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]):
        self.args = args
        self.env = env
        self.given: set[str] = set()

    def get(self, name: str, env_name: str | None = None, default=None, parse: Callable = str):
        value = getattr(self.args, name, None)
        if value is not None:
            self.given.add(name)
            return value
        raw = self.env.get(env_name, "").strip() if env_name else ""
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(
                f"{env_name}={raw!r} is not valid; expected {_describe(parse)}."
            ) from None


def _describe(parse: Callable) -> str:
    return {int: "a whole number", float: "a number", parse_bool: "true or false"}.get(
        parse, "a value"
    )


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Validate ``args`` and ``env`` into a ``Config``; raises UsageError / ConfigError."""
    lookup = _Lookup(args, env)
    _check_combinations(args)
    workers = _in_range(
        "--max-workers", lookup.get("max_workers", "MAX_WORKERS", 4, int), 1, MAX_WORKERS_LIMIT
    )
    config = Config(
        input_path=_path(getattr(args, "input", None)),
        output_path=Path(getattr(args, "output", None) or DEFAULT_OUTPUT),
        prompt=_prompt_settings(args, lookup),
        api_key=lookup.get("openai_api_key", "OPENAI_API_KEY"),
        base_url=lookup.get("base_url", "OPENAI_BASE_URL"),
        db=_database(args, lookup, workers),
        max_workers=workers,
        request_timeout=_positive(
            "--request-timeout", lookup.get("request_timeout", "OPENAI_TIMEOUT", 120.0, float)
        ),
        max_retries=_in_range(
            "--max-retries", lookup.get("max_retries", "OPENAI_MAX_RETRIES", 3, int), 0, 20
        ),
        skip_existing=bool(args.skip_existing),
        fsync_interval=_in_range(
            "--fsync-interval",
            lookup.get("fsync_interval", "JSONL_FSYNC_INTERVAL", 0.0, float),
            0.0,
            60.0,
        ),
        shutdown_grace=_in_range(
            "--shutdown-grace", lookup.get("shutdown_grace", None, 30.0, float), 0.0, 3600.0
        ),
        max_attempts=_in_range("--max-attempts", lookup.get("max_attempts", None, 3, int), 1, 1000),
        retry_failed=bool(getattr(args, "retry_failed", False)),
        transaction_log=_path(getattr(args, "transaction_log", None)),
        resume=bool(args.resume),
        overwrite=bool(args.overwrite),
        dry_run=bool(args.dry_run),
        verbose=bool(args.verbose),
        quota=_quota(lookup),
    )
    given = set(lookup.given)
    given.update(
        name
        for name in ("test_mode", "db_table", "no_db", "enable_db", "skip_existing")
        if getattr(args, name, None)
    )
    return _finish(config, given)


def _finish(config: Config, given: set[str]) -> Config:
    from dataclasses import replace

    config = replace(config, cli_given=frozenset(given))
    if not config.resume:
        check_runnable(config)
    return config


def check_runnable(config: Config) -> None:
    """The checks that need the final settings (after a resume merged the manifest)."""
    if config.input_path is None:
        raise UsageError(
            "No input file given; pass --input PATH (a CSV of artist_id,artist_name[,artist_data])."
        )
    if not config.prompt.prompt_id and not config.prompt.model:
        raise ConfigError(
            "No prompt configured; pass --prompt-id (or set OPENAI_PROMPT_ID) for a stored prompt, "
            "or --model (or OPENAI_MODEL) to use the built-in instructions."
        )
    if not config.dry_run and not config.api_key:
        raise ConfigError(
            "No API key found; set OPENAI_API_KEY (in the environment or .env.local) "
            "or pass --openai-api-key."
        )


def _check_combinations(args: argparse.Namespace) -> None:
    pairs = (
        ("enable_db", "no_db", "--enable-db and --no-db contradict each other; pass one of them."),
        (
            "test_mode",
            "db_table",
            "--test-mode picks table test_artists; do not combine it with --db-table.",
        ),
        (
            "resume",
            "overwrite",
            "--resume continues the job and --overwrite starts a new one; pass one of them.",
        ),
        (
            "no_db",
            "skip_existing",
            "--skip-existing needs the database (it keeps bios already there); drop --no-db.",
        ),
    )
    for first, second, message in pairs:
        if getattr(args, first, None) and getattr(args, second, None):
            raise UsageError(message)


def _prompt_settings(args: argparse.Namespace, lookup: _Lookup) -> PromptSettings:
    prompt_id = lookup.get("prompt_id", "OPENAI_PROMPT_ID")
    model = lookup.get("model", "OPENAI_MODEL")
    instructions_file = getattr(args, "instructions_file", None)
    if instructions_file and prompt_id:
        raise UsageError(
            "--instructions-file applies to --model requests; a stored prompt (--prompt-id) "
            "carries its own instructions. Drop one of them."
        )
    return PromptSettings(
        prompt_id=prompt_id,
        prompt_version=lookup.get("prompt_version", "OPENAI_PROMPT_VERSION"),
        model=model,
        instructions=_read_instructions(instructions_file)
        if instructions_file
        else DEFAULT_INSTRUCTIONS,
    )


def _read_instructions(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"Cannot read --instructions-file '{path}': {exc.strerror}.") from None
    if not text:
        raise UsageError(f"--instructions-file '{path}' is empty; write the instructions in it.")
    return text


def _database(args: argparse.Namespace, lookup: _Lookup, workers: int) -> DatabaseConfig | None:
    if args.no_db or args.dry_run:
        return None
    url = lookup.get("db_url", "DATABASE_URL")
    if not url and not args.enable_db:
        return None  # JSONL only; the runner says so at startup
    table = TEST_TABLE if args.test_mode else lookup.get("db_table", "DB_TABLE", DEFAULT_TABLE)
    pool_size = lookup.get("db_pool_size", "DB_POOL_SIZE", min(workers, 10), int)
    return DatabaseConfig(
        url=require_database_url(url),
        table=table,
        pool_size=_in_range("--db-pool-size", pool_size, 1, 200),
        retry_seconds=_in_range(
            "--db-retry-seconds", lookup.get("db_retry_seconds", None, 60.0, float), 0.0, 86400.0
        ),
    )


def _quota(lookup: _Lookup) -> QuotaSettings:
    return QuotaSettings(
        monitoring=lookup.get("quota_monitoring", "QUOTA_MONITORING", True, parse_bool),
        threshold=_in_range(
            "--quota-threshold",
            lookup.get("quota_threshold", "QUOTA_THRESHOLD", 0.8, float),
            0.1,
            1.0,
        ),
        daily_limit=_optional_positive(
            "--daily-limit", lookup.get("daily_limit", "DAILY_REQUEST_LIMIT", None, int)
        ),
        pause_hours=_in_range(
            "--pause-duration",
            lookup.get("pause_duration", "PAUSE_DURATION_HOURS", 24.0, float),
            1.0,
            72.0,
        ),
        log_interval=_in_range(
            "--quota-log-interval",
            lookup.get("quota_log_interval", "QUOTA_LOG_INTERVAL", 100, int),
            1,
            1_000_000,
        ),
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _in_range(flag: str, value, low, high):
    if not low <= value <= high:
        raise UsageError(f"{flag} must be between {low} and {high} (got {value}).")
    return value


def _positive(flag: str, value: float) -> float:
    if value <= 0:
        raise UsageError(f"{flag} must be greater than 0 (got {value}).")
    return value


def _optional_positive(flag: str, value: int | None) -> int | None:
    return None if value is None else _in_range(flag, value, 1, 10**9)
