"""ClientPool: many workers spread over several SDK clients, each thread pinned to one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from artist_bio_gen.api.call import call_openai_api
from artist_bio_gen.api.client import (
    ClientPool,
    client_count,
    create_client_pool,
    create_openai_client,
)
from artist_bio_gen.api.request import PromptSettings
from artist_bio_gen.models import ArtistData

from .support.fake_openai import FakeOpenAI, bio_for

pytestmark = pytest.mark.timeout(60)


class _Stub:
    """Stands in for an SDK client where only identity and ``close()`` matter."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _stub_pool(count: int) -> tuple[ClientPool, list[_Stub]]:
    stubs = [_Stub() for _ in range(count)]
    return ClientPool(stubs), stubs  # type: ignore[arg-type]


def _clients_seen(pool: ClientPool, threads: int, calls: int = 5) -> list[list[Any]]:
    """What ``pool.client()`` returned to each of ``threads`` threads alive at the same time."""
    barrier = threading.Barrier(threads)
    seen: list[list[Any]] = [[] for _ in range(threads)]

    def work(index: int) -> None:
        seen[index].append(pool.client())
        barrier.wait(timeout=10)  # all threads are alive (and pinned) together
        seen[index].extend(pool.client() for _ in range(calls - 1))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return seen


def _wait_unpinned(pool: ClientPool) -> list[int]:
    # A thread's local is cleared as the thread ends, which join() may just beat.
    deadline = time.monotonic() + 5
    while any(pool.pinned()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pool.pinned()


@pytest.mark.parametrize(
    ("workers", "clients"), [(1, 1), (4, 1), (64, 1), (65, 3), (128, 4), (256, 8), (1024, 32)]
)
def test_one_client_up_to_64_workers_then_one_per_32(workers: int, clients: int) -> None:
    assert client_count(workers) == clients


@pytest.mark.parametrize("workers", [1, 16, 64])
def test_up_to_64_workers_share_one_client(workers: int) -> None:
    with create_client_pool("sk-test", "http://127.0.0.1:9/v1", workers=workers) as pool:
        assert len(pool) == 1
        seen = _clients_seen(pool, min(workers, 8))
    assert {id(c) for calls in seen for c in calls} == {id(pool.clients[0])}


def test_each_thread_keeps_its_client_and_threads_spread_evenly() -> None:
    pool, stubs = _stub_pool(4)
    seen = _clients_seen(pool, threads=10)
    for calls in seen:
        assert all(client is calls[0] for client in calls)  # pinned: always the same one
    per_client = sorted(sum(calls[0] is stub for calls in seen) for stub in stubs)
    assert per_client == [2, 2, 3, 3]  # ceil(10 / 4) at most: each client's connection limit
    assert _wait_unpinned(pool) == [0, 0, 0, 0]  # ended threads gave their slots back


def test_a_new_set_of_workers_is_spread_as_evenly() -> None:
    pool, stubs = _stub_pool(2)
    for _ in range(3):  # e.g. one executor after another on the same pool
        seen = _clients_seen(pool, threads=4)
        assert sorted(sum(calls[0] is stub for calls in seen) for stub in stubs) == [2, 2]
        _wait_unpinned(pool)


def test_close_closes_every_client() -> None:
    pool, stubs = _stub_pool(3)
    with pool:
        pass
    assert [stub.closed for stub in stubs] == [1, 1, 1]


def test_real_pool_closes_every_sdk_client() -> None:
    pool = create_client_pool("sk-test", "http://127.0.0.1:9/v1", workers=1024)
    assert len(pool) == 32 and len({id(c) for c in pool.clients}) == 32
    assert not any(client.is_closed() for client in pool.clients)
    pool.close()
    assert all(client.is_closed() for client in pool.clients)


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError):
        ClientPool([])


def test_legacy_single_client_still_works(fake_openai: FakeOpenAI) -> None:
    client = create_openai_client("sk-test", fake_openai.base_url, max_connections=4)
    try:
        artist = ArtistData("11111111-1111-4111-8111-111111111111", "Solo", None)
        generated = call_openai_api(client, artist, PromptSettings(prompt_id="pmpt_x"))
    finally:
        client.close()
    assert generated.text == bio_for("Solo")


def test_every_worker_gets_a_connection_at_once(fake_openai: FakeOpenAI) -> None:
    # 100 workers: 4 clients of 25 connections. Held by the fake, all 100 requests must be in
    # flight together: no thread waits for a connection of its client.
    workers = 100
    artists = [
        ArtistData(f"00000000-0000-4000-8000-{i:012d}", f"Band {i}", None) for i in range(workers)
    ]
    settings = PromptSettings(prompt_id="pmpt_x")
    fake_openai.hold()
    with (
        create_client_pool("sk-test", fake_openai.base_url, workers=workers) as pool,
        ThreadPoolExecutor(max_workers=workers) as executor,
    ):
        assert len(pool) == 4
        futures = [executor.submit(call_openai_api, pool, a, settings) for a in artists]
        arrived = fake_openai.wait_for_requests(workers, timeout=30)
        in_flight, pinned = fake_openai.in_flight, pool.pinned()
        fake_openai.release()
        texts = [future.result().text for future in futures]
    assert arrived and in_flight == workers
    assert pinned == [25, 25, 25, 25]
    assert texts == [bio_for(a.name) for a in artists]


def test_a_lazy_pool_creates_its_clients_on_first_use_only() -> None:
    from artist_bio_gen.api.client import LazyClientPool, create_client_pool

    made: list[int] = []

    def factory() -> ClientPool:
        made.append(1)
        return create_client_pool("sk-test", "http://127.0.0.1:9", workers=4)

    unused = LazyClientPool(factory)
    unused.close()
    assert made == []  # a run whose workers are other processes creates no client
    used = LazyClientPool(factory)
    first = used.client()
    assert used.client() is first and len(used) == 1 and made == [1]
    used.close()


def test_a_prepared_pool_creates_its_clients_in_another_thread_once() -> None:
    """``prepare`` creates the clients in a thread of its own; a worker asking meanwhile
    waits for that creation instead of starting a second one."""
    from artist_bio_gen.api.client import LazyClientPool, create_client_pool

    made: list[str] = []
    asked = threading.Event()

    def factory() -> ClientPool:
        made.append(threading.current_thread().name)
        asked.wait(timeout=30)  # the worker asks while the creation is under way
        return create_client_pool("sk-test", "http://127.0.0.1:9", workers=4)

    pool = LazyClientPool(factory)
    pool.prepare()
    deadline = time.monotonic() + 30
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    asked.set()
    first = pool.client()
    assert pool.client() is first
    assert made == ["sdk-clients"]
    pool.close()


def test_a_failed_preparation_is_raised_by_the_first_client_call() -> None:
    from artist_bio_gen.api.client import LazyClientPool

    calls: list[int] = []

    def factory() -> ClientPool:
        calls.append(1)
        raise RuntimeError(f"no clients ({len(calls)})")

    pool = LazyClientPool(factory)
    pool.prepare()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match=r"no clients \(2\)"):
        pool.client()
