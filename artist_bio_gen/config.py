"""The run configuration: resolved once at startup into a frozen object handed to the core.

Every setting is looked up in this order (the first that has a value wins):

1. the command line;
2. the job manifest, when ``--resume`` continues a recorded job, for the settings that
   define the job (prompt id and version, model, instructions, database, table,
   ``--skip-existing``, ``--mode``) and for the input file;
3. the process environment;
4. ``.env.local`` then ``.env`` in the current directory (python-dotenv, read without
   touching ``os.environ``);
5. the default.

On ``--resume`` a job-defining setting given on the command line that differs from the
manifest is refused (another prompt or table would mix two kinds of bio in one job), and one
that only comes from the environment is ignored with a warning. Another database is always
refused: the manifest does not store the URL (it may hold a password), so a job can only be
continued on the database configured now if that is the one it was started on.

``resolve_config`` builds the one ``Config`` of a run; nothing replaces it afterwards.

**Batch mode** (``--mode batch``, ``BatchSettings``) needs a database (each batch is recorded
before it is created) and ``--model`` (a batch file holds one model, which the tool must name;
with a stored prompt that is the prompt's model). ``--service-tier`` does not apply (a batch
is its own tier). A job keeps its mode: ``--resume --mode online`` on a batch job is refused
(``--finish-online`` answers what is left online instead), and so is the opposite.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from dotenv import dotenv_values

from .api.request import DEFAULT_INSTRUCTIONS, SERVICE_TIERS, PromptSettings, ServiceTier
from .database.connection import describe_database, require_database_url
from .errors import ConfigError, UsageError
from .jobfiles import JobPaths, JobSettings, Manifest, read_manifest
from .models import DatabaseConfig, JobRef

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "out.jsonl"
DEFAULT_TABLE = "artists"
TEST_TABLE = "test_artists"
MAX_WORKERS_LIMIT = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class QuotaSettings:
    """Pacing to the account's rate limits: the legacy quota flags and the client caps."""

    #: Learn the account's limits from the ``x-ratelimit-*`` headers (``--quota-monitoring``).
    monitoring: bool = True
    #: Use at most this fraction of a learned limit's bucket (``--quota-threshold``).
    threshold: float = 0.8
    #: A rate-limit wait longer than this ends the run as resumable (``--pause-duration``).
    pause_hours: float = 24.0
    #: Log the limiter's view every N requests (``--quota-log-interval``).
    log_interval: int = 100
    #: Client caps, requests and tokens per minute (``--rpm``, ``--tpm``).
    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True)
class BudgetSettings:
    """Hard limits: the run stops submitting before it would pass one of them."""

    #: API requests per UTC day for the job, shared by all its runs (``--daily-limit``).
    daily_limit: int | None = None
    #: USD this run may spend (``--max-cost``).
    max_cost: float | None = None
    #: Artists this run may send to the API (``--limit``).
    limit: int | None = None
    #: USD per million input and output tokens, instead of the built-in price table.
    price_input: float | None = None
    price_output: float | None = None


#: How requests travel: one HTTP request per artist, or the Batch API (``--mode``).
Mode = Literal["online", "batch"]
MODES: tuple[Mode, ...] = ("online", "batch")
#: The Batch API's limits per request file.
BATCH_MAX_REQUESTS = 50_000
BATCH_MAX_BYTES = 200_000_000


@dataclass(frozen=True)
class BatchSettings:
    """Batch mode: how the requests are split into files and how long a run waits."""

    #: Request lines per file (``--batch-max-requests``; the API allows 50,000).
    max_requests: int = BATCH_MAX_REQUESTS
    #: Bytes per file (``--batch-max-bytes``; the API allows 200 MB).
    max_bytes: int = BATCH_MAX_BYTES
    #: Keep polling, collecting and submitting for this many seconds (``--batch-wait``; 0:
    #: one round, then exit: the cron case).
    wait: float = 0.0
    #: Seconds between two polls while waiting (``--batch-poll-interval``).
    poll_interval: float = 30.0
    #: Answer the artists no open batch holds with online requests (``--finish-online``).
    finish_online: bool = False
    #: ``artist-bio-gen batch cancel``: cancel the open batches, collect what they return.
    cancel: bool = False


