"""Budgets: API requests per UTC day for a job (``--daily-limit``), USD per run (``--max-cost``).

**Daily requests.** ``--daily-limit N`` allows at most N API requests (every HTTP attempt,
retries included) per UTC day for a job, shared by all runs of the job that day, and it must
hold across crashes. The count lives in a ``UsageStore``: ``artist_bio_usage`` for a job with
a database (``DatabaseUsage``), a small JSON file beside the output otherwise (``FileUsage``).

A run does not ask the store per request: ``DailyBudget`` reserves a block of requests
(``block``, 16 by default) at once, hands them out from memory, and gives back what it did
not use when the run ends (``close``). A reservation is durable (committed, or fsynced)
before any request of it is made, so:

- the store's count is never below the requests really made: the limit is never passed,
  whatever crashes (several runs of a job cannot run at once, and the store's ``reserve``
  is atomic anyway);
- a crash loses at most the unused part of one block for the day: the count stays high by
  that much (conservative), never low;
- one store round trip per ``block`` requests.

The day is ``today()`` (UTC; injectable so tests can move it): a block reserved for one day is
never used on another, and what was left of it is given back when the day changes.

**Cost.** ``--max-cost USD`` caps what one run spends. ``CostBudget`` holds what was spent
(settled) and what is in flight (reserved by requests not yet answered): a request may start
only if ``spent + in flight + expected`` stays within the maximum. The caller's ``expected``
must be an upper bound of the request's cost (``api/pricing.cost_usd`` of the estimated
input and the maximum output) for the cap to hold exactly; a response costing more than its
reservation can take ``spent`` past the cap by the difference. Amounts are kept as
``Decimal`` so that reserving and settling the same amount cancel exactly.

**Artist limit.** ``--limit N`` (artists this run) needs no object: the integrator slices the
stream of artists still to do (``itertools.islice``, after the done and given-up filters).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from ..database.store import BioStore
from ..errors import ConfigError
from ..utils.durable import atomic_write

logger = logging.getLogger(__name__)

#: Requests a run reserves at once (at most this many are lost for the day by a crash).
DEFAULT_BLOCK = 16


def utc_today() -> date:
    """The current UTC day (the day ``--daily-limit`` counts in)."""
    return datetime.now(UTC).date()


class UsageStore(Protocol):
    """Where a job's daily request counts live."""

    def reserve(self, day: date, wanted: int, limit: int) -> int:
        """Atomically add ``min(wanted, limit - used)`` (at least 0) to the day's count and
        make it durable; returns what was granted (0 when the day is spent)."""
        ...

    def release(self, day: date, unused: int) -> None:
        """Give back requests reserved for ``day`` but not used (the end of a run)."""
        ...

    def used(self, day: date) -> int:
        """The day's count: requests made or reserved by the job's runs."""
        ...


class DatabaseUsage:
    """The job's counts in ``artist_bio_usage`` (through the store's pool and retries)."""

    def __init__(self, store: BioStore, job_id: str) -> None:
        """Counts of ``job_id``; ``store`` needs no target table."""
        self._store = store
        self._job_id = job_id

    def reserve(self, day: date, wanted: int, limit: int) -> int:
        """One statement while a whole ``wanted`` fits (``BioStore.reserve_requests``)."""
        return self._store.reserve_requests(self._job_id, day, wanted, limit)

    def release(self, day: date, unused: int) -> None:
        """One try; if the database is away the requests stay counted (conservative)."""
        self._store.release_requests(self._job_id, day, unused)

    def used(self, day: date) -> int:
        """The day's row, 0 when there is none."""
        return self._store.requests_used(self._job_id, day)


