"""The figures of one run, and ``--summary-json``: the same figures for a machine.

``RunReport`` is built once at the end of a run (``report_of``), or from what is known when
the run ended in an error before it had any figures (``report_of_error``: zeros, the exit
code and the error). The summary table (``cli/summary.py``), the JSON file and the metrics
file (``cli/metrics.py``) all show this one record, so they never disagree.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import exit_codes
from ..config import Config
from ..core.batch import BatchReport
from ..core.runner import RunResult
from ..core.view import RunView
from ..utils.durable import atomic_write

logger = logging.getLogger(__name__)

#: The version of the JSON layout; a consumer can refuse one it does not know.
SUMMARY_FORMAT = 1
#: Permissions of the files written for other programs (monitoring runs as another user).
SHARED_FILE_MODE = 0o644


@dataclass(frozen=True)
class BatchFigures:
    """A batch job's batches, for the JSON (the table has its own lines)."""

    batches: int
    open: int
    pending_requests: int
    submitted_artists: int
    submitted_batches: int
    collected: int
    collected_cost_usd: float
    cancelled: int


@dataclass(frozen=True)
class RunReport:
    """What one run did: the summary table, ``--summary-json`` and the metrics file."""

    job: str
    output: str
    mode: str
    #: Wall-clock start and end (seconds since the epoch).
    started_at: float
    ended_at: float
    exit_code: int
    job_id: str | None = None
    #: The one-sentence error the run ended with (None: no error).
    error: str | None = None
    interrupted: bool = False
    input_lines: int = 0
    bad_lines: int = 0
    duplicate_lines: int = 0
    already_done: int = 0
    committed: int = 0
    skipped: int = 0
    failed: int = 0
    given_up: int = 0
    not_started: int = 0
    #: Artists of the input still to do after the run (None: unknown).
    remaining: int | None = None
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    #: What this run's answers cost where the price was known, and how many were not.
    cost_usd: float = 0.0
    unpriced: int = 0
    elapsed_seconds: float = 0.0
    #: The job over all its runs (None without a database).
    job_bios: int | None = None
    job_cost_usd: float | None = None
    batches: BatchFigures | None = field(default=None)

    @property
    def exit_meaning(self) -> str:
        """The exit code in a few words."""
        return exit_codes.meaning(self.exit_code)

    @property
    def rate(self) -> float:
        """Artists committed per second of the run."""
        return self.committed / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def succeeded(self) -> bool:
        """The run did its work: it finished (exit 0) or stopped at a limit it was given or
        met (exit 7: ``--daily-limit``, ``--max-cost``...; nothing is wrong, the next
        ``--resume`` continues). A nightly job that spends its daily limit every night is
        healthy, and "no successful run in 26 h" must not fire for it."""
        return self.exit_code in (exit_codes.EXIT_SUCCESS, exit_codes.EXIT_LIMIT_REACHED)


def job_name(output: Path) -> str:
    """The job's name in the metrics and the JSON: the output's file name without suffix."""
    return output.stem


def report_of(
    config: Config, result: RunResult, exit_code: int, started_at: float, ended_at: float
) -> RunReport:
    """The figures of a run that got as far as processing."""
    stats, counts, totals = result.stats, result.requests, result.job_totals
    return RunReport(
        job=job_name(config.output_path),
        output=str(config.output_path),
        mode=config.mode,
        started_at=started_at,
        ended_at=ended_at,
        exit_code=exit_code,
        job_id=result.job_id,
        error=None if result.error is None else str(result.error),
        interrupted=result.interrupted,
        input_lines=stats.artists_read + stats.bad_lines + stats.duplicate_lines,
        bad_lines=stats.bad_lines,
        duplicate_lines=stats.duplicate_lines,
        already_done=stats.already_done,
        committed=stats.committed,
        skipped=stats.skipped,
        failed=stats.failed,
        given_up=stats.given_up,
        not_started=stats.not_started,
        remaining=stats.remaining,
        requests=counts.requests,
        retries=counts.retries,
        rate_limited=counts.rate_limited,
        input_tokens=stats.tokens.input_tokens,
        output_tokens=stats.tokens.output_tokens,
        total_tokens=stats.tokens.total_tokens,
        cost_usd=counts.spent_usd,
        unpriced=counts.unknown_cost,
        elapsed_seconds=stats.elapsed_seconds,
        job_bios=None if totals is None else totals.bios,
        job_cost_usd=None if totals is None else totals.cost_usd,
        batches=None if result.batches is None else _batch_figures(result.batches),
    )


def report_of_error(
    output: Path, mode: str, exit_code: int, error: str, started_at: float, ended_at: float
) -> RunReport:
    """The figures of a run that ended in an error before it had any (all zero)."""
    return RunReport(
        job=job_name(output),
        output=str(output),
        mode=mode,
        started_at=started_at,
        ended_at=ended_at,
        exit_code=exit_code,
        error=error,
        interrupted=exit_code == exit_codes.EXIT_INTERRUPTED,
        elapsed_seconds=max(0.0, ended_at - started_at),
    )


def report_of_view(
    config: Config, view: RunView, exit_code: int, error: str, started_at: float, ended_at: float
) -> RunReport:
    """The figures of a run stopped at once (a second signal), from its live counts: what
    it read of the input is not known then (the input counts are 0)."""
    tally, counts = view.tally, view.requests
    return RunReport(
        job=job_name(config.output_path),
        output=str(config.output_path),
        mode=config.mode,
        started_at=started_at,
        ended_at=ended_at,
        exit_code=exit_code,
        job_id=view.job_id,
        error=error,
        interrupted=True,
        already_done=view.already_done,
        committed=tally.committed,
        skipped=tally.skipped,
        failed=tally.failed,
        given_up=view.given_up,
        not_started=tally.in_flight,
        remaining=view.remaining,
        requests=counts.requests,
        retries=counts.retries,
        rate_limited=counts.rate_limited,
        input_tokens=tally.tokens.input_tokens,
        output_tokens=tally.tokens.output_tokens,
        total_tokens=tally.tokens.total_tokens,
        cost_usd=counts.spent_usd,
        unpriced=counts.unknown_cost,
        elapsed_seconds=view.elapsed,
    )


def _batch_figures(report: BatchReport) -> BatchFigures:
    return BatchFigures(
        batches=len(report.batches),
        open=len(report.open_batches),
        pending_requests=report.pending_requests,
        submitted_artists=report.submitted_artists,
        submitted_batches=report.submitted_batches,
        collected=report.collected.committed,
        collected_cost_usd=report.collected_cost,
        cancelled=report.cancelled,
    )


def summary_json(report: RunReport) -> dict[str, Any]:
    """The JSON object of ``--summary-json``: every figure of the summary, by name."""
    data = asdict(report)
    data["started_at"] = _iso(report.started_at)
    data["ended_at"] = _iso(report.ended_at)
    data["exit_meaning"] = report.exit_meaning
    data["rate_per_second"] = report.rate
    return {"format": SUMMARY_FORMAT, **data}


def write_summary_json(path: Path, report: RunReport) -> None:
    """Replace ``path`` with the report as JSON (atomically: the old file or the new one)."""
    text = json.dumps(summary_json(report), indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"), mode=SHARED_FILE_MODE)


def write_quietly(what: str, path: Path, write: Callable[[], None]) -> None:
    """Call ``write()``; a file that cannot be written is a warning, never the run's end (the
    run's exit code says how the run went, not whether its report could be saved)."""
    try:
        write()
    except OSError as exc:
        logger.warning("could not write the %s %s: %s", what, path, exc.strerror or exc)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