@dataclass(frozen=True)
class ReportSettings:
    """What a run shows and writes about itself. The CLI's business: the core ignores it."""

    #: ``--quiet``: warnings and errors only (no progress, no summary).
    quiet: bool = False
    #: ``--print-bios``: every committed bio on stdout.
    print_bios: bool = False
    #: ``--summary-json``: the summary's figures as JSON, written at the end of the run.
    summary_json: Path | None = None
    #: ``--metrics-file``: Prometheus text format for node_exporter's textfile collector.
    metrics_file: Path | None = None
    #: ``--progress-interval``: seconds between progress lines off a terminal (and metrics
    #: file updates during the run).
    progress_interval: float = 30.0


@dataclass(frozen=True)
class Config:
    """Everything a run needs, validated. Safe to share with worker threads."""

    input_path: Path
    output_path: Path
    prompt: PromptSettings
    api_key: str | None = field(repr=False)
    base_url: str | None
    db: DatabaseConfig | None
    max_workers: int = 4
    #: Worker processes for the online processing (None: ``auto``, see
    #: ``core/processes.py``; 1: the run's own threads only).
    processes: int | None = None
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
    budget: BudgetSettings = BudgetSettings()
    #: ``service_tier`` sent with every request (None: not sent, the account's default).
    service_tier: ServiceTier | None = None
    #: The id of the recorded job this configuration continues (``--resume`` of a job with
    #: a manifest), else None. The run checks it still is the job beside the output.
    resumed_job: str | None = None
    #: ``online`` or ``batch`` (a job-defining setting).
    mode: Mode = "online"
    batch: BatchSettings = BatchSettings()
    report: ReportSettings = ReportSettings()

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """Values that must never appear in any output."""
        return (self.api_key, self.db.url if self.db else None, _password(self.db))

    @property
    def job_settings(self) -> JobSettings:
        """The settings that define this configuration's bios (recorded in the manifest)."""
        prompt = self.prompt
        return JobSettings(
            prompt_id=prompt.prompt_id,
            prompt_version=prompt.prompt_version,
            model=prompt.model,
            instructions_sha256=None if prompt.uses_stored_prompt else _sha256(prompt.instructions),
            database=describe_database(self.db.url) if self.db else None,
            table=self.db.table if self.db else None,
            skip_existing=self.skip_existing,
            mode=self.mode,
        )

    def job_ref(self, job_id: str) -> JobRef:
        """What every ledger row of job ``job_id`` records about its prompt."""
        prompt = self.prompt
        return JobRef(job_id, prompt.prompt_id, prompt.prompt_version, prompt.model)


def _password(db: DatabaseConfig | None) -> str | None:
    if db is None:
        return None
    from psycopg.conninfo import conninfo_to_dict

    password = conninfo_to_dict(db.url).get("password")
    return str(password) if password else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_environment(directory: Path | None = None) -> dict[str, str]:
    """The process environment over ``.env.local`` over ``.env`` (no global side effects)."""
    directory = directory or Path.cwd()
    merged: dict[str, str] = {}
    for name in (".env", ".env.local"):  # later files win
        merged.update({k: v for k, v in dotenv_values(directory / name).items() if v is not None})
    merged.update(os.environ)
    return merged


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _describe(parse: Callable[[str], Any]) -> str:
    return {int: "a whole number", float: "a number", parse_bool: "true or false"}.get(
        parse, "a value"
    )


