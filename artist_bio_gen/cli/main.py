"""The command line: parse, build the frozen config, call the core, map errors to exit codes.

Nothing below this module sees argparse. Every ``ArtistBioGenError`` becomes one sentence on
stderr and its exit code; a traceback is printed only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .. import exit_codes
from ..api.request import SERVICE_TIERS
from ..config import (
    DEFAULT_OUTPUT,
    MAX_PROCESSES,
    MODES,
    Config,
    load_environment,
    parse_bool,
    parse_processes,
    report_path,
    resolve_config,
)
from ..core.dryrun import dry_run
from ..core.lastrun import exception_exit_code, record_refused_run, run_exit_code
from ..core.processor import OutcomeCallback, RunControl, Tally
from ..core.runner import RunResult, run_job
from ..core.view import RunView
from ..errors import ArtistBioGenError, UsageError
from ..models import Outcome
from ..utils.logging import setup_logging
from .batch import cancel_arguments
from .metrics import MetricsFile
from .progress import Progress
from .report import (
    RunReport,
    job_name,
    report_of,
    report_of_error,
    report_of_view,
    write_quietly,
    write_summary_json,
)
from .status import run_status
from .summary import summary_lines
from .verify import run_verify

logger = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  # start a job (bios go to PostgreSQL at DATABASE_URL and to out.jsonl)
  artist-bio-gen --input artists.csv --prompt-id pmpt_123 --max-workers 16

  # a big job on a machine with 8 CPUs: 1024 workers over worker processes (auto: one
  # per 256 workers, at most one per 2 CPUs, none under 4 CPUs; --processes N sets it)
  artist-bio-gen --input artists.csv --prompt-id pmpt_123 --max-workers 1024

  # continue the job of out.jsonl after a crash, a kill or from cron
  artist-bio-gen --resume

  # no stored prompt: a model and the built-in instructions (or --instructions-file)
  artist-bio-gen --input artists.csv --model gpt-4.1-mini --output bios.jsonl

  # look at the first requests without an API key or a database
  artist-bio-gen --input artists.csv --model gpt-4.1-mini --dry-run

  # nightly from cron: at most 5,000 requests a day and $20 a night, flex prices
  artist-bio-gen --resume --daily-limit 5000 --max-cost 20 --service-tier flex

  # how far is the job of bios.jsonl, how did its last run end, is a run working on it?
  artist-bio-gen status --output bios.jsonl          # --json for one JSON object

  # from cron: warnings and errors only, the run's figures as JSON for a script, and a
  # file for Prometheus (node_exporter's textfile collector)
  artist-bio-gen --resume --quiet --summary-json last-run.json \\
      --metrics-file /var/lib/node_exporter/textfile/artist-bio-gen.prom

  # watch the bios go by (stdout: each committed bio, then the summary)
  artist-bio-gen --input artists.csv --model gpt-4.1-mini --print-bios

  # check that bios.jsonl mirrors the database, and repair what can be repaired
  artist-bio-gen verify --output bios.jsonl --repair

  # batch mode (half price, answers within 24 h): submit once, then collect from cron
  artist-bio-gen --mode batch --input artists.csv --prompt-id pmpt_123 --model gpt-4.1-mini
  artist-bio-gen --resume            # hourly: polls, collects, resubmits what is left

  # a batch job in a hurry: answer online what no open batch holds, or cancel the batches
  artist-bio-gen --resume --finish-online
  artist-bio-gen batch cancel --output out.jsonl

exit codes: 0 done (a batch job: submitted, or collected, batches still running included),
1 input file missing/unreadable, 2 bad path or options, 3 configuration (key, prompt,
database, table), 4 some artists failed (retried by --resume), 5 stopped early (quota,
database gone, disk full, a batch failed as a whole: fix, then --resume), 6 JSONL and
database disagree (see verify), 7 stopped at a limit (daily limit, --max-cost, --limit, a
rate-limit wait past --pause-duration, a full batch queue: --resume continues), 10 unexpected
error, 75 another run holds the job, 130 interrupted.
"""


