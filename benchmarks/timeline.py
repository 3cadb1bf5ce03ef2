"""Rates from completion timestamps: overall, and steady state (ramp-up and tail cut off)."""

from __future__ import annotations

import bisect
import calendar
import json
import time
from dataclasses import dataclass
from pathlib import Path

# Share of the run cut off at each end of the steady-state window, at least.
TRIM_FRACTION = 0.1


@dataclass(frozen=True)
class Window:
    """A span of wall time, ``time.time()`` seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Its length."""
        return self.end - self.start


@dataclass(frozen=True)
class Rates:
    """Throughput of one run."""

    completed: int
    #: From the first request to the last completion.
    overall: float
    #: Inside ``steady`` only.
    steady: float
    steady_window: Window
    steady_completed: int


def steady_window(start: float, end: float, latency: float) -> Window:
    """The steady-state part of a run from ``start`` (first request) to ``end``.

    Cut at the head: two latencies (the tool's canary request runs alone, then the first
    full window of requests is still in flight) or 10% of the run; at the tail: one latency
    (the last requests drain) or 10% of the run, whichever is longer.
    """
    span = end - start
    head = max(2 * latency, TRIM_FRACTION * span)
    tail = max(latency, TRIM_FRACTION * span)
    if head + tail >= span:
        return Window(start, end)
    return Window(start + head, end - tail)


def rates(completions: list[float], start: float, latency: float) -> Rates:
    """Overall and steady-state rates of sorted completion times; ``start`` is the first
    request's time."""
    if not completions:
        return Rates(0, 0.0, 0.0, Window(start, start), 0)
    end = completions[-1]
    window = steady_window(start, end, latency)
    inside = completions_in(completions, window)
    overall = len(completions) / (end - start) if end > start else 0.0
    steady = inside / window.seconds if window.seconds > 0 else 0.0
    return Rates(len(completions), overall, steady, window, inside)


def completions_in(completions: list[float], window: Window) -> int:
    """How many sorted completion times fall inside ``window``."""
    return bisect.bisect_left(completions, window.end) - bisect.bisect_left(
        completions, window.start
    )


def _parse_ts(text: str) -> float:
    """``2024-01-02T03:04:05.678Z`` (UTC) to seconds since the epoch."""
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    fraction = float("0" + text[19:].rstrip("Z")) if len(text) > 20 else 0.0
    return seconds + fraction


def transaction_times(transaction_log: Path) -> dict[str, list[float]]:
    """Sorted event times of the tool's transaction log, by event (``commit``, ``failure``)."""
    times: dict[str, list[float]] = {}
    if not transaction_log.exists():
        return times
    with open(transaction_log, encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            times.setdefault(event.get("event", "?"), []).append(_parse_ts(event["ts"]))
    for values in times.values():
        values.sort()
    return times


def commit_durations(transaction_log: Path) -> list[float]:
    """Seconds each committed artist took in the tool (the transaction log's ``duration_ms``:
    from the worker picking the artist up to its JSONL line on disk), sorted."""
    durations: list[float] = []
    if not transaction_log.exists():
        return durations
    with open(transaction_log, encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if event.get("event") == "commit":
                durations.append(float(event["duration_ms"]) / 1000)
    return sorted(durations)


def quantile(values: list[float], share: float) -> float:
    """The ``share`` quantile of sorted ``values`` (nearest rank; 0.0 when empty)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(share * len(values)))]