class _Layers:
    """The lookup order of the module docstring, for one resolution."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str], recorded: Manifest | None):
        self.args = args
        self.env = env
        self.recorded = recorded

    def cli(self, name: str) -> Any:
        """The command-line value of ``name`` (None when not given)."""
        return getattr(self.args, name, None)

    def flag(self, name: str) -> bool:
        """Whether the command-line switch ``name`` was given."""
        return bool(getattr(self.args, name, False))

    def environment(self, env_name: str, parse: Callable[[str], T]) -> T | None:
        """The parsed environment value (None when unset or empty)."""
        raw = self.env.get(env_name, "").strip()
        if not raw:
            return None
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(
                f"{env_name}={raw!r} is not valid; expected {_describe(parse)}."
            ) from None

    def get_optional(self, name: str, env_name: str | None, parse: Callable[[str], T]) -> T | None:
        """CLI value, else environment value, else None (not a job-defining setting)."""
        value = self.cli(name)
        if value is not None:
            return cast(T, value)  # argparse has converted it with the same parser
        return self.environment(env_name, parse) if env_name else None

    def get(self, name: str, env_name: str | None, default: T, parse: Callable[[str], T]) -> T:
        """CLI value, else environment value, else ``default``."""
        value = self.get_optional(name, env_name, parse)
        return default if value is None else value

    def job_defined(
        self, human: str, recorded: T, given: T | None, from_env: T | None, default: T
    ) -> T:
        """A setting that defines the job: the recorded value wins on ``--resume``.

        ``given`` is the command-line value (None when not given): one that differs from the
        record is refused. An environment value that differs is ignored with a warning.
        """
        if self.recorded is None:
            if given is not None:
                return given
            return default if from_env is None else from_env
        if given is not None and given != recorded:
            raise UsageError(_conflict_message(human, recorded, given))
        if given is None and from_env is not None and from_env != recorded:
            logger.warning(
                "ignoring the %s %r from the environment; this job uses %r",
                human,
                from_env,
                recorded,
            )
        return recorded


def _conflict_message(human: str, recorded: object, wanted: object) -> str:
    return (
        f"This job was started with {human} {recorded!r}; --resume cannot switch it to {wanted!r} "
        "(that would mix two kinds of bio in one job). Resume without that option, or start a "
        "new job with another --output."
    )


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Validate ``args`` and ``env`` (with ``--resume``, the job manifest) into a ``Config``.

    Raises ``UsageError`` / ``ConfigError`` with a message that says what to do.
    """
    _check_combinations(args)
    output_path = Path(getattr(args, "output", None) or DEFAULT_OUTPUT)
    recorded = read_manifest(JobPaths(output_path)) if args.resume else None
    layers = _Layers(args, env, recorded)
    workers = _in_range(
        "--max-workers", layers.get("max_workers", "MAX_WORKERS", 4, int), 1, MAX_WORKERS_LIMIT
    )
    config = Config(
        input_path=_input_path(layers, output_path),
        output_path=output_path,
        prompt=_prompt_settings(layers),
        api_key=layers.get_optional("openai_api_key", "OPENAI_API_KEY", str),
        base_url=layers.get_optional("base_url", "OPENAI_BASE_URL", str),
        db=_database(layers, workers),
        max_workers=workers,
        processes=_processes(layers),
        request_timeout=_positive(
            "--request-timeout", layers.get("request_timeout", "OPENAI_TIMEOUT", 120.0, float)
        ),
        max_retries=_in_range(
            "--max-retries", layers.get("max_retries", "OPENAI_MAX_RETRIES", 3, int), 0, 20
        ),
        skip_existing=layers.flag("skip_existing")
        or bool(recorded and recorded.settings.skip_existing),
        fsync_interval=_in_range(
            "--fsync-interval",
            layers.get("fsync_interval", "JSONL_FSYNC_INTERVAL", 0.0, float),
            0.0,
            60.0,
        ),
        shutdown_grace=_in_range(
            "--shutdown-grace", layers.get("shutdown_grace", None, 30.0, float), 0.0, 3600.0
        ),
        max_attempts=_in_range("--max-attempts", layers.get("max_attempts", None, 3, int), 1, 1000),
        retry_failed=layers.flag("retry_failed"),
        transaction_log=_optional_path(layers.cli("transaction_log")),
        resume=bool(args.resume),
        overwrite=layers.flag("overwrite"),
        dry_run=layers.flag("dry_run"),
        verbose=layers.flag("verbose"),
        quota=_quota(layers),
        budget=_budget(layers),
        service_tier=_service_tier(layers),
        resumed_job=recorded.job_id if recorded else None,
        mode=_mode(layers),
        batch=_batch(layers),
        report=_report(layers),
    )
    _check_runnable(config)
    _check_batch(config, layers)
    _check_processes(config)
    return config


#: The most worker processes ``--processes`` accepts.
MAX_PROCESSES = 64


def parse_processes(text: str) -> int | None:
    """``auto`` (None) or a count of processes from 1 to ``MAX_PROCESSES``."""
    if text.strip().lower() == "auto":
        return None
    count = int(text)
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(f"expected auto or 1-{MAX_PROCESSES}, got {text}")
    return count


def _processes(layers: _Layers) -> int | None:
    given = layers.cli("processes")  # checked by the parser already
    if given is not None:
        return parse_processes(given)
    return layers.environment("WORKER_PROCESSES", parse_processes)