def create_argument_parser() -> argparse.ArgumentParser:
    """The parser for a run (``verify`` has its own, see ``cli/verify.py``)."""
    parser = argparse.ArgumentParser(
        prog="artist-bio-gen",
        description=(
            "Generate artist biographies with the OpenAI Responses API, commit each to "
            "PostgreSQL and append it to a JSONL file as soon as it is committed. "
            "Settings come from the command line, then the environment, then .env.local "
            "and .env."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(parser)
    _add_report_arguments(parser)
    _add_api_arguments(parser)
    _add_database_arguments(parser)
    _add_run_arguments(parser)
    _add_quota_arguments(parser)
    _add_batch_arguments(parser)
    return parser


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job")
    group.add_argument(
        "--input",
        "--input-file",
        dest="input",
        metavar="PATH",
        help="CSV of artist_id,artist_name[,artist_data] (optional with --resume)",
    )
    group.add_argument(
        "--output",
        metavar="PATH",
        help=f"JSONL output; its job files live beside it (default {DEFAULT_OUTPUT})",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the job of --output: skip done artists, repair the JSONL",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new job even though --output exists "
        "(the old files are moved aside, never deleted)",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="read the input and print the first requests; no API key or database needed",
    )
    group.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "output and monitoring",
        "stdout holds only the final summary (and what --dry-run or --print-bios ask for); "
        "log lines and the progress go to stderr.",
    )
    group.add_argument(
        "--quiet", action="store_true", help="only warnings and errors: no progress, no summary"
    )
    group.add_argument(
        "--print-bios", action="store_true", help="print every committed bio on stdout"
    )
    group.add_argument(
        "--progress-interval",
        type=float,
        metavar="S",
        help="without a terminal, a progress line every S seconds (env PROGRESS_INTERVAL; "
        "default 30); also how often --metrics-file is updated during a run",
    )
    group.add_argument(
        "--summary-json",
        metavar="PATH",
        help="write the summary's figures to PATH as JSON at the end of the run (also when "
        "it stopped early, was interrupted or failed)",
    )
    group.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="keep PATH (e.g. /var/lib/node_exporter/textfile/bios.prom) a Prometheus text "
        "file of the run: start, end, last success, counts, spend, exit code",
    )


def _add_api_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("API")
    group.add_argument("--prompt-id", metavar="ID", help="stored prompt id (env OPENAI_PROMPT_ID)")
    group.add_argument(
        "--prompt-version",
        "--version",
        dest="prompt_version",
        metavar="V",
        help="stored prompt version (env OPENAI_PROMPT_VERSION)",
    )
    group.add_argument(
        "--model",
        metavar="NAME",
        help="model; without --prompt-id the built-in instructions are used (env OPENAI_MODEL)",
    )
    group.add_argument(
        "--instructions-file",
        metavar="PATH",
        help="instructions for --model requests instead of the built-in ones",
    )
    group.add_argument(
        "--openai-api-key",
        metavar="KEY",
        help="API key (env OPENAI_API_KEY; prefer the environment)",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible endpoint, e.g. a vLLM or LiteLLM server (env OPENAI_BASE_URL)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        metavar="S",
        help="seconds per API request (env OPENAI_TIMEOUT; default 120)",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="retries of a timeout, dropped connection or 5xx; a 429 slows the whole run "
        "instead (env OPENAI_MAX_RETRIES; default 3)",
    )


