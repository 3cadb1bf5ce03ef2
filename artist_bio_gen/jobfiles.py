"""The files a job keeps beside its JSONL output, and the job manifest's format.

Everything a job needs to resume lives next to the output, so ``--output X`` alone identifies
the job. For ``out.jsonl`` the side files are ``out.job.json`` (the manifest),
``out.failures.jsonl``, ``out.transactions.jsonl``, ``out.jsonl.lock``, ``out.run.lock``,
``out.lastrun.json`` (how the last run started and ended, for ``status``), for a job without
a database and with a daily request limit ``out.usage.json``, and while a batch job uploads
or collects files ``out.batch-upload.jsonl``, ``out.batch-download.jsonl`` and
``out.batch-errors.jsonl``.

The manifest records the job id (the key of its ledger rows), the input file and the
settings that define what a bio of this job is (prompt, model, instructions, database and
table) and how its requests travel (``mode``: online, or batch), plus a checkpoint of how
far the JSONL and the ledger are known to agree and a mark of how far into the input every
artist is done (``InputMark``). It is replaced atomically, carries a
``format`` number, and a format this version does not know (written by a newer version of
the tool) is refused instead of being misread.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models import JobRef
from .utils.durable import atomic_write

#: The manifest format this version writes: 1 for online jobs (exactly what earlier versions
#: wrote and read), 2 for batch jobs (``settings.mode``), so that an earlier version refuses
#: a batch job as "written by a newer version" instead of misreading it as an online job.
FORMAT = 2
#: The format of a manifest without ``settings.mode`` (an online job).
ONLINE_FORMAT = 1


def _stem(output: Path) -> str:
    # "out.jsonl" -> "out"; any other name keeps its full name so that "a.json" and "a.jsonl"
    # never share side files.
    return output.stem if output.suffix == ".jsonl" else output.name


@dataclass(frozen=True)
class JobPaths:
    """The output path and the side files derived from it."""

    output: Path

    def _side(self, suffix: str) -> Path:
        return self.output.with_name(_stem(self.output) + suffix)

    @property
    def append_lock(self) -> Path:
        """Lock taken around every append, shared by all processes writing the output."""
        return self.output.with_name(self.output.name + ".lock")

    @property
    def run_lock(self) -> Path:
        """Lock held for a whole run so that two runs never work on one job."""
        return self._side(".run.lock")

    @property
    def manifest(self) -> Path:
        """The job manifest (job id, input, settings)."""
        return self._side(".job.json")

    @property
    def failures(self) -> Path:
        """One JSON line per failed attempt (machine-readable, never the main JSONL)."""
        return self._side(".failures.jsonl")

    @property
    def usage(self) -> Path:
        """Daily request counts of a job without a database (``core/budget.FileUsage``)."""
        return self._side(".usage.json")

    @property
    def batch_upload(self) -> Path:
        """Batch mode: the request file being written for upload (deleted once uploaded)."""
        return self._side(".batch-upload.jsonl")

    @property
    def batch_download(self) -> Path:
        """Batch mode: a batch's output file being collected (deleted after)."""
        return self._side(".batch-download.jsonl")

    @property
    def batch_errors(self) -> Path:
        """Batch mode: a batch's error file being collected (deleted after)."""
        return self._side(".batch-errors.jsonl")

    @property
    def last_run(self) -> Path:
        """The last run's start and end (``LastRun``), shown by ``status``."""
        return self._side(".lastrun.json")

    @property
    def transaction_log(self) -> Path:
        """Default place of the structured per-commit transaction log."""
        return self._side(".transactions.jsonl")


@dataclass(frozen=True)
class Checkpoint:
    """A point at which the JSONL (first ``jsonl_size`` bytes) and the ledger (rows up to
    ``ledger_seq``) were known to hold exactly the same artists."""

    jsonl_size: int = 0
    ledger_seq: int = 0
    lines: int = 0


