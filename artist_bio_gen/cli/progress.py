"""Progress while a run goes: a bar on a terminal, a log line now and then otherwise.

Under cron there is no terminal; one line every ``interval`` seconds keeps the log readable
(a line per artist would drown it).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Never

from tqdm import tqdm

from ..core.processor import Tally
from ..models import Outcome

logger = logging.getLogger(__name__)


class Progress:
    """Receives every outcome (``on_outcome``) and shows where the run stands."""

    def __init__(self, *, interval: float = 30.0, use_bar: bool | None = None):
        self._interval = interval
        self._use_bar = sys.stderr.isatty() if use_bar is None else use_bar
        self._bar: tqdm[Never] | None = None  # a manual bar: it wraps no iterable
        self._started = time.monotonic()
        self._last_log = self._started

    def start(self, already_done: int) -> None:
        """Called once the job knows how many artists are done already."""
        self._started = self._last_log = time.monotonic()
        if self._use_bar:
            self._bar = tqdm(desc="artists", unit="artist", file=sys.stderr, dynamic_ncols=True)

    def on_outcome(self, outcome: Outcome, tally: Tally) -> None:
        """Update the bar or log a line when the interval has passed."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(ok=tally.committed, skipped=tally.skipped, failed=tally.failed)
            return
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            self._last_log = now
            rate = tally.committed / max(now - self._started, 1e-9)
            logger.info(
                "progress: %s committed, %s skipped, %s failed (%.1f artists/s)",
                f"{tally.committed:,}",
                f"{tally.skipped:,}",
                f"{tally.failed:,}",
                rate,
            )

    def close(self) -> None:
        """Remove the bar so the summary starts on a clean line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
