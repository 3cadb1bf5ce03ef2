"""SDK clients for many worker threads (the call itself is ``api/call.py``).

Many workers share a ``ClientPool`` of SDK clients rather than one client: the HTTP client's
connection pool scans all of its connections under one lock at every request start and
response close, which at 1,024 connections made it the largest CPU (and GIL) cost of a request.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    import openai

logger = logging.getLogger(__name__)

# The SDK is imported where it is first needed, not at module import: it takes about half a
# second, which a run refused at start (lock held, bad option) should not have to pay.


def create_openai_client(
    api_key: str | None,
    base_url: str | None = None,
    *,
    timeout: float = 120.0,
    max_retries: int = 3,
    max_connections: int = 64,
    ssl_context: ssl.SSLContext | None = None,
) -> openai.OpenAI:
    """One SDK client with ``max_connections`` connections, all of which may stay open.

    The SDK's default pool holds 1,000 connections of which only 100 stay open between
    requests: with more workers than that, connections would be closed and reopened all the
    time, and with more workers than connections the extra threads would queue inside the
    HTTP client. For more than 64 workers, ``create_client_pool`` is cheaper. ``ssl_context``
    (default: a new one with the system's CAs) lets several clients share one.
    """
    import httpx2
    import openai

    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    verify = ssl_context if ssl_context is not None else True
    http_client = openai.DefaultHttpxClient(limits=limits, verify=verify)
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url or None,
        timeout=timeout,
        max_retries=max_retries,
        http_client=http_client,
    )


#: Up to this many workers share one SDK client: its connection scans are still cheap (the
#: benchmark at 64 workers shows no difference), and small runs stay exactly as they were.
SINGLE_CLIENT_WORKERS = 64
#: Connections per SDK client above that. Every request start and response close scans the
#: client's whole connection list under one lock, so the cost per request grows with the pool.
#: Measured at 1,024 workers and 4 s latency: 1 client 0.66 of ideal throughput (5.9 ms CPU
#: per artist), 64 per client 0.87 (3.5 ms), 32 per client 0.92 (3.1 ms), 16 no better.
CONNECTIONS_PER_CLIENT = 32


def client_count(workers: int) -> int:
    """How many SDK clients ``workers`` threads get: one up to 64 workers, else one per 32."""
    if workers <= SINGLE_CLIENT_WORKERS:
        return 1
    return math.ceil(workers / CONNECTIONS_PER_CLIENT)


class _Pin:
    """A thread's claim on one client of a ``ClientPool``; lives in that thread's local."""

    __slots__ = ("__weakref__", "index")

    def __init__(self, index: int) -> None:
        self.index = index


class ClientPool:
    """Several SDK clients with each calling thread pinned to one of them.

    A thread gets the client with the fewest live threads on its first call and keeps it, so
    ``W`` live threads spread over ``n`` clients as ``ceil(W / n)`` at most per client:
    exactly what ``create_client_pool`` sizes each client's connection limit for, so no
    worker waits for a connection. A thread's slot is given back when the thread ends, so a
    later set of workers is spread as evenly as the first. Thread-safe.
    """

    def __init__(self, clients: Sequence[openai.OpenAI]) -> None:
        """Pool ``clients`` (at least one); ``close()`` closes them."""
        if not clients:
            raise ValueError("a ClientPool needs at least one client")
        self._clients = tuple(clients)
        self._threads = [0] * len(self._clients)  # live threads pinned to each client
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def clients(self) -> tuple[openai.OpenAI, ...]:
        """The pooled SDK clients."""
        return self._clients

    def __len__(self) -> int:
        return len(self._clients)

    def client(self) -> openai.OpenAI:
        """The calling thread's client (chosen on its first call, the same ever after)."""
        pin: _Pin | None = getattr(self._local, "pin", None)
        if pin is None:
            pin = self._local.pin = self._pin()
        return self._clients[pin.index]

    def _pin(self) -> _Pin:
        with self._lock:
            index = min(range(len(self._threads)), key=self._threads.__getitem__)
            self._threads[index] += 1
        pin = _Pin(index)
        # The pin is referenced only from the thread's local, which Python clears when the
        # thread ends: that is when the client's slot is free again.
        weakref.finalize(pin, self._unpin, index).atexit = False
        return pin

    def _unpin(self, index: int) -> None:
        with self._lock:
            self._threads[index] -= 1

    def pinned(self) -> list[int]:
        """Live threads pinned to each client (for tests and diagnostics)."""
        with self._lock:
            return list(self._threads)

    def close(self) -> None:
        """Close every client's connections; call once no thread uses the pool any more."""
        for sdk_client in self._clients:
            sdk_client.close()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LazyClientPool(ClientPool):
    """A ``ClientPool`` whose clients are created by ``factory`` on the first ``client()``.

    A run that hands its artists to worker processes never calls the API itself: it then
    spends neither the SDK's import (about half a second and 25 MB) nor the clients' memory.
    """

    def __init__(self, factory: Callable[[], ClientPool]) -> None:
        self._factory = factory
        self._pool: ClientPool | None = None
        self._create_lock = threading.Lock()

    def prepare(self) -> None:
        """Start creating the clients now, in a thread of their own, for a run that will
        surely use them: the SDK's import (about half a second) then overlaps the run's
        start (the done set comes from the database, the input is read up to the first
        artist to do) instead of delaying its first request. A worker that needs a client
        meanwhile waits for this creation rather than starting another; a failure here is
        left for the first ``client()`` to raise, as without ``prepare``."""
        threading.Thread(target=self._prepare, name="sdk-clients", daemon=True).start()

    def _prepare(self) -> None:
        try:
            self._real()
        except Exception:  # raised again, to the worker, by the first client()
            logger.debug("creating the SDK clients ahead failed", exc_info=True)

    def _real(self) -> ClientPool:
        # Read without the lock once created: every request of every worker passes here.
        pool = self._pool
        if pool is not None:
            return pool
        with self._create_lock:
            if self._pool is None:
                self._pool = self._factory()
            return self._pool

    @property
    def clients(self) -> tuple[openai.OpenAI, ...]:
        return self._real().clients

    def __len__(self) -> int:
        return len(self._real())

    def client(self) -> openai.OpenAI:
        return self._real().client()

    def pinned(self) -> list[int]:
        return self._real().pinned()

    def close(self) -> None:
        with self._create_lock:
            if self._pool is not None:
                self._pool.close()


def create_client_pool(
    api_key: str | None,
    base_url: str | None = None,
    *,
    workers: int,
    threads: int | None = None,
    timeout: float = 120.0,
    max_retries: int = 3,
) -> ClientPool:
    """A ``ClientPool`` for ``workers`` requests at once from ``threads`` threads (default:
    ``workers``): ``client_count(workers)`` SDK clients.

    Each client holds ``ceil(threads / clients)`` connections, as many as threads get pinned
    to it; with 64 workers or fewer this is one client with one connection per thread, as
    ``create_openai_client(max_connections=threads)`` gives.
    """
    import httpx2

    count = client_count(workers)
    connections = math.ceil(max(threads or workers, 1) / count)
    # Loading the CA certificates takes ~20 ms and ~0.8 MB per context: one for all clients.
    ssl_context = httpx2.create_ssl_context()
    return ClientPool(
        [
            create_openai_client(
                api_key,
                base_url,
                timeout=timeout,
                max_retries=max_retries,
                max_connections=connections,
                ssl_context=ssl_context,
            )
            for _ in range(count)
        ]
    )
