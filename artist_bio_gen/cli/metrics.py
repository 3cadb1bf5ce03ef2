"""``--metrics-file``: the run in Prometheus' text format, for node_exporter's textfile
collector.

The file is replaced atomically (a temporary file, then a rename: the collector reads the old
file or the new one, never half of one) when the run begins, every ``--progress-interval``
seconds while it goes, and when it ends, whatever the end. Every figure is a gauge with a
``job`` label (the job's name, the output's stem), with ``# HELP`` and ``# TYPE`` lines.

Some figures are about the last finished run: its end, its exit code and the last run that
exited 0. A run that has not finished yet, or that failed, has no value of its own for
them, so it carries them over from the file it replaces: a failed run must not erase the
time of the last success, or "no successful run in 26 h" could never fire.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.view import RunView
from ..utils.durable import atomic_write
from .report import SHARED_FILE_MODE, RunReport, write_quietly

PREFIX = "artist_bio_gen_"
#: name (without the prefix) -> HELP text, in the order written.
FAMILIES: dict[str, str] = {
    "run_start_timestamp_seconds": "When the current or last run started (Unix time).",
    "run_end_timestamp_seconds": "When the last finished run ended (Unix time).",
    "last_success_timestamp_seconds": "When the last run that exited 0 or 7 ended (Unix time).",
    "running": "1 while a run is going, 0 once it has ended.",
    "exit_code": "Exit code of the last finished run (0 done, 4 some failed, 7 at a limit...).",
    "run_duration_seconds": "Seconds the current or last run has taken (start to end).",
    "artists_committed": "Bios committed by the current or last run.",
    "artists_failed": "Artists that failed in the current or last run.",
    "artists_remaining": "Artists of the input not committed, skipped or given up yet.",
    "requests": "API requests of the current or last run.",
    "tokens": "Tokens used by the current or last run.",
    "cost_usd": "USD spent by the current or last run (answers of known price).",
}
#: Figures a run carries over from the file it replaces when it has none of its own.
CARRIED = ("run_end_timestamp_seconds", "last_success_timestamp_seconds", "exit_code")

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{job="((?:[^"\\]|\\.)*)"\} (\S+)$')

Values = dict[str, float | None]


@dataclass
class MetricsFile:
    """The metrics file of one job (``path``), written at the start, during and at the end."""

    path: Path
    job: str
    #: When the run started (Unix time).
    started_at: float

    def running(self, view: RunView) -> None:
        """The run is going: its figures so far (called at the start and on every tick)."""
        tally, counts = view.tally, view.requests
        values: Values = {
            "running": 1,
            "run_duration_seconds": time.time() - self.started_at,
            "artists_committed": tally.committed,
            "artists_failed": tally.failed,
            "artists_remaining": view.remaining,
            "requests": counts.requests,
            "tokens": tally.tokens.total_tokens,
            "cost_usd": counts.spent_usd,
        }
        self._write(values)

    def finished(self, report: RunReport) -> None:
        """The run has ended: its final figures, its end, its exit code."""
        values: Values = {
            "running": 0,
            "run_end_timestamp_seconds": report.ended_at,
            "exit_code": report.exit_code,
            "run_duration_seconds": report.ended_at - report.started_at,
            "artists_committed": report.committed,
            "artists_failed": report.failed,
            "artists_remaining": report.remaining,
            "requests": report.requests,
            "tokens": report.total_tokens,
            "cost_usd": report.cost_usd,
        }
        if report.succeeded:
            values["last_success_timestamp_seconds"] = report.ended_at
        self._write(values)

    def _write(self, values: Values) -> None:
        previous = read_values(self.path, self.job)
        for name in (*CARRIED, "artists_remaining"):
            if values.get(name) is None:
                values[name] = previous.get(name)
        values["run_start_timestamp_seconds"] = self.started_at
        text = render(self.job, values)
        write_quietly(
            "metrics file",
            self.path,
            lambda: atomic_write(self.path, text.encode("utf-8"), mode=SHARED_FILE_MODE),
        )


def render(job: str, values: Values) -> str:
    """The text format: for each family with a value, HELP, TYPE and one sample."""
    label = _escape(job)
    lines: list[str] = []
    for name, help_text in FAMILIES.items():
        value = values.get(name)
        if value is None:
            continue  # unknown: no sample rather than a made-up one
        metric = PREFIX + name
        lines += [
            f"# HELP {metric} {help_text}",
            f"# TYPE {metric} gauge",
            f'{metric}{{job="{label}"}} {_number(value)}',
        ]
    return "\n".join(lines) + "\n"


def read_values(path: Path, job: str) -> Values:
    """The values of ``job``'s samples in the metrics file at ``path`` (none if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(_samples(text, _escape(job)))


def _samples(text: str, label: str) -> Iterator[tuple[str, float]]:
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(2) != label or not match.group(1).startswith(PREFIX):
            continue
        try:
            yield match.group(1).removeprefix(PREFIX), float(match.group(3))
        except ValueError:
            continue


def _escape(value: str) -> str:
    """A label value as the text format writes it (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