def _add_database_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("database")
    group.add_argument("--db-url", metavar="URL", help="postgresql:// URL (env DATABASE_URL)")
    group.add_argument(
        "--enable-db",
        action="store_true",
        help="require the database (kept for compatibility: it is on whenever a URL is set)",
    )
    group.add_argument("--no-db", action="store_true", help="write the JSONL only")
    group.add_argument("--test-mode", action="store_true", help="write to table test_artists")
    group.add_argument(
        "--db-table", metavar="NAME", help="table to update (env DB_TABLE; default artists)"
    )
    group.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep bios already in the table (no API call for those artists)",
    )
    group.add_argument(
        "--db-pool-size",
        type=int,
        metavar="N",
        help="database connections (env DB_POOL_SIZE; default min(workers, 10))",
    )
    group.add_argument(
        "--db-retry-seconds",
        type=float,
        metavar="S",
        help="how long to keep retrying while the database is unreachable (default 60)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help="API requests at once (env MAX_WORKERS; default 4)",
    )
    group.add_argument(
        "--processes",
        type=_processes_arg,
        metavar="N|auto",
        help="worker processes, each with its own share of the workers: auto (the default) "
        "uses one per 256 workers, at most one per 2 CPUs, and one on fewer than 4 CPUs or "
        "for fewer than 2,000 artists "
        "(env WORKER_PROCESSES)",
    )
    group.add_argument(
        "--fsync-interval",
        type=float,
        metavar="S",
        help="0: fsync every JSONL line (default); S>0: group fsync every S seconds "
        "(faster on slow disks; see README) (env JSONL_FSYNC_INTERVAL)",
    )
    group.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds to let in-flight artists finish (default 30)",
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="failed attempts per artist across runs before it is given up (default 3)",
    )
    group.add_argument("--retry-failed", action="store_true", help="retry given-up artists too")
    group.add_argument(
        "--transaction-log",
        metavar="PATH",
        help="structured log of every commit and failure "
        "(default <output stem>.transactions.jsonl)",
    )


def _add_quota_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rate limits and budgets",
        "The run paces itself to the account's limits (learned from the x-ratelimit-* headers) "
        "and to the caps below; a 429 slows the whole run and never fails an artist. A run "
        "stopped by a budget exits 7 and --resume continues it.",
    )
    group.add_argument(
        "--rpm", type=float, metavar="N", help="at most N requests per minute (env OPENAI_RPM)"
    )
    group.add_argument(
        "--tpm", type=float, metavar="N", help="at most N tokens per minute (env OPENAI_TPM)"
    )
    group.add_argument(
        "--quota-monitoring",
        type=_bool_arg,
        metavar="true|false",
        help="learn the account's limits from the rate-limit headers; the caps apply either "
        "way (env QUOTA_MONITORING; default true)",
    )
    group.add_argument(
        "--quota-threshold",
        type=float,
        metavar="F",
        help="use at most this fraction (0.1-1.0) of a learned limit, keeping the rest in "
        "reserve (env QUOTA_THRESHOLD; default 0.8)",
    )
    group.add_argument(
        "--pause-duration",
        type=float,
        metavar="H",
        help="a rate-limit wait longer than H hours (fractions accepted, at most 72) ends the "
        "run as resumable (env PAUSE_DURATION_HOURS; default 24)",
    )
    group.add_argument(
        "--quota-log-interval",
        type=int,
        metavar="N",
        help="log the limiter's view (limits, pace, pauses, spend) every N requests "
        "(env QUOTA_LOG_INTERVAL; default 100)",
    )
    group.add_argument(
        "--daily-limit",
        type=int,
        metavar="N",
        help="at most N API requests per UTC day for this job, shared by all its runs "
        "(env DAILY_REQUEST_LIMIT)",
    )
    group.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop before this run's spend would pass USD (env MAX_COST_USD)",
    )
    group.add_argument(
        "--limit", type=int, metavar="N", help="send at most N artists to the API in this run"
    )
    group.add_argument(
        "--price-input",
        type=float,
        metavar="USD",
        help="USD per million input tokens, instead of the built-in table "
        "(with --price-output; env OPENAI_PRICE_INPUT)",
    )
    group.add_argument(
        "--price-output",
        type=float,
        metavar="USD",
        help="USD per million output tokens (with --price-input; env OPENAI_PRICE_OUTPUT)",
    )
    group.add_argument(
        "--service-tier",
        choices=SERVICE_TIERS,
        help="service_tier of every request; flex costs half and may answer 'Resource "
        "Unavailable', which is retried, never billed (env OPENAI_SERVICE_TIER)",
    )


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "batch mode",
        "--mode batch sends the requests through the Batch API: half the price, answers within "
        "24 hours, a separate pool of rate limits. The run submits request files and exits; "
        "--resume (e.g. hourly from cron) collects the batches that ended and submits what is "
        "left. Needs the database and --model.",
    )
    group.add_argument(
        "--mode",
        choices=MODES,
        help="online (one request per artist, the default) or batch; a job keeps its mode",
    )
    group.add_argument(
        "--batch-max-requests",
        type=int,
        metavar="N",
        help="requests per batch file (env OPENAI_BATCH_MAX_REQUESTS; default and most 50,000)",
    )
    group.add_argument(
        "--batch-max-bytes",
        type=int,
        metavar="B",
        help="bytes per batch file (env OPENAI_BATCH_MAX_BYTES; default and most 200,000,000)",
    )
    group.add_argument(
        "--batch-wait",
        type=float,
        metavar="S",
        help="keep polling, collecting and submitting for up to S seconds (default 0: one "
        "round, then exit)",
    )
    group.add_argument(
        "--batch-poll-interval",
        type=float,
        metavar="S",
        help="seconds between polls with --batch-wait (env OPENAI_BATCH_POLL_INTERVAL; default 30)",
    )
    group.add_argument(
        "--finish-online",
        action="store_true",
        help="with --resume: answer the artists no open batch holds with online requests "
        "(full price) instead of new batches",
    )