def _check_processes(config: Config) -> None:
    """Several processes share the job through the database's ledger."""
    if config.processes is None or config.processes == 1 or config.dry_run:
        return
    if config.mode != "online":
        raise UsageError(
            f"--processes {config.processes} is for online jobs; a batch job's requests run "
            "at OpenAI, so drop --processes (or pass --processes 1)."
        )
    if config.db is None:
        raise UsageError(
            f"--processes {config.processes} needs the database (DATABASE_URL or --db-url): "
            "the worker processes share the job through its ledger. Drop --processes for a "
            "JSONL-only job."
        )


def _input_path(layers: _Layers, output: Path) -> Path:
    given = layers.cli("input")
    if given:
        return Path(given)
    if layers.recorded is not None:
        return Path(layers.recorded.input)
    if layers.flag("resume") and not _has_lines(output):
        manifest = JobPaths(output).manifest
        raise UsageError(
            f"Nothing to resume: {output} has no job (no {manifest.name}); "
            "start one with --input PATH."
        )
    raise UsageError(
        "No input file given; pass --input PATH (a CSV of artist_id,artist_name[,artist_data])."
    )


def _has_lines(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _check_runnable(config: Config) -> None:
    """The checks that need the final settings."""
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
        ("quiet", "verbose", "--quiet and --verbose contradict each other; pass one of them."),
        (
            "no_db",
            "skip_existing",
            "--skip-existing needs the database (it keeps bios already there); drop --no-db.",
        ),
    )
    for first, second, message in pairs:
        if getattr(args, first, None) and getattr(args, second, None):
            raise UsageError(message)


def _prompt_settings(layers: _Layers) -> PromptSettings:
    recorded = layers.recorded.settings if layers.recorded else None

    def job_text(name: str, env_name: str, human: str) -> str | None:
        # All three settings are text (argparse and the manifest hold them as str).
        was: str | None = getattr(recorded, name, None)
        given: str | None = layers.cli(name)
        return layers.job_defined(human, was, given, layers.environment(env_name, str), None)

    prompt_id = job_text("prompt_id", "OPENAI_PROMPT_ID", "prompt id")
    instructions_file = layers.cli("instructions_file")
    if instructions_file and prompt_id:
        raise UsageError(
            "--instructions-file applies to --model requests; a stored prompt (--prompt-id) "
            "carries its own instructions. Drop one of them."
        )
    return PromptSettings(
        prompt_id=prompt_id,
        prompt_version=job_text("prompt_version", "OPENAI_PROMPT_VERSION", "prompt version"),
        model=job_text("model", "OPENAI_MODEL", "model"),
        instructions=_instructions(layers, instructions_file),
    )


def _instructions(layers: _Layers, instructions_file: str | None) -> str:
    given = _read_instructions(instructions_file) if instructions_file else None
    recorded = layers.recorded
    if recorded is None:
        return given or DEFAULT_INSTRUCTIONS
    wanted = recorded.settings.instructions_sha256
    if given is not None and _sha256(given) != wanted:
        raise UsageError(_conflict_message("instructions", wanted, _sha256(given)))
    return recorded.instructions or DEFAULT_INSTRUCTIONS


def _read_instructions(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"Cannot read --instructions-file '{path}': {exc.strerror}.") from None
    if not text:
        raise UsageError(f"--instructions-file '{path}' is empty; write the instructions in it.")
    return text


def _database(layers: _Layers, workers: int) -> DatabaseConfig | None:
    if layers.flag("dry_run"):
        return None  # a dry run touches no database
    url = layers.get_optional("db_url", "DATABASE_URL", str)
    if layers.recorded is not None:
        url = _recorded_database(layers, layers.recorded.settings, url)
        if url is None:
            return None
    elif layers.flag("no_db") or not (url or layers.flag("enable_db")):
        return None  # JSONL only; the runner says so at startup
    pool_size = layers.get("db_pool_size", "DB_POOL_SIZE", min(workers, 10), int)
    return DatabaseConfig(
        url=require_database_url(url),
        table=_table(layers),
        pool_size=_in_range("--db-pool-size", pool_size, 1, 200),
        retry_seconds=_in_range(
            "--db-retry-seconds",
            layers.get("db_retry_seconds", None, 60.0, float),
            0.0,
            86400.0,
        ),
    )


