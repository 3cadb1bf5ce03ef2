"""``prefetched``: items made one ahead in a thread, errors and early stops handled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing

import pytest

from artist_bio_gen.utils.prefetch import prefetched


class _Producer:
    """Yields ``count`` numbers, recording where and how far it ran and whether it was
    closed; raises ``error`` instead of yielding ``fail_at`` when both are given."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.made: list[int] = []
        self.threads: set[str] = set()
        self.closed = threading.Event()
        self.made_second = threading.Event()

    def __call__(self) -> Iterator[int]:
        self.threads.add(threading.current_thread().name)
        try:
            for number in range(self.count):
                if number == self.fail_at:
                    raise ValueError(f"no item {number}")
                self.made.append(number)
                if number == 1:
                    self.made_second.set()
                yield number
        finally:
            self.closed.set()


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-prefetch"]


def test_every_item_in_order_made_in_the_named_thread() -> None:
    producer = _Producer(50)
    assert list(prefetched(producer, name="test-prefetch")) == list(range(50))
    assert producer.threads == {"test-prefetch"}
    assert producer.closed.is_set()
    assert not _producer_threads()


def test_the_next_item_is_made_while_the_caller_holds_the_current_one() -> None:
    producer = _Producer(3)
    items = prefetched(producer, name="test-prefetch")
    assert next(items) == 0
    # The caller is still busy with item 0: the producer must get item 1 made meanwhile.
    assert producer.made_second.wait(timeout=10)
    assert list(items) == [1, 2]


def test_an_error_of_the_producer_is_raised_in_place_of_its_item() -> None:
    producer = _Producer(10, fail_at=3)
    received = []
    with pytest.raises(ValueError, match="no item 3"):
        for item in prefetched(producer, name="test-prefetch"):
            received.append(item)
    assert received == [0, 1, 2]
    assert producer.closed.is_set()
    assert not _producer_threads()


def test_a_producer_failing_before_its_first_item_fails_the_caller_not_hangs_it() -> None:
    def produce() -> Iterator[int]:
        raise ConnectionError("database unreachable")

    with pytest.raises(ConnectionError, match="unreachable"):
        list(prefetched(produce, name="test-prefetch"))
    assert not _producer_threads()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_a_caller_stopping_early_stops_and_closes_the_producer(how: str) -> None:
    producer = _Producer(1000)
    items = prefetched(producer, name="test-prefetch")
    with pytest.raises(RuntimeError) if how == "raise" else _nothing(), closing(items):
        for item in items:
            if item == 2:
                if how == "raise":
                    raise RuntimeError("caller failed")
                break
    assert producer.closed.is_set()  # closing waited for the producer
    assert not _producer_threads()
    # It stopped within its lead (one item waiting, one being made), not at the end.
    assert len(producer.made) <= 6


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
