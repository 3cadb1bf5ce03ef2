"""Progress while a run goes: a bar on a terminal, a log line now and then otherwise.

On a terminal (stderr) a tqdm bar shows done/total, the rate, the ETA, failures and spend;
the total is the artists still to do, counted from the input's lines when processing begins
(at most ``--limit``; unknown for a batch job or an input that is not a regular file: the bar
then counts without one). Off a terminal, under cron, one log line every
``--progress-interval`` seconds with the same figures keeps the log readable (a line per
artist would drown it).

A timer thread of its own (``Ticker``) writes the log line, and calls ``on_tick`` (the
metrics file) at the same interval, so both keep coming while no artist finishes, e.g. during
a long rate-limit pause. It reads the run's live counts (``core/view.RunView``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Never, TextIO

from tqdm import tqdm

from ..core.processor import Tally
from ..core.view import RunView
from ..models import Outcome

logger = logging.getLogger(__name__)

TickCallback = Callable[[RunView], None]


class Ticker:
    """Calls ``tick()`` every ``interval`` seconds on a thread of its own until ``stop()``."""

    def __init__(self, interval: float, tick: Callable[[], None]):
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        """Start ticking (the first tick comes one interval from now)."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait (up to ``timeout`` seconds) for a tick under way to end, so nothing
        ticks after the summary."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # a progress line must never end the run
                logger.debug("progress tick failed", exc_info=True)


class Progress:
    """Shows where the run stands: ``start`` when processing begins, ``on_outcome`` for every
    outcome, ``close`` before the summary."""

    def __init__(
        self,
        *,
        interval: float = 30.0,
        use_bar: bool | None = None,
        show: bool = True,
        on_tick: TickCallback | None = None,
    ):
        """``use_bar``: None decides by whether stderr is a terminal; ``show`` False (--quiet)
        shows nothing, ``on_tick`` is still called."""
        self._interval = interval
        self._show = show
        self._use_bar = show and (sys.stderr.isatty() if use_bar is None else use_bar)
        self._on_tick = on_tick
        self._bar: tqdm[Never] | None = None  # a manual bar: it wraps no iterable
        self._view: RunView | None = None
        self._ticker: Ticker | None = None
        self._log_stream: _LogStream | None = None

    def start(self, view: RunView) -> None:
        """Processing begins: ``view`` holds the run's live counts."""
        self._view = view
        if self._use_bar:
            self._bar = tqdm(
                total=view.total,
                desc="artists",
                unit="artist",
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0.1,
            )
            self._log_stream = _LogStream.install()
        if self._on_tick is not None:
            self._on_tick(view)
        if self._on_tick is not None or (self._show and not self._use_bar):
            self._ticker = Ticker(self._interval, self._tick)
            self._ticker.start()

    def on_outcome(self, outcome: Outcome, tally: Tally) -> None:
        """Count one outcome (the bar moves; the log line waits for its interval)."""
        view = self._view
        if view is None:
            return
        # A batch run counts into its collector's tally: follow the one the outcomes bring.
        view.tally = tally
        if self._bar is not None:
            # The figures first: update() draws them (when its minimum interval allows).
            self._bar.set_postfix_str(_postfix(view), refresh=False)
            self._bar.update(view.handled - self._bar.n)

    def stop_ticking(self) -> None:
        """Stop the ticker, from a signal handler: the main thread may be stopped inside a
        log call whose lock the ticker waits for, so the wait is bounded."""
        if self._ticker is not None:
            self._ticker.stop(timeout=2.0)

    def close(self) -> None:
        """Stop the ticker and remove the bar, so the summary starts on a clean line."""
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        if self._bar is not None:
            view = self._view
            if view is not None:
                self._bar.set_postfix_str(_postfix(view), refresh=False)
                self._bar.update(view.handled - self._bar.n)
            self._bar.close()
            self._bar = None
        if self._log_stream is not None:
            self._log_stream.uninstall()
            self._log_stream = None

    def _tick(self) -> None:
        view = self._view
        if view is None:
            return
        if self._show and self._bar is None:
            logger.info("%s", progress_line(view))
        if self._on_tick is not None:
            self._on_tick(view)


def progress_line(view: RunView) -> str:
    """The log line: done of total, each count, rate, ETA, requests and spend."""
    tally, total = view.tally, view.total
    done = f"{view.handled:,}" + ("" if total is None else f"/{total:,}")
    percent = f" ({100 * view.handled / total:.1f}%)" if total else ""
    return (
        f"progress: {done} artists{percent}: committed {tally.committed:,}, skipped "
        f"{tally.skipped:,}, failed {tally.failed:,}, given up {view.given_up:,}, in flight "
        f"{tally.in_flight:,}, already done {view.already_done:,}; {_rate(view):.1f} "
        f"artists/s, ETA {_eta(view)}; {view.requests.requests:,} requests, "
        f"${view.requests.spent_usd:,.4f} spent"
    )


def _rate(view: RunView) -> float:
    """Artists settled per second (given-up ones cost no time: left out)."""
    tally = view.tally
    settled = tally.committed + tally.skipped + tally.failed
    return settled / view.elapsed if view.elapsed > 0 else 0.0


def _eta(view: RunView) -> str:
    rate, total = _rate(view), view.total
    if total is None or rate <= 0:
        return "unknown"
    seconds = int(max(0, total - view.handled) / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _postfix(view: RunView) -> str:
    """After the bar's rate: the outcomes and the spend (what is 0 and rare left out, so the
    bar keeps its width)."""
    tally = view.tally
    parts = [f"ok {tally.committed:,}", f"failed {tally.failed:,}"]
    if tally.skipped:
        parts.append(f"skipped {tally.skipped:,}")
    if view.given_up:
        parts.append(f"given up {view.given_up:,}")
    parts += [f"in flight {tally.in_flight:,}", f"${view.requests.spent_usd:,.4f}"]
    return ", ".join(parts)


class _LogStream:
    """While the bar is shown, log lines go through ``tqdm.write``: the bar is cleared, the
    line written, the bar drawn again (instead of a line torn through the bar).

    It replaces the stream of the tool's own console handler (``utils/logging``), so the
    handler's format and its secret-scrubbing filter stay as they are.
    """

    def __init__(self, handler: logging.StreamHandler[TextIO], stream: TextIO):
        self._handler = handler
        self._stream = stream

    @classmethod
    def install(cls) -> _LogStream | None:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_artist_bio_gen", False) and isinstance(
                handler, logging.StreamHandler
            ):
                proxy = cls(handler, handler.stream)
                handler.setStream(proxy)  # a file-like object: all a handler writes to
                return proxy
        return None

    def write(self, text: str) -> int:
        tqdm.write(text.rstrip("\n"), file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def uninstall(self) -> None:
        self._handler.setStream(self._stream)
