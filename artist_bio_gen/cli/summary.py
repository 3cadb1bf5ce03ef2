"""The final summary: one compact, aligned table on stdout.

stdout holds nothing else (``--dry-run`` and ``--print-bios`` aside), so ``> summary.txt``
keeps just this, and a cron log shows it below the run's log lines.
"""

from __future__ import annotations

from ..config import Config
from ..core.runner import RunResult
from ..jobfiles import JobPaths
from .batch import batch_summary_lines
from .report import RunReport

#: Width of the label column (the batch lines of ``cli/batch.py`` use the same).
LABEL_WIDTH = 18


def summary_lines(config: Config, result: RunResult, report: RunReport) -> list[str]:
    """The summary of a run that got as far as processing."""
    where = f"{config.output_path}" + (" (batch mode)" if config.mode == "batch" else "")
    rows = _rows(config, report)
    width = max(len(value) for _, value, _ in rows)
    lines = [f"Summary: job {report.job_id} -> {where}"]
    lines += [_line(label, value, note, width) for label, value, note in rows[:-1]]
    if result.batches is not None:
        lines += batch_summary_lines(config, result.batches)
    label, value, note = rows[-1]
    lines.append(_line(label, value, note, width))
    return lines


Row = tuple[str, str, str]


def _rows(config: Config, report: RunReport) -> list[Row]:
    r = report
    rows: list[Row] = [
        (
            "input lines",
            _n(r.input_lines),
            f"bad {r.bad_lines:,}, duplicates {r.duplicate_lines:,}",
        ),
        ("already done", _n(r.already_done), ""),
        ("committed", _n(r.committed), ""),
        ("skipped", _n(r.skipped), ""),
        ("failed", _n(r.failed), _failed_note(config, r.failed)),
        ("given up", _n(r.given_up), "--retry-failed retries them" if r.given_up else ""),
        ("not started", _n(r.not_started), ""),
        ("remaining", "unknown" if r.remaining is None else _n(r.remaining), ""),
        ("requests", _n(r.requests), ""),
        ("retries", _n(r.retries), ""),
        ("429s", _n(r.rate_limited), ""),
        ("tokens", _n(r.total_tokens), f"input {r.input_tokens:,}, output {r.output_tokens:,}"),
        ("cost", f"${r.cost_usd:,.4f}", _unpriced(r.unpriced, "answers")),
    ]
    if r.job_bios is not None:
        rows.append(("job so far", f"{r.job_bios:,} bios", f"${r.job_cost_usd or 0.0:,.4f}"))
    rows += [
        ("elapsed", f"{r.elapsed_seconds:,.1f} s", ""),
        ("rate", f"{r.rate:,.1f}", "artists/s"),
        ("exit code", str(r.exit_code), r.exit_meaning),
    ]
    return rows


def _n(value: int) -> str:
    return f"{value:,}"


def _failed_note(config: Config, failed: int) -> str:
    return f"details in {JobPaths(config.output_path).failures}" if failed else ""


def _unpriced(count: int, what: str) -> str:
    return f"+{count:,} {what} of unknown price" if count else ""


def _line(label: str, value: str, note: str, width: int) -> str:
    text = f"  {label:<{LABEL_WIDTH}}{value:>{width}}"
    return f"{text}   {note}" if note else text
