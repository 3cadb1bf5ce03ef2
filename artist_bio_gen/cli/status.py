"""``artist-bio-gen status``: show a job without running it (``core/status.py`` gathers it).

Exit codes: 0 the JSONL agrees with the database (or the job has none), 6 the JSONL holds
bios the database does not (what a run would stop on), 3 the job's database could not be
read (no URL, another database, unreachable: what the files know is shown), 2 there is no
job at ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from .. import exit_codes
from ..config import load_environment
from ..core.recovery import QuickCheck
from ..core.status import Counts, JobStatus, Spend, job_status
from ..database.batches import BatchRecord
from ..jobfiles import LastRun
from ..utils.logging import setup_logging
from .batch import batch_counts
from .jobargs import add_database_and_verbose_options, add_output_option

EPILOG = """\
examples:
  artist-bio-gen status                          # the job of out.jsonl
  artist-bio-gen status --output bios.jsonl --json | jq .counts

exit codes: 0 the JSONL agrees with the database (or the job has no database), 2 no job at
--output, 3 the job's database could not be read (no URL, another database, unreachable;
what the job's files know is shown), 6 the JSONL holds bios the database does not (see
verify).
"""


def create_status_parser() -> argparse.ArgumentParser:
    """The parser of ``artist-bio-gen status``."""
    parser = argparse.ArgumentParser(
        prog="artist-bio-gen status",
        description=(
            "Show a job without running it or calling the API: its input, prompt, database,\n"
            "how many artists are done, failed, given up and remaining, what it has spent,\n"
            "how its last run ended, whether a run holds it now, whether its JSONL agrees\n"
            "with the database (the quick check a run makes at its start; 'verify' is the\n"
            "full one) and, for a batch job, its batches."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        default=3,
        help="failed attempts after which an artist counts as given up, as the runs use "
        "(default 3)",
    )
    add_database_and_verbose_options(parser)
    return parser


def run_status(argv: Sequence[str]) -> int:
    """Entry point of the ``status`` subcommand; returns the exit code."""
    args = create_status_parser().parse_args(list(argv))
    url = args.db_url or load_environment().get("DATABASE_URL")
    setup_logging(args.verbose, secrets=(url,))
    status = job_status(Path(args.output), url, max(1, args.max_attempts))
    if args.json:
        json.dump(status_json(status), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_status(status, sys.stdout)
    return status.exit_code


# --- JSON ----------------------------------------------------------------------------------


def status_json(status: JobStatus) -> dict[str, Any]:
    """The status as one JSON object (the keys are a contract, like the exit codes)."""
    manifest, settings, db = status.manifest, status.manifest.settings, status.database
    check = status.check
    return {
        "output": str(status.paths.output),
        "job_id": manifest.job_id,
        "created_at": manifest.created_at,
        "mode": settings.mode,
        "input": manifest.input,
        "prompt_id": settings.prompt_id,
        "prompt_version": settings.prompt_version,
        "model": settings.model,
        "database": {
            "name": db.name,
            "table": db.table,
            "reachable": db.reachable,
            "error": db.error,
        },
        "counts": asdict(status.counts),
        "spend": {
            "cost_usd": round(status.spend.cost_usd, 9),
            "unpriced": status.spend.unpriced,
            "total_tokens": status.spend.total_tokens,
            "source": status.spend.source,
        },
        "running": {"held": status.lock.held, "pid": status.lock.pid},
        "last_run": None
        if status.last_run is None
        else {**asdict(status.last_run), "state": status.last_run_state},
        "check": None
        if check is None
        else {
            "consistent": check.consistent,
            "lines": check.lines,
            "rows": check.rows,
            "full_scan": check.full_scan,
            "missing_in_jsonl": check.missing_in_jsonl,
            "missing_in_database": len(check.missing_in_db),
            "missing_in_database_ids": check.missing_in_db[:10],
        },
        "torn_tail_bytes": status.torn_tail_bytes,
        "batches": None if status.batches is None else [_batch_json(b) for b in status.batches],
        "exit_code": status.exit_code,
        "meaning": _result(status),
    }


def _batch_json(record: BatchRecord) -> dict[str, Any]:
    return {
        "chunk": record.chunk,
        "batch_id": record.batch_id,
        "state": record.state,
        "status": record.status,
        "requests": record.requests,
        "completed": record.completed,
        "failed": record.failed,
        "committed": record.committed,
        "failures": record.failures,
        "resubmit": record.resubmit,
        "error": record.error,
    }


# --- text ----------------------------------------------------------------------------------


def write_status(status: JobStatus, out: TextIO) -> None:
    """The status for a human, one figure a line."""
    for line in status_lines(status):
        out.write(line + "\n")


def status_lines(status: JobStatus) -> list[str]:
    """The lines ``write_status`` prints."""
    manifest, settings = status.manifest, status.manifest.settings
    lines = [
        f"status of {status.paths.output}",
        _row("job", f"{manifest.job_id} ({settings.mode}), created {manifest.created_at}"),
        _row("input", manifest.input),
        _row("prompt", _prompt(status)),
        _row("database", _database(status)),
    ]
    lines += _count_lines(status.counts)
    lines.append(_row("spend", _spend(status.spend)))
    lines += _last_run_lines(status)
    lines.append(_row("running now", _running(status)))
    lines.append(_row("JSONL check", _check(status)))
    if status.batches is not None:
        lines += _batch_lines(status.batches)
    elif settings.mode == "batch":
        lines.append(_row("batches", "unknown: they are recorded in the database"))
    lines.append(_row("result", f"{_result(status)} (exit {status.exit_code})"))
    return lines


def _row(label: str, value: str) -> str:
    return f"  {label:<18}{value}"


def _prompt(status: JobStatus) -> str:
    settings = status.manifest.settings
    parts = []
    if settings.prompt_id:
        version = f" version {settings.prompt_version}" if settings.prompt_version else ""
        parts.append(f"stored prompt {settings.prompt_id}{version}")
    if settings.model:
        parts.append(f"model {settings.model}")
    text = ", ".join(parts) or "the account's default"
    return text + (" (instructions recorded in the job)" if settings.instructions_sha256 else "")


def _database(status: JobStatus) -> str:
    db = status.database
    if db.name is None:
        return "none (the JSONL is the record)"
    where = f"{db.name}, table {db.table}"
    if db.reachable is False:
        return f"{where}: NOT READ. {db.error} The figures below come from the job's files."
    return where


def _count_lines(counts: Counts) -> list[str]:
    of = f" of {counts.input_artists:,} input artists" if counts.input_artists is not None else ""
    lines = [
        _row("done", f"{counts.done:,}{of}"),
        _row("failed", f"{counts.failed:,} (the next --resume retries them)"),
        _row("given up", f"{counts.given_up:,} (--resume --retry-failed retries them)"),
    ]
    if counts.remaining is None:
        lines.append(_row("remaining", f"unknown: {counts.input_error}"))
    else:
        bad = f"; {counts.bad_lines:,} bad input lines" if counts.bad_lines else ""
        lines.append(
            _row("remaining", f"{counts.remaining:,} (not yet committed, failed included{bad})")
        )
    return lines


def _spend(spend: Spend) -> str:
    unpriced = f" (+{spend.unpriced:,} bios of unknown price)" if spend.unpriced else ""
    return (
        f"${spend.cost_usd:,.4f}{unpriced}, {spend.total_tokens:,} tokens (from the {spend.source})"
    )


def _last_run_lines(status: JobStatus) -> list[str]:
    run, state = status.last_run, status.last_run_state
    if run is None:
        return [_row("last run", "none recorded")]
    started = f"started {run.started_at}"
    if state == "running":
        return [_row("last run", f"{started}, still running (pid {run.pid})")]
    if state == "killed":
        return [
            _row(
                "last run",
                f"{started} (pid {run.pid} on {run.host}), never recorded its end: killed or "
                "the machine stopped; --resume continues",
            )
        ]
    lines = [
        _row("last run", f"{started}, ended {run.ended_at} ({run.elapsed_seconds or 0:.1f} s)")
    ]
    lines.append(_row("last outcome", f"exit {run.exit_code} ({run.outcome}){_figures(run)}"))
    if run.error:
        lines.append(_row("last error", run.error))
    return lines


def _figures(run: LastRun) -> str:
    if run.committed is None:
        return ""
    cost = f", ${run.cost_usd:,.4f}" if run.cost_usd is not None else ""
    return (
        f": {run.committed:,} committed, {run.failed or 0:,} failed, "
        f"{run.requests or 0:,} requests{cost}"
    )


def _running(status: JobStatus) -> str:
    lock = status.lock
    if not lock.held:
        return "no"
    pid = f"pid {lock.pid}" if lock.pid is not None else "pid unknown"
    return f"yes, {pid} holds the run lock"


def _check(status: JobStatus) -> str:
    check = status.check
    torn = (
        f"; a torn last line of {status.torn_tail_bytes:,} bytes (the next run cuts it)"
        if status.torn_tail_bytes
        else ""
    )
    if status.database.name is None:
        return "nothing to compare: the job has no database" + torn
    if check is None:
        return "not made: the database was not read" + torn
    compared = _compared(status, check)
    if check.missing_in_db:
        ids = ", ".join(check.missing_in_db[:10])
        return (
            f"DIFFERENT: the JSONL holds {len(check.missing_in_db):,} bios the database does "
            f"not (ids: {ids}); run 'artist-bio-gen verify' ({compared}){torn}"
        )
    pending = (
        f"; {check.missing_in_jsonl:,} committed bios not in the JSONL yet (the next run, or "
        "the running one, appends them)"
        if check.missing_in_jsonl
        else ""
    )
    return f"consistent: {compared}{pending}{torn}"


def _compared(status: JobStatus, check: QuickCheck) -> str:
    if check.full_scan:
        return f"the whole file: {check.lines:,} lines, {check.rows:,} committed rows"
    before = f"{status.manifest.checkpoint.lines:,} lines agreed at the last checkpoint"
    if not (check.lines or check.rows):
        return f"{before}, nothing written since"
    return f"{before}, then {check.lines:,} lines and {check.rows:,} committed rows"


def _batch_lines(batches: list[BatchRecord]) -> list[str]:
    open_batches = sum(1 for record in batches if record.open)
    lines = [_row("batches", f"{len(batches):,}: {open_batches:,} open")]
    for record in batches:
        lines.append(
            f"    {record.chunk:>4} {record.batch_id or '(not created)'} "
            f"{batch_counts(record, state=True)}"
        )
    return lines


def _result(status: JobStatus) -> str:
    code = status.exit_code
    if code == exit_codes.EXIT_OUT_OF_SYNC:
        return "the JSONL holds bios the database does not"
    if code == exit_codes.EXIT_CONFIG_ERROR:
        return "the database could not be read"
    return "consistent"