def _recorded_database(layers: _Layers, recorded: JobSettings, url: str | None) -> str | None:
    """The URL to continue a recorded job with (None: the job writes the JSONL only)."""
    given_url = layers.cli("db_url")
    wanted = describe_database(require_database_url(url)) if url else None
    if recorded.database is None:
        # A JSONL-only job stays one, whatever the environment holds.
        if given_url or layers.flag("enable_db"):
            raise UsageError(_conflict_message("database", None, wanted))
        if wanted is not None:
            logger.warning(
                "ignoring the database %r from the environment; this job uses None", wanted
            )
        return None
    if layers.flag("no_db"):
        raise UsageError(_conflict_message("database", recorded.database, None))
    if wanted is None:
        raise ConfigError(
            f"This job writes to the database {recorded.database}, but no database URL is "
            "configured now; set DATABASE_URL or pass --db-url to resume it."
        )
    if wanted != recorded.database:
        raise UsageError(_conflict_message("database", recorded.database, wanted))
    return url


def _table(layers: _Layers) -> str:
    given: str | None = TEST_TABLE if layers.flag("test_mode") else layers.cli("db_table")
    recorded = layers.recorded.settings.table if layers.recorded else None
    return layers.job_defined(
        "table",
        recorded or DEFAULT_TABLE,
        given,
        layers.environment("DB_TABLE", str),
        DEFAULT_TABLE,
    )


def _quota(layers: _Layers) -> QuotaSettings:
    return QuotaSettings(
        monitoring=layers.get("quota_monitoring", "QUOTA_MONITORING", True, parse_bool),
        threshold=_in_range(
            "--quota-threshold",
            layers.get("quota_threshold", "QUOTA_THRESHOLD", 0.8, float),
            0.1,
            1.0,
        ),
        # Hours, fractions accepted (0.5 is half an hour), as the legacy flag; at most 72.
        pause_hours=_in_range(
            "--pause-duration",
            _positive(
                "--pause-duration",
                layers.get("pause_duration", "PAUSE_DURATION_HOURS", 24.0, float),
            ),
            0.0,
            72.0,
        ),
        log_interval=_in_range(
            "--quota-log-interval",
            layers.get("quota_log_interval", "QUOTA_LOG_INTERVAL", 100, int),
            1,
            1_000_000,
        ),
        rpm=_optional_positive("--rpm", layers.get_optional("rpm", "OPENAI_RPM", float)),
        tpm=_optional_positive("--tpm", layers.get_optional("tpm", "OPENAI_TPM", float)),
    )


def _budget(layers: _Layers) -> BudgetSettings:
    daily_limit = layers.get_optional("daily_limit", "DAILY_REQUEST_LIMIT", int)
    limit = layers.get_optional("limit", None, int)
    price_input = layers.get_optional("price_input", "OPENAI_PRICE_INPUT", float)
    price_output = layers.get_optional("price_output", "OPENAI_PRICE_OUTPUT", float)
    if (price_input is None) != (price_output is None):
        raise UsageError(
            "--price-input and --price-output go together (USD per million input and output "
            "tokens); give both, or neither to use the built-in price table."
        )
    return BudgetSettings(
        daily_limit=None
        if daily_limit is None
        else _in_range("--daily-limit", daily_limit, 1, 10**9),
        max_cost=_optional_positive(
            "--max-cost", layers.get_optional("max_cost", "MAX_COST_USD", float)
        ),
        limit=None if limit is None else _in_range("--limit", limit, 1, 10**12),
        price_input=None
        if price_input is None
        else _in_range("--price-input", price_input, 0.0, 1e6),
        price_output=None
        if price_output is None
        else _in_range("--price-output", price_output, 0.0, 1e6),
    )


def _service_tier(layers: _Layers) -> ServiceTier | None:
    tier = layers.get_optional("service_tier", "OPENAI_SERVICE_TIER", str)
    if tier is None:
        return None
    for known in SERVICE_TIERS:
        if tier == known:
            return known
    raise UsageError(
        f"--service-tier (or OPENAI_SERVICE_TIER) must be one of {', '.join(SERVICE_TIERS)} "
        f"(got {tier!r})."
    )


def _mode(layers: _Layers) -> Mode:
    given: str | None = layers.cli("mode")
    if layers.recorded is None:
        return _known_mode(given or "online")
    recorded = _known_mode(layers.recorded.settings.mode)
    if given is not None and given != recorded:
        hint = (
            " --resume --finish-online answers the artists still waiting with online requests."
            if recorded == "batch"
            else ""
        )
        raise UsageError(
            f"This job was started with --mode {recorded}; --resume cannot switch it to "
            f"--mode {given} (a job keeps its mode).{hint} Resume without --mode, or start a "
            "new job with another --output."
        )
    return recorded


