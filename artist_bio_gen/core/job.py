"""The job manifest: what a job is, so that ``--resume`` alone can continue it.

``<output stem>.job.json`` records the job id (the key of its ledger rows), the input file
and the settings that define what a bio of this job is (prompt, model, instructions,
database and table). It is written atomically (temporary file, fsync, rename, fsync of the
directory) when a job starts and when a run ends cleanly, with a checkpoint of how far the
JSONL and the ledger are known to agree.

On ``--resume`` the recorded settings are used; a setting given on the command line may
change what is safe to change (workers, timeouts, retries ...) but not what defines the job:
another prompt or another table would mix two kinds of bio in one job, so it is refused.
A value that only comes from the environment and differs from the record is ignored with a
warning (the job's own settings win over ambient defaults).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..config import Config
from ..database.connection import describe_database
from ..errors import ConfigError, UsageError
from ..models import DatabaseConfig
from .paths import JobPaths

logger = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """A point at which the JSONL (first ``jsonl_size`` bytes) and the ledger (rows up to
    ``ledger_seq``) were known to hold exactly the same artists."""

    jsonl_size: int = 0
    ledger_seq: int = 0
    lines: int = 0


@dataclass(frozen=True)
class JobSettings:
    """The settings that define a job's bios."""

    prompt_id: str | None
    prompt_version: str | None
    model: str | None
    instructions_sha256: str | None
    database: str | None
    table: str | None
    skip_existing: bool


@dataclass(frozen=True)
class Manifest:
    """The contents of the manifest file."""

    job_id: str
    input: str
    settings: JobSettings
    created_at: str
    checkpoint: Checkpoint = Checkpoint()
    #: Bytes at the start of the JSONL written by the legacy tool before this job adopted
    #: the file; they are not mirrored in the ledger and are left as they are.
    legacy_prefix: int = 0
    #: The database URL is not stored (it may hold a password); instructions are stored in
    #: full so that a resume sends exactly the same request.
    instructions: str | None = field(default=None)

    def to_json(self) -> dict:
        """The manifest as written to disk."""
        data = asdict(self)
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        """Parse what ``to_json`` wrote."""
        return cls(
            job_id=data["job_id"],
            input=data["input"],
            settings=JobSettings(**data["settings"]),
            created_at=data["created_at"],
            checkpoint=Checkpoint(**data.get("checkpoint") or {}),
            legacy_prefix=int(data.get("legacy_prefix", 0)),
            instructions=data.get("instructions"),
        )


def settings_of(config: Config) -> JobSettings:
    """The job-defining settings of a configuration."""
    prompt = config.prompt
    uses_instructions = not prompt.prompt_id
    return JobSettings(
        prompt_id=prompt.prompt_id,
        prompt_version=prompt.prompt_version,
        model=prompt.model,
        instructions_sha256=_sha256(prompt.instructions) if uses_instructions else None,
        database=describe_database(config.db.url) if config.db else None,
        table=config.db.table if config.db else None,
        skip_existing=config.skip_existing,
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_manifest(config: Config, job_id: str, legacy_prefix: int = 0) -> Manifest:
    """A manifest for a new job started with ``config``."""
    assert config.input_path is not None
    settings = settings_of(config)
    return Manifest(
        job_id=job_id,
        input=str(config.input_path.resolve()),
        settings=settings,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        legacy_prefix=legacy_prefix,
        instructions=config.prompt.instructions if settings.instructions_sha256 else None,
    )


def read_manifest(paths: JobPaths) -> Manifest | None:
    """The job's manifest, or None when the output has none."""
    try:
        data = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"The job manifest {paths.manifest} cannot be read ({exc}); restore it from a "
            "backup, or start a new job with another --output."
        ) from None
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"The job manifest {paths.manifest} is incomplete ({exc}).") from None


def write_manifest(paths: JobPaths, manifest: Manifest) -> None:
    """Replace the manifest atomically (a crash leaves the old or the new one, whole)."""
    directory = paths.manifest.parent
    fd, temp = tempfile.mkstemp(prefix=paths.manifest.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(manifest.to_json(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, paths.manifest)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# Settings compared on resume: (JobSettings field, CLI argument names, human name).
_JOB_DEFINING = (
    ("prompt_id", ("prompt_id",), "prompt id"),
    ("prompt_version", ("prompt_version",), "prompt version"),
    ("model", ("model",), "model"),
    ("instructions_sha256", ("instructions_file",), "instructions"),
    ("database", ("db_url", "no_db", "enable_db"), "database"),
    ("table", ("db_table", "test_mode"), "table"),
)


def apply_manifest(config: Config, manifest: Manifest) -> Config:
    """The configuration to resume ``manifest``'s job with.

    Job-defining settings come from the manifest; a conflicting command-line value is a
    ``UsageError`` that says what the job was started with.
    """
    current = settings_of(config)
    for name, flags, human in _JOB_DEFINING:
        recorded, wanted = getattr(manifest.settings, name), getattr(current, name)
        if recorded == wanted:
            continue
        # Another database is always a conflict: the recorded URL is not stored (it may hold
        # a password), so the job can only continue on the database configured now.
        both_databases = name == "database" and None not in (recorded, wanted)
        if both_databases or any(flag in config.cli_given for flag in flags):
            raise UsageError(_conflict_message(human, recorded, wanted))
        if wanted is not None and name != "instructions_sha256":
            logger.warning(
                "ignoring the %s %r from the environment; this job uses %r", human, wanted, recorded
            )
    return _merged(config, manifest)


def _conflict_message(human: str, recorded: object, wanted: object) -> str:
    return (
        f"This job was started with {human} {recorded!r}; --resume cannot switch it to {wanted!r} "
        "(that would mix two kinds of bio in one job). Resume without that option, or start a "
        "new job with another --output."
    )


def _merged(config: Config, manifest: Manifest) -> Config:
    recorded = manifest.settings
    prompt = replace(
        config.prompt,
        prompt_id=recorded.prompt_id,
        prompt_version=recorded.prompt_version,
        model=recorded.model,
        instructions=manifest.instructions or config.prompt.instructions,
    )
    db = _merged_database(config.db, recorded)
    return replace(
        config,
        prompt=prompt,
        db=db,
        input_path=config.input_path or Path(manifest.input),
        skip_existing=config.skip_existing or recorded.skip_existing,
    )


def _merged_database(db: DatabaseConfig | None, recorded: JobSettings) -> DatabaseConfig | None:
    if recorded.database is None:
        return None  # a JSONL-only job stays one, whatever the environment holds
    if db is None:
        raise ConfigError(
            f"This job writes to the database {recorded.database}, but no database URL is "
            "configured now; set DATABASE_URL or pass --db-url to resume it."
        )
    return db._replace(table=recorded.table or db.table)
