"""Batch mode on the command line: ``artist-bio-gen batch cancel`` and the batch summary.

``batch cancel`` is a resume of the job with another step 5: it cancels the job's open
batches and collects what they return (``core/batch.py``), so it takes the run lock, the
job's settings from its manifest and the same checks as ``--resume``; ``cli/main.py`` runs it
like any run (signals, summary, exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..config import Config
from ..core.batch import BatchReport
from ..database.batches import BatchRecord
from .jobargs import add_database_and_verbose_options, add_output_option

#: Batches listed one per line in the summary; more are counted.
SHOWN_BATCHES = 20


def create_batch_cancel_parser() -> argparse.ArgumentParser:
    """The parser of ``artist-bio-gen batch cancel``."""
    parser = argparse.ArgumentParser(
        prog="artist-bio-gen batch cancel",
        description=(
            "Cancel the open batches of a batch job and collect what they return (answers "
            "finished before the cancel are billed and committed). The artists they did not "
            "answer are submitted again by the next --resume, or answered online by "
            "--resume --finish-online."
        ),
        epilog=(
            "examples:\n"
            "  artist-bio-gen batch cancel --output bios.jsonl\n"
            "  artist-bio-gen batch cancel --wait 600   # wait for the cancelled batches to end"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output_option(parser)
    parser.add_argument(
        "--wait",
        type=float,
        metavar="S",
        default=0.0,
        help="wait up to S seconds for the batches to end (the API takes up to 10 minutes) and "
        "collect them; those still cancelling are collected by the next --resume (default 0)",
    )
    add_database_and_verbose_options(parser)
    return parser


def cancel_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The run arguments of ``batch cancel ARGV``: a ``--resume`` of the job that cancels."""
    args = create_batch_cancel_parser().parse_args(list(argv))
    return argparse.Namespace(
        resume=True,
        output=args.output,
        db_url=args.db_url,
        verbose=args.verbose,
        batch_cancel=True,
        batch_wait=args.wait,
    )


def batch_summary_lines(config: Config, report: BatchReport) -> list[str]:
    """The batch part of the summary: every batch with its state and counts, what this run
    submitted and collected, what is pending and what it should cost."""
    batches = report.batches
    open_batches = report.open_batches
    lines = [
        f"  batches           {len(batches):,}: {len(open_batches):,} open "
        f"({report.pending_requests:,} requests), {len(batches) - len(open_batches):,} ended",
    ]
    lines += [_batch_line(record) for record in batches[:SHOWN_BATCHES]]
    if len(batches) > SHOWN_BATCHES:
        lines.append(f"    ... and {len(batches) - SHOWN_BATCHES:,} more")
    if report.submitted_batches:
        lines.append(
            f"  submitted         {report.submitted_artists:,} artists in "
            f"{report.submitted_batches:,} new batches"
        )
    collected = report.collected
    lines.append(
        f"  collected         {collected.committed:,} committed (${report.collected_cost:,.4f} "
        f"at batch prices), {collected.failures:,} failed, {collected.resubmit:,} to submit again"
    )
    if report.cancelled:
        lines.append(f"  cancelled         {report.cancelled:,} batches")
    if open_batches:
        lines.append(_cost_line(report))
        lines.append(
            f"  next              {report.pending_requests:,} requests in {len(open_batches):,} "
            f"open batches: run `artist-bio-gen --resume --output {_shown(config.output_path)}` "
            "later (e.g. hourly from cron) to collect them"
        )
    return lines


def _batch_line(record: BatchRecord) -> str:
    return f"    {record.chunk:>4} {record.batch_id or '(not created)'} {batch_counts(record)}"


def batch_counts(record: BatchRecord, state: bool = False) -> str:
    """One batch's status (with ``state``: the recorded state first, ``state/status``), its
    error and its counts, as the summary and ``status`` show them."""
    status = record.status or record.state
    if state:
        status = f"{record.state}/{status}"
    counts = ""
    if record.completed is not None:
        counts = f"; answered {record.completed:,}, failed {record.failed or 0:,}"
    collected = ""
    if not record.open:
        collected = (
            f"; committed {record.committed:,}, failures {record.failures:,}, "
            f"to submit again {record.resubmit:,}"
        )
    error = f" ({record.error})" if record.error else ""
    return f"{status}{error}: {record.requests:,} requests{counts}{collected}"


def _cost_line(report: BatchReport) -> str:
    cost = report.pending_cost
    if cost is None:
        return "  batch cost        unknown for the open batches (no price for the model)"
    return (
        f"  batch cost        about ${cost:,.4f} for the {report.pending_requests:,} requests "
        f"still open (batch prices, estimated)"
    )


def _shown(path: Path) -> str:
    return str(path)