def _known_mode(text: str) -> Mode:
    for mode in MODES:
        if text == mode:
            return mode
    raise ConfigError(f"Unknown mode {text!r} in the job manifest; upgrade artist-bio-gen.")


def _batch(layers: _Layers) -> BatchSettings:
    return BatchSettings(
        max_requests=_in_range(
            "--batch-max-requests",
            layers.get("batch_max_requests", "OPENAI_BATCH_MAX_REQUESTS", BATCH_MAX_REQUESTS, int),
            1,
            BATCH_MAX_REQUESTS,
        ),
        max_bytes=_in_range(
            "--batch-max-bytes",
            layers.get("batch_max_bytes", "OPENAI_BATCH_MAX_BYTES", BATCH_MAX_BYTES, int),
            1024,
            BATCH_MAX_BYTES,
        ),
        wait=_in_range(
            "--batch-wait", layers.get("batch_wait", None, 0.0, float), 0.0, 7 * 86400.0
        ),
        poll_interval=_in_range(
            "--batch-poll-interval",
            layers.get("batch_poll_interval", "OPENAI_BATCH_POLL_INTERVAL", 30.0, float),
            0.01,
            3600.0,
        ),
        finish_online=layers.flag("finish_online"),
        cancel=layers.flag("batch_cancel"),
    )


def _check_batch(config: Config, layers: _Layers) -> None:
    """What batch mode needs, and the options that only make sense in one mode."""
    if config.mode == "online":
        for name, flag in (
            ("finish_online", "--finish-online"),
            ("batch_wait", "--batch-wait"),
            ("batch_cancel", "batch cancel"),
        ):
            if layers.cli(name):
                raise UsageError(f"{flag} is for batch jobs (--mode batch); this job is online.")
        return
    if config.batch.finish_online and not config.resume:
        raise UsageError("--finish-online finishes a batch job that exists; pass it with --resume.")
    if layers.cli("service_tier") is not None:
        raise UsageError(
            "--service-tier does not apply to --mode batch (a batch is its own tier, at half "
            "the price); drop it."
        )
    if config.service_tier is not None and not config.batch.finish_online:
        logger.warning(
            "ignoring OPENAI_SERVICE_TIER=%s: batch requests have a tier of their own",
            config.service_tier,
        )
    if not config.prompt.model:
        raise ConfigError(
            "--mode batch needs --model: a batch file holds one model and the tool names it in "
            "every request (with a stored prompt, give the prompt's model)."
        )
    if config.db is None and not config.dry_run:
        raise ConfigError(
            "--mode batch needs the database (DATABASE_URL or --db-url): every batch is "
            "recorded there before it is created, so none is lost or created twice. Use "
            "--mode online for a JSONL-only job."
        )


def _report(layers: _Layers) -> ReportSettings:
    return ReportSettings(
        quiet=layers.flag("quiet"),
        print_bios=layers.flag("print_bios"),
        summary_json=report_path("--summary-json", layers.cli("summary_json")),
        metrics_file=report_path("--metrics-file", layers.cli("metrics_file")),
        progress_interval=_in_range(
            "--progress-interval",
            layers.get("progress_interval", "PROGRESS_INTERVAL", 30.0, float),
            0.1,
            86400.0,
        ),
    )


def report_path(flag: str, value: str | None) -> Path | None:
    """The path of a file the run writes about itself; checked now, so that a typo is found
    before the run spends anything rather than after."""
    if not value:
        return None
    path = Path(value)
    if path.is_dir() or not path.parent.resolve().is_dir():
        raise UsageError(f"{flag} '{path}' must be a file in an existing directory.")
    return path


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


N = TypeVar("N", int, float)


def _in_range(flag: str, value: N, low: N, high: N) -> N:
    if not low <= value <= high:
        raise UsageError(f"{flag} must be between {low} and {high} (got {value}).")
    return value


def _positive(flag: str, value: float) -> float:
    if value <= 0:
        raise UsageError(f"{flag} must be greater than 0 (got {value}).")
    return value


def _optional_positive(flag: str, value: float | None) -> float | None:
    return None if value is None else _positive(flag, value)
