"""Where a run stands while it goes, for the progress display and the metrics file.

The run writes it (the main thread: the tally as outcomes arrive, the given-up count as the
input is read; the worker threads: the request counts, under the throttle's lock); the CLI
reads it from its own timer thread as well. Each figure is one int or float, read whole, so
a reader sees each figure exact as of some instant, which is all a progress line needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .processor import Tally
from .throttle import RequestCounts


@dataclass
class RunView:
    """A run's live counts (see the module docstring)."""

    job_id: str
    #: Artists done before this run (ledger, or the JSONL without a database).
    already_done: int = 0
    #: The artists this run has to do, counted from the input's lines at the start (less
    #: those done); None when unknown (a batch job, an input that is not a regular file).
    to_do: int | None = None
    #: ``--limit``: the artists this run may send (None: no limit).
    limit: int | None = None
    tally: Tally = field(default_factory=Tally)
    requests: RequestCounts = field(default_factory=RequestCounts)
    #: Artists not sent because they failed ``--max-attempts`` times already.
    given_up: int = 0
    #: ``time.monotonic()`` when processing began.
    started: float = field(default_factory=time.monotonic)

    @property
    def total(self) -> int | None:
        """What this run will settle at most: the artists to do, or fewer under ``--limit``
        (given-up artists may take the count a little past it)."""
        if self.to_do is None or self.limit is None:
            return self.to_do
        return min(self.to_do, self.limit)

    @property
    def handled(self) -> int:
        """Artists of this run that are settled: committed, skipped, failed or given up."""
        tally = self.tally
        return tally.committed + tally.skipped + tally.failed + self.given_up

    @property
    def remaining(self) -> int | None:
        """Artists still to do (not committed, skipped or given up), from the start's count."""
        if self.to_do is None:
            return None
        tally = self.tally
        return max(0, self.to_do - tally.committed - tally.skipped - self.given_up)

    @property
    def elapsed(self) -> float:
        """Seconds since processing began."""
        return time.monotonic() - self.started