@dataclass(frozen=True)
class InputMark:
    """How far into the input every artist was done when a run ended.

    Every artist of the input's first ``offset`` bytes (``lines`` lines) had a ledger row
    when the run that wrote the mark ended, so a ``--resume`` may start reading there
    instead of reading past them again. It trusts the mark only while both sides still
    hold what they held then: the input's first ``offset`` bytes still hash to ``sha256``,
    and the job's ledger still has ``ledger_rows`` rows up to sequence ``ledger_seq``
    (rows are never deleted by the tool, and new rows get higher sequence numbers, so a row
    deleted by hand shows as a shortfall). Otherwise the resume reads the whole input.

    The counts are the reader's own for those lines, so a resume reports the same figures
    as one that read them: ``done`` records whose id is done (duplicates included),
    ``bad_lines`` unusable rows, ``skipped_lines`` blank, comment and header lines.
    """

    offset: int
    lines: int
    done: int
    bad_lines: int
    skipped_lines: int
    sha256: str
    ledger_seq: int
    ledger_rows: int


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
    #: ``online`` (one request per artist) or ``batch`` (the Batch API): a job keeps its mode.
    mode: str = "online"


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
    #: Where a resume may start reading the input (None: from the top). Earlier versions
    #: ignore the key, so the format number does not change.
    input_mark: InputMark | None = None

    @property
    def job_ref(self) -> JobRef:
        """What every ledger row of this job records about its prompt."""
        settings = self.settings
        return JobRef(self.job_id, settings.prompt_id, settings.prompt_version, settings.model)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to disk."""
        data = asdict(self)
        if self.settings.mode == "online":
            del data["settings"]["mode"]
            data["format"] = ONLINE_FORMAT
        else:
            data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Parse what ``to_json`` wrote (the caller has checked the format)."""
        return cls(
            job_id=data["job_id"],
            input=data["input"],
            settings=JobSettings(**data["settings"]),
            created_at=data["created_at"],
            checkpoint=Checkpoint(**data.get("checkpoint") or {}),
            legacy_prefix=int(data.get("legacy_prefix", 0)),
            instructions=data.get("instructions"),
            input_mark=_input_mark(data.get("input_mark")),
        )


def _input_mark(data: object) -> InputMark | None:
    """The manifest's input mark; None when there is none or it cannot be read (the mark
    only saves reading: without it a resume reads the input from the top)."""
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(InputMark)}
    counts = [value for name, value in values.items() if name != "sha256"]
    if not isinstance(values["sha256"], str):
        return None
    if not all(type(value) is int and value >= 0 for value in counts):
        return None
    return InputMark(**values)


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
    if not isinstance(data, dict):
        raise ConfigError(f"The job manifest {paths.manifest} is not a JSON object.")
    _check_format(paths.manifest, data.get("format"))
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"The job manifest {paths.manifest} is incomplete ({exc}).") from None


def _check_format(path: Path, found: object) -> None:
    if found in (ONLINE_FORMAT, FORMAT):
        return
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT:
        raise ConfigError(
            f"The job manifest {path} has format {found}, written by a newer version of "
            f"artist-bio-gen (this one reads format {FORMAT}); upgrade artist-bio-gen to "
            "continue this job."
        )
    raise ConfigError(
        f"The job manifest {path} has an unknown format ({found!r}; this version reads "
        f"format {FORMAT}); restore it from a backup, or start a new job with another --output."
    )


def write_manifest(paths: JobPaths, manifest: Manifest) -> None:
    """Replace the manifest atomically (a crash leaves the old or the new one, whole)."""
    text = json.dumps(manifest.to_json(), indent=2) + "\n"
    atomic_write(paths.manifest, text.encode("utf-8"))


@dataclass(frozen=True)
class LastRun:
    """The contents of the last-run file: written when a run of the job starts (``ended_at``
    still None) and replaced when it ends, however it ends short of a SIGKILL."""

    job_id: str
    pid: int
    host: str
    #: ``run`` (a run or ``--resume``) or ``batch cancel``.
    command: str
    started_at: str
    ended_at: str | None = None
    elapsed_seconds: float | None = None
    exit_code: int | None = None
    #: The exit code's meaning (``exit_codes.meaning``).
    outcome: str | None = None
    #: The run's own figures (None when it ended before processing).
    committed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    requests: int | None = None
    cost_usd: float | None = None
    #: The one-sentence error it ended with (None when it ended without one).
    error: str | None = None


def read_last_run(paths: JobPaths) -> LastRun | None:
    """The last-run record, or None when there is none or it cannot be read (it is only
    information: an unreadable one must not hide the rest of a job's status)."""
    try:
        data = json.loads(paths.last_run.read_text(encoding="utf-8"))
        return LastRun(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_last_run(paths: JobPaths, record: LastRun) -> None:
    """Replace the last-run file atomically."""
    text = json.dumps(asdict(record), indent=2) + "\n"
    atomic_write(paths.last_run, text.encode("utf-8"))