def _processes_arg(text: str) -> str:
    """``--processes``: checked here, resolved (with the environment) in ``config.py``."""
    try:
        parse_processes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a number of processes from 1 to {MAX_PROCESSES}, got {text!r}"
        ) from None
    return text


def _bool_arg(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``artist-bio-gen``: runs the command and exits with its code.

    Like the legacy ``main``, it raises ``SystemExit`` (scripts calling it rely on that);
    ``run_command`` returns the code instead.
    """
    raise SystemExit(run_command(argv))


def run_command(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Logging first, so that even an option error is reported the same way (and scrubbed).
    setup_logging(
        "--verbose" in args_list, secrets=_secret_arguments(args_list), quiet="--quiet" in args_list
    )
    if args_list[:1] == ["verify"]:
        return _guarded(lambda: run_verify(args_list[1:]), "--verbose" in args_list)
    if args_list[:1] == ["status"]:
        return _guarded(lambda: run_status(args_list[1:]), "--verbose" in args_list)
    if args_list[:2] == ["batch", "cancel"]:
        cancel = cancel_arguments(args_list[2:])
        return _guarded(lambda: _run(cancel), cancel.verbose)
    if args_list[:1] == ["batch"]:
        return _guarded(_unknown_batch_command, "--verbose" in args_list)
    args = create_argument_parser().parse_args(args_list)
    _notice_changed_flags(args_list)
    return _guarded(lambda: _run(args), args.verbose)


#: Legacy flags that are accepted but behave differently now: one line on what changed.
CHANGED_FLAGS = {
    "--enable-db": "the database is used whenever DATABASE_URL or --db-url is set (--no-db "
    "turns it off); --enable-db now only makes a missing URL an error",
    "--pause-duration": "it is now the longest rate-limit wait before the run ends as "
    "resumable (exit 7), not a fixed pause; cron's next --resume continues",
    "--daily-limit": "when today's requests are spent the run ends (exit 7) instead of "
    "pausing; the next --resume on another UTC day continues",
}


def _notice_changed_flags(args: list[str]) -> None:
    """One notice per legacy flag whose behaviour changed (see ``CHANGED_FLAGS``)."""
    given = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    for flag, change in CHANGED_FLAGS.items():
        if flag in given:
            logger.warning("notice: %s: %s.", flag, change)


def _unknown_batch_command() -> int:
    raise UsageError("The batch command is `artist-bio-gen batch cancel [--output PATH]`.")


def _secret_arguments(args: list[str]) -> list[str]:
    """Values of the options that carry secrets, so the log filter can scrub them."""
    secrets = []
    for index, arg in enumerate(args):
        for flag in ("--openai-api-key", "--db-url"):
            if arg == flag and index + 1 < len(args):
                secrets.append(args[index + 1])
            elif arg.startswith(flag + "="):
                secrets.append(arg.split("=", 1)[1])
    return secrets


def _record_refused(args: argparse.Namespace, exc: ArtistBioGenError) -> None:
    """A ``--resume`` (or ``batch cancel``) refused before it started is the job's last run
    too: cron's ``status`` the next morning must show it (``core/lastrun.py``)."""
    if getattr(args, "resume", False) and not getattr(args, "dry_run", False):
        command = "batch cancel" if getattr(args, "batch_cancel", False) else "run"
        output = Path(getattr(args, "output", None) or DEFAULT_OUTPUT)
        record_refused_run(output, command, exc, _secret_values(args))


def _secret_values(args: argparse.Namespace) -> tuple[str | None, ...]:
    return (getattr(args, "openai_api_key", None), getattr(args, "db_url", None))


def _guarded(action: Callable[[], int], verbose: bool) -> int:
    """Run ``action``; turn errors into one line on stderr and an exit code."""
    try:
        return action()
    except ArtistBioGenError as exc:
        _report(f"error: {exc}", verbose)
        return exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted", verbose)
        return exit_codes.EXIT_INTERRUPTED
    except Exception as exc:  # the edge: anything unexpected becomes exit 10
        _report(
            f"unexpected error: {type(exc).__name__}: {exc} (run with --verbose for details)",
            verbose,
        )
        return exit_codes.EXIT_UNEXPECTED_ERROR


def _report(message: str, verbose: bool) -> None:
    if verbose:
        logger.error("%s", traceback.format_exc().rstrip())
    logger.error("%s", message)


def _run(args: argparse.Namespace) -> int:
    started = time.time()
    try:
        config = resolve_config(args, load_environment())
    except ArtistBioGenError as exc:
        _record_refused(args, exc)
        _report_refused(args, exc, started)
        raise
    setup_logging(config.verbose, secrets=config.secrets, quiet=config.report.quiet)
    if config.dry_run:
        dry_run(config, sys.stdout)
        return exit_codes.EXIT_SUCCESS
    metrics = _metrics_file(config.report.metrics_file, config.output_path, started)
    control = RunControl()
    progress = Progress(
        interval=config.report.progress_interval,
        show=not config.report.quiet,
        on_tick=None if metrics is None else metrics.running,
    )
    on_outcome = _with_bios(progress.on_outcome) if config.report.print_bios else None

    def on_start(view: RunView) -> None:
        # Registered now, after the runner's own hooks (the JSONL is frozen first).
        control.on_emergency(lambda: _stopped_at_once(config, metrics, progress, view, started))
        progress.start(view)

    try:
        with _SignalHandlers(control, config.shutdown_grace):
            try:
                result = run_job(
                    config, control, on_outcome=on_outcome or progress.on_outcome, on_start=on_start
                )
            finally:
                progress.close()
    except Exception as exc:
        code = code_of(exc)
        # Refused because another run holds the job: the reports are that run's to write.
        if code != exit_codes.EXIT_LOCKED:
            error = str(exc) or type(exc).__name__
            report = report_of_error(
                config.output_path, config.mode, code, error, started, time.time()
            )
            _write_reports(config.report.summary_json, metrics, report)
        raise
    code = exit_code_for(result)
    report = report_of(config, result, code, started, time.time())
    _write_reports(config.report.summary_json, metrics, report)
    if not config.report.quiet:
        _print_summary(summary_lines(config, result, report))
    if result.left_running is not None:
        # Workers are stuck in calls that outlived the grace period; do not wait for them.
        _flush_and_exit(code)
    return code


def _print_summary(lines: list[str]) -> None:
    """The summary on stdout; a reader that went away (``| head``) costs the run nothing."""
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def code_of(exc: BaseException) -> int:
    """The exit code an exception ends the run with (as ``_guarded`` maps it)."""
    return exception_exit_code(exc)


def _with_bios(on_outcome: OutcomeCallback) -> OutcomeCallback:
    """``--print-bios``: each committed bio on stdout, then the progress as before."""

    def show(outcome: Outcome, tally: Tally) -> None:
        if outcome.status == "committed" and outcome.text is not None:
            print(f"=== {outcome.artist_name} ({outcome.artist_id}) ===\n{outcome.text}\n")
        on_outcome(outcome, tally)

    return show


def _stopped_at_once(
    config: Config,
    metrics: MetricsFile | None,
    progress: Progress,
    view: RunView,
    started: float,
) -> None:
    """A second signal ends the process now: the reports say so, from the live counts."""
    progress.stop_ticking()
    error = "stopped at once by a second signal; run again with --resume"
    code = exit_codes.EXIT_INTERRUPTED
    report = report_of_view(config, view, code, error, started, time.time())
    _write_reports(config.report.summary_json, metrics, report)


def _metrics_file(path: Path | None, output: Path, started: float) -> MetricsFile | None:
    return None if path is None else MetricsFile(path, job_name(output), started)


def _write_reports(summary: Path | None, metrics: MetricsFile | None, report: RunReport) -> None:
    """Write ``--summary-json`` and the metrics file for a run that has ended."""
    if summary is not None:
        write_quietly("summary", summary, lambda: write_summary_json(summary, report))
    if metrics is not None:
        metrics.finished(report)


def _report_refused(args: argparse.Namespace, exc: ArtistBioGenError, started: float) -> None:
    """A run refused before its configuration was complete still writes its reports, when
    their paths are usable: monitoring must see the exit code of every run."""
    try:
        summary = report_path("--summary-json", getattr(args, "summary_json", None))
        metrics_path = report_path("--metrics-file", getattr(args, "metrics_file", None))
    except UsageError:
        return
    output = Path(getattr(args, "output", None) or DEFAULT_OUTPUT)
    mode = getattr(args, "mode", None) or "online"
    report = report_of_error(output, mode, exc.exit_code, str(exc), started, time.time())
    _write_reports(summary, _metrics_file(metrics_path, output, started), report)


def exit_code_for(result: RunResult) -> int:
    """The process exit code for a finished run (the rule the last-run record uses too)."""
    return run_exit_code(result.error, result.interrupted, result.stats.failed)


#: What ``signal.signal`` takes and returns: a function, SIG_DFL / SIG_IGN (ints), or None
#: (a handler that was not installed from Python).
_SignalHandler = Callable[[int, FrameType | None], object] | int | None


class _SignalHandlers:
    """First SIGINT/SIGTERM: stop gracefully. Second: exit at once (no torn line)."""

    def __init__(self, control: RunControl, grace: float):
        self._control = control
        self._grace = grace
        self._previous: dict[int, _SignalHandler] = {}

    def __enter__(self) -> _SignalHandlers:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._control.interrupted:
            self._control.interrupt()
            logger.warning(
                "%s received: no new artists; waiting up to %.0f s for those in flight "
                "(send it again to stop at once)",
                name,
                self._grace,
            )
            return
        logger.warning("%s received again: stopping now; run again with --resume", name)
        self._control.run_emergency_hooks()
        _flush_and_exit(exit_codes.EXIT_INTERRUPTED)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
