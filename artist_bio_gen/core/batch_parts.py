"""What the steps of a batch run share (``core/batch.py`` has the design)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from ..api.batches import BatchApi
from ..api.pricing import Price
from ..config import Config
from ..database.batches import BatchStore
from ..database.store import BioStore, JobTotals
from ..jobfiles import JobPaths
from ..utils.uuidset import UuidSet
from .budget import UsageStore
from .processor import OutcomeCallback, Pipeline, RunControl


@dataclass
class BatchParts:
    """One batch run's configuration, services and the job's state as it goes."""

    config: Config
    job_id: str
    paths: JobPaths
    api: BatchApi
    store: BatchStore
    #: The user's table and the ledger (``--skip-existing`` looks bios up there).
    bios: BioStore
    #: Commit, append, failures file and transaction log: the online run's own.
    pipeline: Pipeline
    control: RunControl
    #: Artists committed by the job; the collector adds what it commits.
    done: UuidSet
    #: Failed attempts per artist (the failures file's count, plus this run's failures).
    attempts: Counter[str]
    #: (artist, batch) of the failures recorded from batch answers (see ``batch_failures``).
    recorded_failures: set[tuple[str, str]]
    #: ``--daily-limit``'s counts.
    usage: UsageStore
    #: The job's ledger totals (what its committed bios cost), None when unknown.
    totals: Callable[[], JobTotals | None]
    #: ``--price-input``/``--price-output``, else None (the table's price of the model).
    price: Price | None
    on_outcome: OutcomeCallback | None
    today: Callable[[], date]

    @property
    def cap(self) -> int:
        """Failed attempts after which an artist is given up (``--max-attempts``)."""
        return 10**9 if self.config.retry_failed else self.config.max_attempts