class FileUsage:
    """The job's counts in a small JSON file (``jobfiles.JobPaths.usage``), for jobs without
    a database.

    The file is replaced atomically (``utils/durable.atomic_write``: whole old or whole new,
    fsynced) on every change, before a reservation is granted. The run lock guarantees one
    writing process; a lock inside guards the threads. It holds the job id, so the file of
    an earlier job on the same output (``--overwrite``) counts nothing for this one, and the
    days of the last week only.
    """

    FORMAT = 1
    KEEP_DAYS = 7

    def __init__(self, path: Path, job_id: str) -> None:
        """Read the counts of ``job_id`` from ``path`` (none when it does not exist)."""
        self._path = path
        self._job_id = job_id
        self._lock = threading.Lock()
        self._days = self._load()

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise self._unusable(f"cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise self._unusable("not a JSON object")
        found = data.get("format")
        if found != self.FORMAT:
            newer = isinstance(found, int) and found > self.FORMAT
            raise self._unusable(
                f"format {found!r}, " + ("written by a newer version" if newer else "unknown")
            )
        if data.get("job_id") != self._job_id:
            return {}  # another job's counts (the output was reused)
        days = data.get("days")
        try:
            if not isinstance(days, dict):
                raise TypeError("no 'days' object")
            return {date.fromisoformat(day).isoformat(): int(n) for day, n in days.items()}
        except (TypeError, ValueError) as exc:
            raise self._unusable(f"damaged: {exc}") from None

    def _unusable(self, why: str) -> ConfigError:
        return ConfigError(
            f"The daily request counts {self._path} are unusable ({why}); restore the file "
            "from a backup, or delete it to count today's requests from zero."
        )

    def _save(self, days: dict[str, int], latest: date) -> None:
        oldest = (latest - timedelta(days=self.KEEP_DAYS)).isoformat()
        kept = {day: count for day, count in sorted(days.items()) if day >= oldest}
        data = {"format": self.FORMAT, "job_id": self._job_id, "days": kept}
        atomic_write(self._path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
        self._days = kept

    def reserve(self, day: date, wanted: int, limit: int) -> int:
        """Grant what fits and write the file before returning."""
        with self._lock:
            used = self._days.get(day.isoformat(), 0)
            granted = max(0, min(wanted, limit - used))
            if granted:
                self._save({**self._days, day.isoformat(): used + granted}, day)
            return granted

    def release(self, day: date, unused: int) -> None:
        """Give back; if the file cannot be written the requests stay counted (a warning)."""
        with self._lock:
            used = self._days.get(day.isoformat(), 0)
            if unused <= 0 or used == 0:
                return
            try:
                self._save({**self._days, day.isoformat(): max(0, used - unused)}, day)
            except OSError as exc:
                logger.warning(
                    "%d requests reserved for %s stay counted against the daily limit "
                    "(cannot write %s: %s)",
                    unused,
                    day,
                    self._path,
                    exc,
                )

    def used(self, day: date) -> int:
        """From memory: this object is the file's only writer."""
        with self._lock:
            return self._days.get(day.isoformat(), 0)


class DailyBudget:
    """One run's view of the daily request limit; thread-safe.

    ``take()`` before every HTTP request attempt (retries included): True means go ahead,
    False means today's budget is spent and the run should stop submitting. ``close()`` at
    the end of the run gives back the unused reservation. Errors of the store propagate
    from ``take`` (``DatabaseUnavailableError`` once the database stayed away for
    ``--db-retry-seconds``; ``OSError`` when the usage file cannot be written).
    """

    def __init__(
        self,
        store: UsageStore,
        limit: int | None,
        today: Callable[[], date] = utc_today,
        block: int = DEFAULT_BLOCK,
    ) -> None:
        """``limit`` None: no limit, ``take`` is always True and nothing is read or written."""
        if block < 1:
            raise ValueError(f"block must be at least 1, not {block}")
        self._store = store
        self._limit = limit
        self._today = today
        self._block = block
        self._lock = threading.Lock()
        self._day: date | None = None
        self._left = 0  # reserved for self._day, not used yet
        self._spent = False  # the store granted nothing more for self._day
        self._taken_today = 0  # by this run, on self._day
        self._taken = 0  # by this run, every day

    @property
    def limit(self) -> int | None:
        """Requests allowed per UTC day (None: no limit)."""
        return self._limit

    @property
    def taken(self) -> int:
        """Requests this run has made (every ``take`` that returned True)."""
        with self._lock:
            return self._taken

    def take(self) -> bool:
        """Account for one request; False when today's budget is spent."""
        with self._lock:
            day = self._today()
            if day != self._day:
                self._roll_over(day)
            if self._limit is not None and self._left == 0:
                granted = 0 if self._spent else self._store.reserve(day, self._block, self._limit)
                if granted <= 0:
                    self._spent = True
                    return False
                self._left = granted
            if self._limit is not None:
                self._left -= 1
            self._taken_today += 1
            self._taken += 1
            return True

    def _roll_over(self, day: date) -> None:
        # A block reserved for the previous day is never used on this one: give it back.
        self._release()
        self._day = day
        self._spent = False
        self._taken_today = 0

    def _release(self) -> None:
        if self._left and self._day is not None:
            left, self._left = self._left, 0
            self._store.release(self._day, left)

    def close(self) -> None:
        """Give back the requests reserved but not used (the end of a run). Idempotent; a
        run that never gets here (a crash) leaves them counted, which is only conservative."""
        with self._lock:
            self._release()

    def used_today(self) -> int:
        """Requests made today: by all runs of the job (what the store counts, less this
        run's unused reservation), or without a limit by this run alone (nothing is
        stored)."""
        with self._lock:
            day = self._today()
            if self._limit is None:
                return self._taken_today if day == self._day else 0
            unused = self._left if day == self._day else 0
            return self._store.used(day) - unused


class CostBudget:
    """The cost of one run against ``--max-cost``; thread-safe.

    ``reserve(expected)`` before a request, ``settle(expected, actual)`` once it is over
    (``actual`` None: not billed, e.g. the request never reached the API). Without a maximum
    every reservation succeeds, and ``spent`` still adds up the run's cost.
    """

    def __init__(self, max_cost: float | None) -> None:
        """``max_cost`` in USD, or None for no cap."""
        self._max = None if max_cost is None else _amount(max_cost, "max_cost")
        self._lock = threading.Lock()
        self._spent = Decimal(0)
        self._in_flight = Decimal(0)

    @property
    def max_cost(self) -> float | None:
        """The cap in USD (None: none)."""
        return None if self._max is None else float(self._max)

    @property
    def spent(self) -> float:
        """USD settled so far by this run."""
        with self._lock:
            return float(self._spent)

    @property
    def in_flight(self) -> float:
        """USD reserved by requests not settled yet."""
        with self._lock:
            return float(self._in_flight)

    def reserve(self, expected: float) -> bool:
        """Reserve ``expected`` USD for one request; False (nothing reserved) when spent,
        in flight and ``expected`` together would pass the cap.

        False may only mean "not while others are in flight"; the simple policy, stopping
        the run at the first False, ends it within one window of requests of the cap.
        """
        amount = _amount(expected, "expected")
        with self._lock:
            if self._max is not None and self._spent + self._in_flight + amount > self._max:
                return False
            self._in_flight += amount
            return True

    def settle(self, expected: float, actual: float | None) -> None:
        """Replace the reservation of ``expected`` by what the request really cost."""
        amount = _amount(expected, "expected")
        cost = None if actual is None else _amount(actual, "actual")
        with self._lock:
            if amount > self._in_flight:
                raise RuntimeError(f"settling {expected} USD that was never reserved")
            self._in_flight -= amount
            if cost is not None:
                self._spent += cost


def _amount(value: float, name: str) -> Decimal:
    """A USD amount as an exact Decimal (its shortest decimal form)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite amount of USD, 0 or more, not {value!r}")
    return Decimal(repr(float(value)))
