"""Building what a run's workers use, from the frozen config.

The run (``core/runner.py``) and each worker process of a run with several processes
(``core/child.py``) build their ledger, API clients, throttle and call options here, so the
two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Protocol, TypeVar

from ..api.call import CallOptions
from ..api.client import ClientPool, LazyClientPool, create_client_pool
from ..api.limiter import LimiterSettings, RateLimiter
from ..api.pricing import Price, price_for
from ..config import Config
from ..database.connection import create_db_connection_pool, describe_database
from ..database.schema import ensure_ledger, inspect_target_table
from ..database.store import BioStore
from ..jobfiles import JobPaths
from ..utils.logging import TransactionLog
from .budget import CostBudget, DailyBudget, UsageStore
from .committer import Committer
from .failures import FailureLog
from .jsonl import JsonlWriter
from .ledger import DatabaseLedger, JsonlOnlyLedger, Ledger
from .processor import Pipeline, RunControl, pool_threads, render_line
from .throttle import Throttle


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def closing(stack: contextlib.ExitStack, resource: C) -> C:
    """Close ``resource`` when the run ends; a failing close cannot cost a committed bio."""

    def close() -> None:
        with contextlib.suppress(Exception):
            resource.close()

    stack.callback(close)
    return resource


def open_ledger(
    config: Config,
    output: Path,
    job_id: str,
    stack: contextlib.ExitStack,
    *,
    prepare: bool = True,
) -> Ledger:
    """The job's ledger: the database's (its table checked, the ledger table created when
    ``prepare``), or the JSONL alone without a database."""
    if config.db is None:
        return JsonlOnlyLedger(output)
    where = describe_database(config.db.url)
    pool = closing(stack, create_db_connection_pool(config.db))
    table = inspect_target_table(pool, config.db.table, where)
    if prepare:
        ensure_ledger(pool, where)
    store = BioStore(pool, config.db, table)
    return DatabaseLedger(store, config.job_ref(job_id), keep_existing=config.skip_existing)


def open_clients(config: Config, workers: int) -> ClientPool:
    """The SDK clients of a pool making ``workers`` API requests at once."""
    return _client_factory(config, workers)()


def open_lazy_clients(config: Config, workers: int) -> LazyClientPool:
    """``open_clients``, created on first use (or ``prepare``), so a run whose artists all
    go to worker processes creates none."""
    return LazyClientPool(_client_factory(config, workers))


def _client_factory(config: Config, workers: int) -> Callable[[], ClientPool]:
    def create() -> ClientPool:
        # The SDK's own retries are off: api/call.py owns the loop (429s slow the whole run).
        # A connection for every thread of the pool (``pool_threads``): a thread keeps its
        # client, and whichever ``workers`` of them hold the API slots must find one free.
        return create_client_pool(
            config.api_key,
            config.base_url,
            workers=workers,
            threads=pool_threads(workers),
            timeout=config.request_timeout,
            max_retries=0,
        )

    return create


def price_override(config: Config) -> Price | None:
    """``--price-input`` / ``--price-output`` when both are set."""
    budget = config.budget
    if budget.price_input is None or budget.price_output is None:
        return None
    return Price(budget.price_input, budget.price_output)


def open_throttle(
    config: Config,
    usage: UsageStore,
    control: RunControl,
    today: Callable[[], date],
    *,
    share: float = 1.0,
) -> Throttle:
    """The pacer of one process: the rate limits and the budgets.

    ``share`` is this process's part of the run when several processes share it: each paces
    itself to that fraction of the caps and of the account's learned limits, and spends at
    most that fraction of ``--max-cost`` (the daily limit is counted in the database, where
    every process reserves from the same count).
    """
    quota, budget = config.quota, config.budget
    limiter = RateLimiter(
        LimiterSettings(
            rpm=quota.rpm,
            tpm=quota.tpm,
            learn=quota.monitoring,
            threshold=quota.threshold,
            max_pause=quota.pause_hours * 3600,
            share=share,
        )
    )
    max_cost = None if budget.max_cost is None else budget.max_cost * share
    return Throttle(
        limiter,
        DailyBudget(usage, budget.daily_limit, today=today),
        CostBudget(max_cost),
        price=price_for(config.prompt.model, override=price_override(config)),
        stopping=lambda: control.stopping,
        log_interval=quota.log_interval,
        max_pause=quota.pause_hours * 3600,
    )


def assemble_pipeline(
    config: Config,
    job_id: str,
    stack: contextlib.ExitStack,
    *,
    ledger: Ledger,
    writer: JsonlWriter,
    throttle: Throttle,
    clients: ClientPool,
    previous_attempts: Mapping[str, int],
) -> Pipeline:
    """What a process's workers use: the given parts, plus the job's failures file and
    transaction log (opened here, closed with ``stack``)."""
    paths = JobPaths(config.output_path)
    return Pipeline(
        settings=config.prompt,
        client=closing(stack, clients),
        ledger=ledger,
        writer=writer,
        failures=closing(stack, FailureLog(paths.failures, job_id)),
        txlog=closing(
            stack, TransactionLog(config.transaction_log or paths.transaction_log, job_id)
        ),
        skip_existing=config.skip_existing,
        api_key=config.api_key,
        previous_attempts=previous_attempts,
        call=call_options(config, throttle),
        # Closed first (the stack unwinds backwards): it still commits and appends through
        # the ledger's pool and the writer, which the caller opened before.
        committer=closing(
            stack, Committer(ledger, writer, functools.partial(render_line, config.prompt))
        ),
    )


def call_options(config: Config, throttle: Throttle) -> CallOptions:
    """Retries, service tier, prices and the pacer of every request."""
    return CallOptions(
        max_retries=config.max_retries,
        service_tier=config.service_tier,
        price=price_override(config),
        pacer=throttle,
    )
